"""infer_arch: every published arch read back off its weights (geometry included), what the
weights cannot hold, clear errors, and the module's framework-free imports."""
import ast
import dataclasses
from pathlib import Path

import pytest
import torch
from helpers import TINY

import mmvit_plugin  # noqa: F401
from mmvit_plugin.core.arch import ARCHS, MViTv2Arch
from mmvit_plugin.core.infer import (
    HEAD_PREFIX,
    InferredArch,
    infer_arch,
    is_video_conv,
    is_video_state,
)
from mmvit_plugin.models.mvitv2 import MViTv2

# Fields the weights show (the rest keep the modality's defaults or are not in the weights).
READABLE = ('embed_dim', 'depth', 'num_heads', 'stage_starts', 'dim_mul_in_att', 'video',
            'img_size', 'mlp_ratio', 'patch_kernel', 'pool_kernel', 'patch_stride')


@pytest.mark.parametrize('name', list(ARCHS))
def test_every_published_arch_is_read_back(name):
    with torch.device('meta'):
        state = dict(MViTv2(arch=name).state_dict())
    state[HEAD_PREFIX + 'weight'] = torch.empty(11, 8, device='meta')
    inferred = infer_arch(state)
    assert isinstance(inferred, InferredArch) and isinstance(inferred.arch, MViTv2Arch)
    for field in READABLE:
        assert getattr(inferred.arch, field) == getattr(ARCHS[name], field), field
    assert inferred.cls_token_present == ARCHS[name].with_cls_token
    assert inferred.arch.with_cls_token == inferred.cls_token_present
    assert inferred.num_classes == 11


def test_kernels_are_read_and_the_size_follows_the_patch_stride():
    arch = MViTv2Arch(**TINY, img_size=(96, 64), patch_kernel=(5, 5), patch_padding=(2, 2),
                      pool_kernel=(5, 5))
    state = MViTv2(arch=dataclasses.asdict(arch)).state_dict()
    inferred = infer_arch(state).arch
    assert inferred.patch_kernel == (5, 5) and inferred.pool_kernel == (5, 5)
    assert inferred.img_size == (96, 64)  # table side x the default patch stride
    assert infer_arch(state).num_classes is None
    video = MViTv2(arch=dict(TINY, video=True, img_size=(6, 64, 64))).state_dict()
    assert infer_arch(video).arch.img_size == (6, 64, 64)
    assert infer_arch(video).arch.patch_stride == (2, 4, 4)


def test_video_tests_and_errors():
    assert is_video_conv(torch.zeros(4, 3, 3, 7, 7))
    assert not is_video_conv(torch.zeros(4, 3, 1, 7, 7)) and not is_video_conv(None)
    image = MViTv2(arch=dict(TINY, img_size=(64, 64))).state_dict()
    assert not is_video_state(image)
    with pytest.raises(ValueError, match="'patch_embed.proj.weight' is missing"):
        infer_arch({'x': torch.zeros(1)})
    gap = {k: v for k, v in image.items() if not k.startswith('blocks.2.')}
    with pytest.raises(ValueError, match='not numbered 0..depth-1'):
        infer_arch(gap)


def test_infer_imports_only_torch_and_the_core():
    tree = ast.parse(Path(mmvit_plugin.core.infer.__file__).read_text())
    stdlib = {'dataclasses', 're', 'typing'}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name.split('.')[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = ['.' if node.level else node.module.split('.')[0]]
            if node.level:
                assert node.level == 1 and node.module in ('arch', 'rel_pos'), node.module
        else:
            continue
        assert set(names) <= stdlib | {'torch', '.'}, names
