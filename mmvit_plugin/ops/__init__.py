"""Fast-path kernels (oneDNN linear/MLP/attention, pool+norm): settings, calibration, fallbacks."""
from . import calibrate
from .attention import ATTENTION_KERNELS, attention, resolve_kernel
from .config import KernelSettings, autocast_enabled, capturing_graph, kernel_settings, use_kernels
from .onednn import linear, mlp
from .pool_norm import pool_then_norm

__all__ = ['ATTENTION_KERNELS', 'calibrate', 'KernelSettings', 'attention', 'autocast_enabled',
           'capturing_graph', 'kernel_settings', 'linear', 'mlp', 'pool_then_norm',
           'resolve_kernel', 'use_kernels']
