"""A classifier builder whose class count is one setting: the head's ``num_classes``.

mmpretrain's ImageClassifier also needs the count in the data preprocessor (one-hot labels for
Mixup/CutMix), so fine-tuning on another class count with only the head changed fails deep in
the loss (LabelSmoothLoss: output (N, 10) vs target (N, 1000)). The builder copies the head's
count into the data preprocessor and returns mmpretrain's own ImageClassifier.
"""
import copy
from typing import Optional

from ..registry import register_model


def _check_or_fill(cfg: dict, key: str, num_classes: int, where: str) -> None:
    given = cfg.get(key)
    if given is not None and given != num_classes:
        raise ValueError(
            f'{where}.{key}={given} differs from model.head num_classes={num_classes}; set '
            f'only the head (e.g. --cfg-options model.head.num_classes={given}) and leave '
            f'{where}.{key} unset: it follows the head')
    cfg[key] = num_classes


def _head_classes(head: Optional[dict], where: str) -> int:
    if not head or head.get('num_classes') is None:
        raise ValueError(f'{where}.num_classes must be set: the data preprocessor takes the '
                         'class count from it')
    return int(head['num_classes'])


@register_model
def SyncedImageClassifier(head: dict = None, data_preprocessor: Optional[dict] = None,
                          **kwargs):
    """mmpretrain's ImageClassifier with ``data_preprocessor.num_classes`` taken from the head."""
    from mmpretrain.models import ImageClassifier
    num_classes = _head_classes(head, 'model.head')
    data_preprocessor = copy.deepcopy(dict(data_preprocessor or {}))
    _check_or_fill(data_preprocessor, 'num_classes', num_classes, 'data_preprocessor')
    return ImageClassifier(head=head, data_preprocessor=data_preprocessor, **kwargs)
