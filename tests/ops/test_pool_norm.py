"""Pooling conv + LayerNorm: the conv's input gradient as a forward conv, the recomputed conv
output, against the modules."""
import pytest
import torch

from mmvit_plugin import ops
from mmvit_plugin.ops import calibrate, pool_norm


def _modules(channels: int, ndim: int, stride, kernel: int = 3, padding: int = 1):
    conv_cls = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
    pool = conv_cls(channels, channels, kernel, stride, padding, groups=channels, bias=False)
    norm = torch.nn.LayerNorm(channels, eps=1e-6)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in (*pool.parameters(), *norm.parameters()):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
        norm.weight.add_(1.0)
    return pool, norm


def _channels_last(shape) -> torch.Tensor:
    return torch.randn(shape).movedim(1, -1).contiguous().movedim(-1, 1)


@pytest.mark.parametrize('ndim', [2, 3])
@pytest.mark.parametrize('kernel,padding', [(3, 1), (1, 0), (2, 1), (5, 2), (4, 0)])
@pytest.mark.parametrize('stride', [1, 2, 3])
@pytest.mark.parametrize('channels_last', [True, False])
def test_input_grad_by_conv_is_the_conv_backward(ndim, kernel, padding, stride, channels_last):
    shape = (2, 4, 5, 9, 11) if ndim == 3 else (2, 4, 10, 13)
    x = _channels_last(shape) if channels_last else torch.randn(shape)
    weight = torch.randn(4, 1, *[kernel] * ndim)
    strides, paddings = (stride,) * ndim, (padding,) * ndim
    conv_args = pool_norm._conv_args(ndim, strides, paddings, 4)
    grad_out = torch.randn_like(pool_norm._depthwise(x, weight, conv_args))
    want, = torch.ops.aten.convolution_backward(grad_out, x, weight, None, *conv_args,
                                                [True, False, False])[:1]
    got = pool_norm.input_grad_by_conv(grad_out, x.shape, weight, strides, paddings)
    assert got.shape == x.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


POOLINGS = [((3, 8, 10, 12), (2, 2)), ((3, 8, 10, 12), (1, 1)), ((2, 8, 4, 6, 6), (1, 2, 2)),
            ((2, 8, 4, 6, 6), (1, 1, 1))]
# The frames route of the weight gradient is for 3D convs only.
ROUTES = [(shape, stride, input_grad, weight_grad) for shape, stride in POOLINGS
          for input_grad in pool_norm.INPUT_GRAD_KERNELS
          for weight_grad in pool_norm.WEIGHT_GRAD_KERNELS
          if weight_grad == 'aten' or len(shape) == 5]


@pytest.mark.parametrize('shape,stride,input_grad,weight_grad', ROUTES)
@pytest.mark.parametrize('recompute', [False, True])
def test_pool_then_norm_matches_the_modules(shape, stride, input_grad, weight_grad, recompute,
                                            monkeypatch):
    pool, norm = _modules(8, len(shape) - 2, stride)
    x = _channels_last(shape).requires_grad_()
    expected = norm(pool(x).flatten(2).transpose(1, 2))
    upstream = torch.randn_like(expected)
    params = [x, pool.weight, norm.weight, norm.bias]
    expected_grads = torch.autograd.grad(expected, params, upstream)
    monkeypatch.setattr(pool_norm, 'input_grad_kernel', lambda *args: input_grad)
    monkeypatch.setattr(pool_norm, 'weight_grad_kernel', lambda *args: weight_grad)
    with ops.use_kernels(recompute=recompute):  # recompute: a memory option, off by default
        out = ops.pool_then_norm(x, pool, norm)
    want_fn = '_PoolNormBackward' if recompute else 'NativeLayerNormBackward0'
    assert out.grad_fn.name().endswith(want_fn)
    torch.testing.assert_close(out, expected, rtol=0 if not recompute else 1e-5,
                               atol=0 if not recompute else 1e-5)
    for g, e in zip(torch.autograd.grad(out, params, upstream), expected_grads):
        # fp32 sums in another order: the weight gradient sums hundreds of products
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5 * max(1.0, e.abs().max().item()))


def test_frozen_or_inference_pooling_runs_the_modules():
    pool, norm = _modules(8, 2, (2, 2))
    x = _channels_last((2, 8, 6, 6))
    assert ops.pool_then_norm(x, pool, norm).grad_fn.name() == 'NativeLayerNormBackward0'
    pool.requires_grad_(False)
    norm.requires_grad_(False)
    assert ops.pool_then_norm(x, pool, norm).grad_fn is None  # nothing to differentiate
    x.requires_grad_()
    with torch.no_grad():
        assert ops.pool_then_norm(x, pool, norm).grad_fn is None


def test_the_gradient_routes_are_calibrated_per_shape(monkeypatch):
    def fake(candidates, repeats=calibrate.REPEATS):  # 'aten' for the input, 'frames' wins
        fast = 'frames' if 'frames' in candidates else 'aten'
        return {name: [1e-3 if name == fast else 3e-3] * repeats for name in candidates}
    monkeypatch.setattr(calibrate, 'time_candidates', fake)
    x, weight = _channels_last((2, 8, 4, 6, 6)), torch.randn(8, 1, 3, 3, 3)
    assert pool_norm.input_grad_kernel(x, weight, (1, 2, 2), (1, 1, 1)) == 'conv'  # off
    assert pool_norm.weight_grad_kernel(x, weight, (1, 2, 2), (1, 1, 1)) == 'aten'
    with ops.use_kernels(calibration='on'):
        assert pool_norm.input_grad_kernel(x, weight, (1, 2, 2), (1, 1, 1)) == 'aten'
        # a padding the forward-conv route cannot express is never timed
        assert pool_norm.input_grad_kernel(x, weight, (1, 2, 2), (3, 3, 3)) == 'aten'
        assert pool_norm.weight_grad_kernel(x, weight, (1, 2, 2), (1, 1, 1)) == 'frames'
        x_2d, weight_2d = _channels_last((2, 8, 6, 6)), torch.randn(8, 1, 3, 3)
        assert pool_norm.weight_grad_kernel(x_2d, weight_2d, (2, 2), (1, 1)) == 'aten'
    choices = calibrate.cached_choices()
    assert sorted(choices) == ['conv_input_grad:2:8:4:6:6:k:3:3:3:s:1:2:2:p:1:1:1',
                               'conv_weight_grad:2:8:4:6:6:k:3:3:3:s:1:2:2:p:1:1:1']
    assert [(e['choice'], e['default']) for _, e in sorted(choices.items())] == \
        [('aten', 'conv'), ('frames', 'aten')]
    assert pool_norm.input_grad_kernel(x_2d, weight_2d, (2, 2), (1, 1)) == 'aten'  # 2D default


@pytest.mark.parametrize('kind', ['input', 'weight'])
def test_a_real_calibration_times_both_routes(kind):
    x, weight = _channels_last((1, 4, 3, 6, 6)), torch.randn(4, 1, 3, 3, 3)
    decide = getattr(pool_norm, f'{kind}_grad_kernel')
    routes = getattr(pool_norm, f'{kind.upper()}_GRAD_KERNELS')
    with ops.use_kernels(calibration='on'):
        choice = decide(x, weight, (1, 2, 2), (1, 1, 1))
    (key, entry), = calibrate.cached_choices().items()
    assert key.startswith(f'conv_{kind}_grad:') and choice == entry['choice'] in routes
    assert sorted(entry['best_ms']) == sorted(routes)
    assert all(ms > 0 for ms in entry['best_ms'].values())


@pytest.mark.parametrize('kernel,padding', [(3, 1), (1, 0), (2, 1), (5, 2)])
@pytest.mark.parametrize('stride', [(1, 1, 1), (2, 1, 1), (1, 2, 2), (3, 2, 1)])
@pytest.mark.parametrize('batch', [1, 2])
def test_weight_grad_by_frames_is_the_conv_backward(kernel, padding, stride, batch):
    x = _channels_last((batch, 4, 5, 7, 6))
    weight = torch.randn(4, 1, kernel, kernel, kernel)
    paddings = (padding,) * 3
    conv_args = pool_norm._conv_args(3, stride, paddings, 4)
    grad_out = torch.randn_like(pool_norm._depthwise(x, weight, conv_args))
    want = torch.ops.aten.convolution_backward(grad_out, x, weight, None, *conv_args,
                                               [False, True, False])[1]
    got = pool_norm.weight_grad_by_frames(grad_out, x, weight, stride, paddings)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
