"""tools/convert_checkpoint.py: detection, strict loading into the config's model (head
included), the table's configs, other output formats, README's format table, clear errors,
refusal of files that would run code and of non-finite weights."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
from helpers import REPO, TINY, canonical_with_head, load_tool, write_payload_checkpoint
from mmengine.config import Config

import mmvit_plugin  # noqa: F401
from mmvit_plugin.checkpoint import (
    FORMATS,
    arch_name_for,
    decide_cls_token,
    from_canonical,
    markdown_table,
    package_checkpoint,
    read_canonical,
)
from mmvit_plugin.checkpoint.load import canonical_from_object
from mmvit_plugin.core.infer import infer_arch
from mmvit_plugin.models.mvitv2 import MViTv2

REPO = str(REPO)

pytestmark = pytest.mark.usefixtures('single_thread')

tool = load_tool('tools/convert_checkpoint.py')


def official_state(arch, classes: int, extra_cls: bool, seed: int = 0) -> dict:
    """Official-init weights (extra_cls: the unused cls_token of official in1k image files)."""
    return canonical_with_head(arch, classes, seed, random=False, cls_token=extra_cls)


def test_official_t_converts_and_loads_strictly_into_the_t_config(tmp_path, capsys):
    state = official_state('tiny', 1000, extra_cls=True)
    # conv weights stored 5-D with T=1, as some official image files do
    stored = {k: v.unsqueeze(2) if v.dim() == 4 else v for k, v in state.items()}
    src = tmp_path / 'MViTv2_T_in1k.pyth'
    torch.save(package_checkpoint(stored, 'official',
                                  cfg_yaml='MVIT:\n  CLS_EMBED_ON: False\n  DEPTH: 10\n'), src)
    dst = tmp_path / 'out' / 'mvitv2_t.pth'
    config = osp.join(REPO, 'configs', 'mvitv2_t_imagenet.py')
    assert tool.main([str(src), str(dst), '--config', config]) == 0
    out = capsys.readouterr().out
    assert 'format: official' in out and 'arch: tiny' in out
    assert 'matching config: configs/mvitv2_t_imagenet.py' in out
    assert 'cls token: not used' in out and '[4/4]' in out

    converted = torch.load(dst, weights_only=True)
    assert converted['meta']['converted_from'] == 'official'
    model = tool.build_model_from_config(config)
    model.load_state_dict(converted['state_dict'], strict=True)
    reference = MViTv2(arch='tiny', out_type='avg_featmap').eval()
    reference.load_state_dict({k: v for k, v in state.items()
                               if k != 'cls_token' and not k.startswith('head.')})
    x = torch.randn(1, 3, 96, 96)  # both models interpolate their tables alike; fast
    with torch.no_grad():
        expected = torch.nn.functional.linear(reference(x)[0],
                                              state['head.projection.weight'],
                                              state['head.projection.bias'])
        got = model(x, mode='tensor')
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('fmt', list(FORMATS))
def test_every_format_converts_to_the_plugin_layout(tmp_path, fmt):
    video = fmt in ('slowfast', 'mmaction2', 'torchvision')
    arch = dict(TINY, img_size=(4, 64, 64), video=True, with_cls_token=True) if video \
        else dict(TINY, img_size=(64, 64))
    state = official_state(arch, 6, extra_cls=False)
    src = tmp_path / f'{fmt}.pth'
    torch.save(package_checkpoint(from_canonical(state, fmt), fmt), src)
    dst = tmp_path / 'out.pth'
    assert tool.main([str(src), str(dst)]) == 0
    converted = torch.load(dst, weights_only=True)['state_dict']
    head = 'cls_head.fc_cls.' if video else 'head.fc.'
    expected = {('backbone.' + k if not k.startswith('head.') else
                 head + k[len('head.projection.'):]): v for k, v in state.items()}
    assert set(converted) == set(expected)
    for key, value in expected.items():
        assert torch.equal(converted[key], value), key


# Every model of the table: the converter picks the right config and the converted keys are
# exactly those of the model built from it (models built on the meta device: no memory).

TABLE = [
    # (arch of the official file, classes, official in1k file with an unused cls token, config)
    ('tiny', 1000, True, 'configs/mvitv2_t_imagenet.py'),
    ('small', 1000, True, 'configs/mvitv2_s_imagenet.py'),
    ('base', 1000, True, 'configs/mvitv2_b_imagenet.py'),
    ('large', 1000, True, 'configs/mvitv2_l_imagenet.py'),
    ('base-in21k', 19168, False, 'configs/mvitv2_b_imagenet21k.py'),
    ('large-in21k', 19168, False, 'configs/mvitv2_l_imagenet21k.py'),
    ('huge', 19168, False, 'configs/mvitv2_h_imagenet21k.py'),
    ('small-16x4', 400, False, 'configs/mvitv2_s_16x4_k400.py'),
    ('base-32x3', 400, False, 'configs/mvitv2_b_32x3_k400.py'),
    ('large-40x3', 400, False, 'configs/mvitv2_l_40x3_k400.py'),
]


@pytest.mark.parametrize('arch,classes,unused_cls,config', TABLE,
                         ids=[row[0] for row in TABLE])
def test_table_models_map_to_their_configs(arch, classes, unused_cls, config):
    cfg = Config.fromfile(osp.join(REPO, config))
    with torch.device('meta'):
        model = tool.build_model_from_config(osp.join(REPO, config))
        state = official_state(arch, classes, extra_cls=unused_cls)
    fmt = 'slowfast' if '-' in arch and arch[-1].isdigit() else 'official'
    cfg_yaml = 'MVIT:\n  CLS_EMBED_ON: False\n' if unused_cls else ''
    loaded = canonical_from_object(package_checkpoint(state, fmt, cfg_yaml=cfg_yaml), 'file')
    info = infer_arch(loaded.state)
    uses_cls, _ = decide_cls_token(info, loaded.fmt, loaded.info.get('cfg'))
    name = arch_name_for(info.arch, uses_cls)
    assert name == arch and cfg.model.backbone.arch == arch
    assert tool.config_for(name, info.num_classes) == config
    if not uses_cls:
        loaded.state.pop('cls_token', None)
    converted = from_canonical(loaded.state, 'mmvit')
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected


def test_unused_cls_token_without_cfg_is_dropped_for_in1k_files(tmp_path, capsys):
    src = tmp_path / 'tiny_no_cfg.pyth'
    torch.save(package_checkpoint(official_state('tiny', 1000, extra_cls=True), 'official'),
               src)
    assert tool.main([str(src), str(tmp_path / 'tiny.pth')]) == 0
    assert 'backbone.cls_token' not in torch.load(tmp_path / 'tiny.pth')['state_dict']
    assert 'official in1k image files carry an unused cls_token' in capsys.readouterr().out
    # a custom size has no in1k twin without a cls token, so its token is kept
    custom = tmp_path / 'custom.pyth'
    torch.save(package_checkpoint(official_state(dict(TINY, img_size=(64, 64)), 10,
                                                 extra_cls=True), 'official'), custom)
    assert tool.main([str(custom), str(tmp_path / 'custom.pth')]) == 0
    assert 'backbone.cls_token' in torch.load(tmp_path / 'custom.pth')['state_dict']
    assert 'custom (arch dict)' in capsys.readouterr().out


def test_wrong_config_lists_mismatching_keys(tmp_path, capsys):
    state = official_state(dict(TINY, img_size=(64, 64)), 1000, extra_cls=False)
    src = tmp_path / 'tiny_custom.pyth'
    torch.save(package_checkpoint(state, 'official'), src)
    config = osp.join(REPO, 'configs', 'mvitv2_t_imagenet.py')
    assert tool.main([str(src), str(tmp_path / 'o.pth'), '--config', config]) == 1
    err = capsys.readouterr().err
    assert 'does not fit' in err and 'patch_embed.proj.weight: file (16, 3, 7, 7) vs model ' \
        '(96, 3, 7, 7)' in err
    assert not (tmp_path / 'o.pth').exists()


def test_unknown_format_and_existing_destination(tmp_path, capsys):
    src = tmp_path / 'resnet.pth'
    torch.save({'conv1.weight': torch.zeros(4, 3, 3, 3)}, src)
    assert tool.main([str(src), str(tmp_path / 'o.pth')]) == 1
    err = capsys.readouterr().err
    assert 'Supported formats' in err and 'torchvision' in err and 'timm' in err
    (tmp_path / 'exists.pth').write_bytes(b'keep me')
    with pytest.raises(SystemExit, match='--overwrite'):
        tool.main([str(src), str(tmp_path / 'exists.pth')])
    assert (tmp_path / 'exists.pth').read_bytes() == b'keep me'


class OldConfigObject:
    """Stands for the yacs/argparse objects some old official files pickle in 'cfg'."""

    def __init__(self, text: str) -> None:
        self.text = text


def test_converter_refuses_code_and_trusts_only_on_request(tmp_path, capsys):
    marker = tmp_path / 'pwned.txt'
    state = official_state(dict(TINY, img_size=(64, 64)), 10, extra_cls=False)
    evil = tmp_path / 'evil.pyth'
    write_payload_checkpoint(evil, marker, package_checkpoint(state, 'official'), where='cfg')
    assert tool.main([str(evil), str(tmp_path / 'o.pth')]) == 1
    err = capsys.readouterr().err
    assert 'refusing' in err and 'exec' in err and '--trust-checkpoint' in err
    assert not marker.exists() and not (tmp_path / 'o.pth').exists()

    old = tmp_path / 'old.pyth'
    torch.save(dict(package_checkpoint(state, 'official'), cfg=OldConfigObject('x')), old)
    assert tool.main([str(old), str(tmp_path / 'o.pth')]) == 1
    assert 'OldConfigObject' in capsys.readouterr().err
    with pytest.warns(UserWarning, match='full unpickling'):
        assert tool.main([str(old), str(tmp_path / 'o.pth'), '--trust-checkpoint']) == 0
    # the converted file is plain weights: it loads with weights_only and no trust
    assert 'backbone.patch_embed.proj.weight' in torch.load(tmp_path / 'o.pth',
                                                            weights_only=True)['state_dict']


def test_readme_holds_the_registry_table():
    listed = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'convert_checkpoint.py'),
                             '--list-formats'], capture_output=True, text=True, check=True,
                            cwd=REPO).stdout.strip()
    assert listed == markdown_table()
    for name in FORMATS:
        assert f'\n| {name} |' in listed
    with open(osp.join(REPO, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    assert f'\n{listed}\n' in readme, 'README.md: paste the output of ' \
        'python tools/convert_checkpoint.py --list-formats over its table of formats'


def test_choices_come_from_the_registry():
    for option in ('--src-format', '--dst-format'):
        with pytest.raises(SystemExit):
            tool.parse_args(['a.pth', 'b.pth', option, 'caffe'])
        for name in FORMATS:
            assert getattr(tool.parse_args(['a.pth', 'b.pth', option, name]),
                           option[2:].replace('-', '_')) == name


@pytest.mark.parametrize('dst_format', [f for f in FORMATS if f != 'mmvit'])
def test_dst_format_writes_that_format(tmp_path, dst_format):
    video = dst_format in ('slowfast', 'mmaction2', 'torchvision')
    arch = dict(TINY, img_size=(4, 64, 64), video=True, with_cls_token=True) if video \
        else dict(TINY, img_size=(64, 64))
    state = canonical_with_head(arch, 6)
    src = tmp_path / 'src.pth'
    torch.save(package_checkpoint(from_canonical(state, 'mmvit'), 'mmvit'), src)
    dst = tmp_path / f'out_{dst_format}.pth'
    assert tool.main([str(src), str(dst), '--dst-format', dst_format]) == 0
    back = read_canonical(str(dst))
    assert back.fmt == dst_format
    assert set(back.state) == set(state)
    for key, value in state.items():
        assert torch.equal(back.state[key], value), key


def test_nonfinite_weights_are_refused_unless_allowed(tmp_path, capsys):
    state = official_state(dict(TINY, img_size=(64, 64)), 10, extra_cls=False)
    state['blocks.1.attn.qkv.weight'][0, 0] = float('nan')
    state['blocks.2.mlp.fc1.bias'][3] = float('inf')
    src = tmp_path / 'nan.pyth'
    torch.save(package_checkpoint(state, 'official'), src)
    dst = tmp_path / 'o.pth'
    assert tool.main([str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and '2 of' in err and 'NaN or Inf' in err
    assert 'blocks.1.attn.qkv.weight' in err and '--allow-nonfinite' in err
    assert not dst.exists()
    assert tool.main([str(src), str(dst), '--allow-nonfinite']) == 0
    out = torch.load(dst, weights_only=True)['state_dict']
    assert torch.isnan(out['backbone.blocks.1.attn.qkv.weight']).any()
