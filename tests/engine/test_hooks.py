"""Runner-level checkpoint behaviour: WeightInflationHook (runs when training starts, never over
resumed or load_from weights), CheckpointFormatHook (load_from in any format), safe refusal
of a crafted file by load_from and resume, and resume of the runner's own checkpoints under
torch's weights_only default."""
import itertools
import pickle
import random
import uuid

import numpy as np
import pytest
import torch
from helpers import WriteFilePayload, write_tiny_image_run
from mmengine.runner import Runner
from torch.utils.data import Dataset

import mmvit_plugin  # noqa: F401
from mmvit_plugin.checkpoint import (
    ArchitectureMismatchError,
    UnsafeCheckpointError,
    from_canonical,
    inflate_conv_weight,
    package_checkpoint,
)
from mmvit_plugin.engine import hooks
from mmvit_plugin.models.mvitv2 import MViTv2

TINY = dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3))
IMAGE_ARCH = dict(TINY, img_size=(32, 32))
VIDEO_ARCH = dict(TINY, img_size=(4, 32, 32), video=True, with_cls_token=True)
CLASSES = 3
RUNNER_IDS = itertools.count()


pytestmark = pytest.mark.usefixtures('single_thread')


class ClipDataset(Dataset):
    """Four random clips (or images) with labels, in the layout the hosts' models take."""
    metainfo = dict(classes=tuple(str(i) for i in range(CLASSES)))

    def __init__(self, video: bool) -> None:
        self.video = video

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        gen = torch.Generator().manual_seed(index)
        if self.video:
            from mmaction.structures import ActionDataSample
            sample = ActionDataSample().set_gt_labels(index % CLASSES)
            inputs = torch.randint(0, 255, (1, 3, 4, 32, 32), generator=gen).float()
        else:
            from mmpretrain.structures import DataSample
            sample = DataSample().set_gt_label(index % CLASSES)
            inputs = torch.randint(0, 255, (3, 32, 32), generator=gen).float()
        return dict(inputs=inputs, data_samples=sample)


def model_cfg(video: bool) -> dict:
    if video:
        return dict(type='Recognizer3D',
                    backbone=dict(type='MViTv2', arch=VIDEO_ARCH, out_type='featmap_and_cls'),
                    cls_head=dict(type='MViTHead', in_channels=128, num_classes=CLASSES),
                    data_preprocessor=dict(type='ActionDataPreprocessor', mean=[0.] * 3,
                                           std=[255.] * 3, format_shape='NCTHW'))
    return dict(type='ImageClassifier',
                backbone=dict(type='MViTv2', arch=IMAGE_ARCH, out_type='avg_featmap'),
                head=dict(type='LinearClsHead', num_classes=CLASSES, in_channels=128),
                data_preprocessor=dict(type='ClsDataPreprocessor', mean=[0.] * 3,
                                       std=[255.] * 3))


def make_runner(tmp_path, video: bool, hooks=(), epochs: int = 1, **kwargs) -> Runner:
    """A runner whose optimiser cannot move the weights (lr 0), so tests see what was loaded.

    ``default_hooks`` entries in ``kwargs`` replace or add to the checkpoint and logger hooks."""
    default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                         logger=dict(type='LoggerHook', interval=1))
    default_hooks.update(kwargs.pop('default_hooks', {}))
    return Runner(
        model=model_cfg(video), work_dir=str(tmp_path / 'work'),
        default_scope='mmaction' if video else 'mmpretrain',
        train_dataloader=dict(dataset=ClipDataset(video), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='pseudo_collate')),
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.0)),
        param_scheduler=[dict(type='ConstantLR', factor=1.0, by_epoch=True)],
        default_hooks=default_hooks, custom_hooks=list(hooks), log_level='WARNING',
        randomness=dict(seed=0),
        # a unique name: runners made within one second otherwise share mmengine's
        # DefaultScope instance, and with it the other host's registry
        experiment_name=f'hooks_{next(RUNNER_IDS)}_{uuid.uuid4().hex[:8]}', **kwargs)


def image_checkpoint(path, fmt='official', classes=CLASSES, seed=0) -> dict:
    """A 2D checkpoint (canonical weights returned) written in ``fmt``."""
    torch.manual_seed(seed)
    model = MViTv2(arch=IMAGE_ARCH)
    model.init_weights()
    state = dict(model.state_dict())
    state['head.projection.weight'] = torch.randn(classes, 128)
    state['head.projection.bias'] = torch.randn(classes)
    torch.save(package_checkpoint(from_canonical(state, fmt), fmt), path)
    return state


def backbone_of(runner):
    return runner.model.backbone


def inflation_hook(runner):
    return next(h for h in runner._hooks if type(h).__name__ == 'WeightInflationHook')


def test_inflation_hook_inflates_when_training_starts(tmp_path):
    source = image_checkpoint(tmp_path / 'image.pyth')
    hook = dict(type='WeightInflationHook', checkpoint=str(tmp_path / 'image.pyth'),
                method='average')
    runner = make_runner(tmp_path, video=True, hooks=[hook])
    runner.train()
    assert inflation_hook(runner).applied
    backbone = backbone_of(runner)
    torch.testing.assert_close(backbone.patch_embed.proj.weight,
                               inflate_conv_weight(source['patch_embed.proj.weight'], 3,
                                                   'average'))
    assert torch.equal(backbone.blocks[3].attn.qkv.weight, source['blocks.3.attn.qkv.weight'])
    # the head has as many classes as the image head, so it is kept
    assert torch.equal(runner.model.cls_head.fc_cls.weight, source['head.projection.weight'])


def test_inflation_hook_keeps_load_from_weights(tmp_path):
    image_checkpoint(tmp_path / 'image.pyth')
    torch.manual_seed(7)
    other = MViTv2(arch=VIDEO_ARCH)
    other.init_weights()
    torch.save(package_checkpoint(from_canonical(other.state_dict(), 'mmvit'), 'mmvit'),
               tmp_path / 'video.pth')
    hook = dict(type='WeightInflationHook', checkpoint=str(tmp_path / 'image.pyth'))
    runner = make_runner(tmp_path, video=True, hooks=[hook],
                         load_from=str(tmp_path / 'video.pth'))
    runner.train()
    assert torch.equal(backbone_of(runner).patch_embed.proj.weight,
                       other.patch_embed.proj.weight)
    assert not inflation_hook(runner).applied


def test_inflation_hook_keeps_resumed_weights_and_resume_is_weights_only(tmp_path):
    first = make_runner(tmp_path, video=True)
    first.train()
    trained = {k: v.clone() for k, v in first.model.state_dict().items()}
    ckpt = tmp_path / 'work' / 'epoch_1.pth'
    assert torch.load(ckpt, weights_only=True)['meta']['epoch'] == 1  # safe globals suffice

    image_checkpoint(tmp_path / 'image.pyth')
    hook = dict(type='WeightInflationHook', checkpoint=str(tmp_path / 'image.pyth'))
    second = make_runner(tmp_path, video=True, hooks=[hook], epochs=2, resume=True)
    second.train()
    assert second.epoch == 2
    assert not inflation_hook(second).applied
    for key, value in second.model.state_dict().items():
        assert torch.equal(value, trained[key]), key


@pytest.mark.parametrize('fmt', ['official', 'mmpretrain', 'timm'])
def test_load_from_accepts_other_formats(tmp_path, fmt):
    source = image_checkpoint(tmp_path / f'{fmt}.pth', fmt=fmt)
    runner = make_runner(tmp_path, video=False, hooks=[dict(type='CheckpointFormatHook')],
                         load_from=str(tmp_path / f'{fmt}.pth'))
    runner.train()
    backbone = backbone_of(runner)
    for key in ('patch_embed.proj.weight', 'blocks.2.mlp.fc1.weight', 'norm.weight'):
        assert torch.equal(backbone.state_dict()[key], source[key]), key
    assert torch.equal(runner.model.head.fc.weight, source['head.projection.weight'])


def test_load_from_2d_into_3d_is_refused_and_names_the_inflation_hook(tmp_path):
    image_checkpoint(tmp_path / 'image.pyth')
    runner = make_runner(tmp_path, video=True, hooks=[dict(type='CheckpointFormatHook')],
                         load_from=str(tmp_path / 'image.pyth'))
    with pytest.raises(ArchitectureMismatchError, match='WeightInflationHook'):
        runner.train()
    # WeightInflationHook is the one way to inflate: the format hook takes no method
    with pytest.raises(TypeError):
        hooks.CheckpointFormatHook(inflate='center')


@pytest.mark.parametrize('resume', [False, True], ids=['load_from', 'resume'])
@pytest.mark.parametrize('with_hook', [True, False], ids=['hook', 'no-hook'])
def test_crafted_file_never_runs_through_the_runner(tmp_path, resume, with_hook):
    marker = tmp_path / 'pwned.txt'
    evil = tmp_path / 'evil.pth'
    state = from_canonical(MViTv2(arch=IMAGE_ARCH).state_dict(), 'mmvit')
    torch.save({'meta': {'epoch': 1, 'iter': 2, 'x': WriteFilePayload(str(marker))},
                'state_dict': state}, evil)
    hooks = [dict(type='CheckpointFormatHook')] if with_hook else []
    runner = make_runner(tmp_path, video=False, hooks=hooks, load_from=str(evil),
                         resume=resume)
    expected = UnsafeCheckpointError if with_hook else pickle.UnpicklingError
    with pytest.raises(expected) as err:
        runner.train()
    assert 'exec' in str(err.value)
    if with_hook:
        assert str(evil) in str(err.value) and '--trust-checkpoint' in str(err.value)
    assert not marker.exists()




def test_train_tool_resume_works_with_weights_only_loading(tmp_path, monkeypatch):
    """tools/train.py --resume under torch >= 2.6 (weights_only default), no trust needed."""
    import os
    import runpy
    import sys

    config = write_tiny_image_run(tmp_path, max_epochs=2, log_level='INFO')
    work_dir = tmp_path / 'work'
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    train_tool = os.path.join(repo, 'tools', 'train.py')
    monkeypatch.chdir(repo)

    monkeypatch.setattr(sys, 'argv', [train_tool, str(config), '--work-dir', str(work_dir),
                                      '--cfg-options', 'train_cfg.max_epochs=1'])
    runpy.run_path(train_tool, run_name='__main__')
    assert (work_dir / 'epoch_1.pth').exists()

    # mmengine's resume calls torch.load with torch's weights_only default: the message hub,
    # numpy values and optimizer state load through the globals mmvit_plugin allows.
    monkeypatch.setattr(sys, 'argv', [train_tool, str(config), '--work-dir', str(work_dir),
                                      '--resume'])
    runpy.run_path(train_tool, run_name='__main__')
    assert (work_dir / 'epoch_2.pth').exists()
    logs = [p.read_text() for p in work_dir.glob('*/*.log')]
    assert any('resumed epoch: 1' in text for text in logs), logs


def test_epoch_seed_depends_on_seed_epoch_and_rank_only():
    seeds = {hooks.epoch_seed(s, e, r) for s in (0, 1) for e in (0, 1, 2) for r in (0, 1)}
    assert len(seeds) == 12
    assert hooks.epoch_seed(3, 4, 1) == hooks.epoch_seed(3, 4, 1)


def test_epoch_seed_hook_makes_every_generator_repeat():

    class FakeRunner:
        seed, epoch = 7, 3

    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    hook = hooks.EpochSeedHook()
    hook.before_train_epoch(FakeRunner())
    first = draw()
    draw()  # the state moves on...
    hook.before_train_epoch(FakeRunner())
    assert draw() == first  # ...and the next epoch start of a resumed run is identical
    FakeRunner.epoch = 4
    hook.before_train_epoch(FakeRunner())
    assert draw() != first
