"""Every fast path gives the plain path's outputs and gradients (correctness only, no timing)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from mmvit_plugin.models import onednn_ops
from mmvit_plugin.models.mvitv2 import MViTv2, pool_then_norm
from mmvit_plugin.core.rel_pos import (decomposed_rel_pos_bias, key_coordinate_indicator,
                                         rel_pos_query_terms, rel_pos_table_length)

needs_onednn = pytest.mark.skipif(not onednn_ops.is_enabled(),
                                  reason='this PyTorch build has no oneDNN ops')

TINY_IMAGE = dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                  img_size=(64, 64))
TINY_VIDEO = dict(TINY_IMAGE, video=True, with_cls_token=True, img_size=(4, 64, 64))
FAST_IMPLS = ('auto', 'onednn', 'sdpa', 'math')


@pytest.fixture
def plain_ops():
    """Standard PyTorch ops only (oneDNN routing off) for the duration of a block."""
    class Switch:
        def __enter__(self):
            onednn_ops.set_enabled(False)

        def __exit__(self, *exc):
            onednn_ops.set_enabled(True)
    return Switch()


@pytest.fixture(params=['per_item', 'batched'])
def per_item_attention(request, monkeypatch):
    """Both kernels of ``onednn_ops._Attention``: per-item oneDNN and batched bmm."""
    monkeypatch.setattr(onednn_ops, 'MIN_ATTENTION_ENTRIES',
                        0 if request.param == 'per_item' else 10 ** 9)


def _grads(tensors):
    return [t.grad.clone() for t in tensors]


def _leaves(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


# Linear layers -----------------------------------------------------------------------------------

@needs_onednn
@pytest.mark.parametrize('gelu,with_residual',
                         [(False, False), (True, False), (False, True), (True, True)])
def test_onednn_linear_matches_f_linear(gelu, with_residual):
    x, weight, bias, residual = _leaves((2, 37, 24), (40, 24), (40,), (2, 37, 40))
    res = residual if with_residual else None

    expected = F.linear(x, weight, bias)
    expected = F.gelu(expected) if gelu else expected
    expected = expected + residual if with_residual else expected
    upstream = torch.randn_like(expected)
    expected.backward(upstream)
    expected_grads = _grads([x, weight, bias] + ([residual] if with_residual else []))
    for t in (x, weight, bias, residual):
        t.grad = None

    out = onednn_ops.linear(x, weight, bias, gelu=gelu, residual=res)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.backward(upstream)
    got = _grads([x, weight, bias] + ([residual] if with_residual else []))
    for g, e in zip(got, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)

    with torch.no_grad():  # the fused inference kernels
        fused = onednn_ops.linear(x, weight, bias, gelu=gelu, residual=res)
    torch.testing.assert_close(fused, expected.detach(), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_linear_grad_of_a_wide_input():
    """grad_w is computed two ways depending on the shapes: cover both."""
    for in_dim, out_dim in ((48, 8), (8, 48)):
        x, weight = _leaves((3, 10, in_dim), (out_dim, in_dim))
        onednn_ops.linear(x, weight, None).square().sum().backward()
        got = _grads([x, weight])
        x.grad = weight.grad = None
        F.linear(x, weight).square().sum().backward()
        for g, e in zip(got, _grads([x, weight])):  # gradients of size ~10: fp32 rounding
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize('with_residual', [False, True])
def test_onednn_mlp_matches_the_layers(with_residual):
    x, w1, b1, w2, b2, residual = _leaves((2, 30, 12), (48, 12), (48,), (12, 48), (12,),
                                          (2, 30, 12))
    leaves = [x, w1, b1, w2, b2] + ([residual] if with_residual else [])
    expected = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    expected = expected + residual if with_residual else expected
    upstream = torch.randn_like(expected)
    expected.backward(upstream)
    expected_grads = _grads(leaves)
    for t in leaves:
        t.grad = None
    res = residual if with_residual else None
    out = onednn_ops.mlp(x, w1, b1, w2, b2, residual=res)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.backward(upstream)
    for g, e in zip(_grads(leaves), expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(onednn_ops.mlp(x, w1, b1, w2, b2, residual=res),
                                   expected.detach(), rtol=1e-5, atol=1e-5)


def test_linear_falls_back_when_disabled(plain_ops):
    x, weight, bias = _leaves((4, 8), (6, 8), (6,))
    with plain_ops:
        assert not onednn_ops.usable(x)
        torch.testing.assert_close(onednn_ops.linear(x, weight, bias, gelu=True),
                                   F.gelu(F.linear(x, weight, bias)))


# Attention core -------------------------------------------------------------------------------

@needs_onednn
@pytest.mark.parametrize('with_residual', [True, False])
@pytest.mark.parametrize('with_extra', [True, False])
@pytest.mark.parametrize('heads', [1, 2])
def test_onednn_attention_matches_softmax_attention(per_item_attention, with_residual,
                                                    with_extra, heads):
    B, nq, nk, C, E = 2, 20, 9, 12, 5
    q, k, v, extra, residual = _leaves((B * heads, nq, C), (B * heads, nk, C + E),
                                       (B * heads, nk, C), (B * heads, nq, E),
                                       (B * heads, nq, C))
    if not with_extra:
        k = k[..., :C].detach().requires_grad_()
    q_ext = torch.cat((q * 0.7, extra), -1) if with_extra else q * 0.7
    expected = torch.softmax(q_ext @ k.transpose(1, 2), dim=-1) @ v
    expected = expected + residual if with_residual else expected
    expected = expected.view(B, heads, nq, C).transpose(1, 2).reshape(B, nq, heads * C)
    upstream = torch.randn_like(expected)
    expected.backward(upstream)
    leaves = [q, k, v] + ([extra] if with_extra else []) + ([residual] if with_residual else [])
    expected_grads = _grads(leaves)
    for t in leaves:
        t.grad = None

    for allow_onednn in (True, False):
        out = onednn_ops.attention(q, k, v, 0.7, extra if with_extra else None,
                                   residual if with_residual else None, heads,
                                   allow_onednn=allow_onednn)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        out.backward(upstream)
        for g, e in zip(_grads(leaves), expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        for t in leaves:
            t.grad = None


# Pooling + LayerNorm with the conv recomputed in the backward ---------------------------------

@pytest.mark.parametrize('shape,stride', [((3, 8, 10, 12), (2, 2)), ((3, 8, 10, 12), (1, 1)),
                                          ((2, 8, 4, 6, 6), (1, 2, 2))])
def test_pool_then_norm_matches_the_modules(shape, stride):
    ndim = len(shape) - 2
    conv_cls = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
    pool = conv_cls(8, 8, 3, stride, 1, groups=8, bias=False)
    norm = torch.nn.LayerNorm(8, eps=1e-6)
    _randomise(pool), _randomise(norm, seed=1)
    with torch.no_grad():
        norm.weight.add_(1.0)
    x = torch.randn(shape).movedim(1, -1).contiguous().movedim(-1, 1).requires_grad_()
    expected = norm(pool(x).flatten(2).transpose(1, 2))
    upstream = torch.randn_like(expected)
    params = [x, pool.weight, norm.weight, norm.bias]
    expected_grads = torch.autograd.grad(expected, params, upstream)
    out = pool_then_norm(x, pool, norm)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(torch.autograd.grad(out, params, upstream), expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


# Relative positions folded into the q.k product ----------------------------------------------

@pytest.mark.parametrize('q_size,k_size,cls', [
    ((6, 4), (3, 2), 0), ((4, 4), (4, 4), 1), ((3, 4, 6), (3, 2, 3), 1), ((2, 3, 3), (2, 3, 3), 0)])
def test_extended_product_equals_logits_plus_bias(q_size, k_size, cls):
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


# Whole model: every fast path against the plain reference -------------------------------------

def _randomise(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def _set_impl(model, impl):
    for block in model.blocks:
        block.attn.attn_impl = impl


def _run(model, x, train):
    model.train(train)
    model.zero_grad()
    outs = model(x)
    flat = [t for o in outs for t in (o if isinstance(o, list) else [o])]
    loss = sum((t * torch.linspace(-1, 1, t.numel()).view(t.shape)).sum() for t in flat)
    if not train:
        return [t.detach() for t in flat], None
    loss.backward()
    return [t.detach() for t in flat], {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('arch,shape,out_type', [
    (TINY_IMAGE, (2, 3, 64, 64), 'featmap'),
    (dict(TINY_IMAGE, with_cls_token=True, num_heads=2), (2, 3, 64, 96), 'cls_token'),
    (TINY_VIDEO, (2, 3, 4, 64, 64), 'featmap_and_cls'),
])
@pytest.mark.parametrize('train', [False, True])
def test_fast_paths_match_the_plain_path(arch, shape, out_type, train, plain_ops,
                                         per_item_attention):
    model = MViTv2(arch, out_type=out_type, drop_path_rate=0.0)
    _randomise(model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    _set_impl(model, 'plain')
    with plain_ops:
        expected_out, expected_grads = _run(model, x, train)
    for impl in FAST_IMPLS:
        _set_impl(model, impl)
        out, grads = _run(model, x, train)
        for o, e in zip(out, expected_out):
            torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5, msg=lambda m: f'{impl}: {m}')
        if train:
            for name, g in grads.items():
                torch.testing.assert_close(g, expected_grads[name], rtol=1e-4, atol=1e-5,
                                           msg=lambda m: f'{impl}, grad of {name}: {m}')


def test_drop_path_training_keeps_the_unfused_path_equal():
    """With drop path the residual adds are not fused; in eval mode both give one result."""
    model = MViTv2(TINY_VIDEO, out_type='featmap_and_cls', drop_path_rate=0.3)
    _randomise(model)
    x = torch.randn(1, 3, 4, 64, 64)
    reference = copy.deepcopy(model)
    _set_impl(reference, 'plain')
    model.eval(), reference.eval()
    with torch.no_grad():
        for got, want in zip(model(x)[0], reference(x)[0]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model.train()
    model(x)[0][0].sum().backward()  # the drop-path branch runs and has gradients
    assert model.blocks[-1].attn.qkv.weight.grad is not None


def test_inference_mode_then_training():
    """Index tensors cached during inference_mode must still work for autograd afterwards."""
    model = MViTv2(TINY_IMAGE, drop_path_rate=0.0)
    with torch.inference_mode():
        model.eval()(torch.randn(1, 3, 64, 64))
    model.train()(torch.randn(1, 3, 64, 64))[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters())
