"""The registry of checkpoint formats: every module of this package defines one ``FORMAT``.

Every format converts to and from one canonical layout (see ``mmvit_plugin.core.infer``).
Adding a format is one new module here (a :class:`CheckpointFormat` subclass and ``FORMAT``)
plus its test; detection, the converter's choices and README's table follow from the registry.
"""
import importlib
import pkgutil
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from .base import CheckpointFormat, RenameFormat, StateDict

__all__ = ['CheckpointFormat', 'RenameFormat', 'FORMATS', 'UnknownCheckpointFormatError',
           'detect_format', 'from_canonical', 'get_format', 'markdown_table',
           'package_checkpoint', 'supported_formats_text', 'to_canonical', 'unwrap_checkpoint']


class UnknownCheckpointFormatError(ValueError):
    """The state dict matches none of the supported formats."""


def _discover() -> Dict[str, CheckpointFormat]:
    found: List[CheckpointFormat] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == 'base' or info.name.startswith('_'):
            continue
        module = importlib.import_module(f'{__name__}.{info.name}')
        fmt = getattr(module, 'FORMAT', None)
        if not isinstance(fmt, CheckpointFormat):
            raise TypeError(f'{module.__name__} defines no FORMAT (a CheckpointFormat)')
        found.append(fmt)
    found.sort(key=lambda fmt: fmt.priority)
    for fmt, after in zip(found, found[1:]):
        if fmt.name == after.name or fmt.priority == after.priority:
            raise ValueError(f'checkpoint formats {fmt.name!r} and {after.name!r} share a '
                             'name or a priority')
    return OrderedDict((fmt.name, fmt) for fmt in found)


#: name -> format, in detection order.
FORMATS: Dict[str, CheckpointFormat] = _discover()


def supported_formats_text() -> str:
    return '; '.join(f'{name} ({fmt.description})' for name, fmt in FORMATS.items())


def get_format(name: str) -> CheckpointFormat:
    if name not in FORMATS:
        raise UnknownCheckpointFormatError(
            f'unknown format {name!r}; supported formats: {supported_formats_text()}')
    return FORMATS[name]


def markdown_table() -> str:
    """README's table of formats, in detection order."""
    rows = ['| format | files | recognised by (checked in this order) | head |',
            '|---|---|---|---|']
    for fmt in FORMATS.values():
        heads = dict.fromkeys((fmt.head_prefix(False), fmt.head_prefix(True)))
        head = ' / '.join(f'`{h.rstrip(".")}`' for h in heads)
        rows.append(f'| {fmt.name} | {fmt.description} | {fmt.signature} | {head} |')
    return '\n'.join(rows)


def _is_tensor_dict(obj: Any) -> bool:
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


def detect_format(state: Mapping[str, torch.Tensor], source: str = 'checkpoint') -> str:
    """Name of the first format (by priority) that recognises the state dict."""
    for name, fmt in FORMATS.items():
        if fmt.detect(state):
            return name
    raise UnknownCheckpointFormatError(
        f'{source}: not an MViTv2 checkpoint of a known format (first keys: '
        f'{sorted(state)[:6]}). Supported formats: {supported_formats_text()}')


def to_canonical(state: Mapping[str, torch.Tensor], fmt: str) -> StateDict:
    """Rename a state dict of format ``fmt`` to the canonical layout."""
    return get_format(fmt).to_canonical(state)


def from_canonical(state: Mapping[str, torch.Tensor], fmt: str) -> StateDict:
    """Rename a canonical state dict to format ``fmt`` (inverse of ``to_canonical``)."""
    return get_format(fmt).from_canonical(state)


def package_checkpoint(state: Mapping[str, torch.Tensor], fmt: str, cfg_yaml: str = '',
                       meta: Optional[dict] = None) -> Any:
    """The object a tool of format ``fmt`` would ``torch.save`` for these (format) weights."""
    return get_format(fmt).package(state, cfg_yaml=cfg_yaml, meta=meta)
