"""Glue between the command-line tools and mmengine's Runner.

What mmengine/mmpretrain's stock tools get wrong on a machine without a GPU, fixed here:

- ``--launcher pytorch|slurm`` calls ``torch.cuda.set_device`` and wraps the model in DDP with
  ``device_ids=[LOCAL_RANK]``: without a GPU we start a gloo process group ourselves and wrap
  with ``device_ids=None`` (the Runner then skips its own ``init_dist``).
- ``persistent_workers=True`` is forced on every dataloader, which torch rejects when
  ``num_workers=0``; ``pin_memory`` only helps with a GPU.
- ``AmpOptimWrapper`` asserts a GPU: ``--amp`` on the CPU trains under bfloat16 autocast.
- A resumed run re-seeds its random generators from the config seed, not from where the
  interrupted run was, so it draws other augmentations: ``EpochSeedHook`` seeds every epoch
  from (seed, epoch, rank), which makes resume-after-kill reproduce an uninterrupted run.

Also here: layer-wise learning-rate decay for MViTv2 classifiers (used by fine-tuning configs).
"""
import datetime
import os
import random
import subprocess
from contextlib import contextmanager
from functools import partial
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.distributed as torch_dist
from mmengine.config import Config, ConfigDict
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS
from mmengine.runner.amp import autocast
from mmengine.utils import ProgressBar
from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor

from ..registry import register_hook

DATALOADER_FIELDS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
DEFAULT_DIST_TIMEOUT_S = 1800


def has_gpu() -> bool:
    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# Distributed start-up without a GPU


def slurm_to_torch_env(slurm_env: Mapping[str, str], master_addr: str,
                       default_port: str = '29500') -> Dict[str, str]:
    """The torch.distributed ``env://`` variables for one slurm task.

    ``master_addr`` is the first host of the job's node list (resolved by the caller because
    that needs ``scontrol``). An existing ``MASTER_PORT`` wins over ``default_port``.
    """
    try:
        rank = int(slurm_env['SLURM_PROCID'])
        world_size = int(slurm_env['SLURM_NTASKS'])
    except KeyError as err:
        raise RuntimeError(f'--launcher slurm: environment variable {err.args[0]} is not set; '
                           'start the job with srun') from None
    local_rank = int(slurm_env.get('SLURM_LOCALID', '0'))
    return dict(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank),
                MASTER_ADDR=slurm_env.get('MASTER_ADDR', master_addr),
                MASTER_PORT=slurm_env.get('MASTER_PORT', default_port))


def _first_slurm_host(node_list: str) -> str:
    output = subprocess.run(['scontrol', 'show', 'hostnames', node_list], check=True,
                            capture_output=True, text=True).stdout
    return output.split()[0]


def init_cpu_process_group(launcher: str, timeout_s: int = DEFAULT_DIST_TIMEOUT_S) -> None:
    """Start a gloo process group for a torchrun (``pytorch``) or ``slurm`` launch."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return
    if launcher == 'slurm':
        os.environ.update(
            slurm_to_torch_env(os.environ, _first_slurm_host(os.environ['SLURM_NODELIST'])))
    elif launcher != 'pytorch':
        raise ValueError(f'launcher {launcher!r} is not supported without a GPU; use '
                         "'pytorch' (tools/dist_train.sh, torchrun) or 'slurm'")
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing:
        raise RuntimeError(f'--launcher {launcher}: environment variables {missing} are not '
                           'set; start the job with tools/dist_train.sh (torchrun)')
    torch_dist.init_process_group(
        backend='gloo', init_method='env://', rank=int(os.environ['RANK']),
        world_size=int(os.environ['WORLD_SIZE']),
        timeout=datetime.timedelta(seconds=timeout_s))


def prepare_distributed(cfg: Config, launcher: str) -> None:
    """Set up ``cfg`` (and, without a GPU, the process group) for ``launcher``."""
    cfg.launcher = launcher
    if launcher == 'none' or has_gpu():
        return
    dist_cfg = cfg.get('env_cfg', {}).get('dist_cfg', {})
    init_cpu_process_group(launcher, int(dist_cfg.get('timeout', DEFAULT_DIST_TIMEOUT_S)))
    cfg.setdefault('env_cfg', ConfigDict())
    cfg.env_cfg.setdefault('dist_cfg', ConfigDict())
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    wrapper_cfg = ConfigDict(type='MMDistributedDataParallel', broadcast_buffers=False,
                             find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper_cfg.update(cfg.get('model_wrapper_cfg') or {})
    wrapper_cfg.device_ids = None  # a CPU module must not get device ids
    cfg.model_wrapper_cfg = wrapper_cfg


def shutdown_distributed() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Config adjustments shared by train and test


def apply_dataloader_defaults(cfg: Config, persistent_workers: bool = True) -> None:
    """Fill pin_memory / persistent_workers / collate_fn where the config leaves them unset.

    persistent_workers is only turned on with worker processes (torch rejects it with
    num_workers=0), pin_memory only with a GPU.
    """
    for field in DATALOADER_FIELDS:
        loader = cfg.get(field)
        if not loader:
            continue
        loader.setdefault('collate_fn', dict(type='default_collate'))
        loader.setdefault('pin_memory', has_gpu())
        has_workers = int(loader.get('num_workers', 0)) > 0
        loader.setdefault('persistent_workers', persistent_workers and has_workers)
        if not has_workers:
            loader.persistent_workers = False


def apply_resume(cfg: Config, resume: Optional[str]) -> None:
    """``None``: no resume; ``'auto'``: latest checkpoint of the work dir; else that file."""
    if resume is None:
        return
    cfg.resume = True
    cfg.load_from = None if resume == 'auto' else resume


def apply_auto_scale_lr(cfg: Config) -> None:
    if not cfg.get('auto_scale_lr') or 'base_batch_size' not in cfg.auto_scale_lr:
        raise ValueError('--auto-scale-lr needs `auto_scale_lr = dict(base_batch_size=N)` in '
                         'the config (the total batch size its learning rate was set for)')
    cfg.auto_scale_lr.enable = True


def apply_amp(cfg: Config) -> str:
    """Switch the optimizer wrapper to mixed precision; returns a line describing it."""
    optim_wrapper = cfg.optim_wrapper
    current = optim_wrapper.get('type', 'OptimWrapper')
    if current not in ('OptimWrapper', OptimWrapper, 'AmpOptimWrapper',
                       'CPUAutocastOptimWrapper'):
        raise ValueError(f'--amp: optim_wrapper.type is {current!r}; only OptimWrapper can be '
                         'switched to mixed precision')
    if has_gpu():
        optim_wrapper.type = 'AmpOptimWrapper'
        optim_wrapper.setdefault('loss_scale', 'dynamic')
        return 'mixed precision: float16 autocast with dynamic loss scaling (GPU)'
    optim_wrapper.type = 'CPUAutocastOptimWrapper'
    optim_wrapper.pop('loss_scale', None)
    return 'mixed precision: bfloat16 autocast on the CPU (no loss scaling needed)'


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """OptimWrapper whose forward runs under CPU bfloat16 autocast.

    bfloat16 has float32's exponent range, so no loss scaling is needed; parameters and
    optimizer state stay float32.
    """

    def __init__(self, *args, dtype: str = 'bfloat16', **kwargs) -> None:
        if dtype != 'bfloat16':
            raise ValueError(f'CPU autocast supports bfloat16 only, got {dtype!r}')
        super().__init__(*args, **kwargs)

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), autocast(device_type='cpu', dtype=torch.bfloat16):
            yield



# ---------------------------------------------------------------------------------------------
# Reproducible resume


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


# ---------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay


def mvit_layer_depth(param_name: str, depth: int,
                     backbone_prefix: str = 'backbone.') -> Tuple[int, int]:
    """(layer id, number of ids) of a parameter, numbered as the official fine-tuning code.

    Patch embedding and cls token are layer 0, block i is layer i + 1, and everything after
    the blocks (final norms, head) is layer depth + 1; there are depth + 2 ids.
    """
    num_ids = depth + 2
    if not param_name.startswith(backbone_prefix):
        return depth + 1, num_ids
    name = param_name[len(backbone_prefix):]
    if name.startswith(('patch_embed.', 'cls_token')):
        return 0, num_ids
    if name.startswith('blocks.'):
        return int(name.split('.')[1]) + 1, num_ids
    return depth + 1, num_ids


# Registered at mmengine's root, like CPUAutocastOptimWrapper, so every scope finds it.
@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MViTv2LayerDecayOptimWrapperConstructor(LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-wise lr decay with MViTv2's layer numbering.

    The lr of layer ``i`` is ``lr * layer_decay_rate ** (depth + 1 - i)``; the head keeps the
    full lr. Weight-decay switches (``flat_decay_mult``, ``custom_keys``...) work as in
    ``paramwise_cfg`` of mmpretrain's constructor.
    """

    def add_params(self, params: List[dict], module: torch.nn.Module, prefix: str = '',
                   get_layer_depth: Optional[Callable] = None, **kwargs) -> None:
        if get_layer_depth is None:
            backbone = getattr(module, 'backbone', module)
            if not hasattr(backbone, 'blocks'):
                raise TypeError(f'{type(self).__name__} needs an MViTv2 backbone with '
                                f'`blocks`, got {type(backbone).__name__}')
            get_layer_depth = partial(
                mvit_layer_depth, depth=len(backbone.blocks),
                backbone_prefix='backbone.' if backbone is not module else '')
        super().add_params(params, module, prefix, get_layer_depth=get_layer_depth, **kwargs)
