"""Optimizer wrappers and constructors: CPU bfloat16 autocast and MViTv2 layer-wise lr decay.

Both are registered at mmengine's root registry, so every scope (mmpretrain, mmaction) finds them.
"""
from contextlib import contextmanager
from functools import partial
from typing import Callable, List, Optional, Tuple

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS
from mmengine.runner.amp import autocast
from mmpretrain.engine.optimizers import LearningRateDecayOptimWrapperConstructor


@OPTIM_WRAPPERS.register_module()
class CPUAutocastOptimWrapper(OptimWrapper):
    """OptimWrapper whose forward runs under CPU bfloat16 autocast.

    bfloat16 has float32's exponent range, so no loss scaling is needed; parameters and
    optimizer state stay float32.
    """

    def __init__(self, *args, dtype: str = 'bfloat16', **kwargs) -> None:
        if dtype != 'bfloat16':
            raise ValueError(f'CPU autocast supports bfloat16 only, got {dtype!r}')
        super().__init__(*args, **kwargs)

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        with super().optim_context(model), autocast(device_type='cpu', dtype=torch.bfloat16):
            yield


def mvit_layer_depth(param_name: str, depth: int,
                     backbone_prefix: str = 'backbone.') -> Tuple[int, int]:
    """(layer id, number of ids) of a parameter, numbered as the official fine-tuning code.

    Patch embedding and cls token are layer 0, block i is layer i + 1, and everything after
    the blocks (final norms, head) is layer depth + 1; there are depth + 2 ids.
    """
    num_ids = depth + 2
    if not param_name.startswith(backbone_prefix):
        return depth + 1, num_ids
    name = param_name[len(backbone_prefix):]
    if name.startswith(('patch_embed.', 'cls_token')):
        return 0, num_ids
    if name.startswith('blocks.'):
        return int(name.split('.')[1]) + 1, num_ids
    return depth + 1, num_ids


# Registered at mmengine's root, like CPUAutocastOptimWrapper, so every scope finds it.
@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class MViTv2LayerDecayOptimWrapperConstructor(LearningRateDecayOptimWrapperConstructor):
    """mmpretrain's layer-wise lr decay with MViTv2's layer numbering.

    The lr of layer ``i`` is ``lr * layer_decay_rate ** (depth + 1 - i)``; the head keeps the
    full lr. Weight-decay switches (``flat_decay_mult``, ``custom_keys``...) work as in
    ``paramwise_cfg`` of mmpretrain's constructor.
    """

    def add_params(self, params: List[dict], module: torch.nn.Module, prefix: str = '',
                   get_layer_depth: Optional[Callable] = None, **kwargs) -> None:
        if get_layer_depth is None:
            backbone = getattr(module, 'backbone', module)
            if not hasattr(backbone, 'blocks'):
                raise TypeError(f'{type(self).__name__} needs an MViTv2 backbone with '
                                f'`blocks`, got {type(backbone).__name__}')
            get_layer_depth = partial(
                mvit_layer_depth, depth=len(backbone.blocks),
                backbone_prefix='backbone.' if backbone is not module else '')
        super().add_params(params, module, prefix, get_layer_depth=get_layer_depth, **kwargs)
