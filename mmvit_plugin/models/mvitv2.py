"""MViTv2 backbone: one implementation for images (2D) and inflated video models (3D).

Module and parameter names follow the official facebookresearch/mvit and SlowFast code, so their
``model_state`` dicts load without renaming (see ``mmvit_plugin.checkpoint`` for other formats).
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule

from ..core.arch import (ARCHS, NUM_STAGES, BlockSpec, MViTv2Arch, block_specs,
                         check_input_size, resolve_arch)
from ..core.rel_pos import (Size, decomposed_rel_pos_bias, key_coordinate_indicator,
                            rel_pos_query_terms)
from ..registry import register_model
from . import onednn_ops

LN_EPS = 1e-6


def _split_cls(x: torch.Tensor, with_cls_token: bool, dim: int):
    if with_cls_token:
        return x.narrow(dim, 0, 1), x.narrow(dim, 1, x.shape[dim] - 1)
    return None, x


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
    """``norm(pool(x).flatten(2).transpose(1, 2))`` for a depthwise ``pool`` conv."""
    if torch.is_grad_enabled() and not onednn_ops.autocast_enabled(x.device.type):
        return _PoolNorm.apply(x, pool.weight, norm.weight, norm.bias, pool.stride,
                               pool.padding, norm.eps)
    return norm(pool(x).flatten(2).transpose(1, 2))


ATTN_IMPLS = ('auto', 'onednn', 'sdpa', 'math', 'plain')


def _linear(layer: nn.Linear, x: torch.Tensor, gelu: bool = False,
            residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    return onednn_ops.linear(x, layer.weight, layer.bias, gelu=gelu, residual=residual)


class PoolingAttention(nn.Module):
    """Multi-head pooling attention with decomposed relative positions and residual pooling.

    ``attn_impl`` picks how the attention is computed; all give the same result:

    - 'onednn': per (batch, head) attention with oneDNN matrix products on the CPU (fp32); the
      probabilities are recomputed in the backward, so no attention matrix is stored
      (``onednn_ops.attention``; falls back to 'math' where oneDNN does not apply).
    - 'sdpa': fused ``F.scaled_dot_product_attention`` (no attention matrix is stored).
    - 'math': explicit attention matrix (bmm, softmax, bmm).
    - 'auto': 'onednn' where it applies (CPU, fp32, no autocast), else 'sdpa' while training
      or on a GPU and 'math' for CPU inference (see ``_kernel``).
    - 'plain': the formula written out with a materialised bias tensor and standard layers;
      slow, kept as the reference the others are tested against.

    The fast paths never build the (Nq, Nk) bias: the per-axis terms ``q . R`` are appended to
    the queries and a one-hot of each key's coordinates to the keys, so the one q.k product
    already contains the relative-position bias (``rel_pos.rel_pos_query_terms``).
    """

    def __init__(self, dim: int, att_dim: int, spec: BlockSpec, arch: MViTv2Arch,
                 qkv_bias: bool = True, residual_pooling: bool = True,
                 attn_impl: str = 'auto') -> None:
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}')
        self.num_heads = spec.num_heads
        self.head_dim = att_dim // spec.num_heads
        self.att_dim = att_dim
        self.scale = self.head_dim ** -0.5
        self.with_cls_token = arch.with_cls_token
        self.residual_pooling = residual_pooling
        self.attn_impl = attn_impl

        self.qkv = nn.Linear(dim, att_dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(att_dim, att_dim)
        conv = nn.Conv3d if arch.video else nn.Conv2d
        kernel = arch.pool_kernel
        padding = tuple(k // 2 for k in kernel)
        # Depthwise over head_dim channels, shared by all heads.
        for name, stride in (('q', spec.q_stride), ('k', spec.kv_stride), ('v', spec.kv_stride)):
            self.add_module(f'pool_{name}', conv(self.head_dim, self.head_dim, kernel, stride,
                                                 padding, groups=self.head_dim, bias=False))
            self.add_module(f'norm_{name}', nn.LayerNorm(self.head_dim, eps=LN_EPS))
        *t_len, h_len, w_len = spec.rel_pos_lengths
        self.rel_pos_h = nn.Parameter(torch.zeros(h_len, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(w_len, self.head_dim))
        if t_len:
            self.rel_pos_t = nn.Parameter(torch.zeros(t_len[0], self.head_dim))

    def rel_pos_tables(self) -> List[torch.Tensor]:
        tables = [self.rel_pos_h, self.rel_pos_w]
        return [self.rel_pos_t] + tables if hasattr(self, 'rel_pos_t') else tables

    def _kernel(self, q: torch.Tensor) -> str:
        if self.attn_impl != 'auto':
            return self.attn_impl
        if onednn_ops.usable(q):
            return 'onednn'
        return 'sdpa' if torch.is_grad_enabled() or q.device.type != 'cpu' else 'math'

    # Fast paths -------------------------------------------------------------------------------

    def _pool_fast(self, x: torch.Tensor, pool: nn.Module, norm: nn.Module, size: Size
                   ) -> Tuple[Optional[torch.Tensor], torch.Tensor, Size]:
        """(B, heads, [1 +] N, C) -> normed cls (B*heads, 1, C) or None, normed pooled patches
        (B*heads, N', C) and the pooled grid."""
        cls_tok, x = _split_cls(x, self.with_cls_token, dim=2)
        B, heads, N, C = x.shape
        # A dense (B*heads, N, C) is a channels-last (B*heads, C, *size) tensor: the depthwise
        # conv runs on it without a layout change and returns channels-last too.
        grid = x.reshape(B * heads, N, C).contiguous().view(B * heads, *size, C).movedim(-1, 1)
        patches = pool_then_norm(grid, pool, norm)
        pooled_size = tuple((side + 2 * pad - kernel) // stride + 1 for side, pad, kernel, stride
                            in zip(size, pool.padding, pool.kernel_size, pool.stride))
        if cls_tok is not None:  # a copy: a view would keep all of qkv alive for the backward
            cls_tok = norm(cls_tok.reshape(B * heads, 1, C).clone())
        return cls_tok, patches, pooled_size

    def _forward_fast(self, x: torch.Tensor, size: Size,
                      residual: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Size]:
        B, N, _ = x.shape
        heads, C = self.num_heads, self.head_dim
        qkv = _linear(self.qkv, x).reshape(B, N, 3, heads, C).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q_cls, q, q_size = self._pool_fast(q, self.pool_q, self.norm_q, size)
        k_cls, k, k_size = self._pool_fast(k, self.pool_k, self.norm_k, size)
        v_cls, v, _ = self._pool_fast(v, self.pool_v, self.norm_v, size)
        if self.with_cls_token:
            k = torch.cat((k_cls, k), dim=1)
            v = torch.cat((v_cls, v), dim=1)
        BH, num_q, _ = q.shape

        # Queries extended by their relative-position terms, keys by their coordinates: the
        # q.k product then already holds the decomposed bias.
        terms = rel_pos_query_terms(q, q_size, k_size, self.rel_pos_tables())
        q_terms = torch.cat(terms, dim=-1).view(BH, num_q, -1)
        indicator = key_coordinate_indicator(k_size, int(self.with_cls_token), q.device,
                                             k.dtype)
        extra = indicator.shape[1]
        k_ext = torch.cat((k, indicator.expand(BH, -1, -1)), dim=-1)
        q_res = q if self.residual_pooling else None

        kernel = self._kernel(q)
        if kernel in ('onednn', 'math'):
            out = onednn_ops.attention(q, k_ext, v, self.scale, q_terms, q_res, heads,
                                       allow_onednn=kernel == 'onednn')
        else:  # 'sdpa'
            # Fused kernels want equal q/k/v widths (GPU ones a multiple of 8): zero columns
            # change no logit, and the extra output columns are dropped.
            width = -(-(C + extra) // 8) * 8
            q_ext = F.pad(torch.cat((q * self.scale, q_terms), dim=-1), (0, width - C - extra))

            def heads_first(t: torch.Tensor) -> torch.Tensor:
                t = F.pad(t, (0, width - t.shape[-1]))
                return t.view(B, heads, t.shape[1], width)
            out = F.scaled_dot_product_attention(
                heads_first(q_ext), heads_first(k_ext), heads_first(v), scale=1.0)[..., :C]
            # The fused kernel returns (B, heads, Nq, C) laid out as (B, Nq, heads, C); adding
            # the residual with ``out`` first keeps that layout, so the merge below is free.
            out = out.transpose(1, 2)
            if q_res is not None:
                out = out + q_res.view(B, heads, num_q, C).transpose(1, 2)
            out = out.reshape(B, num_q, self.att_dim)

        if self.with_cls_token:  # one query, no relative position and no residual
            q_cls = F.pad(q_cls * self.scale, (0, extra))
            attn = torch.bmm(q_cls, k_ext.transpose(1, 2)).softmax(dim=-1)
            cls_out = torch.bmm(attn, v).view(B, heads * C).unsqueeze(1)
            out = torch.cat((cls_out, out), dim=1)
        return _linear(self.proj, out, residual=residual), q_size

    # Reference path ----------------------------------------------------------------------------

    def _pool(self, x: torch.Tensor, pool: nn.Module, norm: nn.Module,
              size: Size) -> Tuple[torch.Tensor, Size]:
        cls_tok, x = _split_cls(x, self.with_cls_token, dim=2)
        B, heads, _, C = x.shape
        x = pool(x.reshape(B * heads, *size, C).movedim(-1, 1))
        pooled_size = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2).reshape(B, heads, -1, C)
        if cls_tok is not None:
            x = torch.cat((cls_tok, x), dim=2)
        return norm(x), pooled_size

    def _forward_plain(self, x: torch.Tensor, size: Size) -> Tuple[torch.Tensor, Size]:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, q_size = self._pool(q, self.pool_q, self.norm_q, size)
        k, k_size = self._pool(k, self.pool_k, self.norm_k, size)
        v, _ = self._pool(v, self.pool_v, self.norm_v, size)

        q_patch = q[:, :, 1:] if self.with_cls_token else q
        bias = decomposed_rel_pos_bias(q_patch, q_size, k_size, self.rel_pos_tables())
        if self.with_cls_token:  # the cls row and column get no relative position
            bias = F.pad(bias, (1, 0, 1, 0))
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1)) + bias
        out = torch.matmul(attn.softmax(dim=-1), v)
        if self.residual_pooling:
            out = out + (F.pad(q_patch, (0, 0, 1, 0)) if self.with_cls_token else q)
        out = out.transpose(1, 2).reshape(B, -1, self.att_dim)
        return self.proj(out), q_size

    def forward(self, x: torch.Tensor, size: Size,
                residual: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Size]:
        """Attention of the (B, [1 +] N, dim) tokens on the grid ``size``, plus ``residual``."""
        if self.attn_impl == 'plain':
            out, q_size = self._forward_plain(x, size)
            return out if residual is None else out + residual, q_size
        return self._forward_fast(x, size, residual)


class Mlp(nn.Module):

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                plain: bool = False) -> torch.Tensor:
        """fc2(GELU(fc1(x))) + residual; ``plain`` uses the standard layers only."""
        if plain:
            out = self.fc2(self.act(self.fc1(x)))
            return out if residual is None else out + residual
        return onednn_ops.mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                              residual=residual)


class MViTv2Block(nn.Module):
    """Pooling attention and MLP, each with a (pooled, projected when widening) shortcut."""

    def __init__(self, spec: BlockSpec, arch: MViTv2Arch, drop_path: float,
                 qkv_bias: bool = True, residual_pooling: bool = True,
                 attn_impl: str = 'auto') -> None:
        super().__init__()
        dim, dim_out = spec.dim_in, spec.dim_out
        att_dim = dim_out if arch.dim_mul_in_att else dim
        self.dim_mul_in_att = arch.dim_mul_in_att
        self.with_cls_token = arch.with_cls_token
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = PoolingAttention(dim, att_dim, spec, arch, qkv_bias, residual_pooling,
                                     attn_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(att_dim, eps=LN_EPS)
        self.mlp = Mlp(att_dim, int(att_dim * arch.mlp_ratio), dim_out)
        self.proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        if any(s > 1 for s in spec.q_stride):
            kernel = tuple(s + 1 if s > 1 else s for s in spec.q_stride)
            pool = nn.MaxPool3d if arch.video else nn.MaxPool2d
            self.pool_skip = pool(kernel, spec.q_stride, tuple(k // 2 for k in kernel))
        else:
            self.pool_skip = None

    def _pooled_shortcut(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        if self.pool_skip is None:
            return x
        cls_tok, x = _split_cls(x, self.with_cls_token, dim=1)
        B, _, C = x.shape
        x = self.pool_skip(x.reshape(B, *size, C).movedim(-1, 1))
        x = x.flatten(2).transpose(1, 2)
        return x if cls_tok is None else torch.cat((cls_tok, x), dim=1)

    def forward(self, x: torch.Tensor, size: Size) -> Tuple[torch.Tensor, Size]:
        plain = self.attn.attn_impl == 'plain'
        # Without drop path the residual adds are fused into the projections that precede them.
        fuse = not plain and (isinstance(self.drop_path, nn.Identity) or not self.training)
        proj = (lambda t: self.proj(t)) if plain else (lambda t: _linear(self.proj, t))
        x_norm = self.norm1(x)
        if self.proj is not None and self.dim_mul_in_att:
            x = proj(x_norm)
        shortcut = self._pooled_shortcut(x, size)
        if fuse:
            x, out_size = self.attn(x_norm, size, residual=shortcut)
        else:
            attn_out, out_size = self.attn(x_norm, size)
            x = shortcut + self.drop_path(attn_out)
        x_norm = self.norm2(x)
        if self.proj is not None and not self.dim_mul_in_att:
            x = proj(x_norm)
        if fuse:
            return self.mlp(x_norm, residual=x), out_size
        return x + self.drop_path(self.mlp(x_norm, plain=plain)), out_size


class PatchEmbed(nn.Module):

    def __init__(self, arch: MViTv2Arch, in_channels: int) -> None:
        super().__init__()
        conv = nn.Conv3d if arch.video else nn.Conv2d
        self.proj = conv(in_channels, arch.embed_dim, arch.patch_kernel, arch.patch_stride,
                         arch.patch_padding)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Size]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


OUT_TYPES = ('featmap', 'avg_featmap', 'cls_token', 'featmap_and_cls')


@register_model
class MViTv2(BaseModule):
    """MViTv2 backbone for images (B, C, H, W) and video (B, C, T, H, W).

    Args:
        arch: a name from ``MViTv2.arch_zoo`` or a dict of ``MViTv2Arch`` fields.
        img_size: input size the relative-position tables are built for; other sizes run too
            (tables are interpolated). Defaults to the arch's training size.
        in_channels: input channels.
        out_indices: stages (0-3, negative counts from the end) whose features are returned.
        out_type: 'featmap' (B, C, [T,] H, W), 'avg_featmap' (mean of patch tokens),
            'cls_token', or 'featmap_and_cls' ([featmap, cls_token], as mmaction2's MViTHead
            reads it). Every output is taken after a LayerNorm of a copy of the tokens.
        drop_path_rate: stochastic depth at the last block (linear from 0). Defaults to the
            arch's published rate.
        frozen_stages: freeze the patch embedding (0) and the first ``frozen_stages`` stages.
        with_cp: activation checkpointing of every block while training.
        attn_impl: 'auto' (the faster of 'sdpa' and 'math' for each block and mode), 'sdpa'
            (fused attention), 'math' (explicit attention matrix) or 'plain' (the slow
            reference with a materialised bias); see ``PoolingAttention``.
        residual_pooling, qkv_bias: MViTv2 switches (on in every published model).
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=...)`` accepts
            every format ``mmvit_plugin.checkpoint`` reads.
    """
    arch_zoo = ARCHS

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 img_size: Optional[Union[int, Sequence[int]]] = None,
                 in_channels: int = 3,
                 out_indices: Union[int, Sequence[int]] = -1,
                 out_type: str = 'featmap',
                 drop_path_rate: Optional[float] = None,
                 frozen_stages: int = -1,
                 with_cp: bool = False,
                 attn_impl: str = 'auto',
                 residual_pooling: bool = True,
                 qkv_bias: bool = True,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch = resolve_arch(arch)
        self.video = self.arch.video
        self.img_size = check_input_size(img_size if img_size is not None
                                         else self.arch.img_size, self.arch)
        self.in_channels = in_channels
        self.with_cls_token = self.arch.with_cls_token
        if out_type not in OUT_TYPES:
            raise ValueError(f'out_type must be one of {OUT_TYPES}, got {out_type!r}')
        if out_type in ('cls_token', 'featmap_and_cls') and not self.with_cls_token:
            raise ValueError(f'out_type={out_type!r} needs a cls token, but this arch has '
                             'with_cls_token=False')
        self.out_type = out_type
        self.out_indices = self._normalise_out_indices(out_indices)
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        drop_path_rate = self.arch.drop_path_rate if drop_path_rate is None else drop_path_rate

        self.patch_embed = PatchEmbed(self.arch, in_channels)
        if self.with_cls_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, self.arch.embed_dim))
        self.specs = block_specs(self.arch, self.img_size)
        depth = self.arch.depth
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            MViTv2Block(spec, self.arch, rate, qkv_bias, residual_pooling, attn_impl)
            for spec, rate in zip(self.specs, rates))

        stage_ends = [s - 1 for s in self.arch.stage_starts] + [self.arch.depth - 1]
        self.stage_of_last_block = {block: stage for stage, block in enumerate(stage_ends)}
        self.stage_dims = [self.specs[b].dim_out for b in stage_ends]
        for stage in self.out_indices:
            self.add_module(self._norm_name(stage),
                            nn.LayerNorm(self.stage_dims[stage], eps=LN_EPS))
        self._freeze_stages()

    @staticmethod
    def _normalise_out_indices(out_indices: Union[int, Sequence[int]]) -> Tuple[int, ...]:
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        result = []
        for index in indices:
            if not -NUM_STAGES <= index < NUM_STAGES:
                raise ValueError(f'out_indices entry {index} is out of range: MViTv2 has '
                                 f'{NUM_STAGES} stages (0..{NUM_STAGES - 1}, or negative)')
            result.append(index % NUM_STAGES)
        return tuple(sorted(set(result)))

    @staticmethod
    def _norm_name(stage: int) -> str:
        # The last stage's norm keeps the official name.
        return 'norm' if stage == NUM_STAGES - 1 else f'norm{stage}'

    @property
    def num_features(self) -> int:
        return self.stage_dims[-1]

    # Initialisation -------------------------------------------------------------------------

    def init_weights(self) -> None:
        init_cfg = self.init_cfg if isinstance(self.init_cfg, dict) else None
        if init_cfg is not None and init_cfg.get('type') == 'Pretrained':
            from mmengine.registry import WEIGHT_INITIALIZERS
            WEIGHT_INITIALIZERS.build(dict(init_cfg, type='MViTv2Pretrained'))(self)
            self._is_init = True
            return
        if self.init_cfg:
            super().init_weights()
            return
        self.reset_parameters()
        self._is_init = True

    def reset_parameters(self) -> None:
        """The official initialisation (image: facebookresearch/mvit, video: SlowFast)."""
        for block in self.blocks:
            for table in block.attn.rel_pos_tables():
                nn.init.trunc_normal_(table, std=0.02)
        if self.with_cls_token:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        bias_value = 0.02 if self.video else 0.0
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.constant_(module.bias, bias_value)
            elif isinstance(module, nn.LayerNorm):
                nn.init.constant_(module.weight, 1.0)
                nn.init.constant_(module.bias, bias_value)
            elif self.video and isinstance(module, (nn.Conv2d, nn.Conv3d)):
                nn.init.trunc_normal_(module.weight, std=0.02)

    # Freezing ------------------------------------------------------------------------------

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules: List[nn.Module] = [self.patch_embed]
        last = ([0] + list(self.arch.stage_starts) + [self.arch.depth])[
            min(self.frozen_stages, NUM_STAGES)]
        modules.extend(self.blocks[:last])
        return modules

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0 and self.with_cls_token:
            self.cls_token.requires_grad_(False)
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> 'MViTv2':
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    # Forward -------------------------------------------------------------------------------

    def _check_input(self, x: torch.Tensor) -> None:
        want = 5 if self.video else 4
        if x.dim() != want:
            kind, layout = (('video', '(B, C, T, H, W)') if self.video
                            else ('image', '(B, C, H, W)'))
            hint = ('; build a video arch (e.g. small-16x4, or video=True) for clips'
                    if x.dim() == 5 else '; build an image arch for single images'
                    if x.dim() == 4 else '')
            raise ValueError(f'this MViTv2 is an {kind} model and expects a {want}-D input '
                             f'{layout}, got shape {tuple(x.shape)}{hint}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'MViTv2 was built for in_channels={self.in_channels}, got an '
                             f'input with {x.shape[1]} channels (shape {tuple(x.shape)})')

    def _stage_output(self, x: torch.Tensor, size: Size, stage: int):
        x = getattr(self, self._norm_name(stage))(x)
        cls_tok, patches = _split_cls(x, self.with_cls_token, dim=1)
        if self.out_type == 'avg_featmap':
            return patches.mean(dim=1)
        if self.out_type == 'cls_token':
            return cls_tok.squeeze(1)
        featmap = patches.transpose(1, 2).reshape(x.shape[0], x.shape[2], *size)
        if self.out_type == 'featmap_and_cls':
            return [featmap, cls_tok.squeeze(1)]
        return featmap

    def forward(self, x: torch.Tensor) -> tuple:
        self._check_input(x)
        x, size = self.patch_embed(x)
        if self.with_cls_token:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        outs = []
        for index, block in enumerate(self.blocks):
            if self.with_cp and self.training and x.requires_grad:
                x, size = cp.checkpoint(block, x, size, use_reentrant=False)
            else:
                x, size = block(x, size)
            stage = self.stage_of_last_block.get(index)
            if stage in self.out_indices:
                outs.append(self._stage_output(x, size, stage))
        return tuple(outs)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ['MViTv2', 'MViTv2Arch', 'ARCHS', 'BlockSpec', 'block_specs', 'resolve_arch',
           'check_input_size', 'count_parameters']
