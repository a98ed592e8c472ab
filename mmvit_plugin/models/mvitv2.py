"""MViTv2 backbone: one implementation for images (2D) and inflated video models (3D).

Read it like the official ``attention.py`` + ``mvit_model.py``: patch embedding, pooling
attention (a reference class and a fast one), MLP, block, backbone. Module and parameter names
follow the official facebookresearch/mvit and SlowFast code, so their ``model_state`` dicts load
without renaming (see ``mmvit_plugin.checkpoint`` for other formats). The kernels the fast
classes call live in ``mmvit_plugin.ops``; the architecture table in ``mmvit_plugin.core``.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule

from .. import ops
from ..core.arch import (
    ARCHS,
    NUM_STAGES,
    BlockSpec,
    MViTv2Arch,
    block_specs,
    check_input_size,
    resolve_arch,
)
from ..core.rel_pos import (
    Size,
    decomposed_rel_pos_bias,
    key_coordinate_indicator,
    rel_pos_query_terms,
)
from ..registry import register_model

LN_EPS = 1e-6

# 'plain' builds the reference classes; the others the fast ones with that attention kernel.
ATTN_IMPLS = ('plain',) + ops.ATTENTION_KERNELS


def _split_cls(x: torch.Tensor, with_cls_token: bool, dim: int):
    if with_cls_token:
        # One split, not two narrows: its backward concatenates the two gradients, where each
        # narrow's would build a zero tensor of the whole input and the two would be summed.
        cls_tok, patches = x.split([1, x.shape[dim] - 1], dim)
        return cls_tok, patches
    return None, x


def _channels_first(x: torch.Tensor) -> torch.Tensor:
    """(N, *grid, C) -> (N, C, *grid); positive dims only (the legacy ONNX exporter needs them)."""
    return x.movedim(x.dim() - 1, 1)


class PatchEmbed(nn.Module):
    """Strided conv from pixels to patch tokens, (B, C, [T,] H, W) -> (B, N, dim) and the grid."""

    def __init__(self, arch: MViTv2Arch, in_channels: int) -> None:
        super().__init__()
        conv = nn.Conv3d if arch.video else nn.Conv2d
        self.proj = conv(in_channels, arch.embed_dim, arch.patch_kernel, arch.patch_stride,
                         arch.patch_padding)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Size]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[2:])


# Attention -------------------------------------------------------------------------------------

class PoolingAttention(nn.Module):
    """Multi-head pooling attention with decomposed relative positions and residual pooling.

    The reference implementation (``attn_impl='plain'``): the formula written out with a
    materialised (Nq, Nk) bias and standard layers. Slow; the fast class is tested against it.
    """

    def __init__(self, dim: int, att_dim: int, spec: BlockSpec, arch: MViTv2Arch,
                 qkv_bias: bool = True, residual_pooling: bool = True) -> None:
        super().__init__()
        self.num_heads = spec.num_heads
        self.head_dim = att_dim // spec.num_heads
        self.att_dim = att_dim
        self.scale = self.head_dim ** -0.5
        self.with_cls_token = arch.with_cls_token
        self.residual_pooling = residual_pooling

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

    def _pool(self, x: torch.Tensor, pool: nn.Module, norm: nn.Module,
              size: Size) -> Tuple[torch.Tensor, Size]:
        cls_tok, x = _split_cls(x, self.with_cls_token, dim=2)
        B, heads, N, C = x.shape
        # Heads merged before the grid is unfolded: both in one reshape is a divisibility
        # guard on export's symbolic sizes (which fixes the input size).
        x = pool(_channels_first(x.reshape(B * heads, N, C).unflatten(1, size)))
        pooled_size = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2).reshape(B, heads, -1, C)
        if cls_tok is not None:
            x = torch.cat((cls_tok, x), dim=2)
        return norm(x), pooled_size

    def forward(self, x: torch.Tensor, size: Size,
                residual: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Size]:
        """Attention of the (B, [1 +] N, dim) tokens on the grid ``size``, plus ``residual``."""
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
        out = self.proj(out.transpose(1, 2).reshape(B, -1, self.att_dim))
        return (out if residual is None else out + residual), q_size


class FastPoolingAttention(PoolingAttention):
    """The same attention (same parameters) without building the (Nq, Nk) bias.

    The per-axis terms ``q . R`` are appended to the queries and a one-hot of each key's
    coordinates to the keys, so the one q.k product already contains the relative-position bias
    (``core.rel_pos.rel_pos_query_terms``); the attention core is ``ops.attention`` with
    ``kernel`` (one of ``ops.ATTENTION_KERNELS``), projections go through ``ops.linear``.
    """

    def __init__(self, *args, kernel: str = 'auto', **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kernel = kernel

    def _pool_fast(self, x: torch.Tensor, pool: nn.Module, norm: nn.Module, size: Size
                   ) -> Tuple[Optional[torch.Tensor], torch.Tensor, Size]:
        """(B, heads, [1 +] N, C) -> normed cls (B*heads, 1, C) or None, normed pooled patches
        (B*heads, N', C) and the pooled grid."""
        cls_tok, x = _split_cls(x, self.with_cls_token, dim=2)
        B, heads, N, C = x.shape
        # A dense (B*heads, N, C) is a channels-last (B*heads, C, *size) tensor: the depthwise
        # conv runs on it without a layout change and returns channels-last too.
        grid = _channels_first(x.reshape(B * heads, N, C).contiguous().view(B * heads, *size, C))
        patches = ops.pool_then_norm(grid, pool, norm)
        pooled_size = tuple((side + 2 * pad - kernel) // stride + 1 for side, pad, kernel, stride
                            in zip(size, pool.padding, pool.kernel_size, pool.stride))
        if cls_tok is not None:  # a copy: a view would keep all of qkv alive for the backward
            cls_tok = norm(cls_tok.reshape(B * heads, 1, C).clone())
        return cls_tok, patches, pooled_size

    def forward(self, x: torch.Tensor, size: Size,
                residual: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Size]:
        B, N, _ = x.shape
        heads, C = self.num_heads, self.head_dim
        qkv = ops.linear(x, self.qkv.weight, self.qkv.bias)
        q, k, v = qkv.reshape(B, N, 3, heads, C).permute(2, 0, 3, 1, 4).unbind(0)
        q_cls, q, q_size = self._pool_fast(q, self.pool_q, self.norm_q, size)
        k_cls, k, k_size = self._pool_fast(k, self.pool_k, self.norm_k, size)
        v_cls, v, _ = self._pool_fast(v, self.pool_v, self.norm_v, size)
        if self.with_cls_token:
            k = torch.cat((k_cls, k), dim=1)
            v = torch.cat((v_cls, v), dim=1)
        BH, num_q, _ = q.shape

        terms = rel_pos_query_terms(q, q_size, k_size, self.rel_pos_tables())
        q_terms = torch.cat(terms, dim=-1).view(BH, num_q, -1)
        indicator = key_coordinate_indicator(k_size, int(self.with_cls_token), q.device,
                                             k.dtype)
        out = ops.attention(q, k, v, self.scale, q_terms, indicator,
                            q if self.residual_pooling else None, heads, self.kernel)

        if self.with_cls_token:  # one query, no relative position and no residual
            attn = torch.bmm(q_cls * self.scale, k.transpose(1, 2)).softmax(dim=-1)
            cls_out = torch.bmm(attn, v).view(B, heads * C).unsqueeze(1)
            out = torch.cat((cls_out, out), dim=1)
        return ops.linear(out, self.proj.weight, self.proj.bias, residual=residual), q_size


# MLP and block -----------------------------------------------------------------------------------

class Mlp(nn.Module):
    """fc2(GELU(fc1(x))) (+ residual) with standard layers (the reference)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        out = self.fc2(self.act(self.fc1(x)))
        return out if residual is None else out + residual


class FastMlp(Mlp):
    """The same MLP through ``ops.mlp`` (oneDNN on the CPU; GELU recomputed with ``recompute``)."""

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        return ops.mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                       residual=residual)


class FastLinear(nn.Linear):
    """``nn.Linear`` through ``ops.linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.linear(x, self.weight, self.bias)


def _classes(attn_impl: str):
    """(attention, MLP, linear) classes for ``attn_impl``."""
    if attn_impl not in ATTN_IMPLS:
        raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}')
    if attn_impl == 'plain':
        return PoolingAttention, Mlp, nn.Linear
    return FastPoolingAttention, FastMlp, FastLinear


class MViTv2Block(nn.Module):
    """Pooling attention and MLP, each with a (pooled, projected when widening) shortcut."""

    def __init__(self, spec: BlockSpec, arch: MViTv2Arch, drop_path: float,
                 qkv_bias: bool = True, residual_pooling: bool = True,
                 attn_impl: str = 'auto') -> None:
        super().__init__()
        attn_cls, mlp_cls, linear_cls = _classes(attn_impl)
        dim, dim_out = spec.dim_in, spec.dim_out
        att_dim = dim_out if arch.dim_mul_in_att else dim
        self.dim_mul_in_att = arch.dim_mul_in_att
        self.with_cls_token = arch.with_cls_token
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        kernel = {} if attn_impl == 'plain' else {'kernel': attn_impl}
        self.attn = attn_cls(dim, att_dim, spec, arch, qkv_bias, residual_pooling, **kernel)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(att_dim, eps=LN_EPS)
        self.mlp = mlp_cls(att_dim, int(att_dim * arch.mlp_ratio), dim_out)
        self.proj = linear_cls(dim, dim_out) if dim != dim_out else None
        if any(s > 1 for s in spec.q_stride):
            kernel_size = tuple(s + 1 if s > 1 else s for s in spec.q_stride)
            pool = nn.MaxPool3d if arch.video else nn.MaxPool2d
            self.pool_skip = pool(kernel_size, spec.q_stride, tuple(k // 2 for k in kernel_size))
        else:
            self.pool_skip = None
        self.attn_impl = attn_impl

    def set_attn_impl(self, attn_impl: str) -> None:
        """Switch to another implementation in place, keeping every parameter and buffer.

        The reference and fast classes hold the same submodules and parameters, so the switch
        only changes the class of ``attn``, ``mlp`` and ``proj`` (optimizer state, hooks and
        devices stay valid).
        """
        attn_cls, mlp_cls, linear_cls = _classes(attn_impl)
        self.attn.__class__ = attn_cls
        if attn_impl != 'plain':
            self.attn.kernel = attn_impl
        elif hasattr(self.attn, 'kernel'):
            del self.attn.kernel
        self.mlp.__class__ = mlp_cls
        if self.proj is not None:
            self.proj.__class__ = linear_cls
        self.attn_impl = attn_impl

    def _pooled_shortcut(self, x: torch.Tensor, size: Size) -> torch.Tensor:
        if self.pool_skip is None:
            return x
        cls_tok, x = _split_cls(x, self.with_cls_token, dim=1)
        B, _, C = x.shape
        x = self.pool_skip(_channels_first(x.reshape(B, *size, C)))
        x = x.flatten(2).transpose(1, 2)
        return x if cls_tok is None else torch.cat((cls_tok, x), dim=1)

    def forward(self, x: torch.Tensor, size: Size) -> Tuple[torch.Tensor, Size]:
        # Without drop path the residual adds go into the layers (fused there on fast paths).
        fuse = isinstance(self.drop_path, nn.Identity) or not self.training
        x_norm = self.norm1(x)
        if self.proj is not None and self.dim_mul_in_att:
            x = self.proj(x_norm)
        shortcut = self._pooled_shortcut(x, size)
        if fuse:
            x, out_size = self.attn(x_norm, size, residual=shortcut)
        else:
            attn_out, out_size = self.attn(x_norm, size)
            x = shortcut + self.drop_path(attn_out)
        x_norm = self.norm2(x)
        if self.proj is not None and not self.dim_mul_in_att:
            x = self.proj(x_norm)
        if fuse:
            return self.mlp(x_norm, residual=x), out_size
        return x + self.drop_path(self.mlp(x_norm)), out_size


# Backbone --------------------------------------------------------------------------------------

OUT_TYPES = ('featmap', 'avg_featmap', 'cls_token', 'featmap_and_cls')

# mmaction2's MViT arch names are video models; here the bare names are the image models.
MMACTION_ARCHS = {'small': 'small-16x4', 'base': 'base-32x3', 'large': 'large-40x3'}


def _check_args(in_channels, frozen_stages, drop_path_rate, with_cp, recompute,
                residual_pooling, qkv_bias) -> None:
    def fail(name, value, want):
        raise ValueError(f'MViTv2 argument {name}={value!r}: {want}')

    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        fail('in_channels', in_channels, 'must be an int >= 1 (3 for RGB)')
    if not isinstance(frozen_stages, int) or isinstance(frozen_stages, bool) \
            or not -1 <= frozen_stages <= NUM_STAGES:
        fail('frozen_stages', frozen_stages,
             f'must be an int in -1..{NUM_STAGES} (-1: nothing frozen, 0: the patch embedding, '
             f'n: the patch embedding and the first n stages)')
    if drop_path_rate is not None and not (isinstance(drop_path_rate, (int, float))
                                           and 0.0 <= drop_path_rate < 1.0):
        fail('drop_path_rate', drop_path_rate, 'must be a number in [0, 1) or None (the '
             "arch's published rate)")
    for name, value in (('with_cp', with_cp), ('recompute', recompute),
                        ('residual_pooling', residual_pooling), ('qkv_bias', qkv_bias)):
        if not isinstance(value, bool):
            fail(name, value, 'must be True or False')


def _arch_from_args(arch, img_size, spatial_size, temporal_size) -> Tuple[MViTv2Arch, object]:
    """The arch and the requested input size, with mmaction2's keywords mapped or refused."""
    mmaction_keys = [name for name, value in (('spatial_size', spatial_size),
                                              ('temporal_size', temporal_size))
                     if value is not None]
    if isinstance(arch, str):
        resolved = resolve_arch(arch)
        # Only explicit mmaction2 keywords count: mmengine's default scope is process-global
        # and sticky, so it cannot tell which host a config was written for.
        if not resolved.video and arch.lower() in MMACTION_ARCHS and mmaction_keys:
            video_name = MMACTION_ARCHS[arch.lower()]
            why = f'{" and ".join(mmaction_keys)} (mmaction2 MViT keywords) were given'
            raise ValueError(
                f"MViTv2 arch={arch!r} is the image model here, but {why}: mmaction2's "
                f"MViT {arch!r} is the video model MViTv2 calls {video_name!r}. Set "
                f"arch={video_name!r} (and out_type='featmap_and_cls' for MViTHead), or give "
                'the image arch as a dict of MViTv2Arch fields to build it in this scope.')
    elif isinstance(arch, dict) and img_size is not None and 'img_size' not in arch:
        # A top-level img_size fills the arch dict's (a video dict has no usable default).
        resolved = resolve_arch(dict(arch, img_size=_as_size(img_size, arch)))
    else:
        resolved = resolve_arch(arch)
    if mmaction_keys:
        if not resolved.video:
            raise ValueError(f'MViTv2 {" and ".join(mmaction_keys)} (mmaction2 MViT keywords) '
                             'describe a clip, but this arch is an image model; use img_size')
        if img_size is not None:
            raise ValueError('MViTv2: give either img_size=(frames, height, width) or '
                             "mmaction2's spatial_size/temporal_size, not both")
        frames, height, width = resolved.img_size
        if temporal_size is not None:
            frames = temporal_size
        if spatial_size is not None:
            height = width = spatial_size
        img_size = (frames, height, width)
    return resolved, img_size


def _as_size(img_size, arch: dict):
    if isinstance(img_size, int) and not arch.get('video', False):
        return (img_size, img_size)
    return tuple(img_size) if not isinstance(img_size, int) else img_size


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
        frozen_stages: -1 (nothing), 0 (the patch embedding) or n in 1..4 (the patch embedding
            and the first n stages) are frozen.
        with_cp: activation checkpointing of every block while training.
        recompute: the fast paths keep less for the backward (attention probabilities, GELU
            output, pooling conv output) and recompute it there: less training memory for
            some speed (``ops.use_kernels(recompute=True)`` for this model's forward).
        attn_impl: one of ``ATTN_IMPLS``: 'plain' builds the reference classes
            (``PoolingAttention``, ``Mlp``: a materialised bias, standard layers; slow); the
            others build the fast ones (``FastPoolingAttention``, ``FastMlp``) with that
            attention kernel: 'auto' (oneDNN where it applies, else 'sdpa' while training or on
            a GPU and 'math' for CPU inference), 'onednn' (oneDNN products on the CPU in fp32,
            no attention matrix kept), 'sdpa' (fused attention) or 'math' (explicit attention
            matrix). All give the same result; switch a built model with ``set_attn_impl``.
            Tracing, ONNX export and compilation use standard ops automatically.
        residual_pooling, qkv_bias: MViTv2 switches (on in every published model).
        spatial_size, temporal_size, out_scales: mmaction2 MViT's keywords, accepted for a
            video arch (they set ``img_size`` and ``out_indices``).
        init_cfg: mmengine init config; ``dict(type='Pretrained', checkpoint=...)`` is built
            as the ``MViTv2Pretrained`` weight initializer (every format the checkpoint
            package reads).
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
                 recompute: bool = False,
                 attn_impl: str = 'auto',
                 residual_pooling: bool = True,
                 qkv_bias: bool = True,
                 spatial_size: Optional[int] = None,
                 temporal_size: Optional[int] = None,
                 out_scales: Optional[Union[int, Sequence[int]]] = None,
                 init_cfg: Optional[Union[dict, List[dict]]] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        _check_args(in_channels, frozen_stages, drop_path_rate, with_cp, recompute,
                    residual_pooling, qkv_bias)
        _classes(attn_impl)  # validates the name before anything is built
        self.arch, img_size = _arch_from_args(arch, img_size, spatial_size, temporal_size)
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
        if out_scales is not None:
            if out_indices != -1:
                raise ValueError('MViTv2: give out_indices or out_scales (its mmaction2 '
                                 'name), not both')
            out_indices = out_scales
        self.out_indices = self._normalise_out_indices(out_indices)
        self.frozen_stages = frozen_stages
        self.with_cp = with_cp
        self.recompute = recompute
        self.attn_impl = attn_impl
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
            if not isinstance(index, int) or not -NUM_STAGES <= index < NUM_STAGES:
                raise ValueError(f'out_indices entry {index!r} is out of range: MViTv2 has '
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

    @property
    def num_extra_tokens(self) -> int:
        """Tokens before the patch tokens (the cls token), as mmpretrain's tools read it."""
        return int(self.with_cls_token)

    def set_attn_impl(self, attn_impl: str) -> 'MViTv2':
        """Switch every block to another ``attn_impl`` in place, keeping all parameters."""
        _classes(attn_impl)
        for block in self.blocks:
            block.set_attn_impl(attn_impl)
        self.attn_impl = attn_impl
        return self

    # Initialisation -------------------------------------------------------------------------

    def init_weights(self) -> None:
        init_cfg = self.init_cfg if isinstance(self.init_cfg, dict) else None
        if init_cfg is not None and init_cfg.get('type') == 'Pretrained':
            # Registered by the checkpoint package (which knows every checkpoint format).
            from mmengine.registry import WEIGHT_INITIALIZERS
            initializer = WEIGHT_INITIALIZERS.build(dict(init_cfg, type='MViTv2Pretrained'))
            initializer(self)
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
        last = ([0] + list(self.arch.stage_starts) + [self.arch.depth])[self.frozen_stages]
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
        size = tuple(x.shape[2:])
        if all(type(side) is int for side in size):  # symbolic sizes (export) are not checked
            try:
                check_input_size(size, self.arch, what='input size')
            except ValueError as error:  # the message img_size gets at build, for the input
                raise ValueError(f'MViTv2 input of shape {tuple(x.shape)}: {error}') from None

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
        if self.recompute and not ops.kernel_settings().recompute:
            with ops.use_kernels(recompute=True):
                return self.forward(x)
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


__all__ = ['MViTv2', 'MViTv2Arch', 'ARCHS', 'ATTN_IMPLS', 'BlockSpec', 'block_specs',
           'resolve_arch', 'check_input_size', 'count_parameters', 'PoolingAttention',
           'FastPoolingAttention', 'Mlp', 'FastMlp', 'MViTv2Block', 'PatchEmbed']
