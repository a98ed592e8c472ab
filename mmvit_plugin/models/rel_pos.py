"""Decomposed relative positions of MViTv2 (pure tensor functions, no modules).

A table of length ``2 * max(q, k) - 1`` holds one embedding per offset between a query position
(on a grid of ``q`` cells) and a key position (``k`` cells). When queries and keys are pooled by
different strides, both are mapped onto the finer grid before taking the offset.
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

Size = Tuple[int, ...]


def rel_pos_table_length(q_size: int, k_size: int) -> int:
    """Number of distinct offsets between a q-cell and a k-cell grid."""
    return 2 * max(q_size, k_size) - 1


def resize_rel_pos_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly interpolate a (L, C) table to (length, C); unchanged when L already fits."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.t().unsqueeze(0), size=length, mode='linear')
    return resized.squeeze(0).t()


def rel_pos_index(q_size: int, k_size: int, device: torch.device) -> torch.Tensor:
    """(q_size, k_size) indices into a table of length ``rel_pos_table_length(q, k)``."""
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    # float32 on purpose: the official index rounds exactly like this for non-integer ratios.
    q_pos = torch.arange(q_size, device=device, dtype=torch.float32)[:, None] * q_scale
    k_pos = torch.arange(k_size, device=device, dtype=torch.float32)[None, :] * k_scale
    return (q_pos - k_pos + (k_size - 1) * k_scale).long()


def gather_rel_pos(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """The (q_size, k_size, C) embeddings for every query/key pair along one axis."""
    table = resize_rel_pos_table(table, rel_pos_table_length(q_size, k_size))
    return table[rel_pos_index(q_size, k_size, table.device)]


def decomposed_rel_pos_bias(q: torch.Tensor, q_size: Size, k_size: Size,
                            tables: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention bias E[i, j] = sum over axes a of q_i . R_a[a_i, a_j].

    Args:
        q: (B, heads, Nq, C) unscaled queries of the patch tokens only.
        q_size, k_size: query and key grids, (H, W) or (T, H, W).
        tables: one table per axis, in the same order as the sizes.

    Returns:
        (B, heads, Nq, Nk) bias for the patch-to-patch block of the attention logits.
    """
    B, heads, _, C = q.shape
    ndim = len(q_size)
    q_grid = q.reshape(B * heads, *q_size, C)
    bias = None
    for axis, table in enumerate(tables):
        pos = gather_rel_pos(table, q_size[axis], k_size[axis]).to(q.dtype)  # (qa, ka, C)
        # Move this axis first so one batched matmul covers every other query position.
        q_axis_first = q_grid.movedim(axis + 1, 0).reshape(q_size[axis], -1, C)
        term = torch.bmm(q_axis_first, pos.transpose(1, 2))  # (qa, rest, ka)
        rest = [B * heads] + [s for a, s in enumerate(q_size) if a != axis]
        term = term.reshape(q_size[axis], *rest, k_size[axis]).movedim(0, axis + 1)
        # term: (BH, *q_size, ka); broadcast it over the other key axes.
        shape = [B * heads, *q_size] + [k_size[a] if a == axis else 1 for a in range(ndim)]
        term = term.reshape(shape)
        bias = term if bias is None else bias + term
    return bias.reshape(B, heads, math.prod(q_size), math.prod(k_size))
