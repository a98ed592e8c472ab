"""What a canonical MViTv2 state dict says about its architecture (pure functions).

Used to name the matching plugin config of a converted file and to decide whether an official
image file's ``cls_token`` is used (in21k, H) or a leftover (in1k T/S/B/L).
"""
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .formats import HEAD_PREFIX, PATCH_WEIGHT

IN21K_CLASSES = 19168
_SIZE_LETTER = {'tiny': 't', 'small': 's', 'base': 'b', 'large': 'l', 'huge': 'h'}


@dataclass(frozen=True)
class CheckpointArch:
    """Architecture read off the weights (what a state dict can tell)."""
    embed_dim: int
    depth: int
    num_heads: int
    stage_starts: Tuple[int, int, int]
    dim_mul_in_att: bool
    has_cls_token: bool
    video: bool
    input_size: Tuple[int, ...]  # (H, W) or (T, H, W) the tables were built for
    mlp_ratio: float
    num_classes: Optional[int]

    def arch_fields(self, with_cls_token: Optional[bool] = None) -> Dict[str, Any]:
        """Fields of ``MViTv2Arch`` for a backbone with these weights."""
        return dict(embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                    stage_starts=self.stage_starts, dim_mul_in_att=self.dim_mul_in_att,
                    with_cls_token=self.has_cls_token if with_cls_token is None
                    else with_cls_token,
                    video=self.video, img_size=self.input_size, mlp_ratio=self.mlp_ratio)


def _need(state: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise ValueError(f'cannot read the MViTv2 architecture: key {key!r} is missing '
                         f'(first keys: {sorted(state)[:6]})')
    return state[key]


def infer_arch(state: Mapping[str, torch.Tensor]) -> CheckpointArch:
    """Read widths, depth, heads, stage starts, cls token and input size off the weights."""
    patch = _need(state, PATCH_WEIGHT)
    video = patch.dim() == 5 and patch.shape[2] > 1
    blocks = {int(m.group(1)) for k in state for m in [re.match(r'blocks\.(\d+)\.', k)] if m}
    depth = max(blocks) + 1 if blocks else 0
    if depth == 0 or blocks != set(range(depth)):
        raise ValueError(f'cannot read the MViTv2 architecture: blocks {sorted(blocks)[:10]} '
                         'are not numbered 0..depth-1')
    att_dim0 = _need(state, 'blocks.0.attn.proj.weight').shape[0]
    head_dim0 = _need(state, 'blocks.0.attn.pool_q.weight').shape[0]
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
    sides = [(_need(state, f'blocks.0.attn.rel_pos_{axis}').shape[0] + 1) // 2 * 4
             for axis in 'hw']
    if video:
        # time keeps every token after the stride-2 patch embedding
        frames = (_need(state, 'blocks.0.attn.rel_pos_t').shape[0] + 1) // 2 * 2
        sides = [frames] + sides
    head = state.get(HEAD_PREFIX + 'weight')
    return CheckpointArch(
        embed_dim=patch.shape[0], depth=depth, num_heads=att_dim0 // head_dim0,
        stage_starts=stage_starts, dim_mul_in_att=dim_mul_in_att,
        has_cls_token='cls_token' in state, video=video, input_size=tuple(sides),
        mlp_ratio=mlp_hidden / att_dim0,
        num_classes=None if head is None else head.shape[0])


def matching_arch_names(arch: CheckpointArch) -> List[str]:
    """Named plugin archs with this shape, cls token ignored (e.g. ['base', 'base-in21k'])."""
    from ..core.arch import ARCHS
    return [name for name, known in ARCHS.items()
            if (known.embed_dim, known.depth, known.num_heads, known.stage_starts,
                known.dim_mul_in_att, known.video, known.mlp_ratio) ==
            (arch.embed_dim, arch.depth, arch.num_heads, arch.stage_starts,
             arch.dim_mul_in_att, arch.video, arch.mlp_ratio)]


def cls_token_from_official_cfg(cfg_yaml: Optional[str]) -> Optional[bool]:
    """``MVIT.CLS_EMBED_ON`` from an official file's YAML config text, if it says."""
    if not cfg_yaml:
        return None
    import yaml
    try:
        cfg = yaml.safe_load(cfg_yaml)
    except yaml.YAMLError:
        return None
    value = cfg.get('MVIT', {}).get('CLS_EMBED_ON') if isinstance(cfg, dict) else None
    return value if isinstance(value, bool) else None


def decide_cls_token(arch: CheckpointArch, fmt: str,
                     cfg_yaml: Optional[str] = None) -> Tuple[bool, str]:
    """Whether the model these weights came from used their cls token, and why we think so.

    The official in1k image files (T, S, B, L) carry a cls_token that the model never used; the
    in21k and H files use theirs. Other formats only hold a cls token when it is used.
    """
    if not arch.has_cls_token:
        return False, 'no cls_token in the file'
    from_cfg = cls_token_from_official_cfg(cfg_yaml)
    if from_cfg is not None:
        return from_cfg, f'the file\'s cfg says MVIT.CLS_EMBED_ON: {from_cfg}'
    if fmt == 'official' and not arch.video and arch.num_classes != IN21K_CLASSES:
        from ..core.arch import ARCHS
        names = matching_arch_names(arch)
        if any(not ARCHS[name].with_cls_token for name in names):
            return False, ('official in1k image files carry an unused cls_token; the matching '
                           f'arch {names[0]!r} has none')
    return True, 'the file holds a cls_token'


def arch_name_for(arch: CheckpointArch, with_cls_token: bool) -> Optional[str]:
    """The plugin arch name matching these weights, or None for a custom size."""
    from ..core.arch import ARCHS
    names = [n for n in matching_arch_names(arch) if ARCHS[n].with_cls_token == with_cls_token]
    return names[0] if names else None


def config_for(arch_name: Optional[str], num_classes: Optional[int]) -> Optional[str]:
    """The plugin config (path from the repository root) of a named arch and head size."""
    if arch_name is None:
        return None
    size, _, variant = arch_name.partition('-')
    letter = _SIZE_LETTER.get(size)
    if letter is None:
        return None
    if variant and variant[0].isdigit():  # video, e.g. small-16x4
        return f'configs/mvitv2_{letter}_{variant}_k400.py'
    dataset = 'imagenet21k' if num_classes == IN21K_CLASSES else 'imagenet'
    return f'configs/mvitv2_{letter}_{dataset}.py'
