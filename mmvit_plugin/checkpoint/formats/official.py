"""facebookresearch/mvit image ``.pyth`` files: the canonical layout itself."""
from collections import OrderedDict
from typing import Any, Mapping, Optional

import torch

from ...core.infer import CONV_KEY, HEAD_PREFIX, PATCH_WEIGHT, is_video_conv
from .base import CheckpointFormat, StateDict


def squeeze_unit_time(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Image files that store their convs 5-D with T=1 get the canonical 4-D ones."""
    patch = state.get(PATCH_WEIGHT)
    if patch is None or patch.dim() != 5 or patch.shape[2] != 1:
        return OrderedDict(state)
    return OrderedDict((k, v.squeeze(2) if CONV_KEY.match(k) and v.dim() == 5 else v)
                       for k, v in state.items())


class OfficialFormat(CheckpointFormat):
    name = 'official'
    description = ('facebookresearch/mvit image `.pyth` {epoch, model_state, '
                   'optimizer_state, cfg}')
    signature = '`patch_embed.proj` 2-D conv (stored 4-D, or 5-D with T=1)'
    priority = 70
    image_head = HEAD_PREFIX

    def detect(self, state: Mapping[str, torch.Tensor]) -> bool:
        return PATCH_WEIGHT in state and not is_video_conv(state[PATCH_WEIGHT])

    def to_canonical(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        return squeeze_unit_time(state)

    def package(self, state: Mapping[str, torch.Tensor], cfg_yaml: str = '',
                meta: Optional[dict] = None) -> Any:
        return {'epoch': 0, 'model_state': dict(state), 'optimizer_state': {},
                'cfg': cfg_yaml}


FORMAT = OfficialFormat()
