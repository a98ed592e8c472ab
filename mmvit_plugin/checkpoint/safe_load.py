"""Reading checkpoint files without running code from them, for the plugin and for mmengine.

:func:`load_checkpoint_file` is the one reader. It refuses, before anything is unpickled, a path
that is not a regular file (``/dev/zero``, a FIFO, a folder), an empty file and a file whose first
bytes are neither a zip archive (``torch.save``) nor a legacy pickle checkpoint. It then lists
the globals the file's pickles name (read statically, nothing is run) and refuses any outside
the allowlist, and only then calls ``torch.load`` with an explicit ``weights_only=True``, which
torch's ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` does not override (it only changes calls that leave
``weights_only`` unset). Loaded numpy arrays must be numeric.

mmengine's own training checkpoints need a few more globals than torch allows by default (the
message hub's ``HistoryBuffer``, numpy arrays, dtypes and scalars, and ``getattr`` to find
HistoryBuffer's statistics methods); ``register_mmengine_safe_globals`` allows exactly those.
``register_mmengine_loaders`` makes this reader mmengine's loader for local paths, so the
runner's ``load_from`` and resume, ``mmengine.runner.load_checkpoint``, mmaction2's
``init_recognizer`` and mmpretrain's ``get_model(pretrained=...)`` all read through it; the
remote loaders mmengine has (https, open-mmlab://, torchvision://, s3, ...) are wrapped so that
their own ``torch.load`` is weights-only too.

Full unpickling is only ever explicit: ``trusted=True`` here, or, for files that mmengine reads,
naming them in the ``MMVIT_TRUSTED_CHECKPOINTS`` environment variable (absolute paths separated
by ``os.pathsep``) or within ``with trusted_checkpoints(path_or_url): ...``. torch's own
environment variables never imply trust.
"""
import _compat_pickle
import contextlib
import io
import os
import pickle
import pickletools
import re
import stat
import warnings
import zipfile
from collections import deque
from typing import Any, Callable, Iterator, List, Optional, Set, Tuple, Union

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

PathLike = Union[str, os.PathLike]

TRUSTED_ENV = 'MMVIT_TRUSTED_CHECKPOINTS'
ZIP_MAGIC = b'PK\x03\x04'
# A legacy (non-zip) torch.save file starts with this number pickled (any protocol >= 2).
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
# magic number, protocol version, sys info, the object, the storage keys; raw bytes follow.
LEGACY_PICKLES = 5
HEADER_BYTES = 64
NUMERIC_KINDS = 'biufc'  # bool, signed, unsigned, float, complex

# HistoryBuffer pickles its statistics methods (HistoryBuffer.min, ...) as
# getattr(HistoryBuffer, 'min'). A general getattr would let a file reach arbitrary attributes
# (e.g. builtins' __dict__), so the allowlisted getattr only hands out these.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')

# What torch's weights-only unpickler says when a file needs more than plain weights (as
# opposed to a damaged file); our restricted getattr says "refusing getattr".
_UNSAFE_REASONS = re.compile(
    r'not an allowed global|is blocked|Can only (build|create new object)|'
    r'unrecognized function|refusing getattr|Unsupported global|Unsupported operand')

_trusted_in_context: List[str] = []


class UnsafeCheckpointError(RuntimeError, pickle.UnpicklingError):
    """The file needs Python objects outside the weights-only allowlist.

    Also a ``pickle.UnpicklingError``: what ``torch.load(weights_only=True)`` raises, and so
    what callers of mmengine's loader caught before this reader replaced it.
    """


class CheckpointReadError(RuntimeError):
    """The file is missing, is not a PyTorch checkpoint, or is damaged."""


class CheckpointNotFoundError(CheckpointReadError, FileNotFoundError):
    """No file at the path (also a FileNotFoundError, which mmengine's callers expect)."""


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
    """The globals an mmengine 0.10 training checkpoint needs beyond torch's defaults.

    ``numpy.ndarray`` and ``numpy.dtype`` can build any dtype, so the reader also checks that
    every loaded array, dtype and scalar is numeric (``NUMERIC_KINDS``).
    """
    return [HistoryBuffer, (history_buffer_getattr, 'builtins.getattr')] + _numpy_globals()


def register_mmengine_safe_globals() -> None:
    """Allow mmengine's checkpoint globals for every ``weights_only`` load in this process."""
    torch.serialization.add_safe_globals(mmengine_safe_globals())


# ----------------------------------------------------------------------------- trust


@contextlib.contextmanager
def trusted_checkpoints(*paths: PathLike) -> Iterator[None]:
    """Within the block, files at ``paths`` are fully unpickled when mmengine reads them."""
    added = [os.fspath(p) if '://' in os.fspath(p) else
             os.path.realpath(os.path.expanduser(os.fspath(p))) for p in paths]
    _trusted_in_context.extend(added)
    try:
        yield
    finally:
        for path in added:
            _trusted_in_context.remove(path)


def is_trusted_checkpoint(path: PathLike) -> bool:
    """Whether the user trusts ``path`` (MMVIT_TRUSTED_CHECKPOINTS or trusted_checkpoints).

    The variable lists absolute file paths; a URL (``https://...``, ``open-mmlab://...``) can
    only be trusted with ``trusted_checkpoints(url)``, matched exactly.
    """
    path = os.fspath(path)
    if '://' in path:
        return path in _trusted_in_context
    entries = [e for e in os.environ.get(TRUSTED_ENV, '').split(os.pathsep) if e]
    relative = [e for e in entries if not os.path.isabs(os.path.expanduser(e))]
    if relative:
        raise ValueError(f'{TRUSTED_ENV}: {relative[0]!r} is not an absolute path; list the '
                         f'trusted checkpoint files by absolute path, separated by '
                         f'{os.pathsep!r}')
    trusted = {os.path.realpath(os.path.expanduser(e)) for e in entries}
    trusted.update(_trusted_in_context)
    return os.path.realpath(path) in trusted


# ----------------------------------------------------------------------------- file checks


def _describe_size(path: str) -> str:
    try:
        return f'{os.path.getsize(path)} bytes'
    except OSError:
        return 'size unknown'


def _damaged(path: str, what: str) -> CheckpointReadError:
    return CheckpointReadError(
        f'{path}: damaged or truncated checkpoint ({what}; the file has '
        f'{_describe_size(path)}). A save that was interrupted, or a copy that did not finish, '
        'leaves such a file: use an earlier checkpoint or copy/save it again.')


def checkpoint_file_kind(path: PathLike) -> str:
    """'zip' or 'legacy' for a file that can be a torch.save checkpoint; raise otherwise.

    Reads at most the first ``HEADER_BYTES`` bytes, and only from a regular file, so a device
    (``/dev/zero``), a FIFO or a folder is refused without being read.

    Raises:
        CheckpointNotFoundError: nothing at ``path``.
        CheckpointReadError: not a regular file, empty, or not a PyTorch checkpoint.
    """
    path = os.fspath(path)
    if not path:
        raise CheckpointNotFoundError(
            'checkpoint path is empty (for --resume / resume=True: the work dir\'s '
            'last_checkpoint file is empty; write the absolute path of a checkpoint into it, '
            'or delete it to start afresh)')
    try:
        info = os.stat(path)
    except FileNotFoundError:
        where = '' if os.path.isabs(path) else f' (relative to the current folder {os.getcwd()})'
        raise CheckpointNotFoundError(f'checkpoint file not found: {path}{where}') from None
    except OSError as err:
        raise CheckpointReadError(f'{path}: cannot read the checkpoint ({err})') from None
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointReadError(f'{path}: is a folder, not a checkpoint file; give the path '
                                  'of a .pth file inside it')
    if not stat.S_ISREG(info.st_mode):
        kind = ('a character device' if stat.S_ISCHR(info.st_mode) else
                'a block device' if stat.S_ISBLK(info.st_mode) else
                'a FIFO (named pipe)' if stat.S_ISFIFO(info.st_mode) else
                'a socket' if stat.S_ISSOCK(info.st_mode) else 'not a regular file')
        raise CheckpointReadError(f'{path}: is {kind}, not a checkpoint file; checkpoints are '
                                  'read only from regular files')
    if info.st_size == 0:
        raise CheckpointReadError(f'{path}: the file is empty (0 bytes), not a checkpoint; a '
                                  'save that was interrupted leaves such a file: use an earlier '
                                  'checkpoint')
    try:
        with open(path, 'rb') as f:
            head = f.read(HEADER_BYTES)
    except OSError as err:
        raise CheckpointReadError(f'{path}: cannot read the checkpoint ({err})') from None
    if head.startswith(ZIP_MAGIC):
        return 'zip'
    if _is_legacy_header(head):
        return 'legacy'
    raise CheckpointReadError(
        f'{path}: not a PyTorch checkpoint: it is neither a zip archive (what torch.save '
        f'writes) nor a legacy torch.save file (first bytes: {head[:16]!r}; '
        f'{_describe_size(path)}). Check that the path names a .pth/.pyth/.pt weights file.')


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError('a legacy checkpoint header names no globals')


def _is_legacy_header(head: bytes) -> bool:
    """Whether ``head`` starts with the pickled magic number of a legacy torch.save file."""
    if len(head) < 3 or head[0] != pickle.PROTO[0] or not 2 <= head[1] <= 5:
        return False
    try:
        return _NoGlobals(io.BytesIO(head)).load() == LEGACY_MAGIC_NUMBER
    except Exception:  # any malformed header means "not a legacy checkpoint"
        return False


# ----------------------------------------------------------------------------- static scan


def _global_name(module: str, name: str) -> str:
    # Files written under Python 2 name e.g. __builtin__; torch maps them the same way.
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f'{module}.{name}'


def _pickle_globals(stream) -> Set[str]:
    """The globals one pickle in ``stream`` names, read with pickletools (nothing is run).

    torch's weights-only unpickler does not run STACK_GLOBAL (protocol 4), so a name reached
    that way is reported as such and never counts as allowed.
    """
    found: Set[str] = set()
    strings: List[Optional[str]] = []
    for opcode, arg, _ in pickletools.genops(stream):
        if opcode.name in ('GLOBAL', 'INST'):
            found.add(_global_name(*arg.split(' ', 1)))
        elif opcode.name == 'STACK_GLOBAL':
            named = (f'{strings[-2]}.{strings[-1]}' if len(strings) >= 2 and
                     None not in strings[-2:] else 'a computed name')
            found.add(f'{named} (via STACK_GLOBAL)')
        elif 'UNICODE' in opcode.name or 'STRING' in opcode.name:
            strings.append(arg if isinstance(arg, str) else None)
        elif opcode.name.endswith('GET'):
            strings.append(None)
    return found


def _allowed_globals() -> Set[str]:
    # torch keeps its default allowlist private; get_safe_globals() only lists user additions.
    from torch import _weights_only_unpickler as wou
    return set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())


def _globals_in_file(path: str, kind: str) -> Set[str]:
    """Every global the checkpoint's pickles name. Raises CheckpointReadError when damaged."""
    try:
        if kind == 'zip':
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if any(n.endswith('constants.pkl') or '/code/' in n for n in names):
                    raise CheckpointReadError(
                        f'{path}: is a TorchScript archive (torch.jit.save), not a checkpoint '
                        'of weights; load it with torch.jit.load, or export its state_dict')
                pickles = [n for n in names if n.endswith('.pkl')]
                if not any(n.endswith('data.pkl') for n in pickles):
                    raise CheckpointReadError(
                        f'{path}: a zip archive without data.pkl: not a PyTorch checkpoint')
                found: Set[str] = set()
                for name in pickles:
                    found |= _pickle_globals(io.BytesIO(archive.read(name)))
                return found
        found = set()
        with open(path, 'rb') as f:
            for _ in range(LEGACY_PICKLES):
                found |= _pickle_globals(f)
        return found
    except CheckpointReadError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, pickle.UnpicklingError,
            UnicodeDecodeError, IndexError, KeyError) as err:
        raise _damaged(path, f'{type(err).__name__}: {err}') from None


def unsafe_globals_in_file(path: PathLike) -> List[str]:
    """Globals a checkpoint (zip or legacy) would need beyond the allowlist, read statically.

    Raises:
        CheckpointReadError: the file is missing, not a checkpoint, or damaged.
    """
    path = os.fspath(path)
    return sorted(_globals_in_file(path, checkpoint_file_kind(path)) - _allowed_globals())


# ----------------------------------------------------------------------------- after loading


def _non_numeric_numpy(obj: Any) -> Optional[Tuple[str, str]]:
    """(location, dtype) of the first non-numeric numpy array, dtype or scalar in ``obj``."""
    stack = [('', obj)]
    seen: Set[int] = set()
    while stack:
        where, item = stack.pop()
        if id(item) in seen or isinstance(item, (torch.Tensor, str, bytes, int, float, complex,
                                                 type, type(None))):
            continue
        seen.add(id(item))
        dtype = item.dtype if isinstance(item, (np.ndarray, np.generic)) else item
        if isinstance(dtype, np.dtype):
            if dtype.kind not in NUMERIC_KINDS:
                return where or '<top level>', str(dtype)
            continue
        if isinstance(item, dict):
            stack += [(f'{where}[{k!r}]', v) for k, v in item.items()]
            stack += [(f'{where}<key {k!r}>', k) for k in item]
        elif isinstance(item, (list, tuple, set, frozenset, deque)):
            stack += [(f'{where}[{i}]', v) for i, v in enumerate(item)]
        elif hasattr(item, '__dict__'):
            stack += [(f'{where}.{k}', v) for k, v in vars(item).items()]
    return None


# ----------------------------------------------------------------------------- reading


def _trust_advice() -> str:
    return ('Unpickling them could run code from the file. If you trust where the file comes '
            'from, load it with trusted=True (API, init_cfg, WeightInflationHook), '
            '--trust-checkpoint (tools/convert_checkpoint.py), or for the runner '
            f'(load_from / resume / tools) list its absolute path in {TRUSTED_ENV}; best '
            'convert it once into a plain file with tools/convert_checkpoint.py '
            '--trust-checkpoint.')


def _unpickler_reason(err: Exception) -> str:
    """The weights-only unpickler's own words, without torch's generic advice around them."""
    text = str(err)
    marker = 'WeightsUnpickler error:'
    if marker in text:
        text = text.split(marker, 1)[1]
    elif text.startswith('Weights only load failed.'):
        text = text[len('Weights only load failed.'):]
    text = text.split('Check the documentation of torch.load', 1)[0]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _full_load(path: str, map_location: Any) -> Any:
    warnings.warn(f'{path}: loading with full unpickling because it is trusted; this runs any '
                  'code the file contains')
    return torch.load(path, map_location=map_location, weights_only=False)


def load_checkpoint_file(path: PathLike, map_location: Any = 'cpu',
                         trusted: bool = False) -> Any:
    """Read a checkpoint with ``weights_only=True``; full unpickling only when ``trusted``.

    Raises:
        CheckpointNotFoundError: nothing at ``path``.
        CheckpointReadError: not a regular file, empty, not a PyTorch checkpoint, or damaged.
        UnsafeCheckpointError: the file needs non-allowlisted globals (named in the message),
            or holds non-numeric numpy arrays, and ``trusted`` is False.
    """
    path = os.fspath(path)
    kind = checkpoint_file_kind(path)
    unsafe = sorted(_globals_in_file(path, kind) - _allowed_globals())
    if unsafe:
        if trusted:
            return _full_load(path, map_location)
        raise UnsafeCheckpointError(
            f'{path}: refusing to load this checkpoint: it needs Python globals that are not '
            f'plain weights: {", ".join(unsafe)}. {_trust_advice()}')
    try:
        # Explicit weights_only=True: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD only overrides calls
        # that leave it unset (torch.serialization.load).
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if not _UNSAFE_REASONS.search(reason):
            raise _damaged(path, reason) from None
        if trusted:
            return _full_load(path, map_location)
        raise UnsafeCheckpointError(
            f'{path}: refusing to load this checkpoint: it contains Python objects that are '
            f'not plain weights ({reason}). {_trust_advice()}') from None
    except Exception as err:  # torch raises many types for a damaged file
        raise _damaged(path, f'{type(err).__name__}: {err}') from None
    bad = None if trusted else _non_numeric_numpy(obj)
    if bad:
        raise UnsafeCheckpointError(
            f'{path}: refusing to load this checkpoint: {bad[0]} is a numpy object of dtype '
            f'{bad[1]}; only numeric numpy arrays, dtypes and scalars (kinds {NUMERIC_KINDS!r}: '
            f'bool, int, uint, float, complex) are allowed. {_trust_advice()}')
    return obj


# ----------------------------------------------------------------------------- mmengine


def load_from_local_weights_only(filename: str, map_location: Any = None) -> Any:
    """mmengine's loader for local paths (scheme ''), reading through ``load_checkpoint_file``.

    mmengine logs ``Loads checkpoint by local_weights_only backend``. A file is fully unpickled
    only when the user names it (``MMVIT_TRUSTED_CHECKPOINTS`` or ``trusted_checkpoints``).
    """
    path = os.path.expanduser(filename) if filename else filename
    trusted = bool(path) and is_trusted_checkpoint(path)
    return load_checkpoint_file(path, map_location=map_location, trusted=trusted)


@contextlib.contextmanager
def _torch_weights_only_env(weights_only: bool) -> Iterator[None]:
    """Make every ``torch.load`` in the block weights-only (or not), whatever its caller says.

    For mmengine's remote loaders, which call ``torch.load`` themselves (its https loader goes
    through ``torch.hub.load_state_dict_from_url``, which passes ``weights_only=False``).
    """
    names = ('TORCH_FORCE_WEIGHTS_ONLY_LOAD', 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD')
    saved = {name: os.environ.get(name) for name in names}
    os.environ[names[0 if weights_only else 1]] = '1'
    os.environ.pop(names[1 if weights_only else 0], None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _weights_only_remote(loader: Callable) -> Callable:
    """Wrap one of mmengine's remote loaders (https, open-mmlab://, s3, ...) to load safely."""

    def load(filename: str, map_location: Any = None, *args, **kwargs) -> Any:
        trusted = is_trusted_checkpoint(filename)
        if trusted:
            warnings.warn(f'{filename}: loading with full unpickling because it is trusted; '
                          'this runs any code the file contains')
        with _torch_weights_only_env(not trusted):
            try:
                obj = loader(filename, map_location, *args, **kwargs)
            except pickle.UnpicklingError as err:
                raise UnsafeCheckpointError(
                    f'{filename}: refusing to load this checkpoint: it contains Python objects '
                    f'that are not plain weights ({_unpickler_reason(err)}). '
                    f'{_trust_advice()}') from None
        bad = None if trusted else _non_numeric_numpy(obj)
        if bad:
            raise UnsafeCheckpointError(
                f'{filename}: refusing to load this checkpoint: {bad[0]} is a numpy object of '
                f'dtype {bad[1]}; only numeric numpy arrays are allowed. {_trust_advice()}')
        return obj

    load.__name__ = loader.__name__  # mmengine logs "Loads checkpoint by <name[10:]> backend"
    load.__doc__ = loader.__doc__
    load.mmvit_weights_only = True
    return load


def register_mmengine_loaders() -> None:
    """Make mmengine read every checkpoint weights-only: local paths through
    ``load_checkpoint_file``, and its remote loaders (registered by then) wrapped so that their
    own ``torch.load`` is weights-only (see ``_torch_weights_only_env``)."""
    from mmengine.runner.checkpoint import CheckpointLoader
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        if prefix and not getattr(loader, 'mmvit_weights_only', False):
            CheckpointLoader.register_scheme(prefixes=prefix, loader=_weights_only_remote(loader),
                                             force=True)
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_weights_only,
                                     force=True)


def check_last_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``work_dir/last_checkpoint`` names (None without one), checked.

    mmengine reads the file's text as a path, relative ones from the current folder (not the
    work dir); an empty record, or a relative path that is not there, is refused with what to
    write instead.
    """
    record = os.path.join(work_dir, 'last_checkpoint')
    if not os.path.exists(record):
        return None
    with open(record) as f:
        named = f.read().strip()
    if not named:
        raise CheckpointReadError(
            f'{record} is empty: it should hold the absolute path of the checkpoint to resume '
            'from (mmengine writes it after each save). Write that path into it, or delete the '
            'file to start afresh.')
    if not os.path.isabs(named) and not os.path.lexists(named):
        candidate = os.path.join(work_dir, named)
        hint = (f'write {os.path.abspath(candidate)} into it' if os.path.isfile(candidate)
                else 'write the absolute path of the checkpoint into it')
        raise CheckpointReadError(
            f'{record} names a relative path {named!r}, which mmengine reads from the current '
            f'folder {os.getcwd()}, not from the work dir, and there is no such file there: '
            f'{hint}.')
    checkpoint_file_kind(named)
    return named
