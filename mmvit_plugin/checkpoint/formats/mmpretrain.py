"""mmpretrain MViT checkpoints (``ImageClassifier`` with an MViT backbone)."""
from typing import Any, Mapping, Optional

import torch

from ...core.infer import is_video_conv
from .base import RenameFormat, mmengine_package

PATCH = 'patch_embed.projection.weight'


def mm_patch_weight(state: Mapping[str, torch.Tensor]) -> Optional[torch.Tensor]:
    """The patch embedding of an mmpretrain/mmaction2 file, whole model or bare backbone."""
    return state.get('backbone.' + PATCH, state.get(PATCH))


class MMPretrainFormat(RenameFormat):
    name = 'mmpretrain'
    description = 'mmpretrain MViT checkpoints (`patch_embed.projection`, `norm3`)'
    signature = '`(backbone.)patch_embed.projection`'
    priority = 50
    image_head = 'head.fc.'
    extra_read_heads = ('cls_head.fc_cls.',)
    backbone_prefix = 'backbone.'
    renames = (
        ('patch_embed.projection.', 'patch_embed.proj.'),
        ('norm3.', 'norm.'),
    )

    def detect(self, state: Mapping[str, torch.Tensor]) -> bool:
        return mm_patch_weight(state) is not None

    def package(self, state: Mapping[str, torch.Tensor], cfg_yaml: str = '',
                meta: Optional[dict] = None) -> Any:
        return mmengine_package(state, meta)


FORMAT = MMPretrainFormat()


def is_mm_video(state: Mapping[str, torch.Tensor]) -> bool:
    return is_video_conv(mm_patch_weight(state)) or any(k.startswith('cls_head.') for k in state)
