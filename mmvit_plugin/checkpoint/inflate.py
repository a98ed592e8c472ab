"""2D -> 3D inflation of MViTv2 weights: the fitting engine's inflation rules.

An image model's weights initialise a video model:

- the patch embedding and the q/k/v pooling kernels gain a time axis, by ``center`` (the 2D
  kernel at the middle time step, zeros elsewhere) or ``average`` (the 2D kernel repeated over
  time and divided by the temporal kernel size); both keep a clip of one repeated image on the
  image model's patch embedding (``average`` only away from the clip's first and last steps,
  where the temporal zero padding removes a third of the kernel; ``center`` everywhere);
- spatial relative-position tables are copied, or linearly interpolated when the video model's
  grid needs another length; temporal tables (``rel_pos_t``) keep the video model's fresh init;
- a cls token the image model lacked keeps the video model's fresh init;
- absolute position embeddings (MViTv1-style files) are dropped;
- the classifier head is kept when the class counts match, else the video model keeps its own.

Every key of the result, and every dropped key of the source, gets one report line.
"""
import re
from typing import Mapping, Tuple

import torch

from ..core.infer import CONV_KEY, is_video_state
from .fit import (
    CLS_TOKEN_KEY,
    STAGE_NORM_KEY,
    FitRules,
    InterpolateRelPos,
    KeyReport,
    Reshape,
    StateDict,
    fit_state_dict,
    shape_of,
)

INFLATION_METHODS = ('center', 'average')
# 'center' keeps a static clip exactly on the image model at every time step ('average' not at
# the clip's ends), and kept more of a trained image model's accuracy on clips (5 of 5 seeds,
# tools/analysis/inflation_evidence.py --trained 5); after fine-tuning both were within noise.
DEFAULT_INFLATION = 'center'

ABS_POS_KEY = re.compile(r'^(pos_embed(_spatial|_temporal|_class)?|pos_encoding\.\w+)$')
REL_POS_T_KEY = re.compile(r'^blocks\.\d+\.attn\.rel_pos_t$')


def check_inflation_method(method: str, what: str = 'inflation method') -> str:
    """``method`` when it is one of ``INFLATION_METHODS``; else a ValueError naming ``what``."""
    if method not in INFLATION_METHODS:
        raise ValueError(f'{what} must be one of {INFLATION_METHODS}, got {method!r}')
    return method


def inflate_conv_weight(weight: torch.Tensor, time_kernel: int, method: str) -> torch.Tensor:
    """(out, in, kh, kw) -> (out, in, time_kernel, kh, kw) by ``center`` or ``average``."""
    check_inflation_method(method)
    if weight.dim() != 4:
        raise ValueError(f'expected a 4-D 2D conv weight, got shape {shape_of(weight)}')
    if method == 'average':
        return weight.unsqueeze(2).repeat(1, 1, time_kernel, 1, 1) / time_kernel
    inflated = weight.new_zeros(weight.shape[:2] + (time_kernel,) + weight.shape[2:])
    inflated[:, :, time_kernel // 2] = weight
    return inflated


class InflateConv(Reshape):
    """A 2D conv of the same width and spatial kernel gains the video model's time axis."""
    action = 'inflated'

    def __init__(self, method: str) -> None:
        self.method = check_inflation_method(method)

    def applies(self, key: str, value: torch.Tensor, fresh: torch.Tensor) -> bool:
        return bool(CONV_KEY.match(key)) and value.dim() == 4 and fresh.dim() == 5 \
            and fresh.shape[:2] == value.shape[:2] and fresh.shape[3:] == value.shape[2:]

    def apply(self, key: str, value: torch.Tensor,
              fresh: torch.Tensor) -> Tuple[torch.Tensor, str]:
        inflated = inflate_conv_weight(value, fresh.shape[2], self.method)
        return inflated, f'{self.method}, {shape_of(value)} -> {shape_of(fresh)}'


def inflation_rules(method: str = DEFAULT_INFLATION) -> FitRules:
    """The fitting rules that turn an image model's weights into a video model's."""
    return FitRules(
        reshapes=(InflateConv(method), InterpolateRelPos()),
        new=((REL_POS_T_KEY, 'temporal table: an image model has none'),
             (CLS_TOKEN_KEY, 'the image model had no cls token'),
             (STAGE_NORM_KEY, 'stage output norm not in the file')),
        drop=((ABS_POS_KEY, 'absolute position embedding (MViTv2 uses relative positions)'),
              (CLS_TOKEN_KEY, 'the video model has no cls token'),
              (STAGE_NORM_KEY, 'stage output norm the video model does not use')))


def inflate_state_dict(image_state: Mapping[str, torch.Tensor],
                       video_target: Mapping[str, torch.Tensor],
                       method: str = DEFAULT_INFLATION,
                       source_name: str = 'image checkpoint',
                       target_name: str = 'the video model') -> Tuple[StateDict, KeyReport]:
    """Weights for every key of ``video_target`` from an image model's canonical weights.

    Args:
        image_state: canonical 2D weights (optionally with ``head.projection.*``).
        video_target: the video model's current canonical weights: shapes, and the fresh
            values kept for new keys (rel_pos_t, a missing cls token, another-size head).
        method: 'center' or 'average' for the patch embedding and pooling kernels.

    Raises:
        ArchitectureMismatchError: widths, depth or kernels do not correspond.
    """
    rules = inflation_rules(method)
    if is_video_state(image_state):
        raise ValueError(f'{source_name} is already a video (3D) checkpoint; load it without '
                         'inflation')
    if not is_video_state(video_target):
        raise ValueError(f'{target_name} is not a video (3D) MViTv2; inflation needs one')
    return fit_state_dict(image_state, video_target, rules, source_name, target_name)
