"""Checkpoint formats: the registry, detection, key maps and round trips through files, and
numerical parity with the installed peers (mmpretrain MViT tiny, mmaction2 MViT small,
torchvision mvit_v2_s) whose weights reach our backbone only through the converter."""
import pkgutil

import pytest
import torch
from helpers import TINY, canonical_with_head, randomise

import mmvit_plugin  # noqa: F401
from mmvit_plugin.checkpoint import (
    FORMATS,
    CheckpointFormat,
    UnknownCheckpointFormatError,
    detect_format,
    from_canonical,
    get_format,
    package_checkpoint,
    read_canonical,
    to_canonical,
    unwrap_checkpoint,
)
from mmvit_plugin.checkpoint import formats as formats_package
from mmvit_plugin.checkpoint.formats.base import RenameFormat
from mmvit_plugin.models.mvitv2 import MViTv2

IMAGE = dict(TINY, img_size=(64, 64))
VIDEO = dict(TINY, img_size=(4, 64, 64), video=True, with_cls_token=True)


def test_registry_holds_one_format_per_module_in_priority_order():
    modules = {m.name for m in pkgutil.iter_modules(formats_package.__path__)} - {'base'}
    assert set(FORMATS) == modules
    priorities = [fmt.priority for fmt in FORMATS.values()]
    assert priorities == sorted(priorities) and len(set(priorities)) == len(priorities)
    for name, fmt in FORMATS.items():
        assert isinstance(fmt, CheckpointFormat) and fmt.name == name
        assert fmt.description and '\n' not in fmt.description and fmt.signature
        assert fmt.head_prefix(False).endswith('.') and fmt.head_prefix(True).endswith('.')
    with pytest.raises(UnknownCheckpointFormatError, match='supported formats'):
        get_format('caffe')


@pytest.mark.parametrize('name', [n for n, f in FORMATS.items() if isinstance(f, RenameFormat)])
def test_rename_formats_invert_their_one_table(name):
    fmt = FORMATS[name]
    assert fmt.renames or fmt.backbone_prefix
    for mine, canonical in fmt.renames:
        for template, other in ((mine, canonical), (canonical, mine)):
            key = template.format(i=7, x='k') + 'weight'
            expected = other.format(i=7, x='k') + 'weight'
            state = {key: torch.zeros(1)}
            if template is mine:
                got = fmt.to_canonical({fmt.backbone_prefix + key: torch.zeros(1)})
                assert list(got) == [expected], (key, list(got))
            else:
                got = fmt.from_canonical(state)
                assert list(got) == [fmt.backbone_prefix + expected], (key, list(got))
    # a key the table does not know passes through both ways
    assert list(fmt.from_canonical({'blocks.0.attn.qkv.bias': torch.zeros(1)})) == \
        [fmt.backbone_prefix + 'blocks.0.attn.qkv.bias']


@pytest.mark.parametrize('arch', [IMAGE, VIDEO], ids=['image', 'video'])
@pytest.mark.parametrize('fmt', list(FORMATS))
def test_every_format_round_trips_through_a_file(tmp_path, arch, fmt):
    canonical = canonical_with_head(arch)
    path = tmp_path / f'{fmt}.pth'
    torch.save(package_checkpoint(from_canonical(canonical, fmt), fmt), path)
    loaded = read_canonical(str(path))
    # Official and SlowFast files share a layout (told apart by the conv dims), as do
    # mmpretrain and mmaction2 (3-D convs or a cls_head mean mmaction2).
    renamed = ({'official': 'slowfast', 'mmpretrain': 'mmaction2'} if arch is VIDEO
               else {'slowfast': 'official'})
    assert loaded.fmt == renamed.get(fmt, fmt)
    assert set(loaded.state) == set(canonical)
    for key, value in canonical.items():
        assert torch.equal(loaded.state[key], value), key


def test_official_5d_unit_time_convs_and_model_state_wrapper(tmp_path):
    canonical = canonical_with_head(IMAGE)
    stored = {k: v.unsqueeze(2) if v.dim() == 4 else v for k, v in canonical.items()}
    assert stored['patch_embed.proj.weight'].shape == (16, 3, 1, 7, 7)
    path = tmp_path / 'official_5d.pyth'
    torch.save(package_checkpoint(stored, 'official', cfg_yaml='MVIT:\n  DEPTH: 4\n'), path)
    loaded = read_canonical(str(path))
    assert loaded.fmt == 'official'
    assert loaded.info['cfg'].startswith('MVIT')
    assert loaded.state['patch_embed.proj.weight'].shape == (16, 3, 7, 7)
    assert loaded.state['blocks.0.attn.pool_q.weight'].shape == (16, 1, 3, 3)
    assert torch.equal(loaded.state['patch_embed.proj.weight'],
                       canonical['patch_embed.proj.weight'])


def test_timm_keys_follow_stages_and_shortcut_names():
    state = MViTv2(arch='tiny').state_dict()
    timm = from_canonical(state, 'timm')
    # T: 1-2-5-2 blocks; blocks.3 is the first block of stage 2 and widens in attention.
    assert 'stages.2.blocks.0.shortcut_proj_attn.weight' in timm
    assert 'stages.3.blocks.1.mlp.fc2.weight' in timm
    assert not any(k.startswith('blocks.') for k in timm)
    large = MViTv2(arch=dict(embed_dim=16, depth=5, num_heads=1, stage_starts=(1, 3, 4),
                             dim_mul_in_att=False)).state_dict()
    timm_large = from_canonical(large, 'timm')
    # Without dim_mul_in_att the widening projection sits in the last block of a stage.
    assert 'stages.0.blocks.0.shortcut_proj_mlp.weight' in timm_large
    assert 'stages.1.blocks.1.shortcut_proj_mlp.weight' in timm_large
    back = to_canonical(timm_large, detect_format(timm_large))
    assert set(back) == set(large)


def test_module_prefix_and_wrappers_are_unwrapped(tmp_path):
    canonical = canonical_with_head(IMAGE)
    ddp = {'module.' + k: v for k, v in from_canonical(canonical, 'mmvit').items()}
    path = tmp_path / 'ddp.pth'
    torch.save({'model': ddp, 'epoch': 3}, path)
    loaded = read_canonical(str(path))
    assert loaded.fmt == 'mmvit' and set(loaded.state) == set(canonical)


def test_unknown_format_names_the_supported_ones(tmp_path):
    path = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(8, 3, 7, 7), 'fc.weight': torch.zeros(10, 8)}, path)
    with pytest.raises(UnknownCheckpointFormatError) as err:
        read_canonical(str(path))
    message = str(err.value)
    assert str(path) in message and 'conv1.weight' in message
    for fmt in FORMATS:
        assert fmt in message
    with pytest.raises(UnknownCheckpointFormatError, match='expected a dict'):
        unwrap_checkpoint([1, 2, 3], 'list.pth')


# Numerical parity with the installed peers -----------------------------------------------------

def test_mmpretrain_tiny_weights_give_the_same_features():
    from mmpretrain.models.backbones import MViT
    peer = randomise(MViT(arch='tiny', img_size=64), seed=3)
    file_state = {'backbone.' + k: v for k, v in peer.state_dict().items()}
    assert detect_format(file_state) == 'mmpretrain'
    ours = MViTv2(arch='tiny', img_size=64, out_type='featmap').eval()
    ours.load_state_dict(to_canonical(file_state, 'mmpretrain'), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = peer(x)[0], ours(x)[0]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # and back: our weights in mmpretrain's layout load into mmpretrain strictly
    mm = from_canonical(ours.state_dict(), 'mmpretrain')
    peer.load_state_dict({k[len('backbone.'):]: v for k, v in mm.items()}, strict=True)


def test_mmaction2_small_weights_give_the_same_features():
    from mmaction.models.backbones import MViT
    peer = randomise(MViT(arch='small', spatial_size=64, temporal_size=4), seed=4)
    file_state = {'backbone.' + k: v for k, v in peer.state_dict().items()}
    file_state['cls_head.fc_cls.weight'] = torch.randn(5, 768)
    file_state['cls_head.fc_cls.bias'] = torch.randn(5)
    assert detect_format(file_state) == 'mmaction2'
    canonical = to_canonical(file_state, 'mmaction2')
    assert canonical['head.projection.weight'].shape == (5, 768)
    ours = MViTv2(arch='small-16x4', img_size=(4, 64, 64), out_type='featmap_and_cls').eval()
    ours.load_state_dict({k: v for k, v in canonical.items() if not k.startswith('head.')},
                         strict=True)
    x = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        (peer_map, peer_cls), (map_, cls) = peer(x)[0], ours(x)[0]
    torch.testing.assert_close(map_, peer_map, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cls, peer_cls, rtol=1e-4, atol=1e-5)


def test_torchvision_mvit_v2_s_weights_give_the_same_logits():
    from torchvision.models.video import mvit_v2_s
    peer = randomise(mvit_v2_s(), seed=5)
    file_state = peer.state_dict()
    assert detect_format(file_state) == 'torchvision'
    canonical = to_canonical(file_state, 'torchvision')
    assert canonical['cls_token'].shape == (1, 1, 96)
    ours = MViTv2(arch='small-16x4', out_type='cls_token').eval()
    ours.load_state_dict({k: v for k, v in canonical.items() if not k.startswith('head.')},
                         strict=True)
    head = torch.nn.Linear(768, 400)
    head.load_state_dict({'weight': canonical['head.projection.weight'],
                          'bias': canonical['head.projection.bias']})
    # torchvision's forward takes its token grid from pos_encoding (built for 16x224x224);
    # pointing it at a smaller clip's grid keeps the test fast. Both models interpolate the
    # relative-position tables to that grid.
    peer.pos_encoding.temporal_size, peer.pos_encoding.spatial_size = 2, (24, 24)
    x = torch.randn(1, 3, 4, 96, 96)
    with torch.no_grad():
        expected = peer(x)
        got = head(ours(x)[0])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
