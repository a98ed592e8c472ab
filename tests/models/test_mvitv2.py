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
    with pytest.raises(ValueError,
                       match=r'image model and expects a 4-D input .*\(1, 3, 4, 64, 64\)'):
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
            assert not any(m.startswith('mmvit_plugin.checkpoint')
                           or m == 'mmvit_plugin..checkpoint'
                           or m.startswith('mmvit_plugin..checkpoint') for m in modules), \
                f'{path.name}:{node.lineno} imports the checkpoint package'


# Geometry as data ------------------------------------------------------------------------------

@pytest.mark.parametrize('geometry,shape,grid', [
    (dict(patch_stride=(2, 2), patch_kernel=(3, 3), patch_padding=(1, 1)), (1, 3, 32, 48),
     (2, 3)),
    (dict(pool_kernel=(5, 5)), (1, 3, 64, 64), (2, 2)),
    (dict(video=True, with_cls_token=True, pool_kernel=(1, 5, 5),
          q_stride=(1, 2, 2), first_kv_stride=(2, 4, 4)), (1, 3, 4, 64, 64), (2, 2, 2)),
])
def test_other_geometry_is_one_arch_dict(geometry, shape, grid):
    from mmvit_plugin import ops
    arch = dict(TINY_IMAGE, **geometry)
    arch['img_size'] = tuple(shape[2:])
    model = MViTv2(arch, drop_path_rate=0.0, attn_impl='plain').eval()
    _randomise(model)
    x = torch.randn(*shape)
    with torch.no_grad(), ops.use_kernels(onednn=False):
        reference = model(x)[0]
    assert reference.shape[2:] == grid
    model.set_attn_impl('auto')
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], reference, rtol=1e-5, atol=1e-5)
    smallest = [s // g for s, g in zip(shape[2:], grid)]  # one cell in the last stage
    too_small = (*shape[:-1], smallest[-1] - 1)
    with pytest.raises(ValueError, match=f'at least {smallest[-1]} pixels'):
        model(torch.randn(*too_small))


# Inputs refused at forward as at build -----------------------------------------------------------

@pytest.mark.parametrize('arch,shape,match', [
    (TINY_IMAGE, (1, 3, 16, 16), r'height 16 is too small.*at least 32 pixels'),
    (TINY_IMAGE, (1, 3, 5, 5), r'height 5 is too small.*at least 32 pixels'),
    (TINY_IMAGE, (1, 3, 31, 64), r'height 31 is too small.*at least 32 pixels'),
    (TINY_IMAGE, (1, 3, 64, 31), r'width 31 is too small.*at least 32 pixels'),
    (TINY_VIDEO, (1, 3, 1, 64, 64), r'frames 1 is too small.*at least 2 frames'),
])
def test_too_small_inputs_are_refused_at_forward_with_the_build_message(arch, shape, match):
    model = MViTv2(arch).eval()
    with pytest.raises(ValueError) as at_build:
        MViTv2(arch, img_size=shape[2:])
    with pytest.raises(ValueError, match=rf'input of shape \({", ".join(map(str, shape))}\)'
                                         rf'.*{match}') as at_forward:
        with torch.no_grad():
            model(torch.randn(*shape))
    build_why = str(at_build.value).split(': ', 1)[1]
    assert str(at_forward.value).endswith(build_why)


@pytest.mark.parametrize('kwargs,match', [
    (dict(frozen_stages=9), r'frozen_stages=9: must be an int in -1..4'),
    (dict(frozen_stages=-2), r'frozen_stages=-2'),
    (dict(in_channels=0), r'in_channels=0: must be an int >= 1'),
    (dict(in_channels=3.0), r'in_channels=3.0'),
    (dict(drop_path_rate=1.5), r'drop_path_rate=1.5: must be a number in \[0, 1\)'),
    (dict(with_cp='yes'), r"with_cp='yes': must be True or False"),
    (dict(out_indices=(0, 'last')), r"out_indices entry 'last' is out of range"),
    (dict(out_type='tokens'), r"out_type must be one of .*'tokens'"),
])
def test_bad_constructor_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MViTv2(TINY_IMAGE, **kwargs)


def test_every_frozen_stage_count_builds():
    for frozen in range(-1, 5):
        model = MViTv2(TINY_IMAGE, frozen_stages=frozen)
        trainable = [p.requires_grad for p in model.blocks.parameters()]
        assert all(trainable) if frozen < 1 else not any(trainable[:1])
    assert not any(p.requires_grad for p in MViTv2(TINY_IMAGE, frozen_stages=4).blocks
                   .parameters())


# Host compatibility ------------------------------------------------------------------------------

def test_num_extra_tokens_counts_the_cls_token():
    assert MViTv2(TINY_IMAGE).num_extra_tokens == 0
    assert MViTv2(TINY_VIDEO).num_extra_tokens == 1


def test_top_level_img_size_fills_a_video_arch_dict():
    arch = {k: v for k, v in TINY_VIDEO.items() if k != 'img_size'}
    model = MViTv2(arch, img_size=(8, 96, 64))
    assert model.img_size == (8, 96, 64) == model.arch.img_size
    assert model.specs[0].rel_pos_lengths == (7, 47, 31)


def test_mmaction2_keywords_with_a_video_arch():
    model = MViTv2(TINY_VIDEO, spatial_size=96, temporal_size=8, out_scales=[2, 3])
    assert model.img_size == (8, 96, 96)
    assert model.out_indices == (2, 3)
    with pytest.raises(ValueError, match='either img_size.*or .*spatial_size/temporal_size'):
        MViTv2(TINY_VIDEO, img_size=(4, 64, 64), spatial_size=64)
    with pytest.raises(ValueError, match='out_indices or out_scales'):
        MViTv2(TINY_VIDEO, out_indices=2, out_scales=[3])
    with pytest.raises(ValueError, match='describe a clip, but this arch is an image model'):
        MViTv2(TINY_IMAGE, temporal_size=8)


def test_a_stock_mmaction2_config_names_the_video_arch():
    """Swapping MViT -> MViTv2 in mmaction2's configs: the image arch of that name builds (the
    default scope cannot tell the host apart), and its first clip fails naming the video arch;
    with the video arch set, the config builds the video model."""
    base = '/'.join(['mmaction', '.mim', 'configs', 'recognition', 'mvit'])
    import importlib.util
    root = Path(importlib.util.find_spec('mmaction').origin).parent.parent / base
    for name, video in (('mvit-small-p244_32xb16-16x4x1-200e_kinetics400-rgb.py', 'small-16x4'),
                        ('mvit-base-p244_32x3x1_kinetics400-rgb.py', 'base-32x3')):
        cfg = Config.fromfile(str(root / name))
        cfg.model.backbone.type = 'MViTv2'
        init_default_scope('mmaction')
        from mmaction.registry import MODELS
        if cfg.model.backbone.keys() & {'spatial_size', 'temporal_size'}:
            # mmaction2's keywords say a clip is meant: refused at build, naming the arch.
            with pytest.raises(ValueError, match=rf"arch='(small|base)' is the image model "
                                                 rf"here.*Set arch='{video}'"):
                MODELS.build(cfg.model)
        else:
            with torch.device('meta'):
                image_backbone = MODELS.build(cfg.model.backbone)
            with pytest.raises(ValueError, match=r'image model and expects a 4-D input.*'
                                                 r'build a video arch'):
                image_backbone._check_input(torch.empty(1, 3, 16, 64, 64, device='meta'))
        cfg.model.backbone.arch = video
        cfg.model.backbone.out_type = 'featmap_and_cls'
        with torch.device('meta'):
            backbone = MODELS.build(cfg.model.backbone)
        assert backbone.video and backbone.img_size == (16 if video == 'small-16x4' else 32,
                                                        224, 224)
    init_default_scope('mmpretrain')
