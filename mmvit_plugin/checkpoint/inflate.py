"""2D -> 3D inflation of MViTv2 weights (pure functions on canonical state dicts).

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
from collections import OrderedDict
from typing import Mapping, Tuple

import torch

from .adapt import (REL_POS_KEY, STAGE_NORM_KEY, ArchitectureMismatchError, KeyReport,
                    StateDict, _fit_head, _shape, mismatch_message)
from ..core.rel_pos import resize_rel_pos_table
from .formats import HEAD_PREFIX, PATCH_WEIGHT

INFLATION_METHODS = ('center', 'average')
# 'center' keeps a static clip exactly on the image model at every time step ('average' not at
# the clip's ends), and kept more of a trained image model's accuracy on clips (5 of 5 seeds,
# tests/checkpoint/inflation_evidence.py --trained 5); after fine-tuning both were within noise.
DEFAULT_INFLATION = 'center'

CONV_KEY = re.compile(r'^(patch_embed\.proj|blocks\.\d+\.attn\.pool_[qkv])\.weight$')
ABS_POS_KEY = re.compile(r'^(pos_embed(_spatial|_temporal|_class)?|pos_encoding\.\w+)$')


def inflate_conv_weight(weight: torch.Tensor, time_kernel: int, method: str) -> torch.Tensor:
    """(out, in, kh, kw) -> (out, in, time_kernel, kh, kw) by ``center`` or ``average``."""
    if method not in INFLATION_METHODS:
        raise ValueError(f'inflation method must be one of {INFLATION_METHODS}, got {method!r}')
    if weight.dim() != 4:
        raise ValueError(f'expected a 4-D 2D conv weight, got shape {_shape(weight)}')
    if method == 'average':
        return weight.unsqueeze(2).repeat(1, 1, time_kernel, 1, 1) / time_kernel
    inflated = weight.new_zeros(weight.shape[:2] + (time_kernel,) + weight.shape[2:])
    inflated[:, :, time_kernel // 2] = weight
    return inflated


def is_video_state(state: Mapping[str, torch.Tensor]) -> bool:
    patch = state.get(PATCH_WEIGHT)
    return patch is not None and patch.dim() == 5 and patch.shape[2] > 1


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
    if method not in INFLATION_METHODS:
        raise ValueError(f'inflation method must be one of {INFLATION_METHODS}, got {method!r}')
    if is_video_state(image_state):
        raise ValueError(f'{source_name} is already a video (3D) checkpoint; load it without '
                         'inflation')
    if not is_video_state(video_target):
        raise ValueError(f'{target_name} is not a video (3D) MViTv2; inflation needs one')
    result: StateDict = OrderedDict()
    report = KeyReport()
    mismatches, missing = [], []
    for key, fresh in video_target.items():
        value = image_state.get(key)
        if key.startswith(HEAD_PREFIX):
            _fit_head(key, value, fresh, result, report)
        elif value is None:
            if key.endswith('.rel_pos_t'):
                reason = 'temporal table: an image model has none'
            elif key == 'cls_token':
                reason = 'the image model had no cls token'
            elif STAGE_NORM_KEY.match(key):
                reason = 'stage output norm not in the file'
            else:
                missing.append(key)
                continue
            result[key] = fresh
            report.add(key, 'newly initialised', reason)
        elif value.shape == fresh.shape:
            result[key] = value
            report.add(key, 'copied')
        elif (CONV_KEY.match(key) and value.dim() == 4 and fresh.dim() == 5
              and fresh.shape[:2] == value.shape[:2] and fresh.shape[3:] == value.shape[2:]):
            result[key] = inflate_conv_weight(value, fresh.shape[2], method)
            report.add(key, 'inflated', f'{method}, {_shape(value)} -> {_shape(fresh)}')
        elif REL_POS_KEY.match(key) and value.dim() == 2 and value.shape[1] == fresh.shape[1]:
            result[key] = resize_rel_pos_table(value, fresh.shape[0]).contiguous()
            report.add(key, 'interpolated', f'length {value.shape[0]} -> {fresh.shape[0]}')
        else:
            mismatches.append((key, _shape(value), _shape(fresh)))
    unexpected = []
    for key in image_state:
        if key in video_target:
            continue
        if ABS_POS_KEY.match(key):
            report.add(key, 'dropped', 'absolute position embedding (MViTv2 uses relative '
                       'positions)')
        elif key == 'cls_token':
            report.add(key, 'dropped', 'the video model has no cls token')
        elif key.startswith(HEAD_PREFIX):
            report.add(key, 'dropped', 'the video model has no classifier head here')
        elif STAGE_NORM_KEY.match(key):
            report.add(key, 'dropped', 'stage output norm the video model does not use')
        else:
            unexpected.append(key)
    if mismatches or missing or unexpected:
        raise ArchitectureMismatchError(
            mismatch_message(source_name, target_name, mismatches, missing, unexpected))
    return result, report
