"""Clip-consistent transforms that the hosts lack.

``ClipRandAugment`` is RandAugment for video (the ``rand-m7-n4-mstd0.5-inc1`` policy of the
MViTv2 Kinetics recipes): the operations and their magnitudes are drawn once per clip and
applied identically to every frame, so motion between frames is preserved. mmaction2 only
offers it through pytorchvideo, which is unmaintained and not installed here.
"""
import math
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple, Union

import mmcv
import numpy as np
from mmcv.transforms import BaseTransform

from ..registry import register_transform

# Operations of the "increasing" RandAugment family: a larger level always means a stronger
# change. Each maps a level in [0, 1] to the operation's argument.
INCREASING_OPS: Tuple[str, ...] = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
    'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateX',
    'TranslateY')
_SIGNED_OPS = {'Rotate', 'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY',
               'TranslateX', 'TranslateY'}
_MAX_ARGUMENT: Dict[str, float] = {
    'Rotate': 30.0,  # degrees
    'Color': 0.9, 'Contrast': 0.9, 'Brightness': 0.9, 'Sharpness': 0.9,  # factor = 1 +- x
    'ShearX': 0.3, 'ShearY': 0.3,  # shear coefficient
    'TranslateX': 0.45, 'TranslateY': 0.45,  # fraction of the frame size
    'SolarizeAdd': 110.0,  # added to pixels below 128
}


@dataclass(frozen=True)
class RandAugmentSpec:
    """A parsed timm-style RandAugment string such as ``rand-m7-n4-mstd0.5-inc1``."""
    magnitude: float = 9.0
    num_ops: int = 2
    magnitude_std: float = 0.0
    magnitude_max: float = 10.0
    prob: float = 0.5
    increasing: bool = True


@dataclass(frozen=True)
class ClipOp:
    """One operation drawn for a clip: its name and its argument (sign included)."""
    name: str
    argument: float = 0.0


def parse_randaugment_spec(text: str) -> RandAugmentSpec:
    """Parse ``rand-m<magnitude>-n<ops>[-mstd<std>][-mmax<max>][-p<prob>][-inc<0|1>]``."""
    parts = text.strip().split('-')
    if not parts or parts[0] != 'rand':
        raise ValueError(f'RandAugment spec {text!r} must start with "rand-", '
                         'e.g. "rand-m7-n4-mstd0.5-inc1"')
    fields = dict(magnitude=9.0, num_ops=2, magnitude_std=0.0, magnitude_max=10.0, prob=0.5,
                  increasing=False)
    for part in parts[1:]:
        match = re.fullmatch(r'(mstd|mmax|inc|m|n|p)([0-9.]+|inf)', part)
        if match is None:
            raise ValueError(f'RandAugment spec {text!r}: cannot parse {part!r} '
                             '(known keys: m, n, mstd, mmax, p, inc)')
        key, value = match.groups()
        if key == 'm':
            fields['magnitude'] = float(value)
        elif key == 'n':
            fields['num_ops'] = int(value)
        elif key == 'mstd':
            fields['magnitude_std'] = float(value)
        elif key == 'mmax':
            fields['magnitude_max'] = float(value)
        elif key == 'p':
            fields['prob'] = float(value)
        else:
            fields['increasing'] = bool(int(value))
    if not fields['increasing']:
        raise ValueError(f'RandAugment spec {text!r}: only the increasing op set ("-inc1") is '
                         'provided; it is the one the MViTv2 recipes use')
    if fields['num_ops'] < 1:
        raise ValueError(f'RandAugment spec {text!r}: n must be >= 1')
    return RandAugmentSpec(**fields)


def _draw_level(spec: RandAugmentSpec) -> float:
    """Magnitude level of one op in [0, 1], with the spec's noise."""
    magnitude = spec.magnitude
    if math.isinf(spec.magnitude_std):
        magnitude = np.random.uniform(0, magnitude)
    elif spec.magnitude_std > 0:
        magnitude = np.random.normal(magnitude, spec.magnitude_std)
    return float(np.clip(magnitude, 0.0, spec.magnitude_max)) / 10.0


def op_argument(name: str, level: float) -> float:
    """Unsigned argument of op ``name`` at ``level`` in [0, 1] (increasing semantics)."""
    if name == 'Posterize':
        return float(4 - int(level * 4))  # bits kept: 4 at level 0 down to 0
    if name == 'Solarize':
        return float(256 - int(level * 256))  # threshold: 256 (no change) down to 0
    if name == 'SolarizeAdd':
        return float(int(level * _MAX_ARGUMENT[name]))
    return level * _MAX_ARGUMENT.get(name, 0.0)


def sample_clip_ops(spec: RandAugmentSpec, op_names: Sequence[str] = INCREASING_OPS
                    ) -> List[ClipOp]:
    """Draw the ops of one clip: ``num_ops`` picks with replacement, each kept with ``prob``."""
    chosen = np.random.choice(len(op_names), spec.num_ops, replace=True)
    ops = []
    for index in chosen:
        name = op_names[int(index)]
        keep = np.random.rand() < spec.prob
        level = _draw_level(spec)
        argument = op_argument(name, level)
        if name in _SIGNED_OPS and np.random.rand() < 0.5:
            argument = -argument
        if keep:
            ops.append(ClipOp(name, argument))
    return ops


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8) if img.dtype != np.uint8 else img


def apply_op(frame: np.ndarray, op: ClipOp, fill: Union[int, Tuple[int, int, int]] = 128,
             interpolation: str = 'bicubic') -> np.ndarray:
    """Apply one drawn op to an HxWx3 uint8 frame; deterministic given ``op``."""
    name, arg = op.name, op.argument
    if name == 'AutoContrast':
        out = mmcv.auto_contrast(frame)
    elif name == 'Equalize':
        out = mmcv.imequalize(frame)
    elif name == 'Invert':
        out = mmcv.iminvert(frame)
    elif name == 'Rotate':
        out = mmcv.imrotate(frame, arg, border_value=fill, interpolation=interpolation)
    elif name == 'Posterize':
        out = mmcv.posterize(frame, int(arg))
    elif name == 'Solarize':
        out = mmcv.solarize(frame, arg)
    elif name == 'SolarizeAdd':
        shifted = np.minimum(frame.astype(np.int32) + int(arg), 255)
        out = np.where(frame < 128, shifted, frame)
    elif name == 'Color':
        out = mmcv.adjust_color(frame, alpha=1.0 + arg)
    elif name == 'Contrast':
        out = mmcv.adjust_contrast(frame, factor=1.0 + arg)
    elif name == 'Brightness':
        out = mmcv.adjust_brightness(frame, factor=1.0 + arg)
    elif name == 'Sharpness':
        out = mmcv.adjust_sharpness(frame, factor=1.0 + arg)
    elif name in ('ShearX', 'ShearY'):
        direction = 'horizontal' if name == 'ShearX' else 'vertical'
        out = mmcv.imshear(frame, arg, direction=direction, border_value=fill,
                           interpolation=interpolation)
    elif name in ('TranslateX', 'TranslateY'):
        horizontal = name == 'TranslateX'
        offset = arg * frame.shape[1 if horizontal else 0]
        out = mmcv.imtranslate(frame, offset, direction='horizontal' if horizontal else 'vertical',
                               border_value=fill, interpolation=interpolation)
    else:
        raise ValueError(f'unknown RandAugment op {name!r}; known: {INCREASING_OPS}')
    return _to_uint8(out)


@register_transform
class ClipRandAugment(BaseTransform):
    """RandAugment applied identically to every frame of a clip.

    Required keys: ``imgs`` (list of HxWx3 uint8 frames, as after ``DecordDecode``).
    Modified keys: ``imgs``. Added keys: ``randaugment_ops`` (names of the ops applied).

    Args:
        aa_type: timm-style spec, e.g. ``'rand-m7-n4-mstd0.5-inc1'`` (the MViTv2 K400 recipe).
        fill: Border colour of the geometric ops (per channel or one value).
        interpolation: Interpolation of the geometric ops.
    """

    def __init__(self, aa_type: str = 'rand-m7-n4-mstd0.5-inc1',
                 fill: Union[int, Sequence[int]] = 128, interpolation: str = 'bicubic') -> None:
        self.aa_type = aa_type
        self.spec = parse_randaugment_spec(aa_type)
        self.fill = tuple(int(v) for v in fill) if isinstance(fill, Sequence) else int(fill)
        self.interpolation = interpolation

    def transform(self, results: dict) -> dict:
        if 'imgs' not in results:
            raise KeyError('ClipRandAugment needs decoded frames under "imgs"; put it after '
                           'the decode transform (e.g. DecordDecode)')
        frames = results['imgs']
        ops = sample_clip_ops(self.spec)
        augmented = []
        for frame in frames:
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError('ClipRandAugment expects HxWx3 uint8 frames, got '
                                 f'{frame.dtype} {frame.shape}; apply it before Normalize')
            for op in ops:
                frame = apply_op(frame, op, self.fill, self.interpolation)
            augmented.append(frame)
        results['imgs'] = np.stack(augmented) if isinstance(frames, np.ndarray) else augmented
        results['randaugment_ops'] = [op.name for op in ops]
        return results

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(aa_type={self.aa_type!r}, fill={self.fill}, '
                f'interpolation={self.interpolation!r})')
