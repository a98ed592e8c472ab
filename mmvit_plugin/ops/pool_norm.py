"""Depthwise pooling conv then LayerNorm over channels; the conv recomputed in the backward."""
import torch
import torch.nn as nn

from .config import autocast_enabled, capturing_graph, kernel_settings


class _PoolNorm(torch.autograd.Function):
    """LayerNorm(depthwise conv(x)) over channels, keeping only x for the backward.

    The conv output (the LayerNorm's input) is recomputed in the backward, which costs one
    cheap depthwise conv and saves storing a tensor per pooled q, k and v.
    """

    @staticmethod
    def forward(ctx, x, conv_weight, norm_weight, norm_bias, stride, padding, eps):
        ndim = x.dim() - 2
        conv_args = (stride, padding, (1,) * ndim, False, (0,) * ndim, x.shape[1])
        pooled = torch.ops.aten.convolution(x, conv_weight, None, *conv_args)
        tokens = pooled.flatten(2).transpose(1, 2)
        out, mean, rstd = torch.native_layer_norm(tokens, (x.shape[1],), norm_weight,
                                                  norm_bias, eps)
        ctx.save_for_backward(x, conv_weight, norm_weight, norm_bias, mean, rstd)
        ctx.conv_args = conv_args
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, conv_weight, norm_weight, norm_bias, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        pooled = torch.ops.aten.convolution(x, conv_weight, None, *ctx.conv_args)
        tokens = pooled.flatten(2).transpose(1, 2)
        grad_tokens, grad_norm_w, grad_norm_b = torch.ops.aten.native_layer_norm_backward(
            grad_out, tokens, (x.shape[1],), mean, rstd, norm_weight, norm_bias,
            [True, needs[2], needs[3]])
        grad_pooled = grad_tokens.transpose(1, 2).view(pooled.shape)
        grad_x, grad_conv_w, _ = torch.ops.aten.convolution_backward(
            grad_pooled, x, conv_weight, None, *ctx.conv_args, [needs[0], needs[1], False])
        return grad_x, grad_conv_w, grad_norm_w, grad_norm_b, None, None, None


def pool_then_norm(x: torch.Tensor, pool: nn.Module, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm(pool(x).flatten(2).transpose(1, 2))`` for a depthwise, bias-free ``pool`` conv.

    While training with ``KernelSettings.recompute`` the conv output is not stored; standard
    modules run otherwise (inference, autocast, tracing, export, compilation).
    """
    if torch.is_grad_enabled() and kernel_settings().recompute and not capturing_graph() \
            and not autocast_enabled(x.device.type):
        return _PoolNorm.apply(x, pool.weight, norm.weight, norm.bias, pool.stride,
                               pool.padding, norm.eps)
    return norm(pool(x).flatten(2).transpose(1, 2))
