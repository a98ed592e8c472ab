"""MViTv2 checkpoint formats and their key maps (pure functions on state dicts).

Every format is converted to and from one *canonical* layout: the official facebookresearch/mvit
and SlowFast names, which the plugin's backbone also uses, plus the classifier head as
``head.projection.{weight,bias}``. Image conv weights are 4-D in the canonical layout (official
files that store them 5-D with T=1 are squeezed). Keys a map does not know pass through
unchanged, so later steps can name them.
"""
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

StateDict = Dict[str, torch.Tensor]

HEAD_PREFIX = 'head.projection.'
PATCH_WEIGHT = 'patch_embed.proj.weight'

FORMATS: Dict[str, str] = OrderedDict([
    ('official', 'facebookresearch/mvit image .pyth: {epoch, model_state, optimizer_state, cfg}'),
    ('slowfast', 'facebookresearch/SlowFast video .pyth: same layout, 3-D convolutions'),
    ('mmpretrain', 'mmpretrain MViT: backbone.patch_embed.projection, backbone.norm3, head.fc'),
    ('mmaction2', 'mmaction2 MViT: backbone.patch_embed.projection (3-D), cls_head.fc_cls'),
    ('timm', 'timm mvitv2_*: stages.<s>.blocks.<j>, shortcut_proj_attn/mlp, head.fc'),
    ('torchvision', 'torchvision mvit_v2_s: conv_proj, pos_encoding.class_token, head.1'),
    ('mmvit', "this plugin's mmengine checkpoints: backbone.patch_embed.proj, head.fc or "
              'cls_head.fc_cls'),
])


class UnknownCheckpointFormatError(ValueError):
    """The state dict matches none of the supported formats."""


def supported_formats_text() -> str:
    return '; '.join(f'{name} ({text})' for name, text in FORMATS.items())


# Unwrapping ------------------------------------------------------------------------------------

def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def unwrap_checkpoint(obj: Any, source: str = 'checkpoint') -> Tuple[StateDict, Dict[str, Any]]:
    """The model weights inside a loaded checkpoint and what else it says about them.

    Understands ``model_state`` (official, SlowFast), ``state_dict`` (mmengine, timm training),
    ``model`` (torchvision reference scripts) and bare state dicts; strips a DDP ``module.``
    prefix. The info dict holds ``wrapper`` and, for official files, ``cfg`` (YAML text).
    """
    if not isinstance(obj, Mapping):
        raise UnknownCheckpointFormatError(
            f'{source}: expected a dict of weights or a checkpoint dict, got '
            f'{type(obj).__name__}. Supported formats: {supported_formats_text()}')
    info: Dict[str, Any] = {}
    for wrapper in ('model_state', 'state_dict', 'model'):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            state, info['wrapper'] = obj[wrapper], wrapper
            break
    else:
        state, info['wrapper'] = obj, None
    if info['wrapper'] == 'model_state' and isinstance(obj.get('cfg'), str):
        info['cfg'] = obj['cfg']
    if isinstance(obj.get('meta'), Mapping):
        info['meta'] = obj['meta']
    tensors = OrderedDict((k, v) for k, v in state.items() if isinstance(v, torch.Tensor))
    if not tensors:
        raise UnknownCheckpointFormatError(
            f'{source}: no tensors found (top-level keys: {sorted(map(str, obj))[:8]}). '
            f'Supported formats: {supported_formats_text()}')
    if all(k.startswith('module.') for k in tensors):
        tensors = OrderedDict((k[len('module.'):], v) for k, v in tensors.items())
    return tensors, info


# Detection -------------------------------------------------------------------------------------

def _is_3d_conv(weight: Optional[torch.Tensor]) -> bool:
    return weight is not None and weight.dim() == 5 and weight.shape[2] > 1


def detect_format(state: Mapping[str, torch.Tensor], source: str = 'checkpoint') -> str:
    """Name of the format a state dict is in (see ``FORMATS``)."""
    keys = set(state)
    if any(re.match(r'stages\.\d+\.blocks\.\d+\.', k) for k in keys):
        return 'timm'
    if 'conv_proj.weight' in keys:
        return 'torchvision'
    if 'backbone.' + PATCH_WEIGHT in keys:
        return 'mmvit'
    mm_patch = state.get('backbone.patch_embed.projection.weight',
                         state.get('patch_embed.projection.weight'))
    if mm_patch is not None:
        video = _is_3d_conv(mm_patch) or any(k.startswith('cls_head.') for k in keys)
        return 'mmaction2' if video else 'mmpretrain'
    if PATCH_WEIGHT in keys:
        return 'slowfast' if _is_3d_conv(state[PATCH_WEIGHT]) else 'official'
    sample = sorted(keys)[:6]
    raise UnknownCheckpointFormatError(
        f'{source}: not an MViTv2 checkpoint of a known format (first keys: {sample}). '
        f'Supported formats: {supported_formats_text()}')


# Key maps --------------------------------------------------------------------------------------

def _rename(state: Mapping[str, torch.Tensor],
            rules: List[Tuple[str, str]]) -> StateDict:
    out = OrderedDict()
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    return out


_MM_TO_CANONICAL = [
    (r'^backbone\.', ''),
    (r'^patch_embed\.projection\.', 'patch_embed.proj.'),
    (r'^norm3\.', 'norm.'),
    (r'^head\.fc\.', HEAD_PREFIX),
    (r'^cls_head\.fc_cls\.', HEAD_PREFIX),
]

_TORCHVISION_TO_CANONICAL = [
    (r'^conv_proj\.', 'patch_embed.proj.'),
    (r'^head\.1\.', HEAD_PREFIX),
    (r'^(blocks\.\d+)\.project\.', r'\1.proj.'),
    (r'^(blocks\.\d+\.attn)\.project\.0\.', r'\1.proj.'),
    (r'^(blocks\.\d+\.attn)\.pool_([qkv])\.pool\.', r'\1.pool_\2.'),
    (r'^(blocks\.\d+\.attn)\.pool_([qkv])\.norm_act\.0\.', r'\1.norm_\2.'),
    (r'^(blocks\.\d+\.mlp)\.0\.', r'\1.fc1.'),
    (r'^(blocks\.\d+\.mlp)\.3\.', r'\1.fc2.'),
]

_CANONICAL_TO_TORCHVISION = [
    (r'^patch_embed\.proj\.', 'conv_proj.'),
    (r'^head\.projection\.', 'head.1.'),
    (r'^(blocks\.\d+)\.proj\.', r'\1.project.'),
    (r'^(blocks\.\d+\.attn)\.proj\.', r'\1.project.0.'),
    (r'^(blocks\.\d+\.attn)\.pool_([qkv])\.', r'\1.pool_\2.pool.'),
    (r'^(blocks\.\d+\.attn)\.norm_([qkv])\.', r'\1.pool_\2.norm_act.0.'),
    (r'^(blocks\.\d+\.mlp)\.fc1\.', r'\1.0.'),
    (r'^(blocks\.\d+\.mlp)\.fc2\.', r'\1.3.'),
]


def _squeeze_unit_time(state: StateDict) -> StateDict:
    """Image files that store convs as 5-D with T=1 become 4-D."""
    patch = state.get(PATCH_WEIGHT)
    if patch is None or patch.dim() != 5 or patch.shape[2] != 1:
        return state
    conv_key = re.compile(r'^(patch_embed\.proj|blocks\.\d+\.attn\.pool_[qkv])\.weight$')
    return OrderedDict((k, v.squeeze(2) if conv_key.match(k) and v.dim() == 5 else v)
                       for k, v in state.items())


def _timm_to_canonical(state: Mapping[str, torch.Tensor]) -> StateDict:
    stage_sizes: Dict[int, int] = {}
    for key in state:
        found = re.match(r'stages\.(\d+)\.blocks\.(\d+)\.', key)
        if found:
            stage, block = int(found.group(1)), int(found.group(2))
            stage_sizes[stage] = max(stage_sizes.get(stage, 0), block + 1)
    offsets, total = {}, 0
    for stage in sorted(stage_sizes):
        offsets[stage], total = total, total + stage_sizes[stage]

    def block_index(found: 're.Match') -> str:
        return f'blocks.{offsets[int(found.group(1))] + int(found.group(2))}.'

    out = OrderedDict()
    for key, value in state.items():
        key = re.sub(r'^stages\.(\d+)\.blocks\.(\d+)\.', block_index, key)
        key = re.sub(r'^(blocks\.\d+)\.shortcut_proj_(attn|mlp)\.', r'\1.proj.', key)
        key = re.sub(r'^head\.fc\.', HEAD_PREFIX, key)
        out[key] = value
    return out


def _canonical_to_timm(state: Mapping[str, torch.Tensor]) -> StateDict:
    from .arch_info import infer_arch  # arch_info imports this module
    arch = infer_arch(state)
    starts = [0] + list(arch.stage_starts)
    shortcut = 'shortcut_proj_attn' if arch.dim_mul_in_att else 'shortcut_proj_mlp'

    def stage_block(found: 're.Match') -> str:
        index = int(found.group(1))
        stage = max(s for s, start in enumerate(starts) if start <= index)
        return f'stages.{stage}.blocks.{index - starts[stage]}.'

    out = OrderedDict()
    for key, value in state.items():
        key = re.sub(r'^(blocks\.\d+)\.proj\.', rf'\1.{shortcut}.', key)
        key = re.sub(r'^blocks\.(\d+)\.', stage_block, key)
        key = re.sub(r'^head\.projection\.', 'head.fc.', key)
        out[key] = value
    return out


def to_canonical(state: Mapping[str, torch.Tensor], fmt: str) -> StateDict:
    """Rename a state dict of format ``fmt`` to the canonical (official) layout."""
    if fmt in ('official', 'slowfast'):
        out = OrderedDict(state)
    elif fmt in ('mmpretrain', 'mmaction2', 'mmvit'):
        rules = _MM_TO_CANONICAL if fmt != 'mmvit' else [
            (r'^backbone\.', ''), (r'^head\.fc\.', HEAD_PREFIX),
            (r'^cls_head\.fc_cls\.', HEAD_PREFIX)]
        out = _rename(state, rules)
    elif fmt == 'timm':
        out = _timm_to_canonical(state)
    elif fmt == 'torchvision':
        out = _rename(state, _TORCHVISION_TO_CANONICAL)
        token = out.pop('pos_encoding.class_token', None)
        if token is not None:
            out = OrderedDict([('cls_token', token.reshape(1, 1, -1))] + list(out.items()))
    else:
        raise UnknownCheckpointFormatError(
            f'unknown format {fmt!r}; supported formats: {supported_formats_text()}')
    return _squeeze_unit_time(out)


def from_canonical(state: Mapping[str, torch.Tensor], fmt: str) -> StateDict:
    """Rename a canonical state dict to format ``fmt`` (inverse of ``to_canonical``)."""
    video = _is_3d_conv(state.get(PATCH_WEIGHT))
    if fmt in ('official', 'slowfast'):
        return OrderedDict(state)
    if fmt in ('mmpretrain', 'mmaction2', 'mmvit'):
        head = {'mmpretrain': 'head.fc.', 'mmaction2': 'cls_head.fc_cls.',
                'mmvit': 'cls_head.fc_cls.' if video else 'head.fc.'}[fmt]
        out = OrderedDict()
        for key, value in state.items():
            if key.startswith(HEAD_PREFIX):
                key = head + key[len(HEAD_PREFIX):]
            else:
                if fmt != 'mmvit':
                    key = re.sub(r'^patch_embed\.proj\.', 'patch_embed.projection.', key)
                    key = re.sub(r'^norm\.', 'norm3.', key)
                key = 'backbone.' + key
            out[key] = value
        return out
    if fmt == 'timm':
        return _canonical_to_timm(state)
    if fmt == 'torchvision':
        out = _rename(state, _CANONICAL_TO_TORCHVISION)
        token = out.pop('cls_token', None)
        if token is not None:
            out = OrderedDict([('pos_encoding.class_token', token.reshape(-1))] +
                              list(out.items()))
        return out
    raise UnknownCheckpointFormatError(
        f'unknown format {fmt!r}; supported formats: {supported_formats_text()}')


def package_checkpoint(state: Mapping[str, torch.Tensor], fmt: str,
                       cfg_yaml: str = '', meta: Optional[dict] = None) -> Any:
    """The object a tool of format ``fmt`` would ``torch.save`` for these (format) weights."""
    if fmt in ('official', 'slowfast'):
        return {'epoch': 0, 'model_state': dict(state), 'optimizer_state': {},
                'cfg': cfg_yaml}
    if fmt in ('mmpretrain', 'mmaction2', 'mmvit'):
        return {'meta': dict(meta or {}), 'state_dict': OrderedDict(state)}
    if fmt in ('timm', 'torchvision'):
        return OrderedDict(state)
    raise UnknownCheckpointFormatError(
        f'unknown format {fmt!r}; supported formats: {supported_formats_text()}')


_MM_MODEL_PREFIXES = ('backbone.', 'head.fc.', 'cls_head.fc_cls.')


def split_other_modules(state: Mapping[str, torch.Tensor],
                        fmt: str) -> Tuple[StateDict, StateDict]:
    """(MViTv2 backbone and head weights, weights of other modules such as a neck).

    Only whole-model mmengine layouts (keys under ``backbone.``) hold other modules.
    """
    if fmt not in ('mmpretrain', 'mmaction2', 'mmvit') or \
            not any(k.startswith('backbone.') for k in state):
        return OrderedDict(state), OrderedDict()
    ours, others = OrderedDict(), OrderedDict()
    for key, value in state.items():
        (ours if key.startswith(_MM_MODEL_PREFIXES) else others)[key] = value
    return ours, others


def head_of(state: Mapping[str, torch.Tensor]) -> StateDict:
    """The canonical head entries of a canonical state dict."""
    return OrderedDict((k, v) for k, v in state.items() if k.startswith(HEAD_PREFIX))


def without_head(state: Mapping[str, torch.Tensor]) -> StateDict:
    return OrderedDict((k, v) for k, v in state.items() if not k.startswith(HEAD_PREFIX))
