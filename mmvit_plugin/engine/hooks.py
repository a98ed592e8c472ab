"""Runner hooks for MViTv2 checkpoints, registered in mmpretrain's and mmaction2's HOOKS.

- ``CheckpointFormatHook`` lets ``load_from`` (and so ``tools/test.py CONFIG CKPT``) take any
  supported format: it converts the checkpoint mmengine has just read (``weights_only``) into
  the model's key layout, interpolating relative-position tables to the model's input size.
  It also refuses, before anything is unpickled, a ``load_from``/``resume`` file that needs
  globals outside the weights-only allowlist, naming them.
- ``WeightInflationHook`` initialises a video model from 2D (image) weights when training
  starts, unless the runner already resumed or loaded weights (``load_from``).
- ``EpochSeedHook`` seeds every epoch from (seed, epoch, rank), dataloader workers included,
  so a resumed run replays an uninterrupted one; ``TestProgressHook`` draws a progress bar
  over the test set.

Runner internals are read through ``runner_state`` only.
"""
import random
from functools import partial
from typing import Optional

import numpy as np
import torch
from mmengine.dataset import worker_init_fn as mmengine_worker_init_fn
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.utils import ProgressBar
from torch import nn

from ..checkpoint.inflate import DEFAULT_INFLATION, INFLATION_METHODS
from ..checkpoint.load import convert_checkpoint_for_model, inflate_into_model
from ..checkpoint.safe_load import check_last_checkpoint
from ..models.mvitv2 import MViTv2
from ..registry import register_hook
from . import runner_state

_file_the_runner_will_load = runner_state.file_to_load


def mvit_model(model: nn.Module) -> Optional[nn.Module]:
    """The model whose backbone is an MViTv2 (through DDP and test-time-augmentation
    wrappers, which hold it as ``.module``), or None."""
    for _ in range(4):
        if isinstance(model, MViTv2) or isinstance(getattr(model, 'backbone', None), MViTv2):
            return model
        model = getattr(model, 'module', None)
        if model is None:
            return None
    return None


@register_hook
class CheckpointFormatHook(Hook):
    """Make the runner's ``load_from`` accept every MViTv2 checkpoint format.

    The runtime bases add it as ``default_hooks.checkpoint_format``. Resumed checkpoints (the
    runner's own) fit the model already and pass through unchanged, and so does every
    checkpoint of a model without an MViTv2 backbone (DDP and TTA wrappers are looked
    through). Image weights for a video model: use ``WeightInflationHook``, the one way to
    inflate.
    """
    priority = 'VERY_HIGH'

    def before_run(self, runner) -> None:
        # load_from and resume files are checked by the safe reader mmengine now calls
        # (safe_load.register_mmengine_loaders); only the work dir's last_checkpoint
        # record is known here, so an empty or relative one is named before resuming.
        if not getattr(runner, '_has_loaded', False) and runner._resume and \
                runner._load_from is None:
            check_last_checkpoint(runner.work_dir)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = mvit_model(runner.model)
        if model is None:
            return
        convert_checkpoint_for_model(checkpoint, model,
                                     source=str(runner_state.load_from(runner) or 'checkpoint'),
                                     logger=runner.logger)


@register_hook
class WeightInflationHook(Hook):
    """Initialise a video MViTv2 from image weights when training starts.

    Runs after the runner's own loading (``before_train`` follows ``load_or_resume``), and
    does nothing when the runner resumed or loaded ``load_from`` weights, so it never
    overwrites them. The head is kept when the class counts match. Every key is logged.
    The video recipes add it as ``default_hooks.weight_inflation``, so a command line sets
    the file with ``--cfg-options default_hooks.weight_inflation.checkpoint=PATH``.

    Args:
        checkpoint: path of the 2D checkpoint (any supported format).
        method: 'center' or 'average' inflation of the patch embedding and pooling kernels.
        trusted: allow full unpickling of a file you trust (old formats); default False.
    """
    priority = 'VERY_HIGH'

    def __init__(self, checkpoint: str, method: str = DEFAULT_INFLATION,
                 trusted: bool = False) -> None:
        if method not in INFLATION_METHODS:
            raise ValueError(f'WeightInflationHook method must be one of {INFLATION_METHODS}, '
                             f'got {method!r}')
        self.checkpoint = checkpoint
        self.method = method
        self.trusted = trusted
        self.applied = False

    def before_train(self, runner) -> None:
        if runner_state.has_loaded(runner):
            runner.logger.info(
                'WeightInflationHook: skipped, the runner already '
                f'{"resumed" if runner_state.resume_requested(runner) else "loaded"} weights '
                f'({runner_state.loaded_source(runner)}); they are kept')
            return
        inflate_into_model(mvit_model(runner.model) or runner.model, self.checkpoint, self.method,
                           self.trusted, logger=runner.logger)
        self.applied = True


def epoch_seed(base_seed: int, epoch: int, rank: int) -> int:
    """A 32-bit seed that depends only on (base_seed, epoch, rank)."""
    return int(np.random.SeedSequence([base_seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@register_hook
class EpochSeedHook(Hook):
    """Seed python, numpy and torch at the start of every training epoch, workers included.

    The seed depends only on the runner's seed, the epoch and the rank, so a run resumed from
    an epoch checkpoint draws exactly the random numbers (shuffling, augmentation, drop path,
    mixup) an uninterrupted run draws from that epoch on. The training dataloader's worker
    processes are seeded from the same epoch seed; persistent workers would carry their
    generators over from the previous epoch (which a resumed run never had), so they are
    restarted at each training epoch (validation and test workers stay).
    """
    priority = 'VERY_HIGH'

    def before_train_epoch(self, runner) -> None:
        base_seed = runner.seed if runner.seed is not None else 0
        rank = get_rank()
        seed = epoch_seed(base_seed, runner.epoch, rank)
        seed_everything(seed)
        loader = getattr(runner, 'train_dataloader', None)
        num_workers = int(getattr(loader, 'num_workers', 0) or 0)
        if num_workers > 0:
            runner_state.restart_workers_next_epoch(
                loader, partial(mmengine_worker_init_fn, num_workers=num_workers, rank=rank,
                                seed=seed))


@register_hook
class TestProgressHook(Hook):
    """A progress bar over the test set (rank 0), redrawn about ``redraws`` times."""
    priority = 'VERY_HIGH'  # finish the bar before the logger prints the metrics

    def __init__(self, redraws: int = 50) -> None:
        self.redraws = redraws
        self._bar: Optional[ProgressBar] = None
        self._pending = 0

    def before_test_epoch(self, runner) -> None:
        if get_rank() == 0:
            num_batches = len(runner.test_dataloader)
            self._bar = ProgressBar(num_batches)
            self._every = max(1, num_batches // self.redraws)
            self._pending = 0

    def after_test_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._bar is None:
            return
        self._pending += 1
        if self._pending >= self._every:
            self._bar.update(self._pending)
            self._pending = 0

    def after_test_epoch(self, runner, metrics=None) -> None:
        if self._bar is not None:
            if self._pending:
                self._bar.update(self._pending)
            self._bar.file.write('\n')
            self._bar = None
