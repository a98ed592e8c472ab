"""Runner hooks for MViTv2 checkpoints, registered in mmpretrain's and mmaction2's HOOKS.

- ``CheckpointFormatHook`` lets ``load_from`` (and so ``tools/test.py CONFIG CKPT``) take any
  supported format: it converts the checkpoint mmengine has just read (``weights_only``) into
  the model's key layout, interpolating relative-position tables to the model's input size.
  It also refuses, before anything is unpickled, a ``load_from``/``resume`` file that needs
  globals outside the weights-only allowlist, naming them.
- ``WeightInflationHook`` initialises a video model from 2D (image) weights when training
  starts, unless the runner already resumed or loaded weights (``load_from``).
- ``EpochSeedHook`` seeds every epoch from (seed, epoch, rank), so a resumed run replays an
  uninterrupted one; ``TestProgressHook`` draws a progress bar over the test set.
"""
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import get_rank

from mmengine.hooks import Hook
from mmengine.runner import find_latest_checkpoint
from mmengine.utils import ProgressBar

from ..checkpoint.inflate import DEFAULT_INFLATION, INFLATION_METHODS
from ..checkpoint.load import convert_checkpoint_for_model, inflate_into_model
from ..checkpoint.safe_load import check_last_checkpoint
from ..registry import register_hook


def _file_the_runner_will_load(runner) -> Optional[str]:
    """The checkpoint ``Runner.load_or_resume`` is about to read, if any (same rules)."""
    if getattr(runner, '_has_loaded', False):
        return None
    load_from, resume = runner._load_from, runner._resume
    if resume and load_from is None:
        return find_latest_checkpoint(runner.work_dir)
    return load_from


@register_hook
class CheckpointFormatHook(Hook):
    """Make the runner's ``load_from`` accept every MViTv2 checkpoint format.

    Add ``custom_hooks = [dict(type='CheckpointFormatHook')]`` to a config. Resumed
    checkpoints (the runner's own) fit the model already and pass through unchanged.

    Args:
        inflate: 'center' or 'average' to inflate a 2D ``load_from`` file into a 3D model;
            None (default) refuses such a file with a clear error.
    """
    priority = 'VERY_HIGH'

    def __init__(self, inflate: Optional[str] = None) -> None:
        if inflate is not None and inflate not in INFLATION_METHODS:
            raise ValueError(f'CheckpointFormatHook inflate must be one of {INFLATION_METHODS} '
                             f'or None, got {inflate!r}')
        self.inflate = inflate

    def before_run(self, runner) -> None:
        # load_from and resume files are checked by the safe reader mmengine now calls
        # (safe_load.register_mmengine_loaders); only the work dir's last_checkpoint
        # record is known here, so an empty or relative one is named before resuming.
        if not getattr(runner, '_has_loaded', False) and runner._resume and \
                runner._load_from is None:
            check_last_checkpoint(runner.work_dir)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        convert_checkpoint_for_model(checkpoint, runner.model, inflate=self.inflate,
                                     source=str(runner._load_from or 'checkpoint'),
                                     logger=runner.logger)


@register_hook
class WeightInflationHook(Hook):
    """Initialise a video MViTv2 from image weights when training starts.

    Runs after the runner's own loading (``before_train`` follows ``load_or_resume``), and
    does nothing when the runner resumed or loaded ``load_from`` weights, so it never
    overwrites them. The head is kept when the class counts match. Every key is logged.

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
        if runner._has_loaded:
            runner.logger.info(
                'WeightInflationHook: skipped, the runner already '
                f'{"resumed" if runner._resume else "loaded"} weights '
                f'({runner._load_from or "latest checkpoint"}); they are kept')
            return
        inflate_into_model(runner.model, self.checkpoint, self.method, self.trusted,
                           logger=runner.logger)
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
    """Seed python, numpy and torch at the start of every training epoch.

    The seed depends only on the runner's seed, the epoch and the rank, so a run resumed from
    an epoch checkpoint draws exactly the random numbers (shuffling, augmentation, drop path,
    mixup, dataloader worker seeds) an uninterrupted run draws from that epoch on. Worker
    processes that persist across epochs keep their own generators: for an exact replay use
    ``persistent_workers=False`` or ``num_workers=0``.
    """
    priority = 'VERY_HIGH'

    def before_train_epoch(self, runner) -> None:
        base_seed = runner.seed if runner.seed is not None else 0
        seed_everything(epoch_seed(base_seed, runner.epoch, get_rank()))


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
