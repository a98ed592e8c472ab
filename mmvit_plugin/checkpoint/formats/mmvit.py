"""This plugin's own mmengine checkpoints: the backbone under ``backbone.``, canonical names."""
from typing import Any, Mapping, Optional

import torch

from ...core.infer import PATCH_WEIGHT
from .base import RenameFormat, mmengine_package


class MMViTFormat(RenameFormat):
    name = 'mmvit'
    description = "this plugin's runs and converted files (canonical names under `backbone.`)"
    signature = '`backbone.patch_embed.proj`'
    priority = 30
    image_head = 'head.fc.'
    video_head = 'cls_head.fc_cls.'
    backbone_prefix = 'backbone.'

    def detect(self, state: Mapping[str, torch.Tensor]) -> bool:
        return self.backbone_prefix + PATCH_WEIGHT in state

    def package(self, state: Mapping[str, torch.Tensor], cfg_yaml: str = '',
                meta: Optional[dict] = None) -> Any:
        return mmengine_package(state, meta)


FORMAT = MMViTFormat()
