"""Reading checkpoint files without running code from them.

Every file is read with ``torch.load(weights_only=True)``. mmengine's own training checkpoints
need a few more globals than torch allows by default (the message hub's ``HistoryBuffer``, numpy
arrays, dtypes and scalars, and ``getattr`` to find HistoryBuffer's statistics methods);
``register_mmengine_safe_globals`` allows exactly those, so ``--resume`` works under
torch >= 2.6 without ``weights_only=False``. Files that need anything else are refused with
:class:`UnsafeCheckpointError` unless the caller opts in with ``trusted=True``.
"""
import os
import pickle
import warnings
import zipfile
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

PathLike = Union[str, os.PathLike]

# HistoryBuffer pickles its statistics methods (HistoryBuffer.min, ...) as
# getattr(HistoryBuffer, 'min'). A general getattr would let a file reach arbitrary attributes
# (e.g. builtins' __dict__), so the allowlisted getattr only hands out these.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


class UnsafeCheckpointError(RuntimeError):
    """The file needs Python objects outside the weights-only allowlist."""


class CheckpointReadError(RuntimeError):
    """The file is missing or is not a PyTorch checkpoint."""


def history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` restricted to the statistics methods of mmengine's HistoryBuffer."""
    if obj is HistoryBuffer and name in _HISTORY_BUFFER_METHODS:
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'refusing getattr({getattr(obj, "__name__", type(obj).__name__)}, {name!r}) while '
        'unpickling: only HistoryBuffer statistics methods are allowed')


def _numpy_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    core = np._core if hasattr(np, '_core') else np.core  # numpy 2 / numpy 1
    reconstruct, scalar = core.multiarray._reconstruct, core.multiarray.scalar
    numeric_dtypes = {type(np.dtype(code)) for code in '?bBhHiIlLqQefdgFDG'}
    result: List[Union[Callable, Tuple[Callable, str]]] = [np.ndarray, np.dtype]
    result += sorted(numeric_dtypes, key=lambda cls: cls.__name__)
    # Files written under numpy 1 name numpy.core, under numpy 2 numpy._core.
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        result += [(reconstruct, f'{module}._reconstruct'), (scalar, f'{module}.scalar')]
    return result


def mmengine_safe_globals() -> List[Union[Callable, Tuple[Callable, str]]]:
    """The globals an mmengine 0.10 training checkpoint needs beyond torch's defaults."""
    return [HistoryBuffer, (history_buffer_getattr, 'builtins.getattr')] + _numpy_globals()


def register_mmengine_safe_globals() -> None:
    """Allow mmengine's checkpoint globals for every ``weights_only`` load in this process."""
    torch.serialization.add_safe_globals(mmengine_safe_globals())


def unsafe_globals_in_file(path: PathLike) -> List[str]:
    """Globals a zip-format checkpoint would need beyond the allowlist (read without loading).

    Returns an empty list for legacy (non-zip) files, which ``torch.load`` still checks.
    """
    if not zipfile.is_zipfile(path):
        return []
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(os.fspath(path)))
    except (ValueError, RuntimeError):
        return []


def _refusal_message(path: str, err: Exception) -> str:
    detail = str(err)
    for marker in ('WeightsUnpickler error:', 'Unsupported global'):
        start = detail.find(marker)
        if start >= 0:
            detail = detail[start:].split('\n')[0].strip()
            break
    return (f'{path}: refusing to load this checkpoint: it contains Python objects that are '
            f'not plain weights ({detail}). Unpickling them could run code from the file. '
            'If you trust where the file comes from, load it with trusted=True (init_cfg, '
            'WeightInflationHook) or --trust-checkpoint (tools/convert_checkpoint.py), and '
            'best convert it once into a plain file with tools/convert_checkpoint.py.')


def load_checkpoint_file(path: PathLike, map_location: Any = 'cpu',
                         trusted: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; full unpickling only when ``trusted``.

    Raises:
        CheckpointReadError: the file is missing or unreadable.
        UnsafeCheckpointError: the file needs non-allowlisted globals and ``trusted`` is False.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointReadError(f'checkpoint file not found: {path}')
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if 'Weights only load failed' not in str(err):
            raise CheckpointReadError(f'{path}: not a readable PyTorch checkpoint ({err})') \
                from err
        if not trusted:
            raise UnsafeCheckpointError(_refusal_message(path, err)) from None
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise CheckpointReadError(f'{path}: not a readable PyTorch checkpoint '
                                  f'({type(err).__name__}: {err})') from err
    warnings.warn(f'{path}: loading with full unpickling because trusted=True; this runs any '
                  'code the file contains')
    return torch.load(path, map_location=map_location, weights_only=False)
