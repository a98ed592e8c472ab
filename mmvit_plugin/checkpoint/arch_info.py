"""Which published MViTv2 a checkpoint's inferred architecture is, and whether its file's
``cls_token`` was used (in21k, H) or is a leftover (in1k T/S/B/L official image files)."""
import dataclasses
from typing import List, Optional, Tuple

from ..core.arch import ARCHS, MViTv2Arch
from ..core.infer import InferredArch

IN21K_CLASSES = 19168
# Fields a state dict cannot show, or that do not change the weights' shapes.
_NOT_IN_WEIGHTS = ('with_cls_token', 'img_size', 'drop_path_rate')


def _shape_fields(arch: MViTv2Arch) -> dict:
    fields = dataclasses.asdict(arch)
    for name in _NOT_IN_WEIGHTS:
        fields.pop(name)
    return fields


def matching_arch_names(arch: MViTv2Arch) -> List[str]:
    """Named plugin archs with this shape and geometry, cls token ignored
    (e.g. ['base', 'base-in21k'])."""
    wanted = _shape_fields(arch)
    return [name for name, known in ARCHS.items() if _shape_fields(known) == wanted]


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


def decide_cls_token(inferred: InferredArch, fmt: str,
                     cfg_yaml: Optional[str] = None) -> Tuple[bool, str]:
    """Whether the model these weights came from used their cls token, and why we think so.

    The official in1k image files (T, S, B, L) carry a cls_token that the model never used; the
    in21k and H files use theirs. Other formats only hold a cls token when it is used.
    """
    if not inferred.cls_token_present:
        return False, 'no cls_token in the file'
    from_cfg = cls_token_from_official_cfg(cfg_yaml)
    if from_cfg is not None:
        return from_cfg, f'the file\'s cfg says MVIT.CLS_EMBED_ON: {from_cfg}'
    if fmt == 'official' and not inferred.arch.video and \
            inferred.num_classes != IN21K_CLASSES:
        names = matching_arch_names(inferred.arch)
        if any(not ARCHS[name].with_cls_token for name in names):
            return False, ('official in1k image files carry an unused cls_token; the matching '
                           f'arch {names[0]!r} has none')
    return True, 'the file holds a cls_token'


def arch_name_for(arch: MViTv2Arch, with_cls_token: bool) -> Optional[str]:
    """The plugin arch name matching these weights, or None for a custom size."""
    names = [n for n in matching_arch_names(arch) if ARCHS[n].with_cls_token == with_cls_token]
    return names[0] if names else None
