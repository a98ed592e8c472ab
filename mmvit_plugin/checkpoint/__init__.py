"""Checkpoints: safe loading, format conversion, resolution change and 2D -> 3D inflation.

Importing this package allows, for every ``torch.load(weights_only=True)`` in the process,
exactly the globals that mmengine's own training checkpoints need (so the runner's resume
works under torch >= 2.6 without ``weights_only=False``); see ``safe_load``.
"""
from .adapt import ArchitectureMismatchError, KeyReport, fit_to_target
from .arch_info import CheckpointArch, config_for, decide_cls_token, infer_arch
from .formats import (FORMATS, UnknownCheckpointFormatError, detect_format, from_canonical,
                      package_checkpoint, to_canonical, unwrap_checkpoint)
from .inflate import (DEFAULT_INFLATION, INFLATION_METHODS, inflate_conv_weight,
                      inflate_state_dict)
from .load import (LoadedCheckpoint, canonical_model_state, convert_checkpoint_for_model,
                   inflate_into_model, init_backbone_from_checkpoint, read_canonical)
from .safe_load import (CheckpointReadError, UnsafeCheckpointError, load_checkpoint_file,
                        register_mmengine_loaders, register_mmengine_safe_globals)

register_mmengine_safe_globals()
register_mmengine_loaders()

__all__ = [
    'ArchitectureMismatchError', 'KeyReport', 'fit_to_target', 'CheckpointArch', 'config_for',
    'decide_cls_token', 'infer_arch', 'FORMATS', 'UnknownCheckpointFormatError',
    'detect_format', 'from_canonical', 'package_checkpoint', 'to_canonical',
    'unwrap_checkpoint', 'DEFAULT_INFLATION', 'INFLATION_METHODS', 'inflate_conv_weight',
    'inflate_state_dict', 'LoadedCheckpoint', 'canonical_model_state',
    'convert_checkpoint_for_model', 'inflate_into_model', 'init_backbone_from_checkpoint',
    'read_canonical', 'CheckpointReadError', 'UnsafeCheckpointError', 'load_checkpoint_file',
    'register_mmengine_safe_globals',
]
