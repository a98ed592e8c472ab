"""mmpretrain's inferencers hand ``LoadImageChecked`` an image already loaded: it must take it."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skimage_data

import mmvit_plugin  # noqa: F401  (registers the plugin)
from mmvit_plugin.datasets.image_folder import LoadImageChecked

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(REPO, 'configs', 'quickstart_image.py')

pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(autouse=True)
def pretrain_scope():
    """A fresh process has no default scope; an earlier video test may have left mmaction's."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    """A config on the image quickstart with a tiny arch, and a checkpoint of a random model."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    base = tmp_path_factory.mktemp('inferencer')
    config = base / 'tiny_image.py'
    config.write_text(f'''
_base_ = [{QUICKSTART!r}]
model = dict(backbone=dict(arch=dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                                     img_size=(32, 32), drop_path_rate=0.0)),
             head=dict(in_channels=64, num_classes=3, topk=(1,)))
data_preprocessor = dict(num_classes=3)
''')
    cfg = Config.fromfile(str(config))
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # whatever ran before set it
        model = MODELS.build(cfg.model)
    checkpoint = str(base / 'random.pth')
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': ('cat', 'dog', 'eel')}}}, checkpoint)
    photo = str(base / 'astronaut.png')
    cv2.imwrite(photo, cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    return dict(config=str(config), checkpoint=checkpoint, photo=photo)


def test_image_classification_inferencer_on_a_real_photo(tiny_model):
    from mmpretrain.apis import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(model=tiny_model['config'],
                                               pretrained=tiny_model['checkpoint'],
                                               device='cpu')
    # Before: KeyError: 'img_path' in LoadImageChecked.transform.
    file_result = inferencer(tiny_model['photo'])[0]
    array_result = inferencer(skimage_data.astronaut()[:, :, ::-1].copy())[0]
    for result in (file_result, array_result):
        assert result['pred_class'] in ('cat', 'dog', 'eel')
        assert len(result['pred_scores']) == 3
        assert np.isclose(float(np.sum(result['pred_scores'])), 1.0, atol=1e-5)


def test_feature_extractor_on_a_real_photo(tiny_model):
    from mmpretrain.apis import FeatureExtractor
    extractor = FeatureExtractor(model=tiny_model['config'],
                                 pretrained=tiny_model['checkpoint'], device='cpu')
    features = extractor(tiny_model['photo'])[0]
    features = features[-1] if isinstance(features, (list, tuple)) else features
    assert torch.is_tensor(features) and features.shape[0] == 64  # the last stage's width


def test_already_loaded_images_become_3_channel_8_bit_and_errors_name_the_file():
    load = LoadImageChecked()
    gray = load(dict(img=np.full((4, 5), 7, np.uint8)))
    assert gray['img'].shape == (4, 5, 3) and gray['img_shape'] == (4, 5)
    deep = load(dict(img=np.full((2, 2, 4), 65535, np.uint16)))['img']
    assert deep.shape == (2, 2, 3) and deep.dtype == np.uint8 and deep.max() == 255
    with pytest.raises(ValueError, match=r"image /data/x\.png: expected 1, 3 or 4 channels"):
        load(dict(img=np.zeros((2, 2, 2), np.uint8), img_path='/data/x.png'))
    with pytest.raises(KeyError, match="needs 'img_path'.*or 'img'"):
        load(dict(img_shape=(2, 2)))
