"""Checks that stop a training run early with a clear message instead of failing late or silently.

- ``CheckedEpochBasedTrainLoop``: mmengine's epoch loop that, once the training dataloader is
  built and before the parameter schedulers are, refuses a rank without a single batch (a
  dataset smaller than one batch with ``drop_last``, or fewer samples than ranks with
  ``round_up=False``) naming the dataset, batch and world sizes, and fits the
  ``convert_to_iter_based`` schedules to the iterations an epoch has (``schedules``).
- ``NonFiniteCheckHook``: stops on a NaN/Inf loss or gradient norm, naming the iteration.
"""
import math
from typing import Optional

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import LOOPS
from mmengine.runner import EpochBasedTrainLoop

from ..registry import register_hook
from .schedules import fit_schedulers


class TooLittleDataError(ValueError):
    """A rank would train on no batch at all."""


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm of a training step is NaN or infinite."""


def describe_loader(loader) -> str:
    """'dataset of 72 samples, batch size 128 per rank, 1 rank(s), drop_last=False'."""
    dataset = loader.dataset
    sampler = getattr(loader, 'sampler', None)
    batch_sampler = getattr(loader, 'batch_sampler', None)
    drop_last = bool(getattr(batch_sampler, 'drop_last', getattr(loader, 'drop_last', False)))
    round_up = getattr(sampler, 'round_up', None)
    words = (f'{type(dataset).__name__} of {len(dataset)} samples, batch size '
             f'{loader.batch_size} per rank, {get_world_size()} rank(s), drop_last={drop_last}')
    if round_up is not None:
        words += f', sampler round_up={round_up}'
    return words


def check_every_rank_has_batches(loader) -> None:
    """Raise the same ``TooLittleDataError`` on every rank when any rank has no batch."""
    batches = len(loader)
    fewest = torch.tensor([batches], dtype=torch.int64)
    if get_world_size() > 1:
        all_reduce(fewest, op='min')  # every rank learns it, so none waits for the others
    if int(fewest.item()) > 0:
        return
    raise TooLittleDataError(
        f'training data: a rank gets no batch ({describe_loader(loader)}; this rank has '
        f'{batches} batch(es)). Use a batch size no larger than the dataset per rank, '
        'drop_last=False, fewer processes, sampler round_up=True, or more data.')


@LOOPS.register_module()
class CheckedEpochBasedTrainLoop(EpochBasedTrainLoop):
    """``EpochBasedTrainLoop`` (same arguments) that checks the data size and fits schedules.

    Runs in ``Runner.train`` after the training dataloader is built and before the parameter
    schedulers are: so a warm-up of a fraction of an epoch becomes at least the iterations it
    needs (or training stops with a message naming the dataset and batch sizes) on a dataset
    of any size. ``by_epoch=True`` is accepted for configs that say so.
    """

    def __init__(self, runner, dataloader, max_epochs: int, by_epoch: bool = True,
                 **kwargs) -> None:
        if not by_epoch:
            raise ValueError('CheckedEpochBasedTrainLoop trains by epoch: remove by_epoch=False '
                             'or use an iteration-based loop')
        super().__init__(runner, dataloader, max_epochs, **kwargs)
        check_every_rank_has_batches(self.dataloader)
        self._fit_schedules(runner)

    def _fit_schedules(self, runner) -> None:
        schedulers = getattr(runner, 'param_schedulers', None)
        data = describe_loader(self.dataloader)

        def fit(entries):
            return fit_schedulers(entries, len(self.dataloader), self.max_epochs, data)

        if isinstance(schedulers, dict) and 'type' in schedulers:
            runner.param_schedulers = fit([schedulers])
        elif isinstance(schedulers, (list, tuple)) and all(
                isinstance(s, dict) for s in schedulers):
            runner.param_schedulers = fit(schedulers)
        elif isinstance(schedulers, dict) and all(
                isinstance(v, (list, tuple)) for v in schedulers.values()):
            runner.param_schedulers = {k: fit(v) for k, v in schedulers.items()}


def _finite(value: Optional[float]) -> bool:
    return value is None or math.isfinite(value)


@register_hook
class NonFiniteCheckHook(Hook):
    """Stop training at the first step whose loss (or clipped gradient norm) is NaN or Inf.

    Training on would turn every weight into NaN, keep going for the whole run and save
    those weights, "best" checkpoint included. Runs before any checkpoint of that iteration
    is written. Under float16 loss scaling (``AmpOptimWrapper``) an infinite gradient norm is
    normal (the step is skipped), so only the loss is checked there.
    """
    priority = 'VERY_HIGH'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = outputs.get('loss') if isinstance(outputs, dict) else None
        loss = None if loss is None else float(torch.as_tensor(loss).detach())
        grad_norm = None
        if type(runner.optim_wrapper).__name__ != 'AmpOptimWrapper':
            scalars = runner.message_hub.log_scalars
            if 'train/grad_norm' in scalars:
                grad_norm = float(scalars['train/grad_norm'].current())
        if _finite(loss) and _finite(grad_norm):
            return
        what = f'loss {loss}' if not _finite(loss) else f'gradient norm {grad_norm}'
        raise NonFiniteLossError(
            f'training stopped: {what} at iteration {runner.iter + 1} (epoch '
            f'{runner.epoch + 1}, batch {batch_idx + 1} of {len(runner.train_dataloader)}); '
            'no checkpoint was written for it. Lower the learning rate '
            '(optim_wrapper.optimizer.lr) or clip gradients (optim_wrapper.clip_grad), check '
            'the data of this batch, and check the loaded weights (load_from, '
            'WeightInflationHook checkpoint) for NaN/Inf values.')
