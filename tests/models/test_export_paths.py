"""The model through ONNX (dynamo exporter + onnxruntime), torch.export and torch.compile."""
import io
import math
import warnings

import numpy as np
import pytest
import torch

from mmvit_plugin.core.rel_pos import (
    decomposed_rel_pos_bias,
    rel_pos_query_terms,
    rel_pos_table_length,
)
from mmvit_plugin.models.mvitv2 import MViTv2

ort = pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

pytestmark = pytest.mark.usefixtures('single_thread')

# The smallest arch that has every stage; a video arch with a cls token whose 64-px clips of
# 4 frames end on a (2, 2, 2) query grid, where time, height and width coincide.
MICRO = dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3))
MICRO_IMAGE = dict(MICRO, img_size=(64, 64))
MICRO_VIDEO = dict(MICRO, video=True, with_cls_token=True, img_size=(4, 64, 64))
TOLERANCE = 1e-4


def _random(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    # Large enough weights that a wrong bias changes the outputs by far more than rounding.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    return model.eval()


def _onnx_outputs(module: torch.nn.Module, inputs, **export_kwargs):
    """``module`` exported by the dynamo exporter (default optimisation), run by onnxruntime."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        program = torch.onnx.export(module, tuple(inputs), dynamo=True, verbose=False,
                                    **export_kwargs)
    buffer = io.BytesIO()
    program.save(buffer)
    session = ort.InferenceSession(buffer.getvalue(), providers=['CPUExecutionProvider'])
    return session, session.run(None, {arg.name: x.numpy() for arg, x
                                       in zip(session.get_inputs(), inputs)})


def _flat(outputs):
    return [t for out in outputs for t in (out if isinstance(out, (list, tuple)) else [out])]


def _max_diff(onnx_outputs, torch_outputs) -> float:
    torch_outputs = _flat(torch_outputs)
    assert len(onnx_outputs) == len(torch_outputs)
    return max(float(np.abs(o - t.detach().numpy()).max())
               for o, t in zip(onnx_outputs, torch_outputs))


class _Bias(torch.nn.Module):
    def __init__(self, q_size, k_size, channels: int, fast: bool) -> None:
        super().__init__()
        self.q_size, self.k_size, self.fast = q_size, k_size, fast
        gen = torch.Generator().manual_seed(0)
        self.tables = torch.nn.ParameterList(
            torch.nn.Parameter(torch.randn(rel_pos_table_length(q, k), channels, generator=gen))
            for q, k in zip(q_size, k_size))

    def forward(self, q: torch.Tensor):
        if self.fast:
            B, heads, N, C = q.shape
            return tuple(rel_pos_query_terms(q.reshape(B * heads, N, C), self.q_size,
                                             self.k_size, list(self.tables)))
        return decomposed_rel_pos_bias(q, self.q_size, self.k_size, list(self.tables))


@pytest.mark.parametrize('q_size,k_size,fast', [
    ((2, 2, 4), (2, 2, 4), False),   # time == height
    ((2, 4, 2), (2, 4, 2), False),   # time == width
    ((2, 2, 2), (2, 4, 4), False),   # the micro video model's last stage
    ((2, 2, 2), (2, 4, 4), True),    # the fast paths' per-axis terms
])
def test_rel_pos_exports_to_onnx_when_grid_sides_coincide(q_size, k_size, fast):
    """onnxscript's Reshape-MatMul-Reshape rewrite dropped the reshape in front of the
    per-axis bmm whenever another grid side equalled that axis (max diff ~10-28 before)."""
    module = _Bias(q_size, k_size, channels=8, fast=fast).eval()
    q = torch.randn(2, 2, math.prod(q_size), 8)
    _, outputs = _onnx_outputs(module, [q])
    with torch.no_grad():
        expected = module(q)
    assert _max_diff(outputs, expected if fast else [expected]) <= TOLERANCE


def test_reference_video_model_exports_to_onnx():
    """attn_impl='plain' on a video model gave 2.3e-2 before the fix (the fast paths' graphs
    are checked by tests/tools/test_export.py)."""
    model = _random(MViTv2(MICRO_VIDEO, out_type='featmap_and_cls', attn_impl='plain'))
    x = torch.randn(2, 3, 4, 64, 64)
    _, outputs = _onnx_outputs(model, [x])
    with torch.no_grad():
        expected = model(x)
    assert _max_diff(outputs, expected) <= TOLERANCE
