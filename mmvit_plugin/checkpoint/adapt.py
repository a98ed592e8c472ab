"""Fitting canonical weights to a model's own state dict (pure functions).

``fit_to_target`` copies what matches, interpolates relative-position tables whose length
differs (another input size or frame count), keeps the target's fresh values for keys the
caller allows to be new, drops a cls token the target does not have, and otherwise refuses
with :class:`ArchitectureMismatchError` naming the first offending keys and shapes. Every key
ends up in a :class:`KeyReport`.
"""
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch

from ..core.rel_pos import resize_rel_pos_table
from .formats import HEAD_PREFIX

StateDict = Dict[str, torch.Tensor]

REL_POS_KEY = re.compile(r'^blocks\.\d+\.attn\.rel_pos_[thw]$')
STAGE_NORM_KEY = re.compile(r'^norm[0-2]\.(weight|bias)$')
MAX_LISTED = 5


@dataclass(frozen=True)
class KeyEvent:
    key: str
    action: str  # copied, interpolated, inflated, newly initialised, dropped
    detail: str = ''

    def line(self) -> str:
        return f'{self.action}: {self.key}' + (f' ({self.detail})' if self.detail else '')


class KeyReport:
    """What happened to every key: one event per key of the result or of the source."""

    def __init__(self) -> None:
        self.events: List[KeyEvent] = []

    def add(self, key: str, action: str, detail: str = '') -> None:
        self.events.append(KeyEvent(key, action, detail))

    def extend(self, other: 'KeyReport', prefix: str = '') -> None:
        self.events += [KeyEvent(prefix + e.key, e.action, e.detail) for e in other.events]

    def counts(self) -> Dict[str, int]:
        return dict(Counter(e.action for e in self.events))

    def keys_with(self, action: str) -> List[str]:
        return [e.key for e in self.events if e.action == action]

    def summary(self) -> str:
        return ', '.join(f'{n} {action}' for action, n in self.counts().items())

    def lines(self, skip_copied: bool = False) -> List[str]:
        return [e.line() for e in self.events if not (skip_copied and e.action == 'copied')]


class ArchitectureMismatchError(ValueError):
    """The weights belong to another architecture than the model."""


def _shape(t: torch.Tensor) -> Tuple[int, ...]:
    return tuple(t.shape)


def mismatch_message(source: str, target_name: str,
                     shape_mismatches: List[Tuple[str, tuple, tuple]],
                     missing: List[str], unexpected: List[str]) -> str:
    """A readable account of why weights do not fit, first few keys of each kind."""
    parts = [f'{source} does not fit {target_name}: the weights are from another '
             'architecture (or need a conversion this loader does not do).']
    if shape_mismatches:
        listed = '; '.join(f'{k}: file {s} vs model {t}'
                           for k, s, t in shape_mismatches[:MAX_LISTED])
        parts.append(f'{len(shape_mismatches)} shape mismatches, first: {listed}')
    if missing:
        parts.append(f'{len(missing)} model keys missing from the file, first: '
                     f'{missing[:MAX_LISTED]}')
    if unexpected:
        parts.append(f'{len(unexpected)} file keys the model does not have, first: '
                     f'{unexpected[:MAX_LISTED]}')
    return '\n  '.join(parts)


def default_allow_new(key: str) -> bool:
    """Keys a fine-tuning load may leave at their fresh init: a cls token the source model did
    not have, and the per-stage output norms (norm0..norm2) of a multi-scale backbone."""
    return key == 'cls_token' or bool(STAGE_NORM_KEY.match(key))


def _fit_head(key: str, value: Optional[torch.Tensor], fresh: torch.Tensor,
              result: StateDict, report: KeyReport) -> None:
    """Heads are kept when their class count matches, else the model keeps its fresh head."""
    if value is None:
        result[key] = fresh
        report.add(key, 'newly initialised', 'the file has no classifier head')
    elif value.shape == fresh.shape:
        result[key] = value
        report.add(key, 'copied')
    else:
        result[key] = fresh
        report.add(key, 'dropped', f'file head {_shape(value)} vs model head {_shape(fresh)}: '
                   'another class count')
        report.add(key, 'newly initialised', 'fresh head of the model')


def fit_to_target(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                  allow_new: Optional[Callable[[str], bool]] = None,
                  source_name: str = 'checkpoint',
                  target_name: str = 'the model') -> Tuple[StateDict, KeyReport]:
    """Weights for every key of ``target`` taken from ``source`` (both canonical).

    Args:
        source: canonical weights from a file (backbone, optionally ``head.projection.*``).
        target: the model's current weights in canonical names (shapes, and fresh values for
            new keys); a classifier head, if any, as ``head.projection.*``.
        allow_new: backbone keys that may be missing from ``source`` (kept at the target's
            value); ``None`` allows none. A head is kept only when its class count matches.
    """
    allow_new = allow_new or (lambda key: False)
    result: StateDict = OrderedDict()
    report = KeyReport()
    mismatches, missing = [], []
    for key, fresh in target.items():
        if key.startswith(HEAD_PREFIX):
            _fit_head(key, source.get(key), fresh, result, report)
            continue
        if key not in source:
            if allow_new(key):
                result[key] = fresh
                report.add(key, 'newly initialised', 'not in the file')
            else:
                missing.append(key)
            continue
        value = source[key]
        if value.shape == fresh.shape:
            result[key] = value
            report.add(key, 'copied')
        elif REL_POS_KEY.match(key) and value.dim() == 2 and value.shape[1] == fresh.shape[1]:
            result[key] = resize_rel_pos_table(value, fresh.shape[0]).contiguous()
            report.add(key, 'interpolated', f'length {value.shape[0]} -> {fresh.shape[0]}')
        else:
            mismatches.append((key, _shape(value), _shape(fresh)))
    unexpected = []
    for key in source:
        if key in target:
            continue
        if key == 'cls_token':
            report.add(key, 'dropped', 'the model has no cls token')
        elif key.startswith(HEAD_PREFIX):
            report.add(key, 'dropped', 'the model has no classifier head here')
        else:
            unexpected.append(key)
    if mismatches or missing or unexpected:
        raise ArchitectureMismatchError(
            mismatch_message(source_name, target_name, mismatches, missing, unexpected))
    return result, report
