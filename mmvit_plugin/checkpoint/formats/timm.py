"""timm ``mvitv2_*`` state dicts: blocks numbered within stages, shortcut names by width rule."""
import re
from collections import OrderedDict
from typing import Mapping

import torch

from ...core.infer import HEAD_PREFIX, infer_arch
from .base import CheckpointFormat, StateDict

STAGE_BLOCK = re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.')
SHORTCUT = re.compile(r'^(blocks\.\d+)\.shortcut_proj_(attn|mlp)\.')


class TimmFormat(CheckpointFormat):
    name = 'timm'
    description = 'timm `mvitv2_*` (blocks numbered per stage, `shortcut_proj_attn/mlp`)'
    signature = '`stages.<s>.blocks.<j>.*`'
    priority = 10
    image_head = 'head.fc.'

    def detect(self, state: Mapping[str, torch.Tensor]) -> bool:
        return any(STAGE_BLOCK.match(k) for k in state)

    def to_canonical(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        stage_sizes = {}
        for key in state:
            found = STAGE_BLOCK.match(key)
            if found:
                stage, block = int(found.group(1)), int(found.group(2))
                stage_sizes[stage] = max(stage_sizes.get(stage, 0), block + 1)
        offsets, total = {}, 0
        for stage in sorted(stage_sizes):
            offsets[stage], total = total, total + stage_sizes[stage]

        def block_index(found: re.Match) -> str:
            return f'blocks.{offsets[int(found.group(1))] + int(found.group(2))}.'

        out = OrderedDict()
        for key, value in state.items():
            if key.startswith(self.image_head):
                key = HEAD_PREFIX + key[len(self.image_head):]
            key = STAGE_BLOCK.sub(block_index, key)
            key = SHORTCUT.sub(r'\1.proj.', key)
            out[key] = value
        return out

    def from_canonical(self, state: Mapping[str, torch.Tensor]) -> StateDict:
        arch = infer_arch(state).arch
        starts = (0,) + arch.stage_starts
        # Where the width grows decides the shortcut's name: in attention or in the MLP.
        shortcut = 'shortcut_proj_attn' if arch.dim_mul_in_att else 'shortcut_proj_mlp'

        def stage_block(found: re.Match) -> str:
            index = int(found.group(1))
            stage = max(s for s, start in enumerate(starts) if start <= index)
            return f'stages.{stage}.blocks.{index - starts[stage]}.'

        out = OrderedDict()
        for key, value in state.items():
            if key.startswith(HEAD_PREFIX):
                key = self.image_head + key[len(HEAD_PREFIX):]
            key = re.sub(r'^(blocks\.\d+)\.proj\.', rf'\1.{shortcut}.', key)
            key = re.sub(r'^blocks\.(\d+)\.', stage_block, key)
            out[key] = value
        return out


FORMAT = TimmFormat()
