"""From a checkpoint of any supported format to a model's weights (the mmengine-facing glue).

Used by the backbone's ``init_cfg=dict(type='Pretrained', ...)`` (through the
``MViTv2Pretrained`` weight initializer), by ``CheckpointFormatHook`` (runner ``load_from`` and
resume), by ``WeightInflationHook`` and by ``tools/convert_checkpoint.py``. Every path refuses
weights with NaN or Inf values unless the caller allows them.
"""
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from ..core.arch import MViTv2Arch
from ..core.infer import HEAD_PREFIX, is_video_state
from .fit import (
    FINE_TUNING,
    ArchitectureMismatchError,
    FitRules,
    KeyReport,
    StateDict,
    fit_state_dict,
)
from .formats import FORMATS, detect_format, get_format, unwrap_checkpoint
from .inflate import DEFAULT_INFLATION, check_inflation_method, inflate_state_dict
from .safe_load import load_checkpoint_file

MAX_LISTED = 5


class NonFiniteWeightsError(ValueError):
    """The checkpoint holds NaN or Inf weights."""


def check_finite_weights(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse a state dict with NaN or Inf values, naming the file, the count and first keys."""
    bad = [key for key, value in state.items()
           if (value.is_floating_point() or value.is_complex()) and not value.is_meta
           if not bool(torch.isfinite(value).all())]
    if bad:
        raise NonFiniteWeightsError(
            f'{source}: {len(bad)} of {len(state)} weight tensors hold NaN or Inf values, '
            f'first: {bad[:MAX_LISTED]}. Training from them gives non-finite losses. Load it '
            'anyway only on purpose: allow_nonfinite=True (init_cfg, CheckpointFormatHook, '
            'WeightInflationHook) or --allow-nonfinite (tools/convert_checkpoint.py).')


@dataclass
class LoadedCheckpoint:
    """Canonical MViTv2 weights read from a file, with where they came from."""
    source: str
    fmt: str
    state: StateDict
    others: StateDict = field(default_factory=OrderedDict)  # e.g. a neck of an mm model
    info: Dict[str, Any] = field(default_factory=dict)


def canonical_from_object(obj: Any, source: str, src_format: Optional[str] = None,
                          allow_nonfinite: bool = False) -> LoadedCheckpoint:
    """Canonical weights from an already loaded checkpoint object (finite unless allowed)."""
    state, info = unwrap_checkpoint(obj, source)
    if not allow_nonfinite:
        check_finite_weights(state, source)
    fmt = get_format(src_format) if src_format is not None else FORMATS[detect_format(state,
                                                                                      source)]
    ours, others = fmt.split_other_modules(state)
    return LoadedCheckpoint(source, fmt.name, fmt.to_canonical(ours), others, info)


def read_canonical(path: str, trusted: bool = False, src_format: Optional[str] = None,
                   map_location: Any = 'cpu', allow_nonfinite: bool = False) -> LoadedCheckpoint:
    """Read a file safely (see ``safe_load``) and convert it to canonical weights."""
    obj = load_checkpoint_file(path, map_location=map_location, trusted=trusted)
    return canonical_from_object(obj, os.fspath(path), src_format, allow_nonfinite)


# Model layout ----------------------------------------------------------------------------------

def _bare(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def is_mvitv2_backbone(module: Any) -> bool:
    """An MViTv2 backbone: a module whose ``arch`` is a core ``MViTv2Arch``."""
    return isinstance(module, nn.Module) and isinstance(getattr(module, 'arch', None),
                                                        MViTv2Arch)


def model_head_prefixes() -> Tuple[str, ...]:
    """Where this plugin's image and video models keep their classifier head."""
    mmvit = FORMATS['mmvit']
    return tuple(dict.fromkeys((mmvit.head_prefix(False), mmvit.head_prefix(True))))


def model_parts(model: nn.Module) -> Tuple[nn.Module, str, Optional[str]]:
    """(MViTv2 backbone, its key prefix in the model, the head's key prefix or None)."""
    model = _bare(model)
    if is_mvitv2_backbone(model):
        return model, '', None
    backbone = getattr(model, 'backbone', None)
    if not is_mvitv2_backbone(backbone):
        raise TypeError(f'{type(model).__name__} has no MViTv2 backbone (model.backbone is '
                        f'{type(backbone).__name__}, with no MViTv2Arch in .arch)')
    keys = set(model.state_dict())
    head = next((p for p in model_head_prefixes() if p + 'weight' in keys), None)
    return backbone, 'backbone.', head


def canonical_model_state(model: nn.Module) -> StateDict:
    """The model's MViTv2 weights in canonical names (backbone, head as head.projection)."""
    backbone, _, head = model_parts(model)
    state = OrderedDict(backbone.state_dict())
    if head is not None:
        full = _bare(model).state_dict()
        for name in ('weight', 'bias'):
            if head + name in full:
                state[HEAD_PREFIX + name] = full[head + name]
    return state


def model_keys_from_canonical(state: StateDict, backbone_prefix: str,
                              head_prefix: Optional[str]) -> StateDict:
    out = OrderedDict()
    for key, value in state.items():
        if key.startswith(HEAD_PREFIX):
            if head_prefix is not None:
                out[head_prefix + key[len(HEAD_PREFIX):]] = value
        else:
            out[backbone_prefix + key] = value
    return out


def describe_backbone(backbone: nn.Module) -> str:
    arch = getattr(backbone, 'arch', None)
    size = getattr(backbone, 'img_size', None)
    return (f'MViTv2(embed_dim={arch.embed_dim}, depth={arch.depth}, video={arch.video}, '
            f'cls_token={arch.with_cls_token}, img_size={size})') if arch else 'the model'


# Fitting ---------------------------------------------------------------------------------------

def inflation_hint(path: str) -> str:
    return ("initialise a video model from image weights with custom_hooks=[dict("
            f"type='WeightInflationHook', checkpoint={path!r}, method='center')] "
            "(or method='average'), which inflates them when training starts")


def fit_loaded(loaded: LoadedCheckpoint, target: StateDict, rules: FitRules = FINE_TUNING,
               target_name: str = 'the model') -> Tuple[StateDict, KeyReport]:
    """Canonical weights for ``target`` of the file's own modality (2D -> 2D, 3D -> 3D)."""
    source_video, target_video = is_video_state(loaded.state), is_video_state(target)
    if source_video and not target_video:
        raise ArchitectureMismatchError(
            f'{loaded.source} holds video (3D) weights but {target_name} is an image model; '
            'build the video arch instead')
    if target_video and not source_video:
        raise ArchitectureMismatchError(
            f'{loaded.source} holds image (2D) weights but {target_name} is a video model: '
            f'{inflation_hint(loaded.source)}')
    return fit_state_dict(loaded.state, target, rules, loaded.source, target_name)


def log_report(report: KeyReport, header: str, every_key: bool,
               logger: Any = 'current') -> None:
    """One summary line, then a line per key (``every_key``) or per key not simply copied."""
    print_log(f'{header}: {report.summary()}', logger=logger)
    for line in report.lines(skip_copied=not every_key):
        print_log(f'  {line}', logger=logger)


# Entry points ----------------------------------------------------------------------------------

def load_into_backbone(backbone: nn.Module, path: str, trusted: bool = False,
                       src_format: Optional[str] = None, map_location: Any = 'cpu',
                       allow_nonfinite: bool = False) -> KeyReport:
    """Backbone weights only (the file's head is ignored), tables interpolated to the
    backbone's input size; keys a fine-tuned model may add keep the official init."""
    if not is_mvitv2_backbone(backbone):
        raise TypeError(f'{type(backbone).__name__} is not an MViTv2 backbone')
    if hasattr(backbone, 'reset_parameters'):
        backbone.reset_parameters()  # keys the file lacks get the official init
    loaded = read_canonical(path, trusted=trusted, src_format=src_format,
                            map_location=map_location, allow_nonfinite=allow_nonfinite)
    report = KeyReport()
    for key in list(loaded.state):
        if key.startswith(HEAD_PREFIX):
            del loaded.state[key]
            report.add(key, 'dropped', 'init_cfg loads backbone weights only')
    state, fitted = fit_loaded(loaded, OrderedDict(backbone.state_dict()),
                               target_name=describe_backbone(backbone))
    report.extend(fitted)
    backbone.load_state_dict(state, strict=True)
    log_report(report, f'MViTv2 init_cfg: loaded {loaded.fmt} checkpoint {loaded.source}',
               every_key=False)
    return report


def _fits_as_is(state: Mapping[str, torch.Tensor], model_state: Mapping[str, torch.Tensor]
                ) -> bool:
    return all(k in state and state[k].shape == v.shape for k, v in model_state.items())


def convert_checkpoint_for_model(checkpoint: dict, model: nn.Module,
                                 source: str = 'load_from', logger: Any = 'current',
                                 allow_nonfinite: bool = False) -> Optional[KeyReport]:
    """Rewrite a loaded checkpoint in place so mmengine can load it into ``model``.

    Sets ``checkpoint['state_dict']`` to the model's key layout. A checkpoint that already
    fits the model exactly (the runner's own files, e.g. when resuming) is left untouched and
    None is returned. Weights with NaN or Inf values are refused unless ``allow_nonfinite``;
    a 2D checkpoint for a 3D model is refused (inflation is ``WeightInflationHook``'s job).
    """
    loaded = canonical_from_object(checkpoint, source, allow_nonfinite=allow_nonfinite)
    backbone, backbone_prefix, head_prefix = model_parts(model)
    if loaded.fmt == 'mmvit':
        state, _ = unwrap_checkpoint(checkpoint, source)
        if _fits_as_is(state, _bare(model).state_dict()):
            return None
    state, report = fit_loaded(loaded, canonical_model_state(model),
                               target_name=describe_backbone(backbone))
    new_state = model_keys_from_canonical(state, backbone_prefix, head_prefix)
    new_state.update(loaded.others)
    checkpoint['state_dict'] = new_state
    log_report(report, f'converted {loaded.fmt} checkpoint {source}', every_key=False,
               logger=logger)
    return report


def inflate_into_model(model: nn.Module, path: str, method: str = DEFAULT_INFLATION,
                       trusted: bool = False, logger: Any = 'current',
                       allow_nonfinite: bool = False) -> KeyReport:
    """Load a 2D checkpoint (any format) into a video model by inflation, head included when
    the class counts match. A file that is already 3D loads without inflation."""
    check_inflation_method(method, 'WeightInflationHook method')
    backbone, backbone_prefix, head_prefix = model_parts(model)
    loaded = read_canonical(path, trusted=trusted, allow_nonfinite=allow_nonfinite)
    target = canonical_model_state(model)
    inflated = is_video_state(target) and not is_video_state(loaded.state)
    if inflated:
        state, report = inflate_state_dict(loaded.state, target, method, loaded.source,
                                           describe_backbone(backbone))
    else:
        state, report = fit_loaded(loaded, target, target_name=describe_backbone(backbone))
    model_state = model_keys_from_canonical(state, backbone_prefix, head_prefix)
    missing, unexpected = _bare(model).load_state_dict(model_state, strict=False)
    if unexpected:
        raise RuntimeError(f'internal error: unexpected keys {unexpected[:5]}')
    what = f'inflated 2D -> 3D ({method})' if inflated else 'loaded (already 3D, no inflation)'
    log_report(report, f'WeightInflationHook: {what} {loaded.fmt} checkpoint {path}',
               every_key=True, logger=logger)
    return report
