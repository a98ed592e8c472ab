"""The image configs: official recipe values, self-contained files, dict and lazy styles agree."""
import os.path as osp

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmvit_plugin  # noqa: F401

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
IN1K = {'t': 0.1, 's': 0.1, 'b': 0.3, 'l': 0.5}
IN21K = {'b': 'base-in21k', 'l': 'large-in21k', 'h': 'huge'}


def _config(name: str) -> Config:
    return Config.fromfile(osp.join(REPO, 'configs', name))


def _image_configs():
    return ([f'mvitv2_{s}_imagenet.py' for s in IN1K]
            + [f'mvitv2_{s}_imagenet21k.py' for s in IN21K]
            + ['mvitv2_b_in21k-ft-in1k.py', 'mvitv2_t_imagenet_lazy.py', 'quickstart_image.py'])


@pytest.mark.parametrize('name', _image_configs())
def test_every_image_config_is_self_contained_with_data_roots(name):
    text = open(osp.join(REPO, 'configs', name)).read()
    assert 'mmpretrain::' not in text
    cfg = _config(name)
    assert cfg.default_scope == 'mmpretrain'
    assert 'mmvit_plugin' in cfg.custom_imports['imports']
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        assert cfg[loader]['dataset']['data_root'], (name, loader)


@pytest.mark.parametrize('size,drop_path', sorted(IN1K.items()))
def test_in1k_configs_carry_the_official_recipe(size, drop_path):
    cfg = _config(f'mvitv2_{size}_imagenet.py')
    assert cfg.model.backbone.drop_path_rate == drop_path
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == 'AdamW' and optimizer.weight_decay == 0.05
    # 2.5e-4 per 256 images: 2e-3 for the total batch of 2048 that auto_scale_lr refers to.
    assert optimizer.lr == pytest.approx(2e-3)
    assert cfg.auto_scale_lr.base_batch_size == 2048
    assert cfg.train_dataloader.batch_size * 8 == 2048
    assert cfg.optim_wrapper.paramwise_cfg.flat_decay_mult == 0.0
    assert cfg.optim_wrapper.clip_grad.max_norm == 1.0
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.end, cosine.type, cosine.begin, cosine.end) == (
        'LinearLR', 70, 'CosineAnnealingLR', 70, 300)
    assert warmup.start_factor * 2.5e-4 == pytest.approx(1e-8)
    assert cosine.eta_min_ratio * 2.5e-4 == pytest.approx(1e-6)
    assert cfg.train_cfg.max_epochs == 300
    assert [a['type'] for a in cfg.model.train_cfg.augments] == ['Mixup', 'CutMix']
    assert [a['alpha'] for a in cfg.model.train_cfg.augments] == [0.8, 1.0]
    assert cfg.model.head.loss == dict(type='LabelSmoothLoss', label_smooth_val=0.1,
                                       mode='original')
    steps = {t['type']: t for t in cfg.train_pipeline}
    assert steps['RandomResizedCrop']['scale'] == 224
    assert steps['RandomResizedCrop']['interpolation'] == 'bicubic'
    assert steps['RandAugment']['magnitude_level'] == 9
    assert steps['RandAugment']['magnitude_std'] == 0.5
    assert steps['RandAugment']['policies'] == 'timm_increasing'
    assert steps['RandomErasing']['erase_prob'] == 0.25
    test_steps = {t['type']: t for t in cfg.test_pipeline}
    assert test_steps['ResizeEdge']['scale'] == 256 and test_steps['CenterCrop']['crop_size'] == 224


@pytest.mark.parametrize('size,arch', sorted(IN21K.items()))
def test_in21k_configs_have_cls_token_and_19168_classes(size, arch):
    cfg = _config(f'mvitv2_{size}_imagenet21k.py')
    assert cfg.model.backbone.arch == arch and cfg.model.backbone.out_type == 'cls_token'
    assert cfg.model.head.num_classes == 19168  # the data preprocessor follows the head
    assert cfg.test_dataloader.dataset.data_root == 'data/imagenet21k'


def test_finetune_config_has_pretrained_backbone_layer_decay_and_short_schedule():
    cfg = _config('mvitv2_b_in21k-ft-in1k.py')
    assert cfg.model.backbone.init_cfg.type == 'Pretrained'
    assert cfg.model.head.num_classes == 1000
    assert cfg.optim_wrapper.constructor == 'MViTv2LayerDecayOptimWrapperConstructor'
    assert 0 < cfg.optim_wrapper.paramwise_cfg.layer_decay_rate < 1
    assert cfg.train_cfg.max_epochs < 300
    base_lr = _config('mvitv2_b_imagenet.py').optim_wrapper.optimizer.lr
    assert cfg.optim_wrapper.optimizer.lr < base_lr


def test_lazy_config_builds_the_same_tiny_classifier_as_the_dict_config():
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    lazy = _config('mvitv2_t_imagenet_lazy.py')
    plain = _config('mvitv2_t_imagenet.py')
    lazy_model = MODELS.build(lazy.model)
    plain_cfg = plain.model.copy()
    plain_cfg.setdefault('data_preprocessor', plain.data_preprocessor)
    plain_model = MODELS.build(plain_cfg)
    lazy_shapes = {k: tuple(v.shape) for k, v in lazy_model.state_dict().items()}
    plain_shapes = {k: tuple(v.shape) for k, v in plain_model.state_dict().items()}
    assert lazy_shapes == plain_shapes
    assert sum(p.numel() for p in lazy_model.parameters()) == 24_173_320
    assert type(lazy_model.head.loss_module).__name__ == 'LabelSmoothLoss'
    assert [type(a).__name__ for a in lazy_model.data_preprocessor.batch_augments.augments] == [
        'Mixup', 'CutMix']
    assert lazy.optim_wrapper.optimizer.lr == plain.optim_wrapper.optimizer.lr
    assert lazy.param_scheduler[1]['end'] == plain.param_scheduler[1]['end']


def test_imagenet_pipelines_run_on_a_real_photo(tmp_path):
    import skimage.data
    from mmengine.dataset import Compose
    init_default_scope('mmpretrain')
    import cv2
    path = str(tmp_path / 'astronaut.png')
    cv2.imwrite(path, skimage.data.astronaut()[..., ::-1])
    cfg = _config('mvitv2_t_imagenet.py')
    for pipeline in (cfg.train_pipeline, cfg.test_pipeline):
        packed = Compose(pipeline)(dict(img_path=path, gt_label=3))
        assert tuple(packed['inputs'].shape) == (3, 224, 224)
        assert packed['inputs'].dtype.is_floating_point is False
        assert np.isfinite(packed['inputs'].numpy()).all()


TINY_IMAGE_ARCH = dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3))


def _ten_class_folder(root) -> str:
    """10 class folders of real photos (scikit-image), 64x64, in train/."""
    import cv2
    import skimage.data
    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    for label in range(10):
        folder = root / 'train' / f'class_{label}'
        folder.mkdir(parents=True)
        image = cv2.resize(photos[label % 3], (64 + label, 64))
        cv2.imwrite(str(folder / 'photo.png'), image[..., ::-1])
    return str(root)


def _train_one_step(cfg: Config, tmp_path):
    from mmengine.runner import Runner
    cfg.model.backbone.arch = TINY_IMAGE_ARCH
    cfg.model.head.in_channels = 64
    cfg.train_dataloader.dataset.data_root = _ten_class_folder(tmp_path / 'data')
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.indices = 2
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1)
    cfg.param_scheduler = None
    cfg.default_hooks.checkpoint = None
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner.model


def test_one_setting_changes_the_class_count_of_an_imagenet_recipe(tmp_path):
    """Issue 11: with only the head changed, mixup one-hot labels kept 1000 columns."""
    cfg = _config('mvitv2_t_imagenet.py')
    cfg.merge_from_dict({'model.head.num_classes': 10})  # what --cfg-options does
    model = _train_one_step(cfg, tmp_path)
    from mmpretrain.models import ImageClassifier
    assert type(model) is ImageClassifier  # the builder returns mmpretrain's own class
    assert model.head.fc.out_features == 10 and model.data_preprocessor.num_classes == 10
    assert [type(a).__name__ for a in model.data_preprocessor.batch_augments.augments] == [
        'Mixup', 'CutMix']


@pytest.mark.parametrize('name', _image_configs())
def test_every_image_config_sets_the_class_count_once(name):
    cfg = _config(name)
    assert cfg.get('data_preprocessor', {}).get('num_classes') is None
    assert cfg.model.get('data_preprocessor', {}).get('num_classes') is None
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    model_cfg = dict(cfg.model, data_preprocessor=cfg.get('data_preprocessor') or
                     cfg.model.get('data_preprocessor'), backbone=dict(
                         cfg.model.backbone, arch=dict(TINY_IMAGE_ARCH,
                                                       with_cls_token=True)),
                     head=dict(cfg.model.head, in_channels=64))
    model_cfg['backbone'].pop('drop_path_rate', None)
    model = MODELS.build(model_cfg)
    assert model.data_preprocessor.num_classes == cfg.model.head.num_classes


def test_a_disagreeing_data_preprocessor_count_is_named():
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    cfg = _config('mvitv2_t_imagenet.py')
    model_cfg = dict(cfg.model, data_preprocessor=dict(cfg.data_preprocessor, num_classes=1000),
                     head=dict(cfg.model.head, num_classes=10))
    with pytest.raises(ValueError, match=r'data_preprocessor.num_classes=1000 differs from '
                       r'model.head num_classes=10'):
        MODELS.build(model_cfg)


def test_quickstart_test_pipeline_is_deterministic_and_keeps_fashion_mnist_inputs(tmp_path):
    """Issue 11: a random crop at test time gave one photo different scores per call."""
    import random

    import cv2
    import skimage.data
    import torch
    from mmengine.dataset import Compose
    init_default_scope('mmpretrain')
    cfg = _config('quickstart_image.py')
    pipeline = Compose(cfg.test_dataloader.dataset.pipeline)
    photo = str(tmp_path / 'astronaut.png')
    cv2.imwrite(photo, skimage.data.astronaut()[..., ::-1])
    outputs = []
    for seed in range(3):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        outputs.append(pipeline(dict(img_path=photo))['inputs'])
    assert tuple(outputs[0].shape) == (3, 32, 32)
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])
    # a 28x28 Fashion-MNIST-like image: exactly the image padded by 2 (the trained input)
    item = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    item_path = str(tmp_path / 'item.png')
    cv2.imwrite(item_path, item)
    packed = pipeline(dict(img_path=item_path))['inputs']
    expected = np.pad(item, 2)
    for channel in range(3):
        assert np.array_equal(packed[channel].numpy(), expected)


STOCK_SNIPPETS = {
    # the README snippet inside a stock mmpretrain MViT config: featmap into its pooling neck
    'stock_neck': "model = dict(backbone=dict(type='MViTv2', arch='tiny'))",
    # or pooled in the backbone, without the neck
    'no_neck': "model = dict(backbone=dict(type='MViTv2', arch='tiny', out_type='avg_featmap'),"
               " neck=None)",
}


@pytest.mark.parametrize('case', sorted(STOCK_SNIPPETS))
def test_readme_backbone_snippet_inside_a_stock_mmpretrain_mvit_config(tmp_path, case):
    import torch
    from mmpretrain.registry import MODELS
    config = tmp_path / 'user_config.py'
    config.write_text("_base_ = ['mmpretrain::mvit/mvitv2-tiny_8xb256_in1k.py']\n"
                      "custom_imports = dict(imports=['mmvit_plugin'], "
                      "allow_failed_imports=False)\n" + STOCK_SNIPPETS[case] + '\n')
    cfg = Config.fromfile(str(config))
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg.model).eval()
    assert type(model.backbone).__name__ == 'MViTv2'
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 224, 224), mode='tensor')
    assert tuple(logits.shape) == (1, 1000)
