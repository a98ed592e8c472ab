"""Kernel settings (a frozen record changed only through a context manager) and graph-capture checks."""
import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class KernelSettings:
    """How the fast paths compute; every setting gives the same numbers up to fp32 rounding.

    Attributes:
        onednn: route fp32 CPU matrix products through oneDNN (``ops.onednn``) instead of
            PyTorch's standard ops (MKL on the CPU).
        min_attention_entries: attention items (one per batch element and head) with at least
            this many attention-matrix entries run as separate oneDNN products; smaller ones
            share one batched bmm. Per-item oneDNN is faster on an idle CPU down to ~20k
            entries, but each op is a parallel region, and on a loaded machine many small ones
            cost more than they save, so the bar is set higher.
        recompute: recompute the attention probabilities, the GELU output and the pooling
            conv's output in the backward instead of storing them (less memory, a little more
            compute). Off keeps them for the backward.
    """
    onednn: bool = True
    min_attention_entries: int = 200_000
    recompute: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.min_attention_entries, int) or self.min_attention_entries < 0:
            raise ValueError('KernelSettings.min_attention_entries must be an int >= 0, got '
                             f'{self.min_attention_entries!r}')


_current = KernelSettings()


def kernel_settings() -> KernelSettings:
    """The settings in force now."""
    return _current


@contextlib.contextmanager
def use_kernels(**changes) -> Iterator[KernelSettings]:
    """Change kernel settings inside a ``with`` block; the previous ones come back after it.

        with use_kernels(onednn=False):
            model(x)   # standard PyTorch ops only
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
