"""NaN/Inf weights are refused on every loading path that goes through the canonical
conversion (init_cfg, load_from and resume, inflation), naming the file, the number of bad
tensors and the first keys, unless the caller allows them."""
import pytest
import torch
from helpers import TINY, fresh_mvitv2

import mmvit_plugin  # noqa: F401
from mmvit_plugin.checkpoint import (
    NonFiniteWeightsError,
    check_finite_weights,
    convert_checkpoint_for_model,
    from_canonical,
    inflate_into_model,
    package_checkpoint,
)
from mmvit_plugin.models.mvitv2 import MViTv2

IMAGE = dict(TINY, img_size=(64, 64))
VIDEO = dict(TINY, img_size=(4, 64, 64), video=True, with_cls_token=True)
BAD_KEYS = ('blocks.0.attn.qkv.weight', 'blocks.3.mlp.fc2.bias')


def poisoned(state: dict, prefix: str = '') -> dict:
    state = {k: v.clone() for k, v in state.items()}
    state[prefix + BAD_KEYS[0]].view(-1)[0] = float('nan')
    state[prefix + BAD_KEYS[1]].view(-1)[-1] = float('-inf')
    return state


def assert_names_the_problem(err, source) -> None:
    message = str(err.value)
    assert str(source) in message and '2 of ' in message and 'NaN or Inf' in message
    assert all(key in message for key in BAD_KEYS) and 'allow_nonfinite=True' in message


def image_classifier():
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # another test may leave mmaction
        return MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='MViTv2', arch=IMAGE, out_type='avg_featmap'),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=128)))


def test_the_check_counts_only_float_tensors():
    check_finite_weights({'steps': torch.tensor([3]), 'w': torch.ones(2)}, 'f.pth')
    with pytest.raises(NonFiniteWeightsError, match=r"f.pth: 1 of 2 .*\['w'\]"):
        check_finite_weights({'steps': torch.tensor([3]), 'w': torch.tensor([1., float('inf')])},
                             'f.pth')


def test_init_cfg_refuses_unless_allowed(tmp_path):
    source = poisoned(fresh_mvitv2(IMAGE).state_dict())
    path = tmp_path / 'nan.pyth'
    torch.save(package_checkpoint(source, 'official'), path)
    backbone = MViTv2(arch=IMAGE, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(NonFiniteWeightsError) as err:
        backbone.init_weights()
    assert_names_the_problem(err, path)
    allowed = MViTv2(arch=IMAGE, init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                               allow_nonfinite=True))
    allowed.init_weights()
    assert torch.isnan(allowed.blocks[0].attn.qkv.weight).any()


def test_runner_checkpoints_that_fit_the_model_are_checked_too():
    model = image_classifier()
    own = {'meta': {'epoch': 1}, 'state_dict': poisoned(model.state_dict(), 'backbone.')}
    with pytest.raises(NonFiniteWeightsError) as err:
        convert_checkpoint_for_model(own, model, source='work_dirs/epoch_1.pth')
    message = str(err.value)
    assert 'work_dirs/epoch_1.pth' in message and 'backbone.' + BAD_KEYS[0] in message
    assert convert_checkpoint_for_model(own, model, source='epoch_1.pth',
                                        allow_nonfinite=True) is None  # untouched


def test_load_from_in_another_format_refuses_unless_allowed():
    model = image_classifier()
    state = poisoned(dict(model.backbone.state_dict()))
    checkpoint = package_checkpoint(from_canonical(state, 'timm'), 'timm')
    with pytest.raises(NonFiniteWeightsError) as err:
        convert_checkpoint_for_model(dict(checkpoint), model, source='timm.pth')
    assert 'timm.pth' in str(err.value) and '2 of' in str(err.value)
    report = convert_checkpoint_for_model(checkpoint, model, source='timm.pth',
                                          allow_nonfinite=True)
    assert report is not None and 'backbone.' + BAD_KEYS[0] in checkpoint['state_dict']


def test_inflation_refuses_unless_allowed(tmp_path):
    path = tmp_path / 'image.pyth'
    torch.save(package_checkpoint(poisoned(fresh_mvitv2(IMAGE).state_dict()), 'official'), path)
    video = fresh_mvitv2(VIDEO, seed=1)
    before = video.patch_embed.proj.weight.clone()
    with pytest.raises(NonFiniteWeightsError) as err:
        inflate_into_model(video, str(path))
    assert_names_the_problem(err, path)
    assert torch.equal(video.patch_embed.proj.weight, before)  # nothing was loaded
    inflate_into_model(video, str(path), allow_nonfinite=True)
    assert torch.isnan(video.blocks[0].attn.qkv.weight).any()
