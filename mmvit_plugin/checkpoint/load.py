"""From a checkpoint of any supported format to a model's weights (the mmengine-facing glue).

Used by the backbone's ``init_cfg=dict(type='Pretrained', ...)``, by ``CheckpointFormatHook``
(runner ``load_from``), by ``WeightInflationHook`` and by ``tools/convert_checkpoint.py``.
"""
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from .adapt import (ArchitectureMismatchError, KeyReport, StateDict, default_allow_new,
                    fit_to_target)
from .formats import (FORMATS, HEAD_PREFIX, UnknownCheckpointFormatError, detect_format,
                      split_other_modules, supported_formats_text, to_canonical,
                      unwrap_checkpoint)
from .inflate import DEFAULT_INFLATION, INFLATION_METHODS, inflate_state_dict, is_video_state
from .safe_load import load_checkpoint_file

MODEL_HEAD_PREFIXES = ('head.fc.', 'cls_head.fc_cls.')
INIT_CFG_FIELDS = ('type', 'checkpoint', 'inflate', 'trusted', 'src_format', 'map_location',
                   'prefix')


@dataclass
class LoadedCheckpoint:
    """Canonical MViTv2 weights read from a file, with where they came from."""
    source: str
    fmt: str
    state: StateDict
    others: StateDict = field(default_factory=OrderedDict)  # e.g. a neck of an mm model
    info: Dict[str, Any] = field(default_factory=dict)


def canonical_from_object(obj: Any, source: str,
                          src_format: Optional[str] = None) -> LoadedCheckpoint:
    """Canonical weights from an already loaded checkpoint object."""
    state, info = unwrap_checkpoint(obj, source)
    fmt = detect_format(state, source)
    if src_format is not None:
        if src_format not in FORMATS:
            raise UnknownCheckpointFormatError(
                f'unknown source format {src_format!r}; supported formats: '
                f'{supported_formats_text()}')
        fmt = src_format
    ours, others = split_other_modules(state, fmt)
    return LoadedCheckpoint(source, fmt, to_canonical(ours, fmt), others, info)


def read_canonical(path: str, trusted: bool = False, src_format: Optional[str] = None,
                   map_location: Any = 'cpu') -> LoadedCheckpoint:
    """Read a file safely (see ``safe_load``) and convert it to canonical weights."""
    obj = load_checkpoint_file(path, map_location=map_location, trusted=trusted)
    return canonical_from_object(obj, os.fspath(path), src_format)


# Model layout ----------------------------------------------------------------------------------

def _bare(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def model_parts(model: nn.Module) -> Tuple[nn.Module, str, Optional[str]]:
    """(MViTv2 backbone, its key prefix in the model, the head's key prefix or None)."""
    from ..models.mvitv2 import MViTv2
    model = _bare(model)
    if isinstance(model, MViTv2):
        return model, '', None
    backbone = getattr(model, 'backbone', None)
    if not isinstance(backbone, MViTv2):
        raise TypeError(f'{type(model).__name__} has no MViTv2 backbone (model.backbone is '
                        f'{type(backbone).__name__})')
    keys = set(model.state_dict())
    head = next((p for p in MODEL_HEAD_PREFIXES if p + 'weight' in keys), None)
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


def _describe(backbone: nn.Module) -> str:
    arch = getattr(backbone, 'arch', None)
    size = getattr(backbone, 'img_size', None)
    return (f'MViTv2(embed_dim={arch.embed_dim}, depth={arch.depth}, video={arch.video}, '
            f'cls_token={arch.with_cls_token}, img_size={size})') if arch else 'the model'


# Fitting ---------------------------------------------------------------------------------------

def fit_loaded(loaded: LoadedCheckpoint, target: StateDict, inflate: Optional[str] = None,
               allow_new: Optional[Callable[[str], bool]] = default_allow_new,
               target_name: str = 'the model') -> Tuple[StateDict, KeyReport, bool]:
    """Canonical weights for ``target`` (inflating 2D -> 3D when needed); also says whether
    it inflated."""
    if inflate is not None and inflate not in INFLATION_METHODS:
        raise ValueError(f'inflate must be one of {INFLATION_METHODS} or None, got {inflate!r}')
    source_video, target_video = is_video_state(loaded.state), is_video_state(target)
    if target_video and not source_video:
        state, report = inflate_state_dict(loaded.state, target, inflate or DEFAULT_INFLATION,
                                           loaded.source, target_name)
        return state, report, True
    if source_video and not target_video:
        raise ArchitectureMismatchError(
            f'{loaded.source} holds video (3D) weights but {target_name} is an image model; '
            'build the video arch instead')
    state, report = fit_to_target(loaded.state, target, allow_new, loaded.source, target_name)
    return state, report, False


def log_report(report: KeyReport, header: str, every_key: bool,
               logger: Any = 'current') -> None:
    """One summary line, then a line per key (``every_key``) or per key not simply copied."""
    print_log(f'{header}: {report.summary()}', logger=logger)
    for line in report.lines(skip_copied=not every_key):
        print_log(f'  {line}', logger=logger)


# Entry points ----------------------------------------------------------------------------------

def init_backbone_from_checkpoint(backbone: nn.Module, init_cfg: dict) -> None:
    """Backbone ``init_cfg=dict(type='Pretrained', checkpoint=PATH, ...)`` for any format.

    Backbone weights only (the file's head is ignored); relative-position tables are
    interpolated to the backbone's input size; a 2D file into a 3D backbone is inflated.
    Keys the file lacks but a fine-tuned model may add (a cls token, per-stage output norms,
    rel_pos_t when inflating) keep the official initialisation.

    init_cfg fields: ``checkpoint`` (path), ``inflate`` ('center' or 'average'; default
    ``DEFAULT_INFLATION`` when inflation is needed), ``trusted`` (allow full unpickling of a
    file you trust; default False), ``src_format`` (skip detection), ``map_location``.
    """
    unknown = set(init_cfg) - set(INIT_CFG_FIELDS)
    if unknown:
        raise ValueError(f'init_cfg of type Pretrained has unknown fields {sorted(unknown)}; '
                         f'known: {list(INIT_CFG_FIELDS)}')
    if 'checkpoint' not in init_cfg:
        raise ValueError("init_cfg of type Pretrained needs 'checkpoint' (a file path)")
    prefix = init_cfg.get('prefix')
    if prefix not in (None, 'backbone', 'backbone.'):
        raise ValueError(f"init_cfg prefix={prefix!r}: the MViTv2 loader finds the backbone "
                         "weights itself; leave prefix out (or 'backbone.')")
    if hasattr(backbone, 'reset_parameters'):
        backbone.reset_parameters()  # keys the file lacks get the official init
    loaded = read_canonical(init_cfg['checkpoint'], trusted=init_cfg.get('trusted', False),
                            src_format=init_cfg.get('src_format'),
                            map_location=init_cfg.get('map_location', 'cpu'))
    report = KeyReport()
    for key in list(loaded.state):
        if key.startswith(HEAD_PREFIX):
            del loaded.state[key]
            report.add(key, 'dropped', 'init_cfg loads backbone weights only')
    target = OrderedDict(backbone.state_dict())
    state, fitted, inflated = fit_loaded(loaded, target, init_cfg.get('inflate'),
                                         target_name=_describe(backbone))
    report.extend(fitted)
    backbone.load_state_dict(state, strict=True)
    what = 'inflated 2D -> 3D' if inflated else 'loaded'
    log_report(report, f'MViTv2 init_cfg: {what} {loaded.fmt} checkpoint {loaded.source}',
               every_key=inflated)


def convert_checkpoint_for_model(checkpoint: dict, model: nn.Module,
                                 inflate: Optional[str] = None,
                                 source: str = 'load_from',
                                 logger: Any = 'current') -> Optional[KeyReport]:
    """Rewrite a loaded checkpoint in place so mmengine can load it into ``model``.

    Sets ``checkpoint['state_dict']`` to the model's key layout. A checkpoint that already
    fits the model exactly (the runner's own files, e.g. when resuming) is left untouched and
    None is returned. A 2D checkpoint for a 3D model is inflated only when ``inflate`` names
    a method.
    """
    loaded = canonical_from_object(checkpoint, source)
    backbone, backbone_prefix, head_prefix = model_parts(model)
    if loaded.fmt == 'mmvit':
        model_state = _bare(model).state_dict()
        state, _ = unwrap_checkpoint(checkpoint, source)
        if all(k in state and state[k].shape == v.shape for k, v in model_state.items()):
            return None
    target = canonical_model_state(model)
    if is_video_state(target) and not is_video_state(loaded.state) and inflate is None:
        raise ArchitectureMismatchError(
            f'{source} holds image (2D) weights and the model is a video MViTv2: set '
            f"CheckpointFormatHook(inflate='center' or 'average') or use WeightInflationHook")
    state, report, inflated = fit_loaded(loaded, target, inflate,
                                         target_name=_describe(backbone))
    new_state = model_keys_from_canonical(state, backbone_prefix, head_prefix)
    new_state.update(loaded.others)
    checkpoint['state_dict'] = new_state
    what = 'inflated 2D -> 3D' if inflated else 'converted'
    log_report(report, f'{what} {loaded.fmt} checkpoint {source}', every_key=inflated,
               logger=logger)
    return report


def inflate_into_model(model: nn.Module, path: str, method: str = DEFAULT_INFLATION,
                       trusted: bool = False, logger: Any = 'current') -> KeyReport:
    """Load a 2D checkpoint (any format) into a video model by inflation, head included when
    the class counts match. A file that is already 3D loads without inflation."""
    backbone, backbone_prefix, head_prefix = model_parts(model)
    loaded = read_canonical(path, trusted=trusted)
    target = canonical_model_state(model)
    state, report, inflated = fit_loaded(loaded, target, method,
                                         target_name=_describe(backbone))
    model_state = model_keys_from_canonical(state, backbone_prefix, head_prefix)
    missing, unexpected = _bare(model).load_state_dict(model_state, strict=False)
    if unexpected:
        raise RuntimeError(f'internal error: unexpected keys {unexpected[:5]}')
    what = f'inflated 2D -> 3D ({method})' if inflated else 'loaded (already 3D, no inflation)'
    log_report(report, f'WeightInflationHook: {what} {loaded.fmt} checkpoint {path}',
               every_key=True, logger=logger)
    return report
