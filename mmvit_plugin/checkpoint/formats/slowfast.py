"""facebookresearch/SlowFast video ``.pyth`` files: the official layout with 3-D convs."""
from typing import Mapping

import torch

from ...core.infer import PATCH_WEIGHT, is_video_conv
from .official import OfficialFormat


class SlowFastFormat(OfficialFormat):
    name = 'slowfast'
    description = 'facebookresearch/SlowFast video `.pyth` (the official layout)'
    signature = '`patch_embed.proj` 3-D conv'
    priority = 60

    def detect(self, state: Mapping[str, torch.Tensor]) -> bool:
        return is_video_conv(state.get(PATCH_WEIGHT))


FORMAT = SlowFastFormat()
