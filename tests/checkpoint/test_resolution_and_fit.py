"""Loading into a model built for another input size, clear mismatch errors, cls token and
head handling, and the backbone's init_cfg for every format."""
import pytest
import torch
from helpers import TINY
from mmengine.registry import WEIGHT_INITIALIZERS

import mmvit_plugin  # noqa: F401
from mmvit_plugin.checkpoint import (
    EXACT,
    FINE_TUNING,
    FORMATS,
    ArchitectureMismatchError,
    MViTv2Pretrained,
    fit_state_dict,
    from_canonical,
    package_checkpoint,
)
from mmvit_plugin.models.mvitv2 import MViTv2


def trained_like(arch: dict, seed: int = 0, **kwargs) -> MViTv2:
    torch.manual_seed(seed)
    model = MViTv2(arch=arch, **kwargs)
    model.init_weights()
    with torch.no_grad():  # larger tables than the init, so positions matter in the output
        for block in model.blocks:
            for table in block.attn.rel_pos_tables():
                table.normal_(0, 0.5)
    return model.eval()


def load_fitted(model: MViTv2, source_state: dict) -> None:
    state, _ = fit_state_dict(source_state, model.state_dict(), FINE_TUNING)
    model.load_state_dict(state, strict=True)


@pytest.mark.parametrize('small_size,large_size', [
    ((64, 64), (96, 96)),            # images, like 224 -> 384
    ((4, 64, 64), (8, 64, 64)),      # video, like 16 -> 32 frames
])
def test_other_input_size_interpolates_tables(small_size, large_size):
    video = len(small_size) == 3
    arch = dict(TINY, video=video, with_cls_token=video)
    source = trained_like(dict(arch, img_size=small_size), out_type='featmap')
    state = source.state_dict()

    same = MViTv2(arch=dict(arch, img_size=small_size), out_type='featmap').eval()
    state_same, report_same = fit_state_dict(state, same.state_dict())
    assert set(report_same.counts()) == {'copied'}
    same.load_state_dict(state_same)
    x_small = torch.randn(1, 3, *small_size)
    with torch.no_grad():  # loading at the original size changes nothing
        assert torch.equal(same(x_small)[0], source(x_small)[0])

    large = MViTv2(arch=dict(arch, img_size=large_size), out_type='featmap').eval()
    fitted, report = fit_state_dict(state, large.state_dict())
    interpolated = report.keys_with('interpolated')
    assert interpolated and all('rel_pos' in k for k in interpolated)
    if video:
        assert all(k.endswith('rel_pos_t') for k in interpolated)
    large.load_state_dict(fitted)
    x_large = torch.randn(1, 3, *large_size)
    with torch.no_grad():
        # the tables resized on load are the ones the source model interpolates at run time
        torch.testing.assert_close(large(x_large)[0], source(x_large)[0], rtol=1e-5, atol=1e-5)
        # and the resized model still runs at the original size, close to the source
        back = large(x_small)[0]
        reference = source(x_small)[0]
    assert back.shape == reference.shape
    assert torch.isfinite(back).all()
    assert float((back - reference).norm() / reference.norm()) < 0.5


def test_init_cfg_loads_a_224_checkpoint_into_a_384_backbone(tmp_path):
    source = trained_like(dict(TINY, img_size=(64, 64)))
    path = tmp_path / 'small.pth'
    torch.save(package_checkpoint(from_canonical(source.state_dict(), 'mmvit'), 'mmvit'), path)
    large = MViTv2(arch=dict(TINY, img_size=(96, 96)),
                   init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    large.init_weights()
    assert large.blocks[0].attn.rel_pos_h.shape[0] == 47  # 2 * 96/4 - 1
    torch.testing.assert_close(large.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)


def test_another_architecture_lists_first_mismatching_keys_and_shapes():
    tiny = MViTv2(arch=dict(TINY, img_size=(64, 64))).state_dict()
    wider = MViTv2(arch=dict(TINY, embed_dim=24, depth=5, stage_starts=(1, 3, 4),
                             img_size=(64, 64)))
    with pytest.raises(ArchitectureMismatchError) as err:
        fit_state_dict(tiny, wider.state_dict(), source_name='tiny.pth',
                      target_name='MViTv2(embed_dim=24)')
    message = str(err.value)
    assert 'tiny.pth does not fit MViTv2(embed_dim=24)' in message
    assert 'patch_embed.proj.weight: file (16, 3, 7, 7) vs model (24, 3, 7, 7)' in message
    assert 'shape mismatches' in message and 'missing from the file' in message
    assert 'blocks.4.' in message  # the missing fifth block is named


def test_dim_mul_in_att_mismatch_is_an_architecture_error():
    # L in1k (dim_mul_in_att off) is not L in21k / video L (on): same depth, other shapes
    off = MViTv2(arch=dict(TINY, dim_mul_in_att=False, img_size=(64, 64))).state_dict()
    on = MViTv2(arch=dict(TINY, img_size=(64, 64))).state_dict()
    with pytest.raises(ArchitectureMismatchError, match=r'blocks\.\d\.attn\.qkv\.weight'):
        fit_state_dict(off, on)


def test_unused_cls_token_is_dropped_and_missing_one_is_new():
    plain = MViTv2(arch=dict(TINY, img_size=(64, 64)))
    with_cls = MViTv2(arch=dict(TINY, img_size=(64, 64), with_cls_token=True))
    state = dict(plain.state_dict(), cls_token=torch.randn(1, 1, 16))
    fitted, report = fit_state_dict(state, plain.state_dict())
    assert 'cls_token' not in fitted and report.keys_with('dropped') == ['cls_token']
    with pytest.raises(ArchitectureMismatchError, match='cls_token'):
        # strict: the cls token must be in the file
        fit_state_dict(plain.state_dict(), with_cls.state_dict(), EXACT)
    fitted, report = fit_state_dict(plain.state_dict(), with_cls.state_dict(), FINE_TUNING)
    assert report.keys_with('newly initialised') == ['cls_token']


def test_head_kept_or_dropped_by_class_count():
    backbone = MViTv2(arch=dict(TINY, img_size=(64, 64))).state_dict()
    head10 = {'head.projection.weight': torch.randn(10, 128), 'head.projection.bias':
              torch.randn(10)}
    head3 = {'head.projection.weight': torch.zeros(3, 128), 'head.projection.bias':
             torch.zeros(3)}
    fitted, report = fit_state_dict(dict(backbone, **head10), dict(backbone, **head10))
    assert torch.equal(fitted['head.projection.weight'], head10['head.projection.weight'])
    fitted, report = fit_state_dict(dict(backbone, **head10), dict(backbone, **head3))
    assert torch.equal(fitted['head.projection.weight'], head3['head.projection.weight'])
    assert set(report.keys_with('dropped')) == set(head3)
    assert set(report.keys_with('newly initialised')) == set(head3)


def test_multi_scale_backbone_gets_fresh_stage_norms():
    source = MViTv2(arch=dict(TINY, img_size=(64, 64))).state_dict()
    multi = MViTv2(arch=dict(TINY, img_size=(64, 64)), out_indices=(0, 1, 2, 3))
    fitted, report = fit_state_dict(source, multi.state_dict(), FINE_TUNING)
    assert sorted(report.keys_with('newly initialised')) == [
        f'norm{i}.{p}' for i in range(3) for p in ('bias', 'weight')]
    multi.load_state_dict(fitted, strict=True)


@pytest.mark.parametrize('fmt', list(FORMATS))
def test_init_cfg_accepts_every_format_and_ignores_the_head(tmp_path, fmt):
    source = trained_like(dict(TINY, img_size=(64, 64)), seed=1)
    state = dict(source.state_dict())
    state['head.projection.weight'] = torch.randn(5, 128)
    state['head.projection.bias'] = torch.randn(5)
    path = tmp_path / f'{fmt}.pth'
    torch.save(package_checkpoint(from_canonical(state, fmt), fmt), path)
    target = MViTv2(arch=dict(TINY, img_size=(64, 64)),
                    init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    target.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_init_cfg_builds_the_registered_initializer_and_rejects_unknown_fields(tmp_path):
    assert WEIGHT_INITIALIZERS.get('MViTv2Pretrained') is MViTv2Pretrained
    backbone = MViTv2(arch=dict(TINY, img_size=(64, 64)),
                      init_cfg=dict(type='Pretrained', checkpoint='x.pth', inflation='center'))
    with pytest.raises(ValueError, match="unknown fields \\['inflation'\\]"):
        backbone.init_weights()
    with pytest.raises(ValueError, match="needs 'checkpoint'"):
        MViTv2Pretrained()
    with pytest.raises(ValueError, match="prefix='head.'"):
        MViTv2Pretrained(checkpoint='x.pth', prefix='head.')
    # the initializer also loads a backbone directly, as mmengine's initialize() calls it
    source = trained_like(dict(TINY, img_size=(64, 64)), seed=2)
    path = tmp_path / 'plain.pth'
    torch.save(package_checkpoint(from_canonical(source.state_dict(), 'mmvit'), 'mmvit'), path)
    target = MViTv2(arch=dict(TINY, img_size=(64, 64)))
    WEIGHT_INITIALIZERS.build(dict(type='MViTv2Pretrained', checkpoint=str(path)))(target)
    assert torch.equal(target.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
