"""Training stops early and clearly instead of failing late or training on silently: schedules
fitted to small datasets (the warm-up reaches its peak), ranks without data, NaN losses."""
import os
import uuid

import pytest
import torch
import torch.multiprocessing as mp
from mmengine.hooks import Hook
from mmengine.runner import Runner
from test_hooks import model_cfg
from torch.utils.data import Dataset

import mmvit_plugin  # noqa: F401
from mmvit_plugin.engine.schedules import ScheduleDoesNotFitError, fit_schedulers
from mmvit_plugin.engine.training_checks import (
    NonFiniteLossError,
    TooLittleDataError,
    check_every_rank_has_batches,
)

pytestmark = pytest.mark.usefixtures('single_thread')

LR = 1e-3
# the quickstart schedule: warm-up over half an epoch from 1%, then cosine
QUICKSTART_SCHEDULE = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=0.5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True, begin=0.5, end=4,
         convert_to_iter_based=True),
]


class Images(Dataset):
    metainfo = dict(classes=('0', '1', '2'))

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        from mmpretrain.structures import DataSample
        gen = torch.Generator().manual_seed(index)
        return dict(inputs=torch.randint(0, 255, (3, 32, 32), generator=gen).float(),
                    data_samples=DataSample().set_gt_label(index % 3))


class RecordLr(Hook):
    priority = 'LOW'

    def __init__(self) -> None:
        self.lrs = []

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.lrs.append(runner.optim_wrapper.get_lr()['lr'][0])


class PoisonWeights(Hook):
    """One NaN weight, as a checkpoint with one NaN weight would leave the model."""

    def before_train(self, runner) -> None:
        with torch.no_grad():
            runner.model.head.fc.weight[0, 0] = float('nan')


def runner_for(tmp_path, size: int, batch: int, loop: str = 'CheckedEpochBasedTrainLoop',
               epochs: int = 4, schedule=QUICKSTART_SCHEDULE, hooks=(), drop_last=False,
               clip_grad=None) -> Runner:
    optim = dict(optimizer=dict(type='AdamW', lr=LR))
    if clip_grad:
        optim['clip_grad'] = clip_grad
    return Runner(
        model=model_cfg(video=False), work_dir=str(tmp_path / 'work'),
        default_scope='mmpretrain',
        train_dataloader=dict(dataset=Images(size), batch_size=batch, num_workers=0,
                              drop_last=drop_last,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(type=loop, max_epochs=epochs), optim_wrapper=optim,
        param_scheduler=[dict(s, end=epochs) if s['type'].startswith('Cosine') else dict(s)
                         for s in schedule],
        default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook', interval=1),
                           logger=dict(type='LoggerHook', interval=1),
                           finite_check=dict(type='NonFiniteCheckHook')),
        custom_hooks=list(hooks), log_level='WARNING', randomness=dict(seed=0),
        experiment_name=f'checks_{uuid.uuid4().hex[:12]}')


@pytest.mark.parametrize('size,batch', [(3, 4), (5, 4), (256, 128)],
                         ids=['0-iteration-warmup', '1-iteration-warmup', 'quickstart-shape'])
def test_warmup_reaches_the_peak_lr_on_any_dataset_size(tmp_path, size, batch):
    record = RecordLr()
    runner = runner_for(tmp_path, size, batch, hooks=[record])
    runner.train()
    assert max(record.lrs) == pytest.approx(LR, rel=1e-6), record.lrs
    assert record.lrs[0] == pytest.approx(0.01 * LR)


def test_stock_loop_breaks_on_those_sizes(tmp_path):
    """What the checked loop fixes: mmengine's own conversion on the same schedule."""
    with pytest.raises(ValueError, match='end should be larger than begin'):
        runner_for(tmp_path, 3, 4, loop='EpochBasedTrainLoop', epochs=2).train()
    record = RecordLr()
    runner_for(tmp_path, 5, 4, loop='EpochBasedTrainLoop', epochs=2, hooks=[record]).train()
    assert max(record.lrs) < 0.02 * LR  # stuck at 1% of the learning rate for the whole run


def test_fit_schedulers_keeps_mmengine_conversion_on_large_data():
    fitted = fit_schedulers(QUICKSTART_SCHEDULE, epoch_length=391, max_epochs=4)
    assert [(s['begin'], s['end']) for s in fitted] == [(0, 195), (195, 1564)]
    assert all(s['by_epoch'] is False and 'convert_to_iter_based' not in s for s in fitted)
    # T_max given in epochs follows its (stretched) phase
    video = [dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=0.3,
                  convert_to_iter_based=True),
             dict(type='CosineAnnealingLR', T_max=2.7, by_epoch=True, begin=0.3, end=3,
                  convert_to_iter_based=True)]
    fitted = fit_schedulers(video, epoch_length=3, max_epochs=3)
    assert [(s['begin'], s['end'], s.get('T_max')) for s in fitted] == [(0, 2, None),
                                                                         (2, 9, 7)]


def test_a_schedule_that_cannot_fit_names_the_sizes(tmp_path):
    with pytest.raises(ScheduleDoesNotFitError) as err:
        runner_for(tmp_path, 3, 4, epochs=1).train()  # 1 iteration in all: no 2-step warm-up
    message = str(err.value)
    assert 'of 3 samples' in message and 'batch size 4' in message
    assert 'the warm-up LinearLR (epochs 0-0.5) needs at least 2 iterations' in message
    assert 'smaller train_dataloader.batch_size' in message


def test_dataset_smaller_than_a_batch_with_drop_last_is_named(tmp_path):
    with pytest.raises(TooLittleDataError) as err:
        runner_for(tmp_path, 3, 4, drop_last=True).train()
    assert 'of 3 samples, batch size 4 per rank, 1 rank(s), drop_last=True' in str(err.value)


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from mmengine.dataset import DefaultSampler
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    dataset = Images(1)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, sampler=DefaultSampler(dataset, shuffle=False, round_up=False))
    try:
        check_every_rank_has_batches(loader)
        message = 'no error'
    except TooLittleDataError as err:
        message = str(err)
    with open(os.path.join(out, f'rank{rank}.txt'), 'w') as f:
        f.write(message)
    dist.destroy_process_group()


def test_a_rank_without_data_stops_every_rank_with_the_sizes(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank_main, args=(2, port, str(tmp_path)), nprocs=2, join=True,
                       start_method='fork')
    for rank in (0, 1):  # both ranks stop with the message: none waits for the other
        message = (tmp_path / f'rank{rank}.txt').read_text()
        assert 'of 1 samples' in message and '2 rank(s)' in message, message
        assert 'sampler round_up=False' in message


@pytest.mark.parametrize('clip', [False, True], ids=['loss', 'grad-norm-clipped'])
def test_nan_loss_stops_training_before_any_checkpoint(tmp_path, clip):
    runner = runner_for(tmp_path, 8, 4, hooks=[PoisonWeights()],
                        clip_grad=dict(max_norm=1.0) if clip else None)
    with pytest.raises(NonFiniteLossError) as err:
        runner.train()
    message = str(err.value)
    assert 'at iteration 1 (epoch 1, batch 1 of 2)' in message
    assert 'Lower the learning rate' in message and 'NaN/Inf' in message
    assert not [n for n in os.listdir(tmp_path / 'work') if n.endswith('.pth')]
