"""Video configs: the Kinetics recipes run end to end (tiny backbone), the quickstart inflates.

The recipes keep their pipelines, optimiser, schedule, blending and test protocol; only the
backbone is swapped for a tiny one, the dataset root for clips made in tmp_path and, for the
training run, the spatial sizes shrunk so that a CPU step takes a moment.
"""
import copy
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from helpers import load_tool, write_fake_fashion_mnist
from mmaction.datasets.repeat_aug_dataset import repeat_pseudo_collate
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.hooks import Hook
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

import mmvit_plugin  # noqa: F401  (registers the plugin)
from mmvit_plugin.models.mvitv2 import resolve_arch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = osp.join(REPO, 'configs')
TINY_ARCH = dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3), video=True,
                 with_cls_token=True, drop_path_rate=0.1)


pytestmark = pytest.mark.usefixtures('single_thread')


def write_video(path: str, num_frames: int = 20, size=(80, 60), seed: int = 0) -> str:
    os.makedirs(osp.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 10, size)
    for _ in range(num_frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def make_video_folders(root: str, classes=('a', 'b'), per_class: int = 2) -> str:
    for split in ('train', 'val'):
        for label, name in enumerate(classes):
            for i in range(per_class):
                write_video(osp.join(root, split, name, f'{i}.mp4'), seed=label * 10 + i)
    return root


def load(name: str) -> Config:
    return Config.fromfile(osp.join(CONFIGS, name))


@pytest.mark.parametrize('name,clip_len,crop,views,drop_path', [
    ('mvitv2_s_16x4_k400.py', 16, 224, 5, 0.2),
    ('mvitv2_b_32x3_k400.py', 32, 224, 5, 0.3),
    ('mvitv2_l_40x3_k400.py', 40, 312, 15, 0.75),
])
def test_kinetics_pipelines_give_the_recipe_views(tmp_path, name, clip_len, crop, views,
                                                  drop_path):
    cfg = load(name)
    assert resolve_arch(cfg.model.backbone.arch).drop_path_rate == drop_path
    video = write_video(str(tmp_path / 'v.mp4'))  # 20 frames: shorter than a clip, loops
    info = dict(filename=video, label=3, start_index=0, modality='RGB')
    with DefaultScope.overwrite_default_scope('mmaction'):
        test = Compose(cfg.test_dataloader.dataset.pipeline)(dict(info))
        train = Compose(cfg.train_dataloader.dataset.pipeline)(dict(info))
    assert tuple(test['inputs'].shape) == (views, 3, clip_len, crop, crop)
    assert tuple(train['inputs'].shape) == (1, 3, clip_len, crop, crop)
    assert cfg.model.cls_head.average_clips == 'prob'
    assert cfg.train_dataloader.dataset.num_repeats == 2


def _shrink_spatial(pipeline, crop: int):
    """The same pipeline at a small crop size (for a fast CPU training step)."""
    small = copy.deepcopy(pipeline)
    for step in small:
        if step['type'] == 'RandomRescale':
            step['scale_range'] = (crop + 8, crop + 24)
        elif step['type'] == 'Resize':
            step['scale'] = (crop, crop) if step['scale'][0] != -1 else (-1, crop)
        elif step['type'] in ('CenterCrop', 'ThreeCrop'):
            step['crop_size'] = crop
    return small


def test_s16x4_recipe_trains_and_tests_end_to_end(tmp_path):
    root = make_video_folders(str(tmp_path / 'data'))
    cfg = load('mvitv2_s_16x4_k400.py')
    crop = 64
    cfg.model.backbone.arch = dict(TINY_ARCH, img_size=(16, crop, crop))
    cfg.model.cls_head.in_channels = 64
    cfg.model.cls_head.num_classes = 2
    for augment in cfg.model.data_preprocessor.blending.augments:
        augment.num_classes = 2
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = root
        cfg[loader].dataset.pipeline = _shrink_spatial(cfg[loader].dataset.pipeline, crop)
        cfg[loader].update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.test_dataloader.batch_size = 1
    cfg.train_cfg.max_epochs = 1
    cfg.work_dir = str(tmp_path / 'work')
    cfg.default_hooks.logger.interval = 1
    runner = Runner.from_cfg(cfg)
    runner.train()
    # AdamW, no weight decay on 1-D parameters (norms, biases), decay on the rest
    optimizer = runner.optim_wrapper.optimizer
    assert type(optimizer).__name__ == 'AdamW'
    decays = {p.dim(): g['weight_decay'] for g in optimizer.param_groups for p in g['params']}
    assert decays[1] == 0.0 and decays[2] == 0.05
    # warm-up from 1e-6: after 2 of the 30 * 2 warm-up iterations the lr is still tiny
    assert optimizer.param_groups[0]['lr'] < 1.6e-3 * 0.05
    # the data preprocessor mixes labels (Mixup or CutMix) when training
    batch = repeat_pseudo_collate([runner.train_dataloader.dataset[i] for i in range(2)])
    mixed = runner.model.data_preprocessor(batch, training=True)['data_samples']
    soft = torch.stack([s.gt_labels.item for s in mixed])
    assert soft.shape == (4, 2) and torch.allclose(soft.sum(1), torch.ones(4))
    metrics = runner.test()  # 5 clips per video, probabilities averaged by the head
    assert 0.0 <= metrics['acc/top1'] <= 1.0


def test_quickstart_video_is_the_image_quickstart_made_3d():
    image = load('quickstart_image.py').model.backbone.arch
    video = load('quickstart_video.py').model.backbone.arch
    shared = ('embed_dim', 'depth', 'num_heads', 'stage_starts', 'dim_mul_in_att',
              'with_cls_token', 'mlp_ratio')
    image_arch, video_arch = resolve_arch(dict(image)), resolve_arch(dict(video))
    assert video_arch.video and not image_arch.video
    for field in shared:
        assert getattr(video_arch, field) == getattr(image_arch, field), field
    assert load('quickstart_video.py').model.cls_head.in_channels == \
        load('quickstart_image.py').model.head.in_channels


class _CaptureWeights(Hook):
    """Copies the model's weights when training starts (after the inflation hook)."""
    priority = 'LOW'

    def before_train(self, runner) -> None:
        self.state = {k: v.detach().clone() for k, v in runner.model.state_dict().items()}


def test_quickstart_inflated_starts_from_the_image_weights(tmp_path):
    # a tiny Fashion-MNIST look-alike in IDX files, turned into the moving-item task
    src = write_fake_fashion_mnist(tmp_path / 'fmnist')
    prepare = load_tool('tools/data/prepare_video_task.py')
    data_root = str(tmp_path / 'moving')
    summary = prepare.build(src, data_root, dict(train=20, val=10, test=10),
                            num_frames=16, cell=32, seed=0, force=False)
    assert summary['counts'] == dict(train=20, val=10, test=10)

    # an image-quickstart checkpoint (random weights stand in for the trained ones)
    image_cfg = load('quickstart_image.py')
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        image_model = PRETRAIN_MODELS.build(image_cfg.model)
    image_state = image_model.state_dict()
    image_ckpt = str(tmp_path / 'image.pth')
    torch.save(dict(state_dict=image_state, meta=dict()), image_ckpt)

    cfg = load('quickstart_video_inflated.py')
    cfg.default_hooks.weight_inflation.checkpoint = image_ckpt  # the key commands set
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
        cfg[loader].update(batch_size=5, num_workers=0, persistent_workers=False)
    cfg.train_cfg.max_epochs = 1
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    capture = _CaptureWeights()
    runner.register_hook(capture)
    runner.train()

    start = capture.state
    method = cfg.default_hooks.weight_inflation.get('method', 'center')
    for key in ('blocks.1.attn.qkv.weight', 'blocks.3.mlp.fc2.bias', 'norm.weight'):
        torch.testing.assert_close(start[f'backbone.{key}'], image_state[f'backbone.{key}'])
    torch.testing.assert_close(start['cls_head.fc_cls.weight'], image_state['head.fc.weight'])
    patch_2d = image_state['backbone.patch_embed.proj.weight']
    patch_3d = start['backbone.patch_embed.proj.weight']
    assert patch_3d.shape == patch_2d.shape[:2] + (3,) + patch_2d.shape[2:]
    if method == 'average':
        torch.testing.assert_close(patch_3d.sum(2), patch_2d)
    else:
        torch.testing.assert_close(patch_3d[:, :, 1], patch_2d)
    assert runner.test()['acc/top1'] >= 0.0
