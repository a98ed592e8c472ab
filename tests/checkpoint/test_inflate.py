"""2D -> 3D inflation: kernels, tables, cls token, head, position embeddings, the key log, and
what a clip of one repeated image gives."""
import logging
import re

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY
from helpers import fresh_mvitv2 as fresh

import mmvit_plugin  # noqa: F401
from mmvit_plugin.checkpoint import (
    INFLATION_METHODS,
    ArchitectureMismatchError,
    check_inflation_method,
    from_canonical,
    inflate_conv_weight,
    inflate_into_model,
    inflate_state_dict,
    inflation_rules,
    package_checkpoint,
)
from mmvit_plugin.checkpoint.load import log_report
from mmvit_plugin.models.mvitv2 import MViTv2

IMAGE = dict(TINY, img_size=(64, 64))
VIDEO = dict(TINY, img_size=(8, 64, 64), video=True, with_cls_token=True)
ACTIONS = {'copied', 'inflated', 'interpolated', 'newly initialised', 'dropped'}


@pytest.mark.parametrize('method', ['center', 'average'])
def test_inflated_kernel_sums_to_the_2d_kernel(method):
    weight = torch.randn(4, 3, 7, 7)
    inflated = inflate_conv_weight(weight, 3, method)
    assert inflated.shape == (4, 3, 3, 7, 7)
    torch.testing.assert_close(inflated.sum(dim=2), weight)
    if method == 'center':
        assert torch.equal(inflated[:, :, 1], weight)
        assert not inflated[:, :, [0, 2]].any()
    else:
        for t in range(3):
            torch.testing.assert_close(inflated[:, :, t], weight / 3)
    with pytest.raises(ValueError, match='center'):
        inflate_conv_weight(weight, 3, 'middle')


def test_every_key_is_accounted_for():
    image = fresh(IMAGE).state_dict()
    image['head.projection.weight'] = torch.randn(10, 128)
    image['head.projection.bias'] = torch.randn(10)
    image['pos_embed'] = torch.randn(1, 256, 16)  # an MViTv1-style absolute embedding
    video_model = fresh(VIDEO, seed=1)
    target = dict(video_model.state_dict())
    target['head.projection.weight'] = torch.zeros(5, 128)
    target['head.projection.bias'] = torch.zeros(5)
    state, report = inflate_state_dict(image, target, 'average')

    assert list(state) == list(target)
    assert {e.action for e in report.events} == ACTIONS
    accounted = {e.key for e in report.events}
    assert set(target) | set(image) == accounted
    for event in report.events:
        assert event.action in ACTIONS
    by_action = {a: set(report.keys_with(a)) for a in ACTIONS}
    assert 'patch_embed.proj.weight' in by_action['inflated']
    assert {f'blocks.{i}.attn.pool_{x}.weight' for i in range(4) for x in 'qkv'} <= \
        by_action['inflated']
    assert {f'blocks.{i}.attn.rel_pos_t' for i in range(4)} <= by_action['newly initialised']
    assert 'cls_token' in by_action['newly initialised']
    assert {'pos_embed', 'head.projection.weight'} <= by_action['dropped']
    # new keys keep the video model's fresh (official) init, not zeros
    assert torch.equal(state['blocks.0.attn.rel_pos_t'], target['blocks.0.attn.rel_pos_t'])
    assert state['blocks.0.attn.rel_pos_t'].abs().sum() > 0
    # every pooling kernel was inflated the same way as the patch embedding
    for i in range(4):
        torch.testing.assert_close(state[f'blocks.{i}.attn.pool_q.weight'],
                                   inflate_conv_weight(image[f'blocks.{i}.attn.pool_q.weight'],
                                                       3, 'average'))
    video_model.load_state_dict({k: v for k, v in state.items() if not k.startswith('head.')})


def test_report_lines_reach_the_log(caplog):
    image, video = fresh(IMAGE).state_dict(), fresh(VIDEO).state_dict()
    _, report = inflate_state_dict(image, video, 'center')
    logger = logging.getLogger('inflation-test')
    with caplog.at_level(logging.INFO, logger='inflation-test'):
        log_report(report, 'inflated', every_key=True, logger=logger)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 + len(report.events)
    for key in video:
        assert any(line.strip().endswith(key) or f' {key} (' in line for line in lines), key


def test_head_kept_when_class_counts_match():
    image = fresh(IMAGE).state_dict()
    head = {'head.projection.weight': torch.randn(10, 128),
            'head.projection.bias': torch.randn(10)}
    target = dict(fresh(VIDEO).state_dict(), **{k: torch.zeros_like(v) for k, v in head.items()})
    state, report = inflate_state_dict(dict(image, **head), target, 'center')
    assert torch.equal(state['head.projection.weight'], head['head.projection.weight'])
    assert 'head.projection.weight' in report.keys_with('copied')


def test_spatial_tables_interpolated_when_the_grid_differs():
    image = fresh(dict(TINY, img_size=(64, 64))).state_dict()
    video = fresh(dict(VIDEO, img_size=(8, 96, 96))).state_dict()
    state, report = inflate_state_dict(image, video, 'center')
    interpolated = report.keys_with('interpolated')
    assert 'blocks.0.attn.rel_pos_h' in interpolated
    assert state['blocks.0.attn.rel_pos_h'].shape == video['blocks.0.attn.rel_pos_h'].shape


def test_mismatching_widths_are_refused_with_keys():
    image = fresh(dict(IMAGE, dim_mul_in_att=False)).state_dict()
    with pytest.raises(ArchitectureMismatchError, match='qkv.weight: file'):
        inflate_state_dict(image, fresh(VIDEO).state_dict(), 'center')
    with pytest.raises(ValueError, match='already a video'):
        inflate_state_dict(fresh(VIDEO).state_dict(), fresh(VIDEO).state_dict())


def repeated_image_clip(frames: int, size: int = 64) -> tuple:
    torch.manual_seed(5)
    image = torch.randn(1, 3, size, size)
    return image, image.unsqueeze(2).repeat(1, 1, frames, 1, 1)


@pytest.mark.parametrize('method', ['average', 'center'])
def test_repeated_image_clip_gives_the_image_patch_embedding(method):
    image_model = fresh(IMAGE, out_type='featmap')
    video_model = fresh(VIDEO, seed=1, out_type='featmap')
    state, _ = inflate_state_dict(image_model.state_dict(), video_model.state_dict(), method)
    video_model.load_state_dict(state)
    image, clip = repeated_image_clip(8)
    with torch.no_grad():
        image_embed = image_model.patch_embed.proj(image)
        video_embed = video_model.patch_embed.proj(clip)  # (1, C, 4, 16, 16)
        image_feat = image_model(image)[0].mean(dim=(2, 3))
        video_feat = video_model(clip)[0].mean(dim=(2, 3, 4))
    assert video_embed.shape[2] == 4
    # Every temporal step whose kernel sees only real frames equals the image embedding.
    for t in range(1, 4):
        torch.testing.assert_close(video_embed[:, :, t], image_embed, rtol=1e-5, atol=1e-5)
    first_step_error = float((video_embed[:, :, 0] - image_embed).norm() / image_embed.norm())
    if method == 'center':
        assert first_step_error < 1e-6
    else:  # step 0 covers frames -1, 0, 1: the zero padding removes a third of the kernel
        assert first_step_error > 0.1
    # The final features differ (KV stride (1,8,8) vs 4, a new cls token, tables interpolated)
    # but stay clearly aligned; tests/checkpoint/inflation_evidence.py prints the figures.
    cosine = F.cosine_similarity(video_feat, image_feat).item()
    assert cosine > 0.5


def test_one_method_check_for_every_entry():
    assert check_inflation_method('average') == 'average'
    for entry in (lambda: check_inflation_method('middle', 'WeightInflationHook method'),
                  lambda: inflation_rules('middle'),
                  lambda: inflate_conv_weight(torch.zeros(1, 1, 3, 3), 3, 'middle'),
                  lambda: inflate_into_model(fresh(VIDEO), 'x.pth', 'middle')):
        with pytest.raises(ValueError, match=re.escape(f'must be one of {INFLATION_METHODS}')):
            entry()


def test_inflate_into_model_is_the_way_from_a_2d_file(tmp_path):
    image_model = fresh(IMAGE)
    path = tmp_path / 'image_official.pyth'
    torch.save(package_checkpoint(from_canonical(image_model.state_dict(), 'official'),
                                  'official'), path)
    video = fresh(VIDEO, seed=1)
    report = inflate_into_model(video, str(path), 'average')
    assert 'patch_embed.proj.weight' in report.keys_with('inflated')
    torch.testing.assert_close(video.patch_embed.proj.weight,
                               inflate_conv_weight(image_model.patch_embed.proj.weight, 3,
                                                   'average'))
    assert torch.equal(video.blocks[2].mlp.fc1.weight, image_model.blocks[2].mlp.fc1.weight)
    assert video.blocks[0].attn.rel_pos_t.abs().sum() > 0  # official init, not zeros


def test_init_cfg_refuses_a_2d_file_for_a_video_backbone_naming_the_hook(tmp_path):
    path = tmp_path / 'image_official.pyth'
    torch.save(package_checkpoint(from_canonical(fresh(IMAGE).state_dict(), 'official'),
                                  'official'), path)
    video = MViTv2(arch=VIDEO, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(ArchitectureMismatchError) as err:
        video.init_weights()
    assert str(path) in str(err.value) and "type='WeightInflationHook'" in str(err.value)
    with_inflate = MViTv2(arch=VIDEO, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                                    inflate='center'))
    with pytest.raises(ValueError, match='no inflate field.*WeightInflationHook'):
        with_inflate.init_weights()
