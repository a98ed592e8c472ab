"""torchvision ``mvit_v2_s`` state dicts."""
from collections import OrderedDict
from typing import Mapping

import torch

from .base import RenameFormat, StateDict

CLASS_TOKEN = 'pos_encoding.class_token'


class TorchvisionFormat(RenameFormat):
    name = 'torchvision'
    description = 'torchvision `mvit_v2_s` (`pos_encoding.class_token`, `mlp.0/3`)'
    signature = '`conv_proj`'
    priority = 20
    image_head = 'head.1.'
    renames = (
        ('conv_proj.', 'patch_embed.proj.'),
        ('blocks.{i}.project.', 'blocks.{i}.proj.'),
        ('blocks.{i}.attn.project.0.', 'blocks.{i}.attn.proj.'),
        ('blocks.{i}.attn.pool_{x}.pool.', 'blocks.{i}.attn.pool_{x}.'),
        ('blocks.{i}.attn.pool_{x}.norm_act.0.', 'blocks.{i}.attn.norm_{x}.'),
        ('blocks.{i}.mlp.0.', 'blocks.{i}.mlp.fc1.'),
        ('blocks.{i}.mlp.3.', 'blocks.{i}.mlp.fc2.'),
    )

    def detect(self, state: Mapping[str, torch.Tensor]) -> bool:
        return 'conv_proj.weight' in state

    # The class token is a vector here and (1, 1, C) in the canonical layout.
    def to_canonical(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        out = super().to_canonical(state)
        token = out.pop(CLASS_TOKEN, None)
        if token is not None:
            out = OrderedDict([('cls_token', token.reshape(1, 1, -1))] + list(out.items()))
        return out

    def from_canonical(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        out = super().from_canonical(state)
        token = out.pop('cls_token', None)
        if token is not None:
            out = OrderedDict([(CLASS_TOKEN, token.reshape(-1))] + list(out.items()))
        return out


FORMAT = TorchvisionFormat()
