"""Registration of plugin classes into both host registries.

Images live in mmpretrain's registries and video in mmaction2's. Each class is registered into
both, under the same name, so a config works whichever ``default_scope`` it uses.
"""
from typing import Callable, Type, TypeVar

from mmaction.registry import DATASETS as ACTION_DATASETS
from mmaction.registry import HOOKS as ACTION_HOOKS
from mmaction.registry import MODELS as ACTION_MODELS
from mmaction.registry import TRANSFORMS as ACTION_TRANSFORMS
from mmpretrain.registry import DATASETS as PRETRAIN_DATASETS
from mmpretrain.registry import HOOKS as PRETRAIN_HOOKS
from mmpretrain.registry import MODELS as PRETRAIN_MODELS
from mmpretrain.registry import TRANSFORMS as PRETRAIN_TRANSFORMS

T = TypeVar('T', bound=Type)


def _register_in(*registries) -> Callable[[T], T]:

    def decorator(cls: T) -> T:
        for registry in registries:
            registry.register_module(module=cls)
        return cls

    return decorator


register_model = _register_in(PRETRAIN_MODELS, ACTION_MODELS)
register_dataset = _register_in(PRETRAIN_DATASETS, ACTION_DATASETS)
register_transform = _register_in(PRETRAIN_TRANSFORMS, ACTION_TRANSFORMS)
register_hook = _register_in(PRETRAIN_HOOKS, ACTION_HOOKS)
