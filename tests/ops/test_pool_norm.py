"""Pooling conv + LayerNorm with the conv recomputed in the backward, against the modules."""
import pytest
import torch

from mmvit_plugin import ops


@pytest.mark.parametrize('shape,stride', [((3, 8, 10, 12), (2, 2)), ((3, 8, 10, 12), (1, 1)),
                                          ((2, 8, 4, 6, 6), (1, 2, 2))])
def test_pool_then_norm_matches_the_modules(shape, stride):
    ndim = len(shape) - 2
    conv_cls = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
    pool = conv_cls(8, 8, 3, stride, 1, groups=8, bias=False)
    norm = torch.nn.LayerNorm(8, eps=1e-6)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in (*pool.parameters(), *norm.parameters()):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        norm.weight.add_(1.0)
    x = torch.randn(shape).movedim(1, -1).contiguous().movedim(-1, 1).requires_grad_()
    expected = norm(pool(x).flatten(2).transpose(1, 2))
    upstream = torch.randn_like(expected)
    params = [x, pool.weight, norm.weight, norm.bias]
    expected_grads = torch.autograd.grad(expected, params, upstream)
    with ops.use_kernels(recompute=True):  # a memory option, off by default
        out = ops.pool_then_norm(x, pool, norm)
    assert out.grad_fn.name().endswith('_PoolNormBackward')
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(torch.autograd.grad(out, params, upstream), expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    kept_by_default = ops.pool_then_norm(x, pool, norm)
    assert not kept_by_default.grad_fn.name().endswith('_PoolNormBackward')
    with ops.use_kernels(recompute=False):  # keeps the conv output: the standard modules
        kept = ops.pool_then_norm(x, pool, norm)
    assert not kept.grad_fn.name().endswith('_PoolNormBackward')
    torch.testing.assert_close(kept, expected, rtol=0, atol=0)
