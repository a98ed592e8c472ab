"""The backbone's ``init_cfg=dict(type='Pretrained', ...)``: the ``MViTv2Pretrained`` weight
initializer in mmengine's ``WEIGHT_INITIALIZERS`` registry (any supported format)."""
from typing import Any, Optional

import torch.nn as nn
from mmengine.registry import WEIGHT_INITIALIZERS

from .load import inflation_hint, load_into_backbone

FIELDS = ('checkpoint', 'trusted', 'src_format', 'map_location', 'prefix', 'allow_nonfinite')


@WEIGHT_INITIALIZERS.register_module()
class MViTv2Pretrained:
    """Load an MViTv2 backbone from a checkpoint of any supported format.

    ``MViTv2.init_weights`` builds this from a ``Pretrained`` init_cfg. Backbone weights only
    (the file's head is ignored); relative-position tables are interpolated to the backbone's
    input size. Keys the file lacks but a fine-tuned model may add (a cls token, per-stage
    output norms) keep the official initialisation. A 2D file for a video backbone is refused:
    video models start from image weights through ``WeightInflationHook``.

    Args:
        checkpoint: path of the file.
        trusted: allow full unpickling of a file you trust; default False (weights only).
        src_format: skip detection (a name of ``mmvit_plugin.checkpoint.FORMATS``).
        map_location: as for ``torch.load``.
        prefix: None or 'backbone.' (the loader finds the backbone weights itself).
        allow_nonfinite: load weights with NaN or Inf values; default False (refused).
    """

    def __init__(self, checkpoint: Optional[str] = None, trusted: bool = False,
                 src_format: Optional[str] = None, map_location: Any = 'cpu',
                 prefix: Optional[str] = None, allow_nonfinite: bool = False,
                 **unknown: Any) -> None:
        if 'inflate' in unknown:
            raise ValueError(
                f'init_cfg of type Pretrained has no inflate field: '
                f'{inflation_hint(checkpoint or "IMAGE_CHECKPOINT")}')
        if unknown:
            raise ValueError(f'init_cfg of type Pretrained has unknown fields '
                             f'{sorted(unknown)}; known: {list(FIELDS)}')
        if checkpoint is None:
            raise ValueError("init_cfg of type Pretrained needs 'checkpoint' (a file path)")
        if prefix not in (None, 'backbone', 'backbone.'):
            raise ValueError(f"init_cfg prefix={prefix!r}: the MViTv2 loader finds the "
                             "backbone weights itself; leave prefix out (or 'backbone.')")
        self.checkpoint = checkpoint
        self.trusted = trusted
        self.src_format = src_format
        self.map_location = map_location
        self.allow_nonfinite = allow_nonfinite

    def __call__(self, module: nn.Module) -> None:
        load_into_backbone(module, self.checkpoint, trusted=self.trusted,
                           src_format=self.src_format, map_location=self.map_location,
                           allow_nonfinite=self.allow_nonfinite)
