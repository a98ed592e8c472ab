"""Depthwise pooling conv (faster gradients) followed by LayerNorm over channels.

PyTorch's CPU backward of a depthwise conv is several times slower than its forward (up to
12x for the 3D pooling convs of the video models, measured on an Intel Xeon). The input
gradient of a conv is itself a conv: the output gradient, spread onto the input grid (zeros at
the positions a stride skips), correlated with the flipped kernel. Run as a forward depthwise
conv it takes the fast forward kernel. The weight gradient of a 3D conv can be taken as one 2D
weight gradient per temporal kernel tap (PyTorch's 2D kernel is much faster than its 3D one on
large grids). Which route is faster is calibrated per shape (``ops.calibrate``).
"""
import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from . import calibrate
from .config import autocast_enabled, capturing_graph, kernel_settings

# Calibrated candidates: the input gradient from PyTorch's conv backward or a forward conv; the
# weight gradient (3D) from PyTorch's or one 2D weight gradient per temporal tap.
INPUT_GRAD_KERNELS = ('aten', 'conv')
WEIGHT_GRAD_KERNELS = ('aten', 'frames')
# Convs are timed on at most this many input elements (the time is linear in the batch).
MAX_CONV_ELEMENTS = 2 ** 22


def _conv_args(ndim: int, stride: Sequence[int], padding: Sequence[int], channels: int):
    return (tuple(stride), tuple(padding), (1,) * ndim, False, (0,) * ndim, channels)


def _depthwise(x: torch.Tensor, weight: torch.Tensor, conv_args) -> torch.Tensor:
    return torch.ops.aten.convolution(x, weight, None, *conv_args)


def input_grad_by_conv(grad_out: torch.Tensor, input_shape: Sequence[int],
                       weight: torch.Tensor, stride: Sequence[int],
                       padding: Sequence[int]) -> torch.Tensor:
    """The input gradient of ``depthwise conv(x, weight, stride, padding)`` (no dilation) as a
    forward depthwise conv: ``grad_out`` spread onto a grid of ``input + 2 padding - kernel + 1``
    cells per axis (every stride-th cell, zeros between), correlated with the flipped kernel
    under padding ``kernel - 1 - padding``, which gives exactly ``input_shape``."""
    ndim = grad_out.dim() - 2
    kernel = weight.shape[2:]
    spread_grid = tuple(n + 2 * p - k + 1 for n, p, k in zip(input_shape[2:], padding, kernel))
    if all(s == 1 for s in stride) and spread_grid == tuple(grad_out.shape[2:]):
        spread = grad_out
    else:
        layout = torch.contiguous_format
        if ndim in (2, 3) and not grad_out.is_contiguous():  # keep a channels-last gradient's
            channels_last = torch.channels_last_3d if ndim == 3 else torch.channels_last
            if grad_out.is_contiguous(memory_format=channels_last):
                layout = channels_last
        spread = torch.empty((*grad_out.shape[:2], *spread_grid), dtype=grad_out.dtype,
                             device=grad_out.device, memory_format=layout).zero_()
        cells = tuple(slice(0, (m - 1) * s + 1, s) for m, s in zip(grad_out.shape[2:], stride))
        spread[(slice(None), slice(None)) + cells] = grad_out
    flipped = weight.flip(tuple(range(2, 2 + ndim)))
    back_padding = tuple(k - 1 - p for k, p in zip(kernel, padding))
    return _depthwise(spread, flipped, _conv_args(ndim, (1,) * ndim, back_padding,
                                                  weight.shape[0]))


def _conv_route_applies(weight: torch.Tensor, padding: Sequence[int]) -> bool:
    return all(0 <= p <= k - 1 for p, k in zip(padding, weight.shape[2:]))


def _is_plain_depthwise(pool: nn.Module) -> bool:
    """A bias-free depthwise conv with explicit padding and no dilation."""
    weight = getattr(pool, 'weight', None)
    return (weight is not None and getattr(pool, 'bias', None) is None
            and weight.shape[1] == 1 and pool.groups == weight.shape[0]
            and not isinstance(pool.padding, str) and all(d == 1 for d in pool.dilation))


def weight_grad_by_frames(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                          stride: Sequence[int], padding: Sequence[int]) -> torch.Tensor:
    """The weight gradient of a 3D depthwise conv (no dilation) as one 2D depthwise weight
    gradient per temporal kernel tap: tap ``kt`` pairs output frame ``t`` with input frame
    ``t * stride + kt - padding``; batch and frames are merged into the 2D batch."""
    batch, channels, frames = x.shape[:3]
    out_frames, frame_stride, frame_pad = grad_out.shape[2], stride[0], padding[0]
    conv_args_2d = _conv_args(2, stride[1:], padding[1:], channels)
    grad_w = weight.new_zeros(weight.shape)
    for tap in range(weight.shape[2]):
        met = [t for t in range(out_frames) if 0 <= t * frame_stride + tap - frame_pad < frames]
        if not met:
            continue
        first, count = met[0], len(met)
        source = first * frame_stride + tap - frame_pad
        x_2d = x[:, :, source:source + (count - 1) * frame_stride + 1:frame_stride]
        grad_2d = grad_out[:, :, first:first + count]
        x_2d = x_2d.transpose(1, 2).reshape(batch * count, channels, *x.shape[3:])
        grad_2d = grad_2d.transpose(1, 2).reshape(batch * count, channels, *grad_out.shape[3:])
        grad_w[:, :, tap] = torch.ops.aten.convolution_backward(
            grad_2d, x_2d, weight[:, :, tap].contiguous(), None, *conv_args_2d,
            [False, True, False])[1]
    return grad_w


def _grad_candidates(kind: str, items: int, shape: Tuple[int, ...], kernel: Tuple[int, ...],
                     stride: Tuple[int, ...], padding: Tuple[int, ...]):
    ndim = len(kernel)
    channels = shape[0]
    layout = torch.channels_last_3d if ndim == 3 else torch.channels_last
    x = calibrate.random_tensor(items, *shape, seed=1).contiguous(memory_format=layout)
    weight = calibrate.random_tensor(channels, 1, *kernel, seed=2)
    conv_args = _conv_args(ndim, stride, padding, channels)
    grad_out = calibrate.random_tensor(*_depthwise(x, weight, conv_args).shape, seed=3)
    grad_out = grad_out.contiguous(memory_format=layout)
    wanted = [kind == 'input', kind == 'weight', False]

    def aten() -> None:
        torch.ops.aten.convolution_backward(grad_out, x, weight, None, *conv_args, wanted)
    if kind == 'input':
        return {'aten': aten,
                'conv': lambda: input_grad_by_conv(grad_out, x.shape, weight, stride, padding)}
    return {'aten': aten,
            'frames': lambda: weight_grad_by_frames(grad_out, x, weight, stride, padding)}


def _calibrated(kind: str, default: str, x: torch.Tensor, weight: torch.Tensor,
                stride: Sequence[int], padding: Sequence[int]) -> str:
    per_item = math.prod(x.shape[1:])
    items = calibrate.bucket(x.shape[0], max(1, 1 << int(math.log2(
        max(1, MAX_CONV_ELEMENTS // per_item)))))
    dims = (items, tuple(x.shape[1:]), tuple(weight.shape[2:]), tuple(stride), tuple(padding))
    key = (f'conv_{kind}_grad', items, *x.shape[1:], 'k', *weight.shape[2:], 's', *stride,
           'p', *padding)
    return calibrate.decide(key, default, lambda: _grad_candidates(kind, *dims), x, weight)


def input_grad_kernel(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
                      padding: Sequence[int]) -> str:
    """'conv' or 'aten' for this conv's input gradient: calibrated per shape; without
    calibration 'conv' for 3D convs, 'aten' for 2D (where the spreading of strided gradients
    costs more than it saves; measured on an Intel Xeon)."""
    ndim = x.dim() - 2
    if ndim not in (2, 3) or not _conv_route_applies(weight, padding):
        return 'aten'
    return _calibrated('input', 'conv' if ndim == 3 else 'aten', x, weight, stride, padding)


def weight_grad_kernel(x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int],
                       padding: Sequence[int]) -> str:
    """'frames' or 'aten' for a 3D conv's weight gradient (2D convs: 'aten'): calibrated per
    shape, 'aten' without calibration (the frames route wins for unstrided convs on large
    grids, loses for strided ones; measured on an Intel Xeon)."""
    if x.dim() != 5:
        return 'aten'
    return _calibrated('weight', 'aten', x, weight, stride, padding)


def depthwise_conv_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                            stride: Sequence[int], padding: Sequence[int],
                            routes: Tuple[str, str], needs: Sequence[bool]
                            ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(grad x, grad weight) of a bias-free depthwise conv; ``routes``: the input gradient's
    (one of ``INPUT_GRAD_KERNELS``) and the weight gradient's (``WEIGHT_GRAD_KERNELS``)."""
    conv_args = _conv_args(x.dim() - 2, stride, padding, x.shape[1])
    input_by_conv = routes[0] == 'conv' and needs[0]
    weight_by_frames = routes[1] == 'frames' and needs[1]
    wanted = [needs[0] and not input_by_conv, needs[1] and not weight_by_frames, False]
    grad_x = grad_w = None
    if any(wanted):
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_out, x, weight, None, *conv_args, wanted)
    if input_by_conv:
        grad_x = input_grad_by_conv(grad_out, x.shape, weight, stride, padding)
    if weight_by_frames:
        grad_w = weight_grad_by_frames(grad_out, x, weight, stride, padding)
    return grad_x, grad_w


class _DepthwiseConv(torch.autograd.Function):
    """A bias-free depthwise conv whose gradients take the given ``routes``."""

    @staticmethod
    def forward(ctx, x, weight, stride, padding, routes: Tuple[str, str]):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.routes = stride, padding, routes
        return _depthwise(x, weight, _conv_args(x.dim() - 2, stride, padding, x.shape[1]))

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_x, grad_w = depthwise_conv_backward(grad_out, x, weight, ctx.stride, ctx.padding,
                                                 ctx.routes, ctx.needs_input_grad[:2])
        return grad_x, grad_w, None, None, None


class _PoolNorm(torch.autograd.Function):
    """LayerNorm(depthwise conv(x)) over channels, keeping only x for the backward.

    The conv output (the LayerNorm's input) is recomputed in the backward, which costs one
    cheap depthwise conv and saves storing a tensor per pooled q, k and v.
    """

    @staticmethod
    def forward(ctx, x, conv_weight, norm_weight, norm_bias, stride, padding, eps,
                routes: Tuple[str, str]):
        pooled = _depthwise(x, conv_weight, _conv_args(x.dim() - 2, stride, padding,
                                                       x.shape[1]))
        tokens = pooled.flatten(2).transpose(1, 2)
        out, mean, rstd = torch.native_layer_norm(tokens, (x.shape[1],), norm_weight,
                                                  norm_bias, eps)
        ctx.save_for_backward(x, conv_weight, norm_weight, norm_bias, mean, rstd)
        ctx.stride, ctx.padding, ctx.routes = stride, padding, routes
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, conv_weight, norm_weight, norm_bias, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        pooled = _depthwise(x, conv_weight, _conv_args(x.dim() - 2, ctx.stride, ctx.padding,
                                                       x.shape[1]))
        tokens = pooled.flatten(2).transpose(1, 2)
        grad_tokens, grad_norm_w, grad_norm_b = torch.ops.aten.native_layer_norm_backward(
            grad_out, tokens, (x.shape[1],), mean, rstd, norm_weight, norm_bias,
            [True, needs[2], needs[3]])
        grad_pooled = grad_tokens.transpose(1, 2).view(pooled.shape)
        grad_x, grad_conv_w = depthwise_conv_backward(
            grad_pooled, x, conv_weight, ctx.stride, ctx.padding, ctx.routes, needs[:2])
        return grad_x, grad_conv_w, grad_norm_w, grad_norm_b, None, None, None, None


def pool_then_norm(x: torch.Tensor, pool: nn.Module, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(pool(x).flatten(2).transpose(1, 2))`` for a depthwise, bias-free ``pool`` conv.

    While training, the conv's gradients take the calibrated routes (``input_grad_kernel``,
    ``weight_grad_kernel``); with ``KernelSettings.recompute`` the conv output is not stored
    either. Standard modules run otherwise (inference, autocast, tracing, export,
    compilation).
    """
    if not torch.is_grad_enabled() or capturing_graph() or autocast_enabled(x.device.type) \
            or not (x.requires_grad or pool.weight.requires_grad) or not _is_plain_depthwise(pool):
        return norm(pool(x).flatten(2).transpose(1, 2))
    routes = (input_grad_kernel(x, pool.weight, pool.stride, pool.padding),
              weight_grad_kernel(x, pool.weight, pool.stride, pool.padding))
    if kernel_settings().recompute:
        return _PoolNorm.apply(x, pool.weight, norm.weight, norm.bias, pool.stride,
                               pool.padding, norm.eps, routes)
    pooled = _DepthwiseConv.apply(x, pool.weight, pool.stride, pool.padding, routes)
    return norm(pooled.flatten(2).transpose(1, 2))
