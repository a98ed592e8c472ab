"""Kernel settings: a context manager that restores the previous values; graph-capture checks."""
import pytest
import torch

from mmvit_plugin import ops


def test_use_kernels_restores_the_previous_settings():
    before = ops.kernel_settings()
    with ops.use_kernels(onednn=False, min_attention_entries=5) as inner:
        assert inner == ops.kernel_settings()
        assert (inner.onednn, inner.min_attention_entries) == (False, 5)
        with ops.use_kernels(onednn=True):
            assert ops.kernel_settings().onednn and ops.kernel_settings().min_attention_entries == 5
        assert not ops.kernel_settings().onednn
    assert ops.kernel_settings() == before


def test_use_kernels_restores_after_an_error():
    before = ops.kernel_settings()
    with pytest.raises(RuntimeError):
        with ops.use_kernels(recompute=False):
            raise RuntimeError('boom')
    assert ops.kernel_settings() == before


def test_unknown_or_bad_settings_are_named():
    with pytest.raises(TypeError, match=r"unknown settings \['fast'\]"):
        with ops.use_kernels(fast=True):
            pass
    with pytest.raises(ValueError, match='min_attention_entries must be an int >= 0'):
        with ops.use_kernels(min_attention_entries=-1):
            pass


def test_graph_capture_is_seen_while_tracing():
    seen = []

    def probe(x):
        seen.append(ops.capturing_graph())
        return x + 1
    assert not ops.capturing_graph()
    torch.jit.trace(probe, torch.zeros(2), check_trace=False)
    assert seen == [True]
