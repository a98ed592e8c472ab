"""Full-size parity of converted peer weights (not a test; the tests run smaller inputs).

    python tools/analysis/peer_parity.py

Random weights in the installed peers (mmpretrain MViT tiny, mmaction2 MViT small,
torchvision mvit_v2_s) reach our backbone only through the checkpoint converter; prints the
largest output difference at the official input sizes.
"""
import torch
from common import randomise  # this script's folder is first on sys.path

from mmvit_plugin.checkpoint import detect_format, to_canonical
from mmvit_plugin.models.mvitv2 import MViTv2


def converted(file_state: dict, **model_kwargs) -> MViTv2:
    canonical = to_canonical(file_state, detect_format(file_state))
    model = MViTv2(**model_kwargs).eval()
    model.load_state_dict({k: v for k, v in canonical.items() if not k.startswith('head.')})
    return model, canonical


def main() -> None:
    from mmaction.models.backbones import MViT as ActionMViT
    from mmpretrain.models.backbones import MViT as PretrainMViT
    from torchvision.models.video import mvit_v2_s
    torch.manual_seed(0)
    with torch.no_grad():
        peer = randomise(PretrainMViT(arch='tiny'), 3)
        ours, _ = converted({'backbone.' + k: v for k, v in peer.state_dict().items()},
                            arch='tiny', out_type='featmap')
        x = torch.randn(2, 3, 224, 224)
        a, b = peer(x)[0], ours(x)[0]
        print(f'mmpretrain MViT tiny, 2x3x224x224: max |diff| {(a - b).abs().max():.2e} '
              f'(max |output| {a.abs().max():.2f})')

        peer = randomise(ActionMViT(arch='small'), 4)
        ours, _ = converted({'backbone.' + k: v for k, v in peer.state_dict().items()},
                            arch='small-16x4', out_type='featmap_and_cls')
        clip = torch.randn(1, 3, 16, 224, 224)
        (a_map, a_cls), (b_map, b_cls) = peer(clip)[0], ours(clip)[0]
        print(f'mmaction2 MViT small, 1x3x16x224x224: max |diff| feature map '
              f'{(a_map - b_map).abs().max():.2e}, cls token {(a_cls - b_cls).abs().max():.2e} '
              f'(max |cls| {a_cls.abs().max():.2f})')

        peer = randomise(mvit_v2_s(), 5)
        ours, canonical = converted(peer.state_dict(), arch='small-16x4', out_type='cls_token')
        a = peer(clip)
        b = torch.nn.functional.linear(ours(clip)[0], canonical['head.projection.weight'],
                                       canonical['head.projection.bias'])
        print(f'torchvision mvit_v2_s, 1x3x16x224x224 logits: max |diff| '
              f'{(a - b).abs().max():.2e} (max |logit| {a.abs().max():.2f})')


if __name__ == '__main__':
    main()
