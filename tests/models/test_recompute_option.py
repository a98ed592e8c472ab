"""The backbone's ``recompute`` option: same numbers, less kept for the backward."""
import pytest
import torch
from helpers import TINY_IMAGE, TINY_VIDEO, fresh_mvitv2

from mmvit_plugin import ops

pytestmark = pytest.mark.usefixtures('single_thread')


def _saved_bytes_and_grads(model, x):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)[0]
    out.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), grads, sum(saved)


@pytest.mark.parametrize('arch,shape', [(TINY_IMAGE, (2, 3, 64, 64)),
                                        (TINY_VIDEO, (1, 3, 4, 64, 64))], ids=['image', 'video'])
def test_recompute_option_keeps_less_and_changes_nothing(arch, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    stored = fresh_mvitv2(arch, attn_impl='onednn', drop_path_rate=0.0).train()
    recomputed = fresh_mvitv2(arch, attn_impl='onednn', drop_path_rate=0.0,
                              recompute=True).train()
    recomputed.load_state_dict(stored.state_dict())
    out_a, grads_a, bytes_a = _saved_bytes_and_grads(stored, x)
    out_b, grads_b, bytes_b = _saved_bytes_and_grads(recomputed, x)
    assert torch.equal(out_a, out_b)
    for name, grad in grads_a.items():
        assert torch.equal(grad, grads_b[name]), name
    assert bytes_b < bytes_a, (bytes_a, bytes_b)
    assert not ops.kernel_settings().recompute  # the option holds for the model's forward only


def test_recompute_must_be_a_bool():
    with pytest.raises(ValueError, match='recompute'):
        fresh_mvitv2(TINY_IMAGE, recompute='yes')
