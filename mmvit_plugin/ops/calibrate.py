"""Kernel choice from timings on the machine at hand, measured once, cached per machine and shape.

Which of two exact kernels is faster depends on the CPU and its BLAS: PyTorch's fp32 matmul (MKL)
runs at about half oneDNN's speed on an AMD EPYC but about as fast on an Intel Xeon, and whether
one batched ``bmm`` or one oneDNN product per attention item wins depends on the item size and the
core count. So the first time a shape bucket is met (eagerly, outside tracing, export,
compilation, profiling and dispatch modes), the fast paths time the candidates on random tensors
of that bucket's shape, alternating, a few times each, and keep the faster one. The choice is
stored in ``<cache dir>/kernel_choices.json`` under the machine (CPU model, PyTorch version,
thread count) and reused by every later process on that machine.

The cache dir is ``$MMVIT_CACHE_DIR`` or ``~/.cache/mmvit``. ``$MMVIT_CALIBRATE`` (or
``use_kernels(calibration=...)``, which takes precedence) is one of:

- ``on`` (default): use the cached choice, measure a missing one. A cached choice is never
  replaced silently (a resumed run must pick the kernels its first part picked, or it would not
  be bit-identical): measure again with ``force``;
- ``off``: measure nothing, use the built-in defaults (oneDNN, per-item attention for items of
  at least ``DEFAULT_MIN_ATTENTION_ENTRIES`` entries);
- ``force``: measure every bucket again once in this process and overwrite the cache.

``choose`` is the pure decision rule (timings in, name out).
"""
import contextlib
import functools
import json
import math
import os
import platform
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch

from .config import capturing_graph, kernel_settings

CALIBRATIONS = ('on', 'off', 'force')
CACHE_FILE = 'kernel_choices.json'
# Per-item oneDNN attention wins on an idle AMD EPYC down to ~20k entries per item; the built-in
# bar is higher because many small parallel regions cost more on a loaded machine.
DEFAULT_MIN_ATTENTION_ENTRIES = 200_000
# Another candidate replaces the default only when it is this much faster (timing noise).
DEFAULT_MARGIN = 0.05
REPEATS = 5
MAX_REPEATS = 25
BUDGET_S = 0.3
# Shapes are timed at reduced sizes: per-row (linear) and per-item (attention) costs are flat
# beyond these, and calibration must stay short.
MAX_ROWS = 4096
MAX_ATTENTION_ENTRIES = 4 * 2 ** 20

Key = Tuple
_lock = threading.RLock()
_memo: Dict[str, str] = {}  # key text -> choice, for this process
_forced: set = set()  # keys measured again in this process under 'force'
_file_cache: Optional[Dict[str, Dict[str, dict]]] = None


# Pure rules ---------------------------------------------------------------------------------------

def choose(timings: Mapping[str, Sequence[float]], default: str,
           margin: float = DEFAULT_MARGIN) -> str:
    """The candidate to use given its measured seconds per run.

    Each candidate is judged by its fastest run (load only ever adds time). The default stays
    unless another candidate's best run is faster by more than ``margin`` (a fraction).
    """
    if default not in timings:
        raise ValueError(f'choose: the default {default!r} was not timed; got {sorted(timings)}')
    best = {name: min(times) for name, times in timings.items() if times}
    if default not in best:
        raise ValueError(f'choose: no timing for the default {default!r}')
    fastest = min(best, key=best.get)
    if best[fastest] < best[default] * (1.0 - margin):
        return fastest
    return default


def bucket(n: int, cap: int) -> int:
    """``n`` rounded up to a power of two, at most ``cap`` (the size that is timed)."""
    if n < 1:
        raise ValueError(f'bucket: expected a positive size, got {n}')
    return min(1 << (n - 1).bit_length(), cap)


def attention_items(batch_heads: int, num_q: int, num_k: int) -> int:
    """How many attention items are timed: the bucket of ``batch_heads``, capped so that all
    items together hold at most ``MAX_ATTENTION_ENTRIES`` entries."""
    cap = 1 << max(0, int(math.log2(max(1, MAX_ATTENTION_ENTRIES // (num_q * num_k)))))
    return bucket(batch_heads, cap)


def calibration_mode() -> str:
    """'on', 'off' or 'force': ``use_kernels(calibration=...)``, else ``$MMVIT_CALIBRATE``."""
    mode = kernel_settings().calibration or os.environ.get('MMVIT_CALIBRATE', 'on')
    mode = mode.strip().lower()
    if mode in ('1', 'true', 'yes'):
        mode = 'on'
    elif mode in ('0', 'false', 'no', ''):
        mode = 'off'
    if mode not in CALIBRATIONS:
        raise ValueError(f'MMVIT_CALIBRATE / use_kernels(calibration=...) is {mode!r}; '
                         f'choose one of {CALIBRATIONS}')
    return mode


def cache_path() -> Path:
    """``$MMVIT_CACHE_DIR/kernel_choices.json``, else ``~/.cache/mmvit/kernel_choices.json``."""
    root = os.environ.get('MMVIT_CACHE_DIR') or os.path.join(os.path.expanduser('~'), '.cache',
                                                             'mmvit')
    return Path(root) / CACHE_FILE


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine() or 'unknown CPU'


def machine_id() -> str:
    """What a cached choice is valid for: CPU model, PyTorch version, intra-op threads."""
    return f'{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads'


def key_text(key: Key) -> str:
    return ':'.join(str(part) for part in key)


# When measuring is allowed -----------------------------------------------------------------------

def _dispatch_mode_active() -> bool:
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode
    except ImportError:
        return False
    return _get_current_dispatch_mode() is not None


def _profiling() -> bool:
    try:
        return bool(torch._C._autograd._profiler_enabled())
    except AttributeError:
        return False


def measuring_allowed(*tensors: torch.Tensor) -> bool:
    """Whether timing may run now: eager mode on plain tensors, nothing recording the ops (a
    tracer, exporter, compiler, the profiler or a dispatch mode such as a FLOP counter)."""
    if capturing_graph() or _dispatch_mode_active() or _profiling():
        return False
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)


# The cache file ---------------------------------------------------------------------------------

def _read_file() -> Dict[str, Dict[str, dict]]:
    path = cache_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached(machine: str, text: str) -> Optional[dict]:
    global _file_cache
    if _file_cache is None:
        _file_cache = _read_file()
    entry = _file_cache.get(machine, {}).get(text)
    return entry if isinstance(entry, dict) and isinstance(entry.get('choice'), str) else None


def _store(machine: str, text: str, entry: dict) -> None:
    """Merge one entry into the cache file (re-read first: other processes may have written)."""
    global _file_cache
    data = _read_file()
    data.setdefault(machine, {})[text] = entry
    _file_cache = data
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:  # a read-only home: the choice still holds for this process
        pass


def forget() -> None:
    """Drop this process's memory of choices (the file stays); the next use reads it again."""
    global _file_cache
    with _lock:
        _memo.clear()
        _forced.clear()
        _file_cache = None


def cached_choices() -> Dict[str, dict]:
    """This machine's cached entries (key -> choice and timings), as stored in the file."""
    return dict(_read_file().get(machine_id(), {}))


# Measuring -------------------------------------------------------------------------------------

def time_candidates(candidates: Mapping[str, Callable[[], None]], repeats: int = REPEATS,
                    budget_s: float = BUDGET_S, max_repeats: int = MAX_REPEATS
                    ) -> Dict[str, list]:
    """Seconds per run of each candidate: one untimed run each, then rounds in alternating
    order (so a load change hits every candidate alike): at least ``repeats``, more while the
    rounds so far took less than ``budget_s`` (cheap shapes get more tries), at most
    ``max_repeats``."""
    names = list(candidates)
    for name in names:
        candidates[name]()
    times: Dict[str, list] = {name: [] for name in names}
    spent, rounds = 0.0, 0
    while rounds < repeats or (spent < budget_s and rounds < max_repeats):
        for name in (names if rounds % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            candidates[name]()
            elapsed = time.perf_counter() - start
            times[name].append(elapsed)
            spent += elapsed
        rounds += 1
    return times


def decide(key: Key, default: str, make_candidates: Callable[[], Mapping[str, Callable]],
           *tensors: torch.Tensor) -> str:
    """The kernel for ``key``: from this process's memory, the cache file, or a measurement.

    ``make_candidates`` builds the timed closures (on fresh tensors of the key's shape) only
    when a measurement runs. ``default`` is used when calibration is off or not allowed now.
    """
    mode = calibration_mode()
    if mode == 'off':
        return default
    text = key_text(key)
    machine = machine_id()
    memo_key = f'{machine}|{text}'
    with _lock:
        if memo_key in _memo and (mode != 'force' or memo_key in _forced):
            return _memo[memo_key]
        if mode == 'on':
            found = _cached(machine, text)
            if found is not None:
                _memo[memo_key] = found['choice']
                return found['choice']
    if not measuring_allowed(*tensors):
        return default
    with _lock:
        # Timing runs on private random tensors: the global RNG and autograd graph stay as
        # they were; grad mode is whatever the candidates set.
        candidates = make_candidates()
        timings = time_candidates(candidates)
        choice = choose(timings, default)
        entry = {'choice': choice, 'default': default,
                 'best_ms': {name: round(1e3 * min(t), 4) for name, t in timings.items()},
                 'median_ms': {name: round(1e3 * statistics.median(t), 4)
                               for name, t in timings.items()},
                 'measured': time.strftime('%Y-%m-%d %H:%M:%S'),
                 'load': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
                 'rounds': len(next(iter(timings.values())))}
        _memo[memo_key] = choice
        if mode == 'force':
            _forced.add(memo_key)
        _store(machine, text, entry)
    return choice


def random_tensor(*shape: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    """A random fp32 CPU tensor from a private generator (the global RNG is left alone)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * scale
