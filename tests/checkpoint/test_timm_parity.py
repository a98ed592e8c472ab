"""timm's ``mvitv2_tiny`` weights reach our backbone through the converter and give the same
features (timm's ``forward_features``: the normed tokens of the last stage)."""
import timm
import torch
from helpers import randomise

import mmvit_plugin  # noqa: F401
from mmvit_plugin.checkpoint import detect_format, from_canonical, to_canonical
from mmvit_plugin.models.mvitv2 import MViTv2


def test_timm_mvitv2_tiny_weights_give_the_same_features():
    peer = randomise(timm.create_model('mvitv2_tiny', pretrained=False, img_size=(64, 64)),
                     seed=3).eval()
    file_state = peer.state_dict()
    assert detect_format(file_state) == 'timm'
    canonical = to_canonical(file_state, 'timm')
    ours = MViTv2(arch='tiny', img_size=(64, 64), out_type='featmap').eval()
    ours.load_state_dict({k: v for k, v in canonical.items() if not k.startswith('head.')},
                         strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = peer.forward_features(x)
        got = ours(x)[0].flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # and back: our weights load into timm unchanged
    back = from_canonical(canonical, 'timm')
    assert set(back) == set(file_state)
    assert all(torch.equal(back[k], file_state[k]) for k in file_state)
