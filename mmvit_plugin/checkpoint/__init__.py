"""Checkpoints: safe loading, format conversion, fitting to a model and 2D -> 3D inflation.

Importing this package allows, for every ``torch.load(weights_only=True)`` in the process,
exactly the globals that mmengine's own training checkpoints need (so the runner's resume
works under torch >= 2.6 without ``weights_only=False``; see ``safe_load``), and registers the
``MViTv2Pretrained`` weight initializer (see ``pretrained``).
"""
from .arch_info import arch_name_for, decide_cls_token
from .fit import EXACT, FINE_TUNING, ArchitectureMismatchError, FitRules, KeyReport, fit_state_dict
from .formats import (
                  FORMATS,
                  CheckpointFormat,
                  UnknownCheckpointFormatError,
                  detect_format,
                  from_canonical,
                  get_format,
                  markdown_table,
                  package_checkpoint,
                  to_canonical,
                  unwrap_checkpoint,
)
from .inflate import (
                  DEFAULT_INFLATION,
                  INFLATION_METHODS,
                  check_inflation_method,
                  inflate_conv_weight,
                  inflate_state_dict,
                  inflation_rules,
)
from .load import (
                  LoadedCheckpoint,
                  NonFiniteWeightsError,
                  canonical_model_state,
                  check_finite_weights,
                  convert_checkpoint_for_model,
                  inflate_into_model,
                  load_into_backbone,
                  read_canonical,
)
from .pretrained import MViTv2Pretrained
from .safe_load import (
                  CheckpointReadError,
                  UnsafeCheckpointError,
                  load_checkpoint_file,
                  register_mmengine_loaders,
                  register_mmengine_safe_globals,
)

register_mmengine_safe_globals()
register_mmengine_loaders()

__all__ = [
    'arch_name_for', 'decide_cls_token', 'EXACT', 'FINE_TUNING', 'ArchitectureMismatchError',
    'FitRules', 'KeyReport', 'fit_state_dict', 'FORMATS', 'CheckpointFormat',
    'UnknownCheckpointFormatError', 'detect_format', 'from_canonical', 'get_format',
    'markdown_table', 'package_checkpoint', 'to_canonical', 'unwrap_checkpoint',
    'DEFAULT_INFLATION', 'INFLATION_METHODS', 'check_inflation_method', 'inflate_conv_weight',
    'inflate_state_dict', 'inflation_rules', 'LoadedCheckpoint', 'NonFiniteWeightsError',
    'canonical_model_state', 'check_finite_weights', 'convert_checkpoint_for_model',
    'inflate_into_model', 'load_into_backbone', 'read_canonical', 'MViTv2Pretrained',
    'CheckpointReadError', 'UnsafeCheckpointError', 'load_checkpoint_file',
    'register_mmengine_safe_globals',
]
