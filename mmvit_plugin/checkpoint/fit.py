"""The one fitting engine: canonical weights from a file made to fit a model's own state dict.

``fit_state_dict`` walks the target's keys once. A key the file holds with the target's shape
is copied; another shape goes through the rules' reshapes (interpolate a relative-position
table, inflate a conv); a key the file lacks keeps the target's fresh value when a rule allows
it; then every file key the target lacks is dropped when a rule says why. The classifier head
is kept when its class count matches, else the model keeps its fresh head. Anything else is
refused with :class:`ArchitectureMismatchError` naming the first offending keys and shapes.
Every key ends up in a :class:`KeyReport`.
"""
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Pattern, Sequence, Tuple

import torch

from ..core.infer import HEAD_PREFIX, REL_POS_KEY
from ..core.rel_pos import resize_rel_pos_table

StateDict = Dict[str, torch.Tensor]

STAGE_NORM_KEY = re.compile(r'^norm[0-2]\.(weight|bias)$')
CLS_TOKEN_KEY = re.compile(r'^cls_token$')
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


def shape_of(t: torch.Tensor) -> Tuple[int, ...]:
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


class Reshape:
    """A rule for a key the file holds with another shape than the model."""
    action = ''

    def applies(self, key: str, value: torch.Tensor, fresh: torch.Tensor) -> bool:
        raise NotImplementedError

    def apply(self, key: str, value: torch.Tensor,
              fresh: torch.Tensor) -> Tuple[torch.Tensor, str]:
        """The fitted value and a detail for the report."""
        raise NotImplementedError


class InterpolateRelPos(Reshape):
    """Relative-position tables of another length (another input size or frame count)."""
    action = 'interpolated'

    def applies(self, key: str, value: torch.Tensor, fresh: torch.Tensor) -> bool:
        return bool(REL_POS_KEY.match(key)) and value.dim() == 2 and fresh.dim() == 2 \
            and value.shape[1] == fresh.shape[1]

    def apply(self, key: str, value: torch.Tensor,
              fresh: torch.Tensor) -> Tuple[torch.Tensor, str]:
        resized = resize_rel_pos_table(value, fresh.shape[0]).contiguous()
        return resized, f'length {value.shape[0]} -> {fresh.shape[0]}'


KeyRule = Tuple[Pattern, str]  # keys it covers, and the reason given in the report


@dataclass(frozen=True)
class FitRules:
    """How weights may differ from the model they are fitted to.

    Args:
        reshapes: tried in order for a key whose shape differs.
        new: model keys the file may lack (they keep the model's fresh value), with reasons.
        drop: file keys the model may lack, with reasons.
    """
    reshapes: Tuple[Reshape, ...] = (InterpolateRelPos(),)
    new: Tuple[KeyRule, ...] = ()
    drop: Tuple[KeyRule, ...] = ((CLS_TOKEN_KEY, 'the model has no cls token'),)


def _reason(rules: Sequence[KeyRule], key: str) -> Optional[str]:
    return next((reason for pattern, reason in rules if pattern.match(key)), None)


#: Only what the model holds already: relative-position tables may be interpolated, an unused
#: cls token dropped; every other key must be in the file.
EXACT = FitRules()
#: Fine-tuning: also a cls token the source model did not have, and the per-stage output norms
#: (norm0..norm2) of a multi-scale backbone, keep their fresh init.
FINE_TUNING = FitRules(new=((CLS_TOKEN_KEY, 'not in the file'),
                            (STAGE_NORM_KEY, 'not in the file')))


def _fit_head(key: str, value: Optional[torch.Tensor], fresh: torch.Tensor,
              result: StateDict, report: KeyReport) -> None:
    if value is None:
        result[key] = fresh
        report.add(key, 'newly initialised', 'the file has no classifier head')
    elif value.shape == fresh.shape:
        result[key] = value
        report.add(key, 'copied')
    else:
        result[key] = fresh
        report.add(key, 'dropped', f'file head {shape_of(value)} vs model head '
                   f'{shape_of(fresh)}: another class count')
        report.add(key, 'newly initialised', 'fresh head of the model')


def fit_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                   rules: FitRules = EXACT, source_name: str = 'checkpoint',
                   target_name: str = 'the model') -> Tuple[StateDict, KeyReport]:
    """Weights for every key of ``target`` taken from ``source`` (both canonical).

    Args:
        source: canonical weights from a file (backbone, optionally ``head.projection.*``).
        target: the model's current weights in canonical names (shapes, and fresh values for
            new keys); a classifier head, if any, as ``head.projection.*``.
        rules: what may differ; ``EXACT``, ``FINE_TUNING`` or ``inflate.inflation_rules``.

    Returns:
        the weights in ``target``'s key order, and the report of every key.
    """
    result: StateDict = OrderedDict()
    report = KeyReport()
    mismatches, missing = [], []
    for key, fresh in target.items():
        value = source.get(key)
        if key.startswith(HEAD_PREFIX):
            _fit_head(key, value, fresh, result, report)
        elif value is None:
            reason = _reason(rules.new, key)
            if reason is None:
                missing.append(key)
            else:
                result[key] = fresh
                report.add(key, 'newly initialised', reason)
        elif value.shape == fresh.shape:
            result[key] = value
            report.add(key, 'copied')
        else:
            reshape = next((r for r in rules.reshapes if r.applies(key, value, fresh)), None)
            if reshape is None:
                mismatches.append((key, shape_of(value), shape_of(fresh)))
            else:
                result[key], detail = reshape.apply(key, value, fresh)
                report.add(key, reshape.action, detail)
    unexpected = []
    for key in source:
        if key in target:
            continue
        reason = ('the model has no classifier head here' if key.startswith(HEAD_PREFIX)
                  else _reason(rules.drop, key))
        if reason is None:
            unexpected.append(key)
        else:
            report.add(key, 'dropped', reason)
    if mismatches or missing or unexpected:
        raise ArchitectureMismatchError(
            mismatch_message(source_name, target_name, mismatches, missing, unexpected))
    return result, report
