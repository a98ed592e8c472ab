"""torch.compile(fullgraph=True) training with inductor across a resolution change, vs eager.

    python tools/analysis/compile_check.py [--backend inductor] [--sizes 64x64 96x64]

A micro MViTv2 (width 8, four blocks) and an eager copy with the same weights take one
training step at each size; prints the compiled step's time (the compile included) and the
largest gradient difference. Not a test: inductor's C++ build takes minutes on 2 cores (the
tests use the aot_eager backend, tests/models/test_export_paths.py).
"""
import argparse
import time

import torch

import mmvit_plugin  # noqa: F401
from mmvit_plugin.models.mvitv2 import MViTv2

ARCH = dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3), img_size=(64, 64))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backend', default='inductor')
    parser.add_argument('--sizes', nargs='+', default=['64x64', '96x64'])
    parser.add_argument('--tolerance', type=float, default=1e-4)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = MViTv2(arch=ARCH, drop_path_rate=0.0).train()
    eager = MViTv2(arch=ARCH, drop_path_rate=0.0).train()
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True, backend=args.backend)
    worst = 0.0
    for text in args.sizes:
        size = tuple(int(v) for v in text.split('x'))
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
        model.zero_grad()
        eager.zero_grad()
        start = time.time()
        compiled(x)[0].square().mean().backward()
        seconds = time.time() - start
        eager(x)[0].square().mean().backward()
        diff = max((p.grad - q.grad).abs().max().item()
                   for p, q in zip(model.parameters(), eager.parameters()))
        finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
        worst = max(worst, diff if finite else float('inf'))
        print(f'{args.backend} {text}: step {seconds:.1f} s (compile included), max |grad - '
              f'eager grad| {diff:.2e}, finite {finite}', flush=True)
    ok = worst <= args.tolerance
    print(f'{"PASS" if ok else "FAIL"} (tolerance {args.tolerance}); torch {torch.__version__}')
    return 0 if ok else 1


if __name__ == '__main__':
    raise SystemExit(main())
