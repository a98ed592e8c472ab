"""The model of an mmengine config, built in its host's registry (one way for every tool)."""
import copy
from typing import Union

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import init_default_scope


def config_scope(cfg: Config) -> str:
    """The host of a config: its ``default_scope``, else mmaction2 for a ``Recognizer3D`` and
    mmpretrain for anything else."""
    if cfg.get('default_scope'):
        return cfg.default_scope
    return 'mmaction' if cfg.model.get('type') == 'Recognizer3D' else 'mmpretrain'


def build_config_model(config: Union[str, Config], for_training: bool = False) -> nn.Module:
    """``config.model`` built in its host's registry, with the top-level ``data_preprocessor``
    merged in as the hosts' runners do.

    Unless ``for_training``, batch mixing (Mixup/CutMix: ``train_cfg`` and the preprocessor's
    ``blending``) is left out: it holds no weights and only slows the build. The model comes
    back as built (mmengine init not run), in training mode.
    """
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    model_cfg = copy.deepcopy(cfg.model)
    if 'data_preprocessor' in cfg and 'data_preprocessor' not in model_cfg:
        model_cfg['data_preprocessor'] = copy.deepcopy(cfg.data_preprocessor)
    if not for_training:
        model_cfg.pop('train_cfg', None)
        if isinstance(model_cfg.get('data_preprocessor'), dict):
            model_cfg['data_preprocessor'].pop('blending', None)
    scope = config_scope(cfg)
    init_default_scope(scope)
    if scope == 'mmaction':
        from mmaction.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS.build(model_cfg)
