"""ClipRandAugment: spec parsing, per-op behaviour, identical treatment of every frame."""
import numpy as np
import pytest
from mmaction.registry import TRANSFORMS as ACTION_TRANSFORMS
from mmengine.dataset import Compose
from mmengine.registry import DefaultScope

import mmvit_plugin  # noqa: F401  (registers the plugin)
from mmvit_plugin.datasets.transforms import (
    INCREASING_OPS,
    ClipOp,
    ClipRandAugment,
    RandAugmentSpec,
    apply_op,
    op_argument,
    parse_randaugment_spec,
    sample_clip_ops,
)


def textured_frame(seed=0, shape=(40, 48, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def moving_square_clip(num_frames=6, size=48):
    """A bright 6x6 square moving one pixel right per frame on a dark textured background."""
    background = (textured_frame(1, (size, size, 3)) // 4).astype(np.uint8)
    frames = []
    for t in range(num_frames):
        frame = background.copy()
        frame[20:26, 10 + t:16 + t] = 250
        frames.append(frame)
    return frames


def square_column(frame):
    bright = np.argwhere(frame[..., 0] >= 200)
    return bright[:, 1].mean()


def test_parse_spec_of_the_kinetics_recipe():
    spec = parse_randaugment_spec('rand-m7-n4-mstd0.5-inc1')
    assert spec == RandAugmentSpec(magnitude=7.0, num_ops=4, magnitude_std=0.5, increasing=True)
    assert parse_randaugment_spec('rand-m9-n2-mstd0.5-mmax9-p0.8-inc1').magnitude_max == 9.0
    for bad, message in [('auto-m7', 'must start with'), ('rand-m7-n4-inc0', 'increasing'),
                         ('rand-m7-x3-inc1', "cannot parse 'x3'"), ('rand-m7-n0-inc1', 'n must')]:
        with pytest.raises(ValueError, match=message):
            parse_randaugment_spec(bad)


def test_op_arguments_grow_with_the_level():
    assert op_argument('Rotate', 0.7) == pytest.approx(21.0)
    assert op_argument('TranslateX', 1.0) == pytest.approx(0.45)
    assert op_argument('Posterize', 0.0) == 4 and op_argument('Posterize', 0.7) == 2
    assert op_argument('Solarize', 0.0) == 256 and op_argument('Solarize', 0.5) == 128
    assert op_argument('SolarizeAdd', 0.5) == 55


@pytest.mark.parametrize('name', INCREASING_OPS)
def test_every_op_keeps_shape_and_dtype_and_is_deterministic(name):
    frame = textured_frame()
    op = ClipOp(name, op_argument(name, 0.6))
    out = apply_op(frame, op)
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, apply_op(frame, op))


def test_op_semantics_on_known_inputs():
    frame = textured_frame()
    np.testing.assert_array_equal(apply_op(frame, ClipOp('Invert')), 255 - frame)
    np.testing.assert_array_equal(apply_op(frame, ClipOp('Solarize', 256)), frame)
    np.testing.assert_array_equal(apply_op(frame, ClipOp('Posterize', 4)), frame & 0xF0)
    added = apply_op(frame, ClipOp('SolarizeAdd', 50))
    low = frame < 128
    np.testing.assert_array_equal(added[low], np.minimum(frame[low].astype(int) + 50, 255))
    np.testing.assert_array_equal(added[~low], frame[~low])
    # translating by a quarter of the width moves the square by 12 of 48 columns
    square = moving_square_clip(1)[0]
    moved = apply_op(square, ClipOp('TranslateX', 0.25), interpolation='nearest')
    assert square_column(moved) - square_column(square) == pytest.approx(12.0)


def test_sampling_follows_the_spec():
    np.random.seed(0)
    spec = parse_randaugment_spec('rand-m7-n4-mstd0.5-inc1')
    draws = [sample_clip_ops(spec) for _ in range(2000)]
    counts = [len(ops) for ops in draws]
    assert max(counts) <= 4
    assert np.mean(counts) == pytest.approx(2.0, abs=0.1)  # each of 4 ops kept with p=0.5
    rotations = [abs(op.argument) for ops in draws for op in ops if op.name == 'Rotate']
    assert np.mean(rotations) == pytest.approx(21.0, abs=0.5)  # level 7 of 10 -> 21 degrees
    assert 0 < np.std(rotations) < 3  # magnitude noise with std 0.5 level
    names = {op.name for ops in draws for op in ops}
    assert names == set(INCREASING_OPS)


def test_every_frame_of_a_clip_gets_the_same_augmentation():
    transform = ClipRandAugment('rand-m7-n4-mstd0.5-inc1')
    frame = textured_frame()
    changed = 0
    for seed in range(40):
        np.random.seed(seed)
        result = transform(dict(imgs=[frame.copy() for _ in range(5)]))
        outputs = result['imgs']
        assert len(outputs) == 5
        for out in outputs[1:]:
            np.testing.assert_array_equal(out, outputs[0])
        changed += int(not np.array_equal(outputs[0], frame))
    assert changed > 25  # P(no op kept) = 1/16, so nearly every clip is altered


def test_motion_between_frames_survives_geometric_ops():
    clip = moving_square_clip()
    for name in ('TranslateX', 'TranslateY', 'ShearY'):
        op = ClipOp(name, 0.2)
        positions = [square_column(apply_op(frame, op, interpolation='nearest'))
                     for frame in clip]
        assert np.allclose(np.diff(positions), 1.0, atol=0.05), (name, positions)


def test_clips_differ_from_each_other():
    transform = ClipRandAugment()
    np.random.seed(3)
    drawn = [tuple(transform(dict(imgs=[textured_frame()]))['randaugment_ops'])
             for _ in range(20)]
    assert len(set(drawn)) > 10


def test_in_an_mmaction_pipeline_and_input_checks():
    with DefaultScope.overwrite_default_scope('mmaction'):
        pipeline = Compose([
            dict(type='ClipRandAugment', aa_type='rand-m7-n4-mstd0.5-inc1'),
            dict(type='RandomResizedCrop', area_range=(0.08, 1.0)),
            dict(type='Resize', scale=(32, 32), keep_ratio=False),
            dict(type='FormatShape', input_format='NCTHW'),
            dict(type='PackActionInputs'),
        ])
    clip = moving_square_clip(4)
    out = pipeline(dict(imgs=clip, img_shape=clip[0].shape[:2], modality='RGB', label=0,
                        num_clips=1, clip_len=4))
    assert out['inputs'].shape == (1, 3, 4, 32, 32)
    assert 'ClipRandAugment' in ACTION_TRANSFORMS.module_dict
    transform = ClipRandAugment()
    with pytest.raises(KeyError, match='imgs'):
        transform(dict(img=clip[0]))
    with pytest.raises(ValueError, match='uint8'):
        transform(dict(imgs=[clip[0].astype(np.float32)]))
    stacked = transform(dict(imgs=np.stack(clip)))['imgs']
    assert isinstance(stacked, np.ndarray) and stacked.shape == (4, 48, 48, 3)
