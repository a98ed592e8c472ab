"""mmaction2 MViT checkpoints (``Recognizer3D`` with an MViT backbone)."""
from typing import Mapping

import torch

from .mmpretrain import MMPretrainFormat, is_mm_video, mm_patch_weight


class MMAction2Format(MMPretrainFormat):
    name = 'mmaction2'
    description = 'mmaction2 MViT checkpoints (`patch_embed.projection`, `norm3`)'
    signature = '`(backbone.)patch_embed.projection` 3-D conv, or a `cls_head`'
    priority = 40
    image_head = 'cls_head.fc_cls.'
    extra_read_heads = ('head.fc.',)

    def detect(self, state: Mapping[str, torch.Tensor]) -> bool:
        return mm_patch_weight(state) is not None and is_mm_video(state)


FORMAT = MMAction2Format()
