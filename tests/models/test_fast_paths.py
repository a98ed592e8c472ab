"""The reference attention against a float64 formula; every fast path against the reference."""
import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mmvit_plugin import ops
from mmvit_plugin.models.mvitv2 import (
    ATTN_IMPLS,
    FastMlp,
    FastPoolingAttention,
    Mlp,
    MViTv2,
    PoolingAttention,
)

TINY_IMAGE = dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                  img_size=(64, 64))
TINY_VIDEO = dict(TINY_IMAGE, video=True, with_cls_token=True, img_size=(4, 64, 64))
FAST_IMPLS = tuple(i for i in ATTN_IMPLS if i != 'plain')


@pytest.fixture(params=['per_item', 'batched'])
def attention_kernel(request):
    """Both kernels of the oneDNN attention: per-item products and one batched bmm."""
    entries = 0 if request.param == 'per_item' else 10 ** 9
    with ops.use_kernels(min_attention_entries=entries):
        yield


def _randomise(module, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


# The reference class against the formula, evaluated independently in float64 ------------------

def _formula(attn: PoolingAttention, x: torch.Tensor, size):
    """MViTv2 pooling attention written out cell by cell (float64, no code shared with the
    model)."""
    p = {name: t.detach().double() for name, t in attn.named_parameters()}
    x = x.double()
    B, N, _ = x.shape
    heads, C = attn.num_heads, attn.head_dim
    cls = int(attn.with_cls_token)
    qkv = (x @ p['qkv.weight'].T + p['qkv.bias']).view(B, N, 3, heads, C)
    pooled, grids = [], []
    for i, name in enumerate('qkv'):
        t = qkv[:, :, i].permute(0, 2, 1, 3)  # (B, heads, N, C)
        patches = t[:, :, cls:].reshape(B * heads, *size, C)
        patches = patches.permute(0, len(size) + 1, *range(1, len(size) + 1))
        pool = getattr(attn, f'pool_{name}')
        conv = F.conv3d if len(size) == 3 else F.conv2d
        out = conv(patches, p[f'pool_{name}.weight'], None, pool.stride, pool.padding,
                   groups=C)
        grids.append(tuple(out.shape[2:]))
        out = out.flatten(2).transpose(1, 2).reshape(B, heads, -1, C)
        out = torch.cat((t[:, :, :cls], out), dim=2)
        pooled.append(F.layer_norm(out, (C,), p[f'norm_{name}.weight'],
                                   p[f'norm_{name}.bias'], 1e-6))
    q, k, v = pooled
    q_size, k_size = grids[0], grids[1]
    tables = [p[f'rel_pos_{a}'] for a in ('thw' if len(size) == 3 else 'hw')]
    q_cells = list(itertools.product(*map(range, q_size)))
    k_cells = list(itertools.product(*map(range, k_size)))
    bias = torch.zeros(B, heads, cls + len(q_cells), cls + len(k_cells), dtype=torch.float64)
    for axis, table in enumerate(tables):
        qs, ks = q_size[axis], k_size[axis]
        q_scale, k_scale = max(ks / qs, 1.0), max(qs / ks, 1.0)
        # Offset of query cell i and key cell j on the finer grid, shifted to be >= 0.
        index = torch.tensor([[int(i * q_scale - j * k_scale + (ks - 1) * k_scale)
                               for j in range(ks)] for i in range(qs)])
        resized = table
        if table.shape[0] != 2 * max(qs, ks) - 1:
            resized = F.interpolate(table.T[None], size=2 * max(qs, ks) - 1,
                                    mode='linear')[0].T
        emb = resized[index[[c[axis] for c in q_cells]][:, [c[axis] for c in k_cells]]]
        bias[:, :, cls:, cls:] += torch.einsum('bhic,ijc->bhij', q[:, :, cls:], emb)
    logits = q @ k.transpose(-1, -2) / math.sqrt(C) + bias
    out = logits.softmax(-1) @ v
    if attn.residual_pooling:
        out[:, :, cls:] += q[:, :, cls:]
    out = out.transpose(1, 2).reshape(B, -1, heads * C)
    return out @ p['proj.weight'].T + p['proj.bias'], q_size


@pytest.mark.parametrize('arch,block,size', [
    (TINY_IMAGE, 0, (16, 16)), (TINY_IMAGE, 1, (16, 16)),
    (dict(TINY_IMAGE, with_cls_token=True, num_heads=2), 0, (16, 12)),
    (TINY_VIDEO, 0, (2, 16, 16)), (TINY_VIDEO, 2, (2, 8, 8)), (TINY_VIDEO, 0, (3, 20, 12))])
def test_reference_attention_is_the_formula(arch, block, size):
    model = MViTv2(arch, attn_impl='plain')
    _randomise(model)
    attn = model.blocks[block].attn
    assert type(attn) is PoolingAttention
    x = torch.randn(2, int(model.with_cls_token) + math.prod(size), attn.qkv.in_features,
                    generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got, got_size = attn(x, size)
    want, want_size = _formula(attn, x, size)
    assert got_size == want_size
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


# Every fast path against the reference ---------------------------------------------------------

def _run(model, x, train):
    model.train(train)
    model.zero_grad()
    outs = model(x)
    flat = [t for o in outs for t in (o if isinstance(o, list) else [o])]
    loss = sum((t * torch.linspace(-1, 1, t.numel()).view(t.shape)).sum() for t in flat)
    if not train:
        return [t.detach() for t in flat], None
    loss.backward()
    return [t.detach() for t in flat], {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize('arch,shape,out_type', [
    (TINY_IMAGE, (2, 3, 64, 64), 'featmap'),
    (dict(TINY_IMAGE, with_cls_token=True, num_heads=2), (2, 3, 64, 96), 'cls_token'),
    (TINY_VIDEO, (2, 3, 4, 64, 64), 'featmap_and_cls'),
])
@pytest.mark.parametrize('train', [False, True])
def test_fast_paths_match_the_plain_path(arch, shape, out_type, train, attention_kernel):
    model = MViTv2(arch, out_type=out_type, drop_path_rate=0.0, attn_impl='plain')
    _randomise(model)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with ops.use_kernels(onednn=False):
        expected_out, expected_grads = _run(model, x, train)
    for impl in FAST_IMPLS:
        model.set_attn_impl(impl)
        out, grads = _run(model, x, train)
        for o, e in zip(out, expected_out):
            torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5, msg=lambda m: f'{impl}: {m}')
        if train:
            for name, g in grads.items():
                torch.testing.assert_close(g, expected_grads[name], rtol=1e-4, atol=1e-5,
                                           msg=lambda m: f'{impl}, grad of {name}: {m}')


def test_set_attn_impl_swaps_classes_and_keeps_parameters():
    model = MViTv2(TINY_IMAGE)
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    assert type(model.blocks[0].attn) is FastPoolingAttention
    assert type(model.blocks[0].mlp) is FastMlp
    model.set_attn_impl('plain')
    assert model.attn_impl == 'plain'
    assert type(model.blocks[0].attn) is PoolingAttention and type(model.blocks[0].mlp) is Mlp
    assert type(model.blocks[1].proj) is torch.nn.Linear  # block 1 widens
    assert all(p is params[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == keys
    model.set_attn_impl('sdpa')
    assert model.blocks[1].attn.kernel == 'sdpa'
    with pytest.raises(ValueError, match=r"attn_impl must be one of .*got 'flash'"):
        model.set_attn_impl('flash')
    with pytest.raises(ValueError, match=r"attn_impl must be one of .*got 'flash'"):
        MViTv2(TINY_IMAGE, attn_impl='flash')


def test_recompute_setting_gives_identical_gradients(attention_kernel):
    model = MViTv2(TINY_VIDEO, out_type='featmap_and_cls', drop_path_rate=0.0)
    _randomise(model)
    x = torch.randn(2, 3, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    results = []
    for recompute in (True, False):
        with ops.use_kernels(recompute=recompute):
            results.append(_run(model, x, True))
    (out_a, grads_a), (out_b, grads_b) = results
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0,
                                   msg=lambda m: f'grad of {name}: {m}')


def test_drop_path_training_keeps_the_unfused_path_equal():
    """With drop path the residual adds are not fused; in eval mode both give one result."""
    model = MViTv2(TINY_VIDEO, out_type='featmap_and_cls', drop_path_rate=0.3)
    _randomise(model)
    x = torch.randn(1, 3, 4, 64, 64)
    reference = copy.deepcopy(model).set_attn_impl('plain')
    model.eval(), reference.eval()
    with torch.no_grad():
        for got, want in zip(model(x)[0], reference(x)[0]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    model.train()
    model(x)[0][0].sum().backward()  # the drop-path branch runs and has gradients
    assert model.blocks[-1].attn.qkv.weight.grad is not None


def test_inference_mode_then_training():
    """Index tensors cached during inference_mode must still work for autograd afterwards."""
    model = MViTv2(TINY_IMAGE, drop_path_rate=0.0)
    with torch.inference_mode():
        model.eval()(torch.randn(1, 3, 64, 64))
    model.train()(torch.randn(1, 3, 64, 64))[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters())
