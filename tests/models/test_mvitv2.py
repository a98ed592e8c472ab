"""MViTv2 backbone: architecture facts, parity with the installed ports, switches and errors."""
import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import mmvit_plugin  # noqa: F401
from mmvit_plugin.models.mvitv2 import ARCHS, MViTv2, block_specs, count_parameters

CONFIGS = Path(__file__).resolve().parents[2] / 'configs'

TINY_IMAGE = dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                  img_size=(64, 64))
TINY_VIDEO = dict(TINY_IMAGE, video=True, with_cls_token=True, img_size=(4, 64, 64))


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def _peer_to_ours(state_dict: dict) -> dict:
    """mmpretrain / mmaction2 backbone keys -> ours (the official names)."""
    return {k.replace('patch_embed.projection', 'patch_embed.proj').replace('norm3.', 'norm.'): v
            for k, v in state_dict.items()}


# Architecture facts ---------------------------------------------------------------------------

# Whole-model parameter counts of the official code (reference notes), head included.
OFFICIAL_PARAMS = {
    'mvitv2_tiny': 24_173_320,
    'mvitv2_small': 34_870_216,
    'mvitv2_base': 51_472_744,
    'mvitv2_large': 217_992_952,
    'mvitv2_huge': 666_879_912,
    'mvitv2_base_in21k': 65_444_032,
    'mvitv2_large_in21k': 234_583_216,
    'mvitv2_small_16x4': 34_537_744,
    'mvitv2_base_32x3': 51_230_128,
    'mvitv2_large_40x3': 213_390_112,
}


@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
def test_model_config_has_official_parameter_count(name):
    cfg = Config.fromfile(str(CONFIGS / '_base_' / 'models' / f'{name}.py'))
    video = cfg.model.type == 'Recognizer3D'
    init_default_scope('mmaction' if video else 'mmpretrain')
    registry = (__import__('mmaction.registry', fromlist=['MODELS']).MODELS if video else
                __import__('mmpretrain.registry', fromlist=['MODELS']).MODELS)
    with torch.device('meta'):  # counts shapes without allocating L/H weights
        model = registry.build(cfg.model)
    assert count_parameters(model) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('config,expected', [('mvitv2_t_imagenet.py', 24_173_320),
                                             ('mvitv2_s_16x4_k400.py', 34_537_744)])
def test_top_level_configs_have_official_parameter_count(config, expected):
    path = CONFIGS / config
    if not path.exists():
        pytest.fail(f'{path} is missing')
    cfg = Config.fromfile(str(path))
    scope = cfg.get('default_scope', 'mmpretrain')
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(cfg.model)  # on the CPU: the mixup preprocessor cannot live on meta
    assert count_parameters(model) == expected


def test_block_specs_of_tiny_follow_the_paper():
    specs = block_specs(ARCHS['tiny'], (224, 224))
    assert [s.dim_out for s in specs] == [96, 192, 192, 384, 384, 384, 384, 384, 768, 768]
    assert [s.num_heads for s in specs] == [1, 2, 2, 4, 4, 4, 4, 4, 8, 8]
    assert [s.kv_stride for s in specs][:4] == [(4, 4), (2, 2), (2, 2), (1, 1)]
    assert specs[0].rel_pos_lengths == (111, 111)  # 56 queries, 14 keys
    assert specs[1].rel_pos_lengths == (55, 55)  # 28 queries and keys


def test_large_in1k_widens_in_the_mlp_of_the_previous_block():
    specs = block_specs(ARCHS['large'], (224, 224))
    assert (specs[1].dim_in, specs[1].dim_out, specs[1].num_heads) == (144, 288, 2)
    assert (specs[2].dim_in, specs[2].dim_out, specs[2].num_heads) == (288, 288, 4)


def test_video_arch_tables_and_strides():
    specs = block_specs(ARCHS['small-16x4'], (16, 224, 224))
    assert specs[0].kv_stride == (1, 8, 8)
    assert specs[0].rel_pos_lengths == (15, 111, 111)
    assert specs[1].q_stride == (1, 2, 2)


# Parity with the installed ports ---------------------------------------------------------------

def test_image_parity_with_mmpretrain_tiny():
    from mmpretrain.models.backbones.mvit import MViT as PretrainMViT
    peer = PretrainMViT(arch='tiny', out_scales=[3])
    peer.eval()
    _randomise(peer)
    ours = MViTv2('tiny', out_type='featmap').eval()
    ours.load_state_dict(_peer_to_ours(peer.state_dict()), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = peer(x)[0]
        for impl in ('math', 'sdpa'):
            ours.set_attn_impl(impl)
            torch.testing.assert_close(ours(x)[0], expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize('shape', [(1, 3, 16, 224, 224), (1, 3, 8, 256, 320)])
def test_video_parity_with_mmaction2_small(shape):
    from mmaction.models.backbones.mvit import MViT as ActionMViT
    peer = ActionMViT(arch='small')
    peer.eval()
    _randomise(peer)
    ours = MViTv2('small-16x4', out_type='featmap_and_cls').eval()
    ours.load_state_dict(_peer_to_ours(peer.state_dict()), strict=True)
    x = torch.randn(*shape)
    with torch.no_grad():
        expected_map, expected_cls = peer(x)[0]
        featmap, cls_token = ours(x)[0]
    torch.testing.assert_close(featmap, expected_map, rtol=0, atol=1e-5)
    torch.testing.assert_close(cls_token, expected_cls, rtol=0, atol=1e-5)


# Behaviour -------------------------------------------------------------------------------------

def test_other_input_sizes_run_with_interpolated_tables():
    model = MViTv2(TINY_IMAGE).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))[0].shape == (1, 128, 2, 2)
        assert model(torch.randn(1, 3, 96, 128))[0].shape == (1, 128, 3, 4)
    video = MViTv2(TINY_VIDEO).eval()
    with torch.no_grad():
        assert video(torch.randn(1, 3, 4, 64, 64))[0].shape == (1, 128, 2, 2, 2)
        assert video(torch.randn(1, 3, 8, 64, 96))[0].shape == (1, 128, 4, 2, 3)


def test_out_indices_do_not_alter_the_main_path():
    single = MViTv2(TINY_IMAGE, out_indices=-1).eval()
    multi = MViTv2(TINY_IMAGE, out_indices=(0, 1, 2, 3)).eval()
    _randomise(single)
    _randomise(multi, seed=1)
    multi.load_state_dict(single.state_dict(), strict=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = multi(x)
        last = single(x)[0]
    assert [o.shape[1:] for o in outs] == [(16, 16, 16), (32, 8, 8), (64, 4, 4), (128, 2, 2)]
    torch.testing.assert_close(outs[-1], last, rtol=0, atol=0)


@pytest.mark.parametrize('out_type,shape', [('featmap', (2, 128, 2, 2)), ('avg_featmap', (2, 128)),
                                            ('cls_token', (2, 128))])
def test_out_types(out_type, shape):
    arch = dict(TINY_IMAGE, with_cls_token=True)
    model = MViTv2(arch, out_type=out_type).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64))[0].shape == shape


def test_cls_token_gets_no_residual_pooling():
    """The residual q is added to patch tokens only: with v = 0 the cls output is the proj bias."""
    model = MViTv2(dict(TINY_IMAGE, with_cls_token=True)).eval()
    _randomise(model)
    attn = model.blocks[0].attn
    tokens = torch.randn(1, 1 + 16 * 16, 16)
    with torch.no_grad():
        head_dim = attn.head_dim
        attn.qkv.weight[2 * head_dim:].zero_()  # v projection
        attn.qkv.bias[2 * head_dim:].zero_()
        attn.norm_v.weight.zero_()
        attn.norm_v.bias.zero_()
        out, _ = attn(tokens, (16, 16))
    torch.testing.assert_close(out[0, 0], attn.proj.bias)
    assert not torch.allclose(out[0, 1], attn.proj.bias)


def test_sdpa_and_math_paths_agree_with_gradients():
    model = MViTv2(TINY_VIDEO, drop_path_rate=0.0).train()
    _randomise(model)
    x = torch.randn(2, 3, 4, 64, 64)
    results = []
    for impl in ('math', 'sdpa'):
        model.set_attn_impl(impl)
        model.zero_grad()
        out = model(x)[0]
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for g_math, g_sdpa in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(g_math, g_sdpa, rtol=1e-4, atol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    plain = MViTv2(TINY_IMAGE, drop_path_rate=0.0).train()
    _randomise(plain)
    checkpointed = copy.deepcopy(plain)
    checkpointed.with_cp = True
    x = torch.randn(2, 3, 64, 64)
    for model in (plain, checkpointed):
        model(x)[0].sum().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


def test_frozen_stages():
    model = MViTv2(TINY_IMAGE, frozen_stages=2)
    model.train()
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.blocks[:2].parameters())
    assert all(p.requires_grad for p in model.blocks[2:].parameters())
    assert not model.blocks[1].training and model.blocks[2].training


def test_drop_path_rates_are_linear_to_the_arch_rate():
    model = MViTv2('tiny')
    rates = [getattr(b.drop_path, 'drop_prob', 0.0) for b in model.blocks]
    assert rates[0] == 0.0
    assert rates[-1] == pytest.approx(0.1)
    assert rates == sorted(rates)


def test_official_initialisation():
    image = MViTv2(TINY_IMAGE)
    image.init_weights()
    assert torch.all(image.blocks[0].attn.qkv.bias == 0)
    assert image.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.2)
    assert image.blocks[0].attn.rel_pos_h.abs().sum() > 0
    video = MViTv2(TINY_VIDEO)
    video.init_weights()
    assert torch.all(video.blocks[0].attn.qkv.bias == 0.02)
    assert torch.all(video.blocks[0].norm1.bias == 0.02)
    assert video.cls_token.abs().sum() > 0


def test_registered_in_both_hosts():
    from mmaction.registry import MODELS as ACTION_MODELS
    from mmpretrain.registry import MODELS as PRETRAIN_MODELS
    assert PRETRAIN_MODELS.get('MViTv2') is MViTv2
    assert ACTION_MODELS.get('MViTv2') is MViTv2


# Errors ------------------------------------------------------------------------------------------

def test_image_model_rejects_a_clip_and_the_reverse():
    with pytest.raises(ValueError, match=r'image model and expects a 4-D input .*\(1, 3, 4, 64, 64\)'):
        MViTv2(TINY_IMAGE)(torch.randn(1, 3, 4, 64, 64))
    with pytest.raises(ValueError, match=r'video model and expects a 5-D input'):
        MViTv2(TINY_VIDEO)(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match='in_channels=3.*1 channels'):
        MViTv2(TINY_IMAGE)(torch.randn(1, 1, 64, 64))


@pytest.mark.parametrize('arch,img_size,match', [
    ('tiny', 16, 'height 16 is too small.*at least 32'),
    ('tiny', (224, 224, 224), r'needs 2 ints \(height, width\)'),
    ('small-16x4', 224, r'needs \(frames, height, width\)'),
    ('small-16x4', (1, 224, 224), 'at least 2 frames'),
])
def test_impossible_sizes_are_named(arch, img_size, match):
    with pytest.raises(ValueError, match=match):
        MViTv2(arch, img_size=img_size)


@pytest.mark.parametrize('arch,match', [
    ('enormous', "unknown MViTv2 arch 'enormous'"),
    (dict(TINY_IMAGE, embed_dim=10, num_heads=3), "'embed_dim': 10 is not divisible"),
    (dict(TINY_IMAGE, stage_starts=(1, 2)), "'stage_starts': needs 3 increasing"),
    (dict(TINY_IMAGE, stage_starts=(1, 2, 9)), "'stage_starts'"),
    (dict(TINY_IMAGE, heads=2), r"unknown fields \['heads'\]"),
])
def test_bad_arch_is_named(arch, match):
    with pytest.raises(ValueError, match=match):
        MViTv2(arch)


def test_bad_outputs_are_named():
    with pytest.raises(ValueError, match='needs a cls token'):
        MViTv2(TINY_IMAGE, out_type='cls_token')
    with pytest.raises(ValueError, match='out_indices entry 4 is out of range'):
        MViTv2(TINY_IMAGE, out_indices=(4,))


# Tracing, FLOP counting and initialisation ---------------------------------------------------

def _imagenet_tiny():
    cfg = Config.fromfile(str(CONFIGS / 'mvitv2_t_imagenet.py'))
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    return MODELS.build(cfg.model).backbone.eval()


def test_complexity_and_trace_of_the_default_model_need_no_switch():
    """mmengine's FLOP counter and torch.jit.trace get standard ops automatically."""
    from mmengine.analysis import get_model_complexity_info
    backbone = _imagenet_tiny()
    assert backbone.attn_impl == 'auto'
    info = get_model_complexity_info(backbone, input_shape=(3, 224, 224), show_table=False,
                                     show_arch=False)
    assert info['params'] == count_parameters(backbone)
    assert info['flops'] > 1e9  # tools/get_flops.py counts the reference path (4.7G)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        traced = torch.jit.trace(backbone, x, check_trace=False)
        torch.testing.assert_close(traced(x)[0], backbone(x)[0], rtol=1e-5, atol=1e-5)


def test_pretrained_init_cfg_goes_through_the_weight_initializer_registry():
    from mmengine.registry import WEIGHT_INITIALIZERS
    calls = []
    registered = 'MViTv2Pretrained' in WEIGHT_INITIALIZERS.module_dict

    class Recorder:
        def __init__(self, checkpoint, **kwargs):
            calls.append(('built', checkpoint, kwargs))

        def __call__(self, module):
            calls.append(('called', module))

    if not registered:  # the checkpoint package registers the real one
        WEIGHT_INITIALIZERS.register_module('MViTv2Pretrained', module=Recorder)
    try:
        model = MViTv2(TINY_IMAGE, init_cfg=dict(type='Pretrained', checkpoint='x.pth'))
        if registered:
            pytest.skip('the real MViTv2Pretrained is registered: tested with the checkpoint '
                        'package')
        model.init_weights()
    finally:
        if not registered:
            WEIGHT_INITIALIZERS.module_dict.pop('MViTv2Pretrained')
    assert calls == [('built', 'x.pth', {}), ('called', model)]


def test_models_never_import_the_checkpoint_package():
    import ast
    models = Path(__file__).resolve().parents[2] / 'mmvit_plugin' / 'models'
    for path in models.glob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = []
            if isinstance(node, ast.ImportFrom):
                base = ('mmvit_plugin.' if node.level else '') + (node.module or '')
                modules = [base] + [f'{base}.{a.name}' for a in node.names]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            assert not any(m.startswith('mmvit_plugin.checkpoint') or m == 'mmvit_plugin..checkpoint'
                           or m.startswith('mmvit_plugin..checkpoint') for m in modules), \
                f'{path.name}:{node.lineno} imports the checkpoint package'
