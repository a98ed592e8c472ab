"""Parameters and FLOPs (multiply-adds, mmengine.analysis) of a model built from a config.

    python tools/get_flops.py configs/mvitv2_t_imagenet.py
    python tools/get_flops.py configs/mvitv2_s_16x4_k400.py --shape 16 224 224
    python tools/get_flops.py --all          # every variant beside the paper's figures
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = REPO / 'configs' / '_base_' / 'models'

# name -> (params in M, GFLOPs) as printed in the MViTv2 paper (tables 2 and 5).
PAPER = {
    'mvitv2_tiny': (24, 4.7), 'mvitv2_small': (35, 7.0), 'mvitv2_base': (52, 10.2),
    'mvitv2_large': (218, 42.1), 'mvitv2_huge': (667, 120.6),
    'mvitv2_small_16x4': (34.5, 64), 'mvitv2_base_32x3': (51.2, 225),
    'mvitv2_large_40x3': (218, 2828),
}


class _BackboneAndHead(nn.Module):
    """The classifier's inference path on a raw tensor (no data preprocessor, no loss)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = getattr(model, 'head', None) or model.cls_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_model(config: Path) -> Tuple[nn.Module, bool]:
    from mmvit_plugin.apis import build_config_model, config_scope
    cfg = Config.fromfile(str(config))
    return build_config_model(cfg), config_scope(cfg) == 'mmaction'


def measure(config: Path, shape: Optional[Sequence[int]] = None) -> Tuple[int, float, tuple]:
    """(parameters, GFLOPs, input shape) of the model of ``config``."""
    model, video = build_model(config)
    backbone = model.backbone
    # The reference path: the analyzer counts the official formula's matmuls (the fast paths
    # fold the relative-position bias into a slightly wider q.k product).
    backbone.set_attn_impl('plain')
    shape = tuple(shape) if shape else tuple(backbone.img_size)
    if len(shape) != (3 if video else 2):
        sys.exit(f'--shape {shape}: this {"video" if video else "image"} model needs '
                 f'{"T H W" if video else "H W"}')
    wrapped = _BackboneAndHead(model).eval()
    x = torch.zeros(1, backbone.in_channels, *shape)
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        analyzer = FlopAnalyzer(wrapped, (x,))
        analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        flops = analyzer.total()
    return params, flops / 1e9, shape


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', nargs='?', help='model config file')
    parser.add_argument('--shape', type=int, nargs='+', help='H W (image) or T H W (video)')
    parser.add_argument('--all', action='store_true',
                        help='every variant of configs/_base_/models beside the paper figures')
    args = parser.parse_args(argv)
    if not args.config and not args.all:
        parser.error('give a CONFIG or --all')
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    if not args.all:
        params, gflops, shape = measure(Path(args.config), args.shape)
        print(f'{args.config}: input {shape}, params {params:,} ({params / 1e6:.3f}M), '
              f'FLOPs {gflops:.3f}G')
        return
    print('| model | input | params | paper params | GFLOPs | paper GFLOPs | seconds |')
    print('|---|---|---|---|---|---|---|')
    for name, (paper_params, paper_flops) in PAPER.items():
        start = time.time()
        params, gflops, shape = measure(MODEL_CONFIGS / f'{name}.py')
        print(f'| {name} | {"x".join(map(str, shape))} | {params / 1e6:.3f}M | '
              f'{paper_params}M | {gflops:.2f} | {paper_flops} | {time.time() - start:.0f} |',
              flush=True)


if __name__ == '__main__':
    main()
