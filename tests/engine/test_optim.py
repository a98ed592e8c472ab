"""Optimizer constructors: MViTv2 layer-wise learning-rate decay."""
import pytest
from mmengine.optim import build_optim_wrapper

import mmvit_plugin  # noqa: F401
from mmvit_plugin.engine import optim

TINY_ARCH = dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3), img_size=(32, 32))


def test_mvit_layer_depth_follows_official_numbering():
    depth = 4
    assert optim.mvit_layer_depth('backbone.patch_embed.proj.weight', depth) == (0, 6)
    assert optim.mvit_layer_depth('backbone.cls_token', depth) == (0, 6)
    assert optim.mvit_layer_depth('backbone.blocks.0.attn.qkv.weight', depth) == (1, 6)
    assert optim.mvit_layer_depth('backbone.blocks.3.mlp.fc2.bias', depth) == (4, 6)
    assert optim.mvit_layer_depth('backbone.norm.weight', depth) == (5, 6)
    assert optim.mvit_layer_depth('head.fc.weight', depth) == (5, 6)


def test_layer_decay_constructor_scales_lr_and_skips_decay_of_1d_params():
    from mmpretrain.registry import MODELS
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='MViTv2', arch=TINY_ARCH, out_type='avg_featmap'),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=64)))
    wrapper = build_optim_wrapper(model, dict(
        constructor='MViTv2LayerDecayOptimWrapperConstructor',
        optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05),
        paramwise_cfg=dict(layer_decay_rate=0.5, flat_decay_mult=0.0, bias_decay_mult=0.0)))
    by_name = {g['param_name']: g for g in wrapper.optimizer.param_groups}
    assert len(by_name) == len(list(model.parameters()))
    assert by_name['backbone.patch_embed.proj.weight']['lr'] == pytest.approx(0.5 ** 5)
    assert by_name['backbone.blocks.0.attn.qkv.weight']['lr'] == pytest.approx(0.5 ** 4)
    assert by_name['backbone.blocks.3.attn.qkv.weight']['lr'] == pytest.approx(0.5 ** 1)
    assert by_name['head.fc.weight']['lr'] == pytest.approx(1.0)
    assert by_name['head.fc.weight']['weight_decay'] == pytest.approx(0.05)
    assert by_name['backbone.blocks.0.norm1.weight']['weight_decay'] == 0.0
    assert by_name['backbone.blocks.0.attn.qkv.bias']['weight_decay'] == 0.0
