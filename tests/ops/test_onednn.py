"""oneDNN linear, MLP and attention core against the standard ops, outputs and gradients."""
import pytest
import torch
import torch.nn.functional as F

from mmvit_plugin import ops
from mmvit_plugin.ops import onednn

needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason='this PyTorch build has no oneDNN ops')


@pytest.fixture(params=['per_item', 'batched'])
def attention_kernel(request):
    """Both kernels of the oneDNN attention: per-item products and one batched bmm."""
    entries = 0 if request.param == 'per_item' else 10 ** 9
    with ops.use_kernels(min_attention_entries=entries):
        yield


def _grads(tensors):
    return [t.grad.clone() for t in tensors]


def _leaves(*shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


@needs_onednn
@pytest.mark.parametrize('with_residual', [False, True])
def test_linear_matches_f_linear(with_residual):
    x, weight, bias, residual = _leaves((2, 37, 24), (40, 24), (40,), (2, 37, 40))
    res = residual if with_residual else None
    leaves = [x, weight, bias] + ([residual] if with_residual else [])

    expected = F.linear(x, weight, bias)
    expected = expected + residual if with_residual else expected
    upstream = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, leaves, upstream)

    out = ops.linear(x, weight, bias, residual=res)
    assert out.grad_fn.name().endswith('_LinearBackward')  # the oneDNN Function ran
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(torch.autograd.grad(out, leaves, upstream), expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the fused inference kernels
        fused = ops.linear(x, weight, bias, residual=res)
    torch.testing.assert_close(fused, expected.detach(), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_linear_grad_of_a_wide_input():
    """grad_w is computed two ways depending on the shapes: cover both."""
    for in_dim, out_dim in ((48, 8), (8, 48)):
        x, weight = _leaves((3, 10, in_dim), (out_dim, in_dim))
        got = torch.autograd.grad(ops.linear(x, weight, None).square().sum(), [x, weight])
        want = torch.autograd.grad(F.linear(x, weight).square().sum(), [x, weight])
        for g, e in zip(got, want):  # gradients of size ~10: fp32 rounding
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize('with_residual', [False, True])
@pytest.mark.parametrize('recompute', [True, False])
def test_mlp_matches_the_layers(with_residual, recompute):
    x, w1, b1, w2, b2, residual = _leaves((2, 30, 12), (48, 12), (48,), (12, 48), (12,),
                                          (2, 30, 12))
    leaves = [x, w1, b1, w2, b2] + ([residual] if with_residual else [])
    res = residual if with_residual else None
    expected = F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)
    expected = expected + residual if with_residual else expected
    upstream = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, leaves, upstream)
    with ops.use_kernels(recompute=recompute):
        out = ops.mlp(x, w1, b1, w2, b2, residual=res)
    assert out.grad_fn.name().endswith('_MlpBackward')
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(torch.autograd.grad(out, leaves, upstream), expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(ops.mlp(x, w1, b1, w2, b2, residual=res),
                                   expected.detach(), rtol=1e-5, atol=1e-5)


def test_standard_ops_when_onednn_is_off():
    x, weight, bias = _leaves((4, 8), (6, 8), (6,))
    with ops.use_kernels(onednn=False):
        assert not onednn.usable(x)
        out = ops.linear(x, weight, bias)
    assert 'Addmm' in out.grad_fn.name()
    torch.testing.assert_close(out, F.linear(x, weight, bias))


@pytest.mark.parametrize('kernel', ops.ATTENTION_KERNELS)
@pytest.mark.parametrize('with_residual', [True, False])
@pytest.mark.parametrize('with_extra', [True, False])
@pytest.mark.parametrize('heads', [1, 2])
def test_attention_matches_softmax_attention(attention_kernel, kernel, with_residual,
                                             with_extra, heads):
    B, nq, nk, C, E = 2, 20, 9, 12, 5
    q, k, v, extra, residual = _leaves((B * heads, nq, C), (B * heads, nk, C),
                                       (B * heads, nk, C), (B * heads, nq, E),
                                       (B * heads, nq, C))
    k_extra = torch.randn(nk, E, generator=torch.Generator().manual_seed(5))  # a constant
    q_ext = torch.cat((q * 0.7, extra), -1) if with_extra else q * 0.7
    k_ext = torch.cat((k, k_extra.expand(B * heads, -1, -1)), -1) if with_extra else k
    expected = torch.softmax(q_ext @ k_ext.transpose(1, 2), dim=-1) @ v
    expected = expected + residual if with_residual else expected
    expected = expected.view(B, heads, nq, C).transpose(1, 2).reshape(B, nq, heads * C)
    upstream = torch.randn_like(expected)
    leaves = [q, k, v] + ([extra] if with_extra else []) + ([residual] if with_residual else [])
    expected_grads = torch.autograd.grad(expected, leaves, upstream)

    for recompute in (True, False):
        with ops.use_kernels(recompute=recompute):
            out = ops.attention(q, k, v, 0.7, extra if with_extra else None,
                                k_extra if with_extra else None,
                                residual if with_residual else None, heads, kernel=kernel)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        for g, e in zip(torch.autograd.grad(out, leaves, upstream), expected_grads):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_attention_refuses_an_unknown_kernel():
    q = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match=r"kernel must be one of .*'flash'"):
        ops.attention(q, q, q, kernel='flash')
    with pytest.raises(ValueError, match=r'q_extra and k_extra come together.*k_extra None'):
        ops.attention(q, q, q, q_extra=torch.zeros(1, 2, 3))


@needs_onednn
def test_kernel_resolution():
    x = torch.zeros(2, 3)
    assert ops.resolve_kernel('auto', x) == 'onednn'
    assert ops.resolve_kernel('onednn', x.double()) == 'math'  # oneDNN is fp32 only
    with torch.no_grad(), ops.use_kernels(onednn=False):
        assert ops.resolve_kernel('auto', x) == 'math'
    with ops.use_kernels(onednn=False):
        assert ops.resolve_kernel('auto', x) == 'sdpa'
