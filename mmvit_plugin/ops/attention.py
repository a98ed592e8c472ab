"""One entry point for the attention core of the fast paths: oneDNN, fused SDPA or explicit math."""
from typing import Optional

import torch
import torch.nn.functional as F

from . import onednn

# 'auto': oneDNN where it applies (CPU, fp32, no autocast, not tracing), else SDPA while
# training or on a GPU and the explicit matrix for CPU inference.
ATTENTION_KERNELS = ('auto', 'onednn', 'sdpa', 'math')


def resolve_kernel(kernel: str, *tensors: torch.Tensor) -> str:
    """The kernel that runs for ``kernel`` on these tensors now."""
    if kernel == 'onednn':
        return 'onednn' if onednn.usable(*tensors) else 'math'
    if kernel != 'auto':
        return kernel
    if onednn.usable(*tensors):
        return 'onednn'
    return 'sdpa' if torch.is_grad_enabled() or tensors[0].device.type != 'cpu' else 'math'


def _shape(t: Optional[torch.Tensor]):
    return None if t is None else tuple(t.shape)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0,
              q_extra: Optional[torch.Tensor] = None, k_extra: Optional[torch.Tensor] = None,
              residual: Optional[torch.Tensor] = None, heads: int = 1,
              kernel: str = 'auto') -> torch.Tensor:
    """``softmax([scale * q, q_extra] @ [k, k_extra]^T) @ v (+ residual)``, heads merged into
    channels.

    Args:
        q: (B * heads, Nq, C) queries; ``q_extra``: (B * heads, Nq, E) columns appended to the
            scaled queries (e.g. relative-position terms), or None.
        k: (B * heads, Nk, C) keys; ``k_extra``: (Nk, E) constant columns appended to every
            item's keys (no gradient; e.g. key-coordinate indicators), given with ``q_extra``.
        v: (B * heads, Nk, Cv) values.
        residual: (B * heads, Nq, Cv) added to the output, or None.
        kernel: one of ``ATTENTION_KERNELS``. 'onednn' (``ops.onednn``) falls back to 'math'
            where oneDNN does not apply; 'sdpa' is ``F.scaled_dot_product_attention``; 'math'
            is bmm, softmax, bmm with autograd.

    Returns:
        (B, Nq, heads * Cv).
    """
    if kernel not in ATTENTION_KERNELS:
        raise ValueError(f'attention kernel must be one of {ATTENTION_KERNELS}, got {kernel!r}')
    if (q_extra is None) != (k_extra is None):
        raise ValueError('attention: q_extra and k_extra come together (their columns meet in '
                         f'the q.k product), got q_extra {_shape(q_extra)}, k_extra '
                         f'{_shape(k_extra)}')
    tensors = [t for t in (q, k, v, q_extra, residual) if t is not None]
    kernel = resolve_kernel(kernel, *tensors)
    BH, num_q, C = q.shape
    B, Cv = BH // heads, v.shape[-1]
    if kernel == 'onednn':
        return onednn.attention(q, k, v, scale, q_extra, k_extra, residual, heads)
    k = onednn.extended_keys(k, k_extra)
    if kernel == 'math':
        probs = torch.bmm(onednn.extended_query(q, scale, q_extra),
                          k.transpose(1, 2)).softmax(dim=-1)
        out = torch.bmm(probs, v) if residual is None else torch.baddbmm(residual, probs, v)
        return out.view(B, heads, num_q, Cv).transpose(1, 2).reshape(B, num_q, heads * Cv)
    # Fused kernels want equal q/k/v widths (GPU ones a multiple of 8): zero columns change no
    # logit, and the extra output columns are dropped.
    width = (max(k.shape[-1], Cv) + 7) // 8 * 8  # ceil: the legacy exporter truncates -(-a // b)

    def heads_first(t: torch.Tensor) -> torch.Tensor:
        t = F.pad(t, (0, width - t.shape[-1]))
        return t.view(B, heads, t.shape[1], width)
    out = F.scaled_dot_product_attention(
        heads_first(onednn.extended_query(q, scale, q_extra)), heads_first(k), heads_first(v),
        scale=1.0)[..., :Cv]
    # The fused kernel returns (B, heads, Nq, Cv) laid out as (B, Nq, heads, Cv); adding the
    # residual with ``out`` first keeps that layout, so the merge below is free.
    out = out.transpose(1, 2)
    if residual is not None:
        out = out + residual.view(B, heads, num_q, Cv).transpose(1, 2)
    return out.reshape(B, num_q, heads * Cv)
