"""fp32 matrix products through oneDNN on the CPU (linear, MLP, attention core), with gradients.

PyTorch runs fp32 ``F.linear``/``bmm`` on the CPU through MKL, which takes a slower code path on
non-Intel CPUs (about 2.5x slower than oneDNN on the AMD EPYC this was measured on). PyTorch also
ships oneDNN (``torch.ops.mkldnn._linear_pointwise``, used by its compiler), but without an
autograd formula. This module wraps it with hand-written backwards. Everything is exact fp32:
only the order of summation differs from the standard ops.

Where oneDNN does not apply (GPU, other dtypes, autocast, tracing/export/compilation, or
``use_kernels(onednn=False)``) the standard PyTorch ops run instead (see ``usable``). Where it
applies, ``ops.calibrate`` picks per shape whichever of oneDNN and the standard op is faster on
this machine (``use_kernels(onednn=True)`` forces oneDNN), and per attention shape per-item
products or one batched bmm.
"""
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from . import calibrate
from .config import autocast_enabled, capturing_graph, kernel_settings

_LINEAR = None
if torch.backends.mkldnn.is_available():
    try:
        _LINEAR = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):  # a build without the oneDNN ops
        _LINEAR = None


def available() -> bool:
    """Whether this PyTorch build has the oneDNN ops."""
    return _LINEAR is not None


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the oneDNN path applies to these tensors right now."""
    if capturing_graph() or not available() or kernel_settings().onednn is False \
            or autocast_enabled('cpu'):
        return False
    return all(t.device.type == 'cpu' and t.dtype == torch.float32 and t.layout == torch.strided
               for t in tensors)


def _mm_bt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T with oneDNN (b may be a strided view; a is made dense if it is not)."""
    return _LINEAR(a, b, None, 'none', [], '')


def _weight_grad(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """grad_out^T @ x over all leading dims, as a (out, in) weight gradient."""
    x_2d = x.reshape(-1, x.shape[-1])
    grad_2d = grad_out.reshape(-1, grad_out.shape[-1])
    rows, d_in = x_2d.shape
    d_out = grad_2d.shape[1]
    # oneDNN wants its first operand dense and reads the second through strides: either copy
    # x^T and transpose the (in, out) result into the weight's layout, or copy grad^T and get
    # (out, in) directly. Pick the one that copies fewer elements.
    if rows * d_in + d_in * d_out < rows * d_out:
        return _mm_bt(x_2d.t().contiguous(), grad_2d.t()).t().contiguous()
    return _mm_bt(grad_2d.t().contiguous(), x_2d.t())


def _bias_grad(grad_out: torch.Tensor) -> torch.Tensor:
    return grad_out.reshape(-1, grad_out.shape[-1]).sum(0)


def _linear_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    residual: Optional[torch.Tensor], gelu: bool = False) -> torch.Tensor:
    if residual is not None and not gelu:
        return _LINEAR.binary(x, residual.expand(x.shape[:-1] + (weight.shape[0],)),
                              weight, bias, 'add')
    out = _LINEAR(x, weight, bias, 'gelu' if gelu else 'none', [], 'none' if gelu else '')
    return out if residual is None else out + residual


class _Linear(torch.autograd.Function):
    """x W^T + b (+ residual)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                residual: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.has_residual = residual is not None
        return _linear_forward(x, weight, bias, residual)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = _mm_bt(grad_out, weight.t()) if needs[0] else None
        grad_w = _weight_grad(x, grad_out) if needs[1] else None
        grad_b = _bias_grad(grad_out) if ctx.has_bias and needs[2] else None
        grad_res = grad_out if ctx.has_residual and needs[3] else None
        return grad_x, grad_w, grad_b, grad_res


class _Mlp(torch.autograd.Function):
    """fc2(GELU(fc1(x))) (+ residual), keeping fc1's output for the backward.

    With ``recompute`` the GELU output (as large as fc1's) is recomputed in the backward
    instead of stored.
    """

    @staticmethod
    def forward(ctx, x, weight1, bias1, weight2, bias2, residual, recompute: bool):
        hidden = _LINEAR(x, weight1, bias1, 'none', [], '')
        activated = F.gelu(hidden)
        ctx.save_for_backward(x, weight1, weight2, hidden,
                              None if recompute else activated)
        ctx.has_bias = (bias1 is not None, bias2 is not None)
        ctx.has_residual = residual is not None
        return _linear_forward(activated, weight2, bias2, residual)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight1, weight2, hidden, activated = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if activated is None:
            activated = F.gelu(hidden)
        grad_w2 = _weight_grad(activated, grad_out) if needs[3] else None
        del activated
        grad_b2 = _bias_grad(grad_out) if ctx.has_bias[1] and needs[4] else None
        grad_hidden = torch.ops.aten.gelu_backward(
            _mm_bt(grad_out, weight2.t()), hidden)
        grad_x = _mm_bt(grad_hidden, weight1.t()) if needs[0] else None
        grad_w1 = _weight_grad(x, grad_hidden) if needs[1] else None
        grad_b1 = _bias_grad(grad_hidden) if ctx.has_bias[0] and needs[2] else None
        grad_res = grad_out if ctx.has_residual and needs[5] else None
        return grad_x, grad_w1, grad_b1, grad_w2, grad_b2, grad_res, None


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _train_step(fn: Callable[[], torch.Tensor], leaves, upstream: torch.Tensor
                ) -> Callable[[], None]:
    def step() -> None:
        with torch.enable_grad():
            torch.autograd.grad(fn(), leaves, upstream)
    return step


def _infer_step(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def step() -> None:
        with torch.no_grad():
            fn()
    return step


def _timed(candidates: Dict[str, Callable[[], torch.Tensor]], leaves, out_shape,
           grad: bool) -> Dict[str, Callable[[], None]]:
    if not grad:
        return {name: _infer_step(fn) for name, fn in candidates.items()}
    for leaf in leaves:
        leaf.requires_grad_()
    upstream = calibrate.random_tensor(*out_shape, seed=9)
    return {name: _train_step(fn, leaves, upstream) for name, fn in candidates.items()}


def _linear_candidates(rows: int, d_in: int, d_out: int, has_bias: bool, grad: bool):
    x = calibrate.random_tensor(rows, d_in, seed=1)
    w = calibrate.random_tensor(d_out, d_in, seed=2, scale=d_in ** -0.5)
    b = calibrate.random_tensor(d_out, seed=3) if has_bias else None
    onednn = (lambda: _Linear.apply(x, w, b, None)) if grad else \
        (lambda: _linear_forward(x, w, b, None))
    return _timed({'onednn': onednn, 'torch': lambda: F.linear(x, w, b)},
                  [t for t in (x, w, b) if t is not None], (rows, d_out), grad)


def _mlp_candidates(rows: int, d_in: int, hidden: int, d_out: int, grad: bool,
                    recompute: bool = False):
    x = calibrate.random_tensor(rows, d_in, seed=1)
    w1 = calibrate.random_tensor(hidden, d_in, seed=2, scale=d_in ** -0.5)
    b1 = calibrate.random_tensor(hidden, seed=3)
    w2 = calibrate.random_tensor(d_out, hidden, seed=4, scale=hidden ** -0.5)
    b2 = calibrate.random_tensor(d_out, seed=5)
    if grad:
        def onednn():
            return _Mlp.apply(x, w1, b1, w2, b2, None, recompute)
    else:
        def onednn():
            return _linear_forward(_linear_forward(x, w1, b1, None, gelu=True), w2, b2, None)
    return _timed({'onednn': onednn,
                   'torch': lambda: F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)},
                  [x, w1, b1, w2, b2], (rows, d_out), grad)


def _prefer_onednn(kind: str, x: torch.Tensor, dims: Tuple[int, ...], grad: bool,
                   make: Callable[..., dict], *tensors: torch.Tensor) -> bool:
    """Whether oneDNN runs this linear/MLP: the setting if forced, else the calibrated choice."""
    forced = kernel_settings().onednn
    if forced is not None:
        return forced
    rows = calibrate.bucket(max(1, x.numel() // x.shape[-1]), calibrate.MAX_ROWS)
    # Timed with recompute off (the default) whatever the setting: the choice, and so the
    # exact numbers, must not depend on the memory option.
    key = (kind, rows, *dims, 'train' if grad else 'infer')
    return calibrate.decide(key, 'onednn', lambda: make(rows, *dims, grad), x,
                            *tensors) == 'onednn'


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(x, weight, bias) (+ residual)``."""
    grad = _needs_grad(x, weight, bias, residual)
    if not usable(x, weight) or not _prefer_onednn(
            'linear', x, (weight.shape[1], weight.shape[0], bias is not None), grad,
            _linear_candidates, weight):
        out = F.linear(x, weight, bias)
        return out if residual is None else out + residual
    if grad:
        return _Linear.apply(x, weight, bias, residual)
    return _linear_forward(x, weight, bias, residual)


def mlp(x: torch.Tensor, weight1: torch.Tensor, bias1: Optional[torch.Tensor],
        weight2: torch.Tensor, bias2: Optional[torch.Tensor],
        residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear(F.gelu(F.linear(x, weight1, bias1)), weight2, bias2) (+ residual)``."""
    grad = _needs_grad(x, weight1, bias1, weight2, bias2, residual)
    if not usable(x, weight1, weight2) or not _prefer_onednn(
            'mlp', x, (weight1.shape[1], weight1.shape[0], weight2.shape[0]), grad,
            _mlp_candidates, weight1, weight2):
        out = F.linear(F.gelu(F.linear(x, weight1, bias1)), weight2, bias2)
        return out if residual is None else out + residual
    if grad:
        return _Mlp.apply(x, weight1, bias1, weight2, bias2, residual,
                          kernel_settings().recompute)
    return _linear_forward(_linear_forward(x, weight1, bias1, None, gelu=True), weight2,
                           bias2, residual)


def extended_query(q: torch.Tensor, scale: float,
                   q_extra: Optional[torch.Tensor]) -> torch.Tensor:
    """``[scale * q, q_extra]`` along the channels."""
    q = q * scale
    return q if q_extra is None else torch.cat((q, q_extra), dim=-1)


def extended_keys(k: torch.Tensor, k_extra: Optional[torch.Tensor]) -> torch.Tensor:
    """``[k, k_extra]`` along the channels, ``k_extra`` (Nk, E) shared by every item."""
    return k if k_extra is None else torch.cat((k, k_extra.expand(k.shape[0], -1, -1)), dim=-1)


class _Attention(torch.autograd.Function):
    """softmax([scale q, q_extra] [k, k_extra]^T) v (+ residual) with oneDNN products.

    ``k_extra`` is a constant (no gradient), so the backward needs neither ``q_extra`` nor its
    columns in the key gradient: only q, the extended keys, v and the probabilities are kept.
    With ``recompute`` the probabilities are recomputed in the backward instead (then
    ``q_extra`` is kept), so no attention matrix outlives its use (like a fused attention
    kernel). With ``per_item`` every (batch, head) item runs its own oneDNN products (fast for
    large items); otherwise one batched ``bmm`` covers all items (fewer, larger ops: better for
    many small items). Work spanning all items (concatenations, transposes) is done once.
    """

    @staticmethod
    def forward(ctx, q, k, v, q_extra, k_extra, residual, scale: float, heads: int,
                per_item: bool, recompute: bool):
        BH, num_q, _ = q.shape
        B = BH // heads
        ctx.scale, ctx.per_item = scale, per_item
        ctx.has_residual = residual is not None
        q_ext = extended_query(q, scale, q_extra)
        k_ext = extended_keys(k, k_extra)
        if per_item:
            v_t = v.transpose(1, 2).contiguous()
            # Each item is written into preallocated results (stacking per-item results would
            # hold all of them twice at the peak); the output straight into (B, Nq, heads, Cv),
            # the layout the projection reads.
            out = q.new_empty(B, num_q, heads, v.shape[-1])
            probs = None if recompute else q.new_empty(BH, num_q, k.shape[1])
            for i in range(BH):
                logits = _mm_bt(q_ext[i], k_ext[i])
                item_probs = logits if recompute else probs[i]
                torch.ops.aten._softmax.out(logits, -1, False, out=item_probs)
                out[i // heads, :, i % heads] = _mm_bt(item_probs, v_t[i]) if residual is None \
                    else _LINEAR.binary(item_probs, residual[i], v_t[i], None, 'add')
                del logits, item_probs
        else:
            probs = torch.bmm(q_ext, k_ext.transpose(1, 2))
            torch.ops.aten._softmax.out(probs, -1, False, out=probs)
            out = torch.bmm(probs, v) if residual is None else torch.baddbmm(residual, probs, v)
            # One copy into the (B, Nq, heads, Cv) layout the projection reads.
            out = out.view(B, heads, num_q, -1).transpose(1, 2).contiguous()
            probs = None if recompute else probs
        ctx.save_for_backward(q, k_ext, v, q_extra if recompute else None, probs)
        ctx.has_q_extra = q_extra is not None
        return out.view(B, num_q, -1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        q, k_ext, v, q_extra, kept = ctx.saved_tensors
        BH, num_q, C = q.shape
        B = grad_out.shape[0]
        heads = BH // B
        grad_items = grad_out.view(B, num_q, heads, -1).transpose(1, 2).reshape(BH, num_q, -1)
        # Only to recompute the probabilities.
        q_ext = extended_query(q, ctx.scale, q_extra) if kept is None else None
        if ctx.per_item:
            grad_items_t = grad_items.transpose(1, 2).contiguous()
            q_t = q.transpose(1, 2).contiguous()
            k_t = k_ext.transpose(1, 2).contiguous()
            grad_q_ext = q.new_empty(BH, num_q, k_ext.shape[2])
            grad_k_t = q.new_empty(BH, C, k_ext.shape[1])
            grad_v_t = v.new_empty(BH, v.shape[2], v.shape[1])
            for i in range(BH):
                if kept is None:
                    probs = _mm_bt(q_ext[i], k_ext[i])
                    torch.ops.aten._softmax.out(probs, -1, False, out=probs)
                else:
                    probs = kept[i]
                grad_logits = torch.ops.aten._softmax_backward_data(
                    _mm_bt(grad_items[i], v[i]), probs, -1, torch.float32)
                grad_v_t[i] = _mm_bt(grad_items_t[i], probs.t())
                del probs
                grad_k_t[i] = _mm_bt(q_t[i], grad_logits.t())
                grad_q_ext[i] = _mm_bt(grad_logits, k_t[i])
                del grad_logits
            del q_ext, q_t, k_t
            grad_k = grad_k_t.transpose(1, 2)
            grad_v = grad_v_t.transpose(1, 2)
        else:
            if kept is None:
                probs = torch.bmm(q_ext, k_ext.transpose(1, 2))
                torch.ops.aten._softmax.out(probs, -1, False, out=probs)
            else:
                probs = kept
            grad_logits = torch.ops.aten._softmax_backward_data(
                torch.bmm(grad_items, v.transpose(1, 2)), probs, -1, torch.float32)
            grad_v = torch.bmm(probs.transpose(1, 2), grad_items)
            del probs
            grad_k = torch.bmm(grad_logits.transpose(1, 2), q)
            grad_q_ext = torch.bmm(grad_logits, k_ext)
        grad_k = grad_k * ctx.scale  # the keys met the scaled queries
        grad_q = grad_q_ext[..., :C] * ctx.scale
        grad_extra = grad_q_ext[..., C:] if ctx.has_q_extra else None
        grad_res = grad_items if ctx.has_residual else None
        return grad_q, grad_k, grad_v, grad_extra, None, grad_res, None, None, None, None


def _attention_candidates(items: int, num_q: int, num_k: int, width: int, width_v: int,
                          with_residual: bool, grad: bool, recompute: bool = False):
    q = calibrate.random_tensor(items, num_q, width, seed=1)
    k = calibrate.random_tensor(items, num_k, width, seed=2, scale=width ** -0.5)
    v = calibrate.random_tensor(items, num_k, width_v, seed=3)
    residual = calibrate.random_tensor(items, num_q, width_v, seed=4) if with_residual else None
    leaves = [t for t in (q, k, v, residual) if t is not None]

    def run(per_item: bool):
        return lambda: _Attention.apply(q, k, v, None, None, residual, 1.0, 1, per_item,
                                        recompute)
    return _timed({'per_item': run(True), 'batched': run(False)}, leaves,
                  (items, num_q, width_v), grad)


def per_item_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, width: int,
                       residual: Optional[torch.Tensor], grad: bool) -> bool:
    """Whether the oneDNN attention runs one product per item (else one batched bmm): by
    ``KernelSettings.min_attention_entries`` if set, else the calibrated choice (``width``:
    the q.k product's, extra columns included)."""
    settings = kernel_settings()
    batch_heads, num_q, _ = q.shape
    num_k = k.shape[1]
    if settings.min_attention_entries is not None:
        return num_q * num_k >= settings.min_attention_entries
    default = 'per_item' if num_q * num_k >= calibrate.DEFAULT_MIN_ATTENTION_ENTRIES \
        else 'batched'
    items = calibrate.attention_items(batch_heads, num_q, num_k)
    dims = (items, num_q, num_k, width, v.shape[-1], residual is not None)
    key = ('attention', *dims, 'train' if grad else 'infer')  # timed with recompute off
    return calibrate.decide(key, default, lambda: _attention_candidates(*dims, grad),
                            q, k, v) == 'per_item'


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
              q_extra: Optional[torch.Tensor], k_extra: Optional[torch.Tensor],
              residual: Optional[torch.Tensor], heads: int) -> torch.Tensor:
    """The oneDNN attention core; call it through ``ops.attention.attention``.

    Per-item oneDNN products or one batched bmm (see ``per_item_attention``).
    Returns (B, Nq, heads * Cv).
    """
    settings = kernel_settings()
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    q_extra = None if q_extra is None else q_extra.contiguous()
    residual = None if residual is None else residual.contiguous()
    grad = _needs_grad(q, k, v, q_extra, residual)
    width = k.shape[-1] + (0 if k_extra is None else k_extra.shape[-1])
    per_item = per_item_attention(q, k, v, width, residual, grad)
    return _Attention.apply(q, k, v, q_extra, k_extra, residual, scale, heads, per_item,
                            settings.recompute)
