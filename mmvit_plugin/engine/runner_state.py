"""The one place where plugin hooks read mmengine Runner (and torch DataLoader) internals.

Mirrors mmengine 0.10.x (``Runner.__init__`` / ``Runner.load_or_resume`` of 0.10.7: the private
attributes ``_load_from``, ``_resume`` and ``_has_loaded``) and torch's ``DataLoader`` (the
private ``_iterator`` that holds persistent workers, torch 2.x). When a new mmengine renames
these, this module is the only file to change; ``MIRRORED_MMENGINE`` is checked on import.
"""
import warnings
from typing import Callable, Optional

import mmengine
from mmengine.runner import find_latest_checkpoint

MIRRORED_MMENGINE = '0.10.'

if not mmengine.__version__.startswith(MIRRORED_MMENGINE):
    warnings.warn(f'mmvit_plugin.engine.runner_state mirrors mmengine {MIRRORED_MMENGINE}x, '
                  f'found {mmengine.__version__}: check that Runner still has _load_from, '
                  '_resume and _has_loaded', stacklevel=2)


def has_loaded(runner) -> bool:
    """True once the runner resumed or loaded ``load_from`` weights."""
    return bool(getattr(runner, '_has_loaded', False))


def load_from(runner) -> Optional[str]:
    """The runner's ``load_from`` (None when unset)."""
    return getattr(runner, '_load_from', None)


def resume_requested(runner) -> bool:
    return bool(getattr(runner, '_resume', False))


def file_to_load(runner) -> Optional[str]:
    """The checkpoint ``Runner.load_or_resume`` is about to read, if any (same rules)."""
    if has_loaded(runner):
        return None
    path = load_from(runner)
    if resume_requested(runner) and path is None:
        return find_latest_checkpoint(runner.work_dir)
    return path


def loaded_source(runner) -> str:
    """What the runner loaded, for messages: the file, or 'latest checkpoint'."""
    return str(load_from(runner) or 'latest checkpoint')


def restart_workers_next_epoch(loader, worker_init_fn: Optional[Callable] = None) -> None:
    """Make the next ``iter(loader)`` start fresh worker processes (seeded by ``worker_init_fn``).

    A DataLoader with ``persistent_workers=True`` keeps its workers (and their random
    generators) in ``_iterator`` across epochs; dropping it shuts them down.
    """
    if worker_init_fn is not None:
        loader.worker_init_fn = worker_init_fn
    iterator = getattr(loader, '_iterator', None)
    if iterator is not None:
        shutdown = getattr(iterator, '_shutdown_workers', None)
        if shutdown is not None:
            shutdown()
        loader._iterator = None
