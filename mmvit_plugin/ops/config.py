"""Kernel settings (a frozen record changed through a context manager), graph-capture checks."""
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator, Optional

import torch


@dataclass(frozen=True)
class KernelSettings:
    """How the fast paths compute; every setting gives the same numbers up to fp32 rounding.

    Attributes:
        onednn: route fp32 CPU matrix products through oneDNN (``ops.onednn``) instead of
            PyTorch's standard ops (MKL on the CPU). None (default): per linear/MLP shape,
            whichever of the two ``ops.calibrate`` measured faster on this machine (oneDNN when
            calibration is off); True: oneDNN wherever it applies; False: never.
        min_attention_entries: attention items (one per batch element and head) with at least
            this many attention-matrix entries run as separate oneDNN products; smaller ones
            share one batched bmm. None (default): per attention shape, whichever of the two
            ``ops.calibrate`` measured faster (``calibrate.DEFAULT_MIN_ATTENTION_ENTRIES`` when
            calibration is off).
        recompute: recompute the attention probabilities, the GELU output and the pooling
            conv's output in the backward instead of storing them: less training memory (the
            attention matrices of a step are never alive together), some more compute. Off by
            default: the recomputation costs 5-15% of a training step where the matrix products
            are not much faster than PyTorch's (measured on an Intel Xeon), and memory is the
            scarcer resource only for some users; turn it on with ``use_kernels(recompute=True)``.
        calibration: 'on', 'off' or 'force' (see ``ops.calibrate``); None (default) reads
            ``$MMVIT_CALIBRATE`` (unset: 'on').
    """
    onednn: Optional[bool] = None
    min_attention_entries: Optional[int] = None
    recompute: bool = False
    calibration: Optional[str] = None

    def __post_init__(self) -> None:
        entries = self.min_attention_entries
        if entries is not None and (not isinstance(entries, int) or entries < 0):
            raise ValueError('KernelSettings.min_attention_entries must be an int >= 0 (or None: '
                             f'calibrated), got {entries!r}')
        if self.onednn not in (None, True, False):
            raise ValueError(f'KernelSettings.onednn must be None, True or False, got '
                             f'{self.onednn!r}')
        if self.calibration not in (None, 'on', 'off', 'force'):
            raise ValueError("KernelSettings.calibration must be None, 'on', 'off' or 'force', "
                             f'got {self.calibration!r}')


_current = KernelSettings()


def kernel_settings() -> KernelSettings:
    """The settings in force now."""
    return _current


@contextlib.contextmanager
def use_kernels(**changes) -> Iterator[KernelSettings]:
    """Change kernel settings inside a ``with`` block; the previous ones come back after it.

        with use_kernels(onednn=False):
            model(x)   # standard PyTorch ops only
        with use_kernels(recompute=True):
            loss = model(x).sum()   # less memory in the backward
    """
    global _current
    fields = {f.name for f in dataclasses.fields(KernelSettings)}
    unknown = set(changes) - fields
    if unknown:
        raise TypeError(f'use_kernels: unknown settings {sorted(unknown)}; known: '
                        f'{sorted(fields)}')
    previous = _current
    _current = dataclasses.replace(previous, **changes)
    try:
        yield _current
    finally:
        _current = previous


def capturing_graph() -> bool:
    """Whether a tracer, exporter or compiler is recording the ops (then only standard ops run).

    Custom autograd Functions and ``torch.ops.mkldnn`` calls cannot be traced
    (``torch.jit.trace``, mmengine's FLOP counter), exported (ONNX) or compiled.
    """
    if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    compiler = getattr(torch, 'compiler', None)
    if compiler is None:
        return False
    return bool(getattr(compiler, 'is_compiling', lambda: False)()
                or getattr(compiler, 'is_exporting', lambda: False)())


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)``, also on PyTorch < 2.4."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:
        return (torch.is_autocast_cpu_enabled() if device_type == 'cpu'
                else torch.is_autocast_enabled())
