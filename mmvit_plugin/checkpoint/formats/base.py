"""The base of every checkpoint format, and the rename-only formats whose inverse map is derived
from their one table of key prefixes."""
import re
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Pattern, Sequence, Tuple

import torch

from ...core.infer import HEAD_PREFIX, is_video_state

StateDict = Dict[str, torch.Tensor]


class CheckpointFormat:
    """One checkpoint layout: how to recognise it and how it maps to the canonical one.

    Subclasses set the class attributes and implement ``detect``; a format that only renames
    keys derives from :class:`RenameFormat` instead and gives its table. ``to_canonical`` and
    ``from_canonical`` are inverse on every state dict this format can hold; keys a map does
    not know pass through unchanged, so later steps can name them.
    """
    name: str = ''
    description: str = ''  # one line: which files these are
    signature: str = ''  # one line: what ``detect`` looks for
    priority: int = 100  # formats are tried in increasing priority; the first match wins
    image_head: str = ''  # key prefix of the classifier head in an image file of this format
    video_head: Optional[str] = None  # the same for video files; None: as for images

    def head_prefix(self, video: bool) -> str:
        """Key prefix of the classifier head (weight, bias) in a file of this format."""
        return self.video_head if video and self.video_head is not None else self.image_head

    def detect(self, state: Mapping[str, torch.Tensor]) -> bool:
        raise NotImplementedError

    def to_canonical(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        return OrderedDict(state)

    def from_canonical(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        return OrderedDict(state)

    def package(self, state: Mapping[str, torch.Tensor], cfg_yaml: str = '',
                meta: Optional[dict] = None) -> Any:
        """The object this format's tool would ``torch.save`` for these (format) weights."""
        return OrderedDict(state)

    def split_other_modules(self, state: Mapping[str, torch.Tensor]
                            ) -> Tuple[StateDict, StateDict]:
        """(MViTv2 backbone and head weights, weights of other modules such as a neck)."""
        return OrderedDict(state), OrderedDict()

    @property
    def holds_other_modules(self) -> bool:
        """Whether a file of this format can also hold other modules' weights (a neck)."""
        return False

    def __repr__(self) -> str:
        return f'<checkpoint format {self.name!r}>'


# Templates: '{i}' stands for a block index, '{x}' for one of q, k, v.
_PLACEHOLDERS = {'i': r'\d+', 'x': '[qkv]'}
_PLACEHOLDER = re.compile(r'\{(\w)\}')


def _template_pattern(template: str) -> Pattern:
    parts, last = [], 0
    for found in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[last:found.start()]))
        parts.append(f'(?P<{found.group(1)}>{_PLACEHOLDERS[found.group(1)]})')
        last = found.end()
    parts.append(re.escape(template[last:]))
    return re.compile(''.join(parts))


class _PrefixMap:
    """Key-prefix templates mapped one way: the most specific (longest) template first."""

    def __init__(self, pairs: Sequence[Tuple[str, str]]) -> None:
        sources = [source for source, _ in pairs]
        if len(set(sources)) != len(sources):
            raise ValueError(f'rename table maps a prefix twice: {sources}')
        self.rules: List[Tuple[Pattern, str]] = [
            (_template_pattern(source), target)
            for source, target in sorted(pairs, key=lambda pair: -len(pair[0]))]

    def __call__(self, key: str) -> str:
        for pattern, target in self.rules:
            found = pattern.match(key)
            if found:
                return target.format(**found.groupdict()) + key[found.end():]
        return key


class RenameFormat(CheckpointFormat):
    """A format that differs from the canonical layout by key names only.

    ``renames`` is the one table, (prefix in the file, canonical prefix) pairs of templates;
    the inverse map is derived from it. ``backbone_prefix`` stands before every backbone key of
    a whole-model file (keys without it are read too); the head keys are ``head_prefix``.
    """
    renames: Sequence[Tuple[str, str]] = ()
    backbone_prefix: str = ''
    extra_read_heads: Tuple[str, ...] = ()  # more head prefixes accepted when reading

    def __init__(self) -> None:
        self._to = _PrefixMap(self.renames)
        self._from = _PrefixMap([(canonical, mine) for mine, canonical in self.renames])

    def _read_heads(self) -> Tuple[str, ...]:
        heads = (self.head_prefix(False), self.head_prefix(True)) + self.extra_read_heads
        return tuple(dict.fromkeys(h for h in heads if h))

    def to_canonical(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        heads = self._read_heads()
        out = OrderedDict()
        for key, value in state.items():
            head = next((h for h in heads if key.startswith(h)), None)
            if head is not None:
                key = HEAD_PREFIX + key[len(head):]
            else:
                if self.backbone_prefix and key.startswith(self.backbone_prefix):
                    key = key[len(self.backbone_prefix):]
                key = self._to(key)
            out[key] = value
        return out

    def from_canonical(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        head = self.head_prefix(is_video_state(state))
        out = OrderedDict()
        for key, value in state.items():
            if key.startswith(HEAD_PREFIX):
                key = head + key[len(HEAD_PREFIX):]
            else:
                key = self.backbone_prefix + self._from(key)
            out[key] = value
        return out

    @property
    def holds_other_modules(self) -> bool:
        return bool(self.backbone_prefix)

    def split_other_modules(self, state: Mapping[str, torch.Tensor]
                            ) -> Tuple[StateDict, StateDict]:
        """Only whole-model files (keys under ``backbone_prefix``) hold other modules."""
        if not self.backbone_prefix or \
                not any(k.startswith(self.backbone_prefix) for k in state):
            return super().split_other_modules(state)
        ours_prefixes = (self.backbone_prefix,) + self._read_heads()
        ours, others = OrderedDict(), OrderedDict()
        for key, value in state.items():
            (ours if key.startswith(ours_prefixes) else others)[key] = value
        return ours, others


def mmengine_package(state: Mapping[str, torch.Tensor], meta: Optional[dict]) -> dict:
    """What an mmengine runner saves: {meta, state_dict}."""
    return {'meta': dict(meta or {}), 'state_dict': OrderedDict(state)}
