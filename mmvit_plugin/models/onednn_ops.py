"""fp32 matrix products through oneDNN on the CPU, with their gradients.

PyTorch runs fp32 ``F.linear``/``bmm`` on the CPU through MKL, which takes a slower code path on
non-Intel CPUs (about 2.5x slower than oneDNN on the AMD EPYC this was measured on). PyTorch also
ships oneDNN (``torch.ops.mkldnn._linear_pointwise``, used by its compiler), but without an
autograd formula. This module wraps it: linear layers (optionally with an exact-GELU or a
residual-add fused in, when no gradient is needed) and the attention core, each with a
hand-written backward. Everything here is exact fp32: only the order of summation differs.

Where oneDNN does not apply (GPU, other dtypes, autocast, ``torch.compile`` tracing, or
``set_enabled(False)``) the standard PyTorch ops run instead.
"""
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F

_ENABLED = True
_LINEAR = None
if torch.backends.mkldnn.is_available():
    try:
        _LINEAR = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without the oneDNN ops
        _LINEAR = None

# Below this many attention-matrix entries per (batch, head) the per-item oneDNN loop costs more
# in call overhead than it saves; a batched bmm is used instead.
MIN_ATTENTION_ENTRIES = 16384


def set_enabled(enabled: bool) -> None:
    """Route fp32 CPU matrix products through oneDNN (default) or PyTorch's standard ops."""
    global _ENABLED
    _ENABLED = bool(enabled)


def is_enabled() -> bool:
    return _ENABLED and _LINEAR is not None


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the oneDNN path applies to these tensors right now."""
    if not is_enabled() or torch.is_autocast_enabled('cpu'):
        return False
    if torch.compiler.is_compiling():
        return False
    return all(t.device.type == 'cpu' and t.dtype == torch.float32 and t.layout == torch.strided
               for t in tensors)


def _mm_bt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T with oneDNN (b may be a strided view; a is made dense if it is not)."""
    return _LINEAR(a, b, None, 'none', [], '')


class _Linear(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _LINEAR(x, weight, bias, 'none', [], '')

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[0]:
            grad_x = _mm_bt(grad_out, weight.t().contiguous())
        if ctx.needs_input_grad[1]:
            x_2d = x.reshape(-1, x.shape[-1])
            # grad_w = grad^T x: oneDNN wants its first operand dense and reads the second
            # through strides, so transpose-copy whichever of the two is narrower.
            if x_2d.shape[1] <= grad_2d.shape[1]:
                grad_w = _mm_bt(x_2d.t().contiguous(), grad_2d.t()).t()
            else:
                grad_w = _mm_bt(grad_2d.t().contiguous(), x_2d.t())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_2d.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           gelu: bool = False, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then exact GELU if ``gelu``, then ``+ residual``."""
    if not usable(x, weight):
        out = F.linear(x, weight, bias)
        if gelu:
            out = F.gelu(out)
        return out if residual is None else out + residual
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        or (residual is not None and residual.requires_grad))
    if needs_grad:
        out = _Linear.apply(x, weight, bias)
        if gelu:
            out = F.gelu(out)
        return out if residual is None else out + residual
    if gelu and residual is None:
        return _LINEAR(x, weight, bias, 'gelu', [], 'none')
    if residual is not None and not gelu and residual.shape[-1] == weight.shape[0]:
        return _LINEAR.binary(x, residual.expand(x.shape[:-1] + (weight.shape[0],)),
                              weight, bias, 'add')
    out = _LINEAR(x, weight, bias, 'gelu' if gelu else 'none', [], 'none' if gelu else '')
    return out if residual is None else out + residual


def _attention_item(q: torch.Tensor, k: torch.Tensor, v_t: torch.Tensor,
                    residual: Optional[torch.Tensor]) -> torch.Tensor:
    probs = _mm_bt(q, k)
    torch.ops.aten._softmax.out(probs, -1, False, out=probs)
    if residual is None:
        return _mm_bt(probs, v_t)
    return _LINEAR.binary(probs, residual, v_t, None, 'add')


class _Attention(torch.autograd.Function):
    """softmax(q k^T) v + residual per item, the probabilities recomputed in the backward.

    Only q, k and v are kept for the backward (no attention matrix), like a fused kernel.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                residual: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(q, k, v)
        ctx.has_residual = residual is not None
        out = q.new_empty(v.shape[0], q.shape[1], v.shape[2])
        for i in range(q.shape[0]):
            out[i] = _attention_item(q[i], k[i], v[i].t().contiguous(),
                                     None if residual is None else residual[i])
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v = ctx.saved_tensors
        grad_q = torch.empty_like(q)
        grad_k = torch.empty_like(k)
        grad_v = torch.empty_like(v)
        for i in range(q.shape[0]):
            q_i, k_i, v_i = q[i], k[i], v[i]
            grad_i = grad_out[i].contiguous()
            probs = _mm_bt(q_i, k_i)
            torch.ops.aten._softmax.out(probs, -1, False, out=probs)
            grad_probs = _mm_bt(grad_i, v_i)
            grad_logits = torch.ops.aten._softmax_backward_data(grad_probs, probs, -1,
                                                                 torch.float32)
            del grad_probs
            grad_v[i] = _mm_bt(grad_i.t().contiguous(), probs.t()).t()
            del probs
            grad_q[i] = _mm_bt(grad_logits, k_i.t().contiguous())
            grad_k[i] = _mm_bt(q_i.t().contiguous(), grad_logits.t()).t()
        grad_res = grad_out if ctx.has_residual and ctx.needs_input_grad[3] else None
        return grad_q, grad_k, grad_v, grad_res


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``softmax(q @ k^T) @ v (+ residual)`` for (BH, Nq, D), (BH, Nk, D), (BH, Nk, C) inputs.

    Scaling and any bias must already be inside q and k. Uses the per-item oneDNN kernel when
    ``usable`` and the items are large enough, else bmm / softmax / bmm.
    """
    tensors = [q, k, v] + ([] if residual is None else [residual])
    if usable(*tensors) and q.shape[1] * k.shape[1] >= MIN_ATTENTION_ENTRIES:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        if residual is not None:
            residual = residual.contiguous()
        return _Attention.apply(q, k, v, residual)
    probs = torch.bmm(q, k.transpose(1, 2)).softmax(dim=-1)
    if residual is None:
        return torch.bmm(probs, v)
    return torch.baddbmm(residual, probs, v)


__all__ = ['set_enabled', 'is_enabled', 'usable', 'linear', 'attention',
           'MIN_ATTENTION_ENTRIES']
