"""apis.build_config_model: the model of a config in its host's registry, one way for every
tool."""
import pytest
from helpers import CONFIGS
from mmengine.config import Config

import mmvit_plugin  # noqa: F401
from mmvit_plugin.apis import build_config_model, config_scope


@pytest.mark.parametrize('name,scope,classifier', [
    ('quickstart_image.py', 'mmpretrain', 'ImageClassifier'),
    ('quickstart_video.py', 'mmaction', 'Recognizer3D'),
])
def test_each_config_builds_in_its_host(name, scope, classifier):
    cfg = Config.fromfile(str(CONFIGS / name))
    assert config_scope(cfg) == scope
    model = build_config_model(cfg)
    assert type(model).__name__ == classifier
    assert type(model.backbone).__name__ == 'MViTv2'


def test_batch_mixing_is_left_out_unless_training():
    cfg = Config.fromfile(str(CONFIGS / 'mvitv2_t_imagenet.py'))
    assert cfg.model.get('train_cfg')  # the ImageNet recipe mixes batches
    assert build_config_model(cfg).data_preprocessor.batch_augments is None
    assert build_config_model(cfg, for_training=True).data_preprocessor.batch_augments is not None
    assert cfg.model.get('train_cfg')  # the config itself is left as it was


def test_scope_without_default_scope():
    assert config_scope(Config(dict(model=dict(type='Recognizer3D')))) == 'mmaction'
    assert config_scope(Config(dict(model=dict(type='ImageClassifier')))) == 'mmpretrain'
