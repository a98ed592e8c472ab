"""Glue between the command-line tools and mmengine's Runner, for machines with or without a GPU.

- ``--launcher pytorch|slurm|mpi`` calls ``torch.cuda.set_device`` and wraps the model in DDP with
  ``device_ids=[LOCAL_RANK]``: without a GPU we start a gloo process group ourselves and wrap
  with ``device_ids=None`` (the Runner then skips its own ``init_dist``).
- ``persistent_workers=True`` is forced on every dataloader, which torch rejects when
  ``num_workers=0``; ``pin_memory`` only helps with a GPU.
- ``AmpOptimWrapper`` asserts a GPU: ``--amp`` on the CPU switches to
  ``CPUAutocastOptimWrapper`` (bfloat16 autocast, see ``optim``).
"""
import argparse
import datetime
import logging
import os
import subprocess
import sys
from typing import Dict, Mapping, Optional

import torch
import torch.distributed as torch_dist
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.optim import OptimWrapper

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


def mpi_to_torch_env(mpi_env: Mapping[str, str], default_port: str = '29500') -> Dict[str, str]:
    """The ``env://`` variables for one Open MPI process (``mpirun``); MASTER_ADDR must be set
    (``mpirun -x MASTER_ADDR=host``), as mmengine's own mpi launcher requires."""
    try:
        rank = int(mpi_env['OMPI_COMM_WORLD_RANK'])
        world_size = int(mpi_env['OMPI_COMM_WORLD_SIZE'])
    except KeyError as err:
        raise RuntimeError(f'--launcher mpi: environment variable {err.args[0]} is not set; '
                           'start the job with mpirun (Open MPI)') from None
    if 'MASTER_ADDR' not in mpi_env:
        raise RuntimeError('--launcher mpi: set MASTER_ADDR to the first host '
                           '(mpirun -x MASTER_ADDR=<host> ...)')
    return dict(RANK=str(rank), WORLD_SIZE=str(world_size),
                LOCAL_RANK=mpi_env.get('OMPI_COMM_WORLD_LOCAL_RANK', '0'),
                MASTER_ADDR=mpi_env['MASTER_ADDR'],
                MASTER_PORT=mpi_env.get('MASTER_PORT', default_port))


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
    elif launcher == 'mpi':
        os.environ.update(mpi_to_torch_env(os.environ))
    elif launcher != 'pytorch':
        raise ValueError(f'launcher {launcher!r} is not supported without a GPU; use '
                         "'pytorch' (tools/dist_train.sh, torchrun), 'slurm' or 'mpi'")
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


_group_torn_down = False


def shutdown_distributed() -> None:
    """Wait for every rank, then tear the process group down before the interpreter exits."""
    global _group_torn_down
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()
        _group_torn_down = True


def end_distributed_process() -> None:
    """Leave a process whose process group was torn down without interpreter teardown.

    After a finished gloo run, tearing down the remaining C++ objects (DDP's reducer, gloo
    threads) occasionally aborted a rank with "terminate called without an active exception",
    failing a run whose work was complete. Everything is flushed first; tools call this last.
    """
    if not _group_torn_down:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0)


# ---------------------------------------------------------------------------------------------
# Config adjustments shared by train and test


def apply_dataloader_defaults(cfg: Config, persistent_workers: bool = True) -> None:
    """Fill pin_memory / persistent_workers (and mmpretrain's collate_fn) where the config leaves
    them unset.

    persistent_workers is only turned on with worker processes (torch rejects it with
    num_workers=0), pin_memory only with a GPU.
    """
    for field in DATALOADER_FIELDS:
        loader = cfg.get(field)
        if not loader:
            continue
        if cfg.get('default_scope') == 'mmpretrain':  # mmaction2 needs the Runner's pseudo_collate
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


# ---------------------------------------------------------------------------------------------
# Command-line arguments every runner tool shares


def add_runner_arguments(parser: argparse.ArgumentParser, cfg_options_example: str) -> None:
    """``--verbose``, ``--cfg-options``, ``--launcher`` and the hidden ``--local-rank``."""
    parser.add_argument('--verbose', action='store_true',
                        help='print the full config, hook order and per-parameter optimizer '
                        'settings on the console (always in the log file)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help=f'override config entries, e.g. {cfg_options_example}')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none',
                        help='job launcher (set by dist_*.sh / slurm_*.sh)')
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)


def parse_runner_arguments(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, and export ``--local-rank`` as ``LOCAL_RANK`` unless the launcher set it."""
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def load_config(path: str, cfg_options: Optional[dict], work_dir: Optional[str]) -> Config:
    """``path`` with ``--cfg-options`` merged and the work dir set (default:
    ``./work_dirs/<config name>``)."""
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir:
        cfg.work_dir = work_dir
    elif not cfg.get('work_dir'):
        cfg.work_dir = os.path.join('./work_dirs',
                                    os.path.splitext(os.path.basename(path))[0])
    return cfg
