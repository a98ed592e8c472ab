"""Decomposed relative positions against a direct, loop-by-loop evaluation of the formula."""
import itertools

import pytest
import torch

from mmvit_plugin.core.rel_pos import (
    decomposed_rel_pos_bias,
    key_coordinate_indicator,
    rel_pos_index,
    rel_pos_query_terms,
    rel_pos_table_length,
    resize_rel_pos_table,
)


@pytest.mark.parametrize('q_size,k_size', [(56, 14), (28, 28), (7, 14), (20, 19)])
def test_index_maps_offsets_into_the_table(q_size, k_size):
    index = rel_pos_index(q_size, k_size, torch.device('cpu'))
    assert index.shape == (q_size, k_size)
    assert index.min() >= 0 and index.max() < rel_pos_table_length(q_size, k_size)
    q_scale, k_scale = max(k_size / q_size, 1.0), max(q_size / k_size, 1.0)
    for i, j in [(0, 0), (q_size - 1, 0), (0, k_size - 1), (q_size // 2, k_size // 3)]:
        assert index[i, j] == int(i * q_scale - j * k_scale + (k_size - 1) * k_scale)


def test_resize_keeps_a_fitting_table_and_interpolates_others():
    table = torch.randn(15, 4)
    assert resize_rel_pos_table(table, 15) is table
    longer = resize_rel_pos_table(table, 29)
    assert longer.shape == (29, 4)
    # linear interpolation stays inside the range of the original values
    assert longer.max() <= table.max() + 1e-6 and longer.min() >= table.min() - 1e-6


@pytest.mark.parametrize('q_size,k_size', [((4, 6), (2, 3)), ((3, 4, 4), (3, 2, 2))])
def test_bias_equals_the_sum_over_axes(q_size, k_size):
    torch.manual_seed(0)
    B, heads, C = 2, 3, 5
    q = torch.randn(B, heads, torch.Size(q_size).numel(), C)
    tables = [torch.randn(rel_pos_table_length(qs, ks), C) for qs, ks in zip(q_size, k_size)]
    bias = decomposed_rel_pos_bias(q, q_size, k_size, tables)
    index = [rel_pos_index(qs, ks, torch.device('cpu')) for qs, ks in zip(q_size, k_size)]
    q_cells = list(itertools.product(*[range(s) for s in q_size]))
    k_cells = list(itertools.product(*[range(s) for s in k_size]))
    expected = torch.zeros(B, heads, len(q_cells), len(k_cells))
    for i, qc in enumerate(q_cells):
        for j, kc in enumerate(k_cells):
            for axis, table in enumerate(tables):
                expected[:, :, i, j] += q[:, :, i] @ table[index[axis][qc[axis], kc[axis]]]
    torch.testing.assert_close(bias, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('q_size,k_size,cls', [
    ((6, 4), (3, 2), 0), ((4, 4), (4, 4), 1), ((3, 4, 6), (3, 2, 3), 1), ((2, 3, 3), (2, 3, 3), 0)])
def test_extended_product_equals_logits_plus_bias(q_size, k_size, cls):
    """Queries extended by their per-axis terms times keys extended by a coordinate one-hot."""
    gen = torch.Generator().manual_seed(0)
    BH, C = 4, 5
    nq, nk = torch.Size(q_size).numel(), torch.Size(k_size).numel()
    q = torch.randn(BH, nq, C, generator=gen)
    k = torch.randn(BH, cls + nk, C, generator=gen)
    tables = [torch.randn(rel_pos_table_length(a, b), C, generator=gen)
              for a, b in zip(q_size, k_size)]

    bias = decomposed_rel_pos_bias(q.unsqueeze(1), q_size, k_size, tables).squeeze(1)
    expected = q @ k.transpose(1, 2) * 0.5
    expected[:, :, cls:] += bias

    terms = rel_pos_query_terms(q, q_size, k_size, tables)
    q_ext = torch.cat([(q * 0.5).view(terms[0].shape[:2] + (C,))] + terms, -1).view(BH, nq, -1)
    indicator = key_coordinate_indicator(k_size, cls, q.device, q.dtype)
    assert indicator.shape == (cls + nk, sum(k_size))
    k_ext = torch.cat((k, indicator.expand(BH, -1, -1)), dim=-1)
    torch.testing.assert_close(q_ext @ k_ext.transpose(1, 2), expected, rtol=1e-5, atol=1e-5)


def test_export_does_not_poison_the_index_cache():
    """Export runs on fake tensors: they must never land in the eager cache (issue 11.4)."""
    import torch.nn as nn

    class Bias(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = nn.ParameterList([nn.Parameter(torch.randn(15, 4)) for _ in range(2)])

        def forward(self, q):
            return decomposed_rel_pos_bias(q, (8, 8), (4, 4), list(self.tables))
    model = Bias().eval()
    q = torch.randn(2, 1, 64, 4)
    with torch.no_grad():
        torch.export.export(model, (q,))
        model(q).numpy()  # a cached fake tensor would fail here
