"""Decomposed relative positions of MViTv2 (pure tensor functions, no modules).

A table of length ``2 * max(q, k) - 1`` holds one embedding per offset between a query position
(on a grid of ``q`` cells) and a key position (``k`` cells). When queries and keys are pooled by
different strides, both are mapped onto the finer grid before taking the offset.
"""
import functools
import math
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

Size = Tuple[int, ...]


def _size_max(a, b):
    """max(a, b) for sizes; on export's symbolic sizes without comparing them (a comparison
    is a guard that fixes the input size). Tracing's tensor sizes take max() as before."""
    symbolic = (torch.SymInt, torch.SymFloat)
    return torch.sym_max(a, b) if isinstance(a, symbolic) or isinstance(b, symbolic) \
        else max(a, b)


def rel_pos_table_length(q_size: int, k_size: int) -> int:
    """Number of distinct offsets between a q-cell and a k-cell grid."""
    return 2 * _size_max(q_size, k_size) - 1


def resize_rel_pos_table(table: torch.Tensor, length: int) -> torch.Tensor:
    """Linearly interpolate a (L, C) table to (length, C); unchanged when L already fits.

    A ``length`` that is not a Python int (symbolic under export with dynamic height/width, a
    tensor under jit.trace) always goes through the interpolation: comparing it with L would
    fix the input size, and at equal lengths the linear interpolation is the identity (every
    weight 1 or 0).
    """
    if type(length) is int and table.shape[0] == length:
        return table
    resized = F.interpolate(table.t().unsqueeze(0), size=length, mode='linear')
    return resized.squeeze(0).t()


def _cache_usable(*sizes: int) -> bool:
    """Whether index tensors may come from (and go into) the caches below.

    Not for symbolic sizes (dynamic export/compilation: unhashable), nor while a graph is
    captured (export/compilation run on fake tensors, which must never be cached).
    """
    if not all(type(s) is int for s in sizes):
        return False
    compiler = getattr(torch, 'compiler', None)
    return not (compiler is not None
                and (getattr(compiler, 'is_compiling', lambda: False)()
                     or getattr(compiler, 'is_exporting', lambda: False)()))


def rel_pos_index(q_size: int, k_size: int, device: torch.device) -> torch.Tensor:
    """(q_size, k_size) indices into a table of length ``rel_pos_table_length(q, k)``.

    Cached in eager mode: every block with the same grids reuses one index tensor (never
    written to).
    """
    if _cache_usable(q_size, k_size):
        return _cached_rel_pos_index(q_size, k_size, device)
    return _rel_pos_index(q_size, k_size, device)


@functools.lru_cache(maxsize=256)
def _cached_rel_pos_index(q_size: int, k_size: int, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # cached: must stay usable outside inference mode
        return _rel_pos_index(q_size, k_size, device)


def _rel_pos_index(q_size: int, k_size: int, device: torch.device) -> torch.Tensor:
    q_scale = _size_max(k_size / q_size, 1.0)
    k_scale = _size_max(q_size / k_size, 1.0)
    # float32 on purpose: the official index rounds exactly like this for non-integer ratios.
    q_pos = torch.arange(q_size, device=device, dtype=torch.float32)[:, None] * q_scale
    k_pos = torch.arange(k_size, device=device, dtype=torch.float32)[None, :] * k_scale
    return (q_pos - k_pos + (k_size - 1) * k_scale).long()


def gather_rel_pos(table: torch.Tensor, q_size: int, k_size: int) -> torch.Tensor:
    """The (q_size, k_size, C) embeddings for every query/key pair along one axis."""
    table = resize_rel_pos_table(table, rel_pos_table_length(q_size, k_size))
    index = rel_pos_index(q_size, k_size, table.device)
    return F.embedding(index, table)  # table[index], with a cheaper backward


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
    # Two steps: merging the heads and unfolding the grid in one reshape is a divisibility
    # guard on export's symbolic sizes.
    q_grid = q.reshape(B * heads, -1, C).unflatten(1, q_size)
    bias = None
    for axis, table in enumerate(tables):
        pos = gather_rel_pos(table, q_size[axis], k_size[axis]).to(q.dtype)  # (qa, ka, C)
        # Move this axis first so one batched matmul covers every other query position:
        # (qa, rest, C), rest running over (B*heads, axes before, axes after).
        before = B * heads * math.prod(q_size[:axis])
        after = math.prod(q_size[axis + 1:])
        # The axes after this one stay merged with C until the last reshape: onnxscript's
        # Reshape-MatMul-Reshape rewrite (the dynamo ONNX exporter's default optimiser)
        # otherwise drops that reshape whenever an unrelated grid side equals q_size[axis]
        # (the shapes still broadcast), giving wrong numbers. Same values reach bmm either way.
        # Sizes spelled out (no -1): inferring one is a divisibility guard on symbolic sizes.
        q_axis_first = (q_grid.reshape(before, q_size[axis], after * C).transpose(0, 1)
                        .reshape(q_size[axis], before * after, C))
        term = torch.bmm(q_axis_first, pos.transpose(1, 2))  # (qa, rest, ka)
        rest = [B * heads] + [s for a, s in enumerate(q_size) if a != axis]
        term = term.reshape(q_size[axis], *rest, k_size[axis]).movedim(0, axis + 1)
        # term: (BH, *q_size, ka); broadcast it over the other key axes.
        shape = [B * heads, *q_size] + [k_size[a] if a == axis else 1 for a in range(ndim)]
        term = term.reshape(shape)
        bias = term if bias is None else bias + term
    return bias.reshape(B, heads, math.prod(q_size), math.prod(k_size))


def rel_pos_query_terms(q: torch.Tensor, q_size: Size, k_size: Size,
                        tables: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Per axis a, the logits ``q_i . R_a[a_i, m]`` for every key coordinate m on that axis.

    These are the decomposed bias before broadcasting: E[i, j] = sum_a term_a[i, a_j].

    Args:
        q: (BH, Nq, C) unscaled queries of the patch tokens, Nq = prod(q_size).
        q_size, k_size: query and key grids, (H, W) or (T, H, W).
        tables: one table per axis, in the same order as the sizes.

    Returns:
        one (M, q_size[-1], k_size[a]) tensor per axis, M = BH * prod(q_size[:-1]); their rows
        follow the query order of ``q``.
    """
    BH, _, C = q.shape
    last = q_size[-1]
    terms = []
    for axis, table in enumerate(tables):
        pos = gather_rel_pos(table, q_size[axis], k_size[axis]).to(q.dtype)  # (qa, ka, C)
        before = BH * math.prod(q_size[:axis])
        after = math.prod(q_size[axis + 1:])
        if type(after) is int and after == 1:  # (a symbolic side is never compared: export)
            # Last axis: one GEMM per coordinate on a strided view of q (no copy).
            rows = q.reshape(before, q_size[axis], C).transpose(0, 1)
            term = torch.bmm(rows, pos.transpose(1, 2)).transpose(0, 1)
        else:
            grid = q.reshape(before, q_size[axis], after, C)
            term = torch.matmul(grid, pos.transpose(1, 2))  # (before, qa, after, ka)
        terms.append(term.reshape(-1, last, k_size[axis]))
    return terms


@functools.lru_cache(maxsize=256)
def _key_coordinate_indicator(k_size: Size, leading_zero_rows: int,
                              device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # cached: must stay usable outside inference mode
        return _build_key_coordinate_indicator(k_size, leading_zero_rows, device)


def _build_key_coordinate_indicator(k_size: Size, leading_zero_rows: int,
                                    device: torch.device) -> torch.Tensor:
    ndim = len(k_size)
    blocks = []
    for axis, side in enumerate(k_size):
        shape = [1] * ndim
        shape[axis] = side
        coord = torch.arange(side, device=device).view(shape).expand(k_size).reshape(-1)
        # A comparison, not F.one_hot: one_hot checks the values, which export cannot trace.
        blocks.append(coord[:, None] == torch.arange(side, device=device))
    indicator = torch.cat(blocks, dim=1).float()
    return F.pad(indicator, (0, 0, leading_zero_rows, 0))


def key_coordinate_indicator(k_size: Size, leading_zero_rows: int, device: torch.device,
                             dtype: torch.dtype) -> torch.Tensor:
    """(rows + Nk, sum(k_size)) one-hot of each key's coordinate on every axis.

    With queries extended by ``rel_pos_query_terms`` and keys by this indicator, one matrix
    product gives q . k plus the decomposed relative-position bias. Leading zero rows stand for
    keys that get no bias (the cls token).
    """
    if _cache_usable(*k_size, leading_zero_rows):
        indicator = _key_coordinate_indicator(tuple(k_size), leading_zero_rows, device)
    else:
        indicator = _build_key_coordinate_indicator(tuple(k_size), leading_zero_rows, device)
    return indicator.to(dtype)
