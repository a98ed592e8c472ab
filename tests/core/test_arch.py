"""Architecture as data: geometry fields, the size checks derived from them, block specs."""
import pytest

from mmvit_plugin.core.arch import ARCHS, MViTv2Arch, block_specs, check_input_size, resolve_arch

TINY = dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3), img_size=(64, 64))


def test_published_geometry_is_the_default():
    image, video = ARCHS['tiny'], ARCHS['small-16x4']
    assert (image.patch_kernel, image.patch_stride, image.patch_padding) == ((7, 7), (4, 4),
                                                                             (3, 3))
    assert (image.reduction, video.reduction) == ((32, 32), (2, 32, 32))
    assert video.first_kv_stride == (1, 8, 8) and video.q_stride == (1, 2, 2)
    assert resolve_arch(dict(TINY, img_size=None)).img_size == (224, 224)
    assert resolve_arch(dict(TINY, img_size=None, video=True)).img_size == (16, 224, 224)


@pytest.mark.parametrize('geometry,smallest', [
    (dict(), (32, 32)), (dict(patch_stride=(2, 2)), (16, 16)),
    (dict(q_stride=(2, 1)), (32, 4)), (dict(patch_stride=(8, 4), q_stride=(1, 2)), (8, 32))])
def test_smallest_input_follows_the_geometry(geometry, smallest):
    arch = resolve_arch(dict(TINY, **geometry))
    assert arch.reduction == smallest
    assert check_input_size(smallest, arch) == smallest
    for axis, name in enumerate(('height', 'width')):
        too_small = list(smallest)
        too_small[axis] -= 1
        with pytest.raises(ValueError, match=f'{name} {too_small[axis]} is too small.*at least '
                                             f'{smallest[axis]} pixels'):
            check_input_size(tuple(too_small), arch)


def test_video_frames_follow_the_temporal_stride():
    arch = resolve_arch(dict(TINY, video=True, img_size=(4, 64, 64)))
    with pytest.raises(ValueError, match='frames 1 is too small; the patch stride is 2.*at least '
                                         '2 frames'):
        check_input_size((1, 64, 64), arch)
    wide = resolve_arch(dict(TINY, video=True, img_size=(8, 64, 64), patch_stride=(4, 4, 4)))
    with pytest.raises(ValueError, match='frames 3 is too small.*at least 4 frames'):
        check_input_size((3, 64, 64), wide)


def test_kv_strides_follow_first_kv_and_q_stride():
    arch = resolve_arch(dict(TINY, first_kv_stride=(8, 8), img_size=(128, 128)))
    assert [s.kv_stride for s in block_specs(arch, arch.img_size)] == [(8, 8), (4, 4), (2, 2),
                                                                       (1, 1)]
    assert block_specs(arch, arch.img_size)[0].rel_pos_lengths == (63, 63)  # 32 q, 4 kv


@pytest.mark.parametrize('field,value,match', [
    ('patch_stride', (4, 4, 4), 'needs 2 ints for an image arch'),
    ('pool_kernel', (0, 3), 'entries must be >= 1'),
    ('patch_padding', (-1, 0), 'entries must be >= 0'),
])
def test_bad_geometry_is_named(field, value, match):
    with pytest.raises(ValueError, match=f"field '{field}': {match}"):
        MViTv2Arch(**dict(TINY, **{field: value}))
