"""The canonical MViTv2 key layout and the architecture read off a canonical state dict.

Part of the framework-free core (imports torch and core only). The canonical layout is the
official facebookresearch/mvit and SlowFast one, which the plugin's backbone also uses, plus the
classifier head as ``head.projection.{weight,bias}``; image conv weights are 4-D.
"""
import dataclasses
import re
from dataclasses import dataclass
from typing import Mapping, Optional

import torch

from .arch import MViTv2Arch

HEAD_PREFIX = 'head.projection.'
PATCH_WEIGHT = 'patch_embed.proj.weight'
# The convolutions that gain a time axis in a video model.
CONV_KEY = re.compile(r'^(patch_embed\.proj|blocks\.\d+\.attn\.pool_[qkv])\.weight$')
REL_POS_KEY = re.compile(r'^blocks\.\d+\.attn\.rel_pos_[thw]$')
BLOCK_KEY = re.compile(r'^blocks\.(\d+)\.')


def is_video_conv(weight: Optional[torch.Tensor]) -> bool:
    """A 3-D convolution weight with a real time axis (5-D with T=1 is an image conv)."""
    return weight is not None and weight.dim() == 5 and weight.shape[2] > 1


def is_video_state(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether canonical weights belong to a video (3D) MViTv2."""
    return is_video_conv(state.get(PATCH_WEIGHT))


@dataclass(frozen=True)
class InferredArch:
    """What a state dict says about its model.

    ``arch.with_cls_token`` is ``cls_token_present``: a file may carry a token its model never
    used (the official in1k image files), which the weights alone cannot tell. Fields the
    weights cannot show (patch stride and padding, query and first key/value strides, drop-path
    rate) hold the defaults of the modality.
    """
    arch: MViTv2Arch
    num_classes: Optional[int]  # rows of head.projection.weight; None without a head
    cls_token_present: bool


def _need(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f'cannot read the MViTv2 architecture: key {key!r} is missing '
                         f'(first keys: {sorted(state)[:6]})')
    return state[key]


def infer_arch(state: Mapping[str, torch.Tensor]) -> InferredArch:
    """Widths, depth, heads, stage starts, kernels, cls token and input size off the weights."""
    patch = _need(state, PATCH_WEIGHT)
    video = is_video_conv(patch)
    blocks = {int(m.group(1)) for k in state for m in [BLOCK_KEY.match(k)] if m}
    depth = max(blocks) + 1 if blocks else 0
    if depth == 0 or blocks != set(range(depth)):
        raise ValueError(f'cannot read the MViTv2 architecture: blocks {sorted(blocks)[:10]} '
                         'are not numbered 0..depth-1')
    att_dim0 = _need(state, 'blocks.0.attn.proj.weight').shape[0]
    pool_q0 = _need(state, 'blocks.0.attn.pool_q.weight')
    widening = [i for i in range(depth) if f'blocks.{i}.proj.weight' in state]
    dim_mul_in_att = True
    if widening:
        first = widening[0]
        dim_out = state[f'blocks.{first}.proj.weight'].shape[0]
        dim_mul_in_att = _need(state, f'blocks.{first}.attn.qkv.weight').shape[0] == 3 * dim_out
    stage_starts = tuple(i if dim_mul_in_att else i + 1 for i in widening)
    if len(stage_starts) != 3:
        raise ValueError(f'cannot read the MViTv2 architecture: expected 3 widening blocks '
                         f'(blocks.<i>.proj), found {list(widening)}')
    mlp_hidden = _need(state, 'blocks.0.mlp.fc1.weight').shape[0]
    fields = dict(embed_dim=patch.shape[0], depth=depth, num_heads=att_dim0 // pool_q0.shape[0],
                  stage_starts=stage_starts, dim_mul_in_att=dim_mul_in_att,
                  with_cls_token='cls_token' in state, video=video,
                  mlp_ratio=mlp_hidden / att_dim0, patch_kernel=tuple(patch.shape[2:]),
                  pool_kernel=tuple(pool_q0.shape[2:]))
    # The patch stride comes from the arch's geometry, so build it first with a size that any
    # stride accepts, then with the size the tables were built for.
    probe = MViTv2Arch(**fields, img_size=(2 ** 16,) * (3 if video else 2))
    # Block 0 never pools queries (stage_starts[0] >= 1), so its tables span the patch grid:
    # length 2 * side - 1 per axis.
    axes = 'thw' if video else 'hw'
    grid = [(_need(state, f'blocks.0.attn.rel_pos_{axis}').shape[0] + 1) // 2 for axis in axes]
    img_size = tuple(side * stride for side, stride in zip(grid, probe.patch_stride))
    head = state.get(HEAD_PREFIX + 'weight')
    return InferredArch(arch=dataclasses.replace(probe, img_size=img_size),
                        num_classes=None if head is None else head.shape[0],
                        cls_token_present='cls_token' in state)
