"""Our MViTv2 against the installed peer (mmpretrain's MViT for images, mmaction2's for video).

Both models get identical weights (the peer's random weights renamed into ours by the checkpoint
converter, ``mmvit_plugin.checkpoint.to_canonical``), their outputs are compared, then both are
timed alternately in one process on the same input, so background load hits both alike. Printed
per mode: time per step, throughput, the ratio ours/peer, our achieved FLOP rate as a share of
the fp32 (or bf16) matrix-multiply peak measured in the same run, and the peak memory of a
training step.

    python tools/benchmark.py --arch tiny --batch-size 8               # image T @224
    python tools/benchmark.py --arch small-16x4 --batch-size 1         # video S 16x4
    python tools/benchmark.py --arch tiny --dtype bf16 --modes train --iters 5
    python tools/benchmark.py --arch small-16x4 --device cuda --dtype bf16 --compile both

Peak memory on CPU is the largest amount of tensor memory alive during one step above what was
alive when it began (torch.profiler memory events, per-op granularity); on CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the step.

On a CPU shared with other busy processes, run with ``OMP_WAIT_POLICY=passive``: with the
default (spinning) policy every parallel region waits for descheduled threads, and a step can
take several times longer for both models, with ratios that mostly measure the scheduler.
"""
import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

MODES = ('inference', 'train')


# Pure helpers ------------------------------------------------------------------------------------

def parse_input_size(text: Optional[str], video: bool, default: Sequence[int]) -> Tuple[int, ...]:
    """'224' -> (224, 224); '256x320' -> (256, 320); '16x224x224' -> (16, 224, 224)."""
    if text is None:
        return tuple(default)
    try:
        sides = tuple(int(s) for s in text.lower().split('x'))
    except ValueError:
        raise SystemExit(f'--input-size {text!r}: expected ints joined by x, e.g. 224, '
                         '256x320 or 16x224x224') from None
    if len(sides) == 1:
        sides = sides * 2
    if video and len(sides) == 2:
        sides = (default[0], *sides)
    want = 3 if video else 2
    if len(sides) != want:
        raise SystemExit(f'--input-size {text!r}: a {"video" if video else "image"} model needs '
                         f'{want} sides')
    return sides


def max_abs_diff(a, b) -> float:
    """Largest absolute difference between two (nested) tensor outputs of equal structure."""
    if isinstance(a, torch.Tensor):
        return (a.float() - b.float()).abs().max().item()
    return max(max_abs_diff(x, y) for x, y in zip(a, b))


def output_loss(out) -> torch.Tensor:
    """A scalar touching every output tensor (nested tuples/lists from either backbone)."""
    if isinstance(out, torch.Tensor):
        return out.float().square().mean()
    return sum(output_loss(o) for o in out)


def peak_from_deltas(deltas: Sequence[int]) -> int:
    """Highest running total of a sequence of allocation (+) and free (-) byte counts."""
    total = peak = 0
    for delta in deltas:
        total += delta
        peak = max(peak, total)
    return peak


@dataclass
class Timing:
    seconds: List[float]  # wall clock per step
    cpu_seconds: List[float]  # process CPU time (all threads) per step

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_seconds)


def ratio_of_medians(ours: Timing, peer: Timing) -> float:
    """How many times faster ours is (peer time / our time)."""
    return peer.median / ours.median


def median_pair_ratio(ours: Timing, peer: Timing) -> float:
    """Median over iterations of peer/ours measured back to back: robust to load drifts."""
    return statistics.median(p / o for o, p in zip(ours.seconds, peer.seconds))


# Model building ---------------------------------------------------------------------------------

@dataclass
class Pair:
    ours: nn.Module
    peer: nn.Module
    peer_name: str
    video: bool
    input_shape: Tuple[int, ...]


def _randomise(module: nn.Module, seed: int) -> None:
    # Random weights of a realistic scale: the check below must compare non-trivial outputs.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def build_pair(arch_name: str, input_size: Optional[str], batch_size: int, drop_path: float,
               attn_impl: str, with_cp: bool, seed: int = 0) -> Pair:
    """Our MViTv2 and the peer port of the same arch, with the peer's weights copied into ours."""
    import mmvit_plugin  # noqa: F401
    from mmvit_plugin.checkpoint import to_canonical
    from mmvit_plugin.models.mvitv2 import ARCHS, MViTv2

    if arch_name not in ARCHS:
        raise SystemExit(f'--arch {arch_name!r}: choose one of {sorted(ARCHS)}')
    arch = ARCHS[arch_name]
    if arch.with_cls_token and not arch.video:
        raise SystemExit(f'--arch {arch_name}: mmpretrain has no cls token, so it has no peer')
    size = parse_input_size(input_size, arch.video, arch.img_size)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if arch.video:
            from mmaction.models.backbones.mvit import MViT as ActionMViT
            peer_arch = arch_name.split('-')[0]
            peer = ActionMViT(arch=peer_arch, spatial_size=size[1], temporal_size=size[0],
                              drop_path_rate=drop_path,
                              dim_mul_in_attention=arch.dim_mul_in_att)
            out_type, peer_name = 'featmap_and_cls', f'mmaction2 MViT({peer_arch})'
        else:
            from mmpretrain.models.backbones.mvit import MViT as PretrainMViT
            peer = PretrainMViT(arch=arch_name, img_size=size[0], out_scales=[3],
                                drop_path_rate=drop_path,
                                dim_mul_in_attention=arch.dim_mul_in_att)
            out_type, peer_name = 'featmap', f'mmpretrain MViT({arch_name})'
    _randomise(peer, seed)
    ours = MViTv2(arch_name, img_size=size, out_type=out_type, drop_path_rate=drop_path,
                  with_cp=with_cp, attn_impl=attn_impl)
    # The checkpoint converter renames the peer's keys (patch_embed.projection, norm3).
    peer_format = 'mmaction2' if arch.video else 'mmpretrain'
    ours.load_state_dict(to_canonical(peer.state_dict(), peer_format), strict=True)
    shape = (batch_size, 3, *size)
    return Pair(ours, peer, peer_name, arch.video, shape)


# Measurements ------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def autocast_context(device: torch.device, dtype: str):
    if dtype == 'bf16':
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def matmul_peak_flops(device: torch.device, dtype: str, size: int = 2048,
                      repeats: int = 5) -> Dict[str, float]:
    """Best FLOP/s of a square matrix multiply, per backend: 'torch.mm' (MKL on this CPU),
    and on the CPU also 'oneDNN' (the kernels our fp32 path uses)."""
    torch_dtype = torch.bfloat16 if dtype == 'bf16' else torch.float32
    a = torch.randn(size, size, device=device, dtype=torch_dtype)
    b = torch.randn(size, size, device=device, dtype=torch_dtype)
    kernels = {'torch.mm': lambda: torch.mm(a, b)}
    if device.type == 'cpu' and torch.backends.mkldnn.is_available():
        kernels['oneDNN'] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, 'none', [],
                                                                       '')
    peaks = {}
    for name, kernel in kernels.items():
        kernel()
        best = math.inf
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            kernel()
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        peaks[name] = 2 * size ** 3 / best
    return peaks


def count_flops(step: Callable[[], None]) -> int:
    """FLOPs (2 per multiply-add) of the matrix multiplies and convolutions one step runs."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def step_peak_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes of tensor memory one step holds above what was alive before it."""
    if device.type == 'cuda':
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    return peak_from_deltas([e.self_cpu_memory_usage for e in events])


def time_alternately(steps: Dict[str, Callable[[], None]], iters: int, warmup: int,
                     device: torch.device) -> Dict[str, Timing]:
    """Run every step once per iteration, swapping the order each time, and time each."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    wall: Dict[str, List[float]] = {name: [] for name in names}
    cpu: Dict[str, List[float]] = {name: [] for name in names}
    for i in range(iters):
        for name in (names if i % 2 == 0 else names[::-1]):
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            steps[name]()
            synchronize(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: Timing(wall[name], cpu[name]) for name in names}


def profile_table(step: Callable[[], None], rows: int) -> str:
    from torch.profiler import profile
    with profile() as prof:
        step()
    return prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows)


def make_inference_step(model: nn.Module, x: torch.Tensor, device: torch.device,
                        dtype: str) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode(), autocast_context(device, dtype):
            model(x)
    return step


def make_train_step(model: nn.Module, x: torch.Tensor, device: torch.device,
                    dtype: str) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, dtype):
            loss = output_loss(model(x))
        loss.backward()
        optimizer.step()
    return step


# Command line ------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from mmvit_plugin.models.mvitv2 import ATTN_IMPLS
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='tiny',
                        help='our arch name: tiny/small/base/large (peer: mmpretrain) or '
                             'small-16x4/base-32x3/large-40x3 (peer: mmaction2)')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='default 8 for images, 1 for video')
    parser.add_argument('--input-size', default=None,
                        help="e.g. 224, 256x320, 16x224x224 (default: the arch's size)")
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:i]')
    parser.add_argument('--dtype', choices=('fp32', 'bf16'), default='fp32',
                        help='bf16 runs both models under torch.autocast')
    parser.add_argument('--modes', default='inference,train',
                        help='comma-separated subset of inference,train')
    parser.add_argument('--iters', type=int, default=5, help='timed steps per model and mode')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per model and mode')
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (CPU)')
    parser.add_argument('--attn-impl', choices=ATTN_IMPLS, default='auto',
                        help="our attention implementation (see MViTv2's attn_impl)")
    parser.add_argument('--compile', choices=('none', 'ours', 'both'), default='none',
                        help='torch.compile our model, or both models')
    parser.add_argument('--with-cp', action='store_true',
                        help='activation checkpointing in our model (the peers have none)')
    parser.add_argument('--drop-path', type=float, default=0.0,
                        help='drop-path rate of both models while training')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest allowed output difference (fp32, eval mode)')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the (slow on CPU) peak-memory measurement')
    parser.add_argument('--profile', type=int, default=0, metavar='ROWS',
                        help='also print the top ROWS ops of one step of each model')
    return parser.parse_args(argv)


def _fmt_bytes(n: float) -> str:
    return f'{n / 2 ** 20:8.1f} MiB'


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    load_at_start = os.getloadavg() if hasattr(os, 'getloadavg') else None
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available here')
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    bad = set(modes) - set(MODES)
    if bad:
        raise SystemExit(f'--modes: unknown {sorted(bad)}; choose from {MODES}')

    arch_video = args.arch.endswith(('x4', 'x3'))
    batch = args.batch_size or (1 if arch_video else 8)
    pair = build_pair(args.arch, args.input_size, batch, args.drop_path, args.attn_impl,
                      args.with_cp)
    ours, peer = pair.ours.to(device), pair.peer.to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(pair.input_shape, generator=gen).to(device)

    cpu = 'unknown CPU'
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as f:
            cpu = next((line.split(':', 1)[1].strip() for line in f
                        if line.startswith('model name')), cpu)
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else \
        f'{cpu}, {args.threads} threads'
    print(f'device: {where}; torch {torch.__version__}; python {platform.python_version()}; '
          f'OMP_WAIT_POLICY={os.environ.get("OMP_WAIT_POLICY", "unset")}')
    print(f'ours: mmvit MViTv2({args.arch}, attn_impl={args.attn_impl}, with_cp={args.with_cp}) '
          f'vs peer: {pair.peer_name}; input {tuple(x.shape)}; dtype {args.dtype}; '
          f'compile {args.compile}; drop_path {args.drop_path}')

    ours.eval(), peer.eval()
    with torch.no_grad():
        diff = max_abs_diff(ours(x), peer(x))
    print(f'output check (fp32, eval): max |ours - peer| = {diff:.2e} '
          f'(tolerance {args.tolerance:g})')
    if not diff <= args.tolerance:
        print('FAIL: outputs differ beyond the tolerance; timings would compare different '
              'models', file=sys.stderr)
        return 1

    peaks = matmul_peak_flops(device, args.dtype)

    # One FLOP count for both models: the peer's (eager, plain attention) per step.
    flops_of = {}
    for mode in modes:
        peer.train(mode == 'train')
        make = make_train_step if mode == 'train' else make_inference_step
        flops_of[mode] = count_flops(make(peer, x, device, 'fp32'))  # FLOPs: dtype-free

    if args.compile in ('ours', 'both'):
        ours = torch.compile(ours)
    if args.compile == 'both':
        peer = torch.compile(peer)
    if args.compile != 'none':
        ours.eval(), peer.eval()
        with torch.no_grad():
            diff = max_abs_diff(ours(x), peer(x))
        print(f'output check after torch.compile: max |ours - peer| = {diff:.2e}')
    models = {'ours': ours, 'peer': peer}
    results = []
    for mode in modes:
        train = mode == 'train'
        for model in models.values():
            model.train(train)
        make = make_train_step if train else make_inference_step
        steps = {name: make(model, x, device, args.dtype) for name, model in models.items()}
        try:
            steps['peer']()
        except RuntimeError as error:  # e.g. the peers' einsum under CPU bf16 autocast
            print(f'[{mode}] the peer fails with dtype {args.dtype}: {error}; timing ours alone')
            del steps['peer']
        timings = time_alternately(steps, args.iters, args.warmup, device)
        memory = None
        if train and not args.no_memory and 'peer' in steps:
            memory = {name: step_peak_memory(step, device) for name, step in steps.items()}
        results.append((mode, steps, timings, memory))

    # The peak again at the end: on a shared machine one measurement may catch a busy moment.
    for name, value in matmul_peak_flops(device, args.dtype).items():
        peaks[name] = max(peaks[name], value)
    peak = max(peaks.values())
    print(f'{args.dtype} matmul peak (2048^3, best of this run): ' + ', '.join(
        f'{name} {value / 1e9:.0f} GFLOP/s' for name, value in peaks.items()))
    unit = 'clips' if pair.video else 'images'
    for mode, steps, timings, memory in results:
        flops = flops_of[mode]
        print(f'\n[{mode}] batch {batch}, {args.iters} timed steps per model after '
              f'{args.warmup} warm-up; {flops / 1e9:.1f} GFLOP per step (counted on the peer)')
        for name in timings:
            t = timings[name]
            rate = flops / t.median
            print(f'  {name:5s} median {t.median * 1e3:9.1f} ms (min {t.best * 1e3:.1f}, '
                  f'max {max(t.seconds) * 1e3:.1f}; CPU time {t.cpu_median * 1e3:.0f} ms)  '
                  f'{batch / t.median:7.2f} {unit}/s  {rate / 1e9:5.0f} GFLOP/s = '
                  f'{100 * rate / peak:3.0f}% of the matmul peak')
        if 'peer' in timings:
            ours_t, peer_t = timings['ours'], timings['peer']
            print(f'  ours/peer throughput: {ratio_of_medians(ours_t, peer_t):.2f}x (medians), '
                  f'{peer_t.best / ours_t.best:.2f}x (best steps), '
                  f'{median_pair_ratio(ours_t, peer_t):.2f}x (median of back-to-back pairs), '
                  f'{peer_t.cpu_median / ours_t.cpu_median:.2f}x (CPU time)')
        if memory is not None:
            state = sum(p.numel() * p.element_size() for p in pair.ours.parameters()) * 3
            print(f'  training-step peak memory above parameters and AdamW state '
                  f'({_fmt_bytes(state).strip()}, the same for both): ours '
                  f'{_fmt_bytes(memory["ours"]).strip()}, peer '
                  f'{_fmt_bytes(memory["peer"]).strip()}, ratio '
                  f'{memory["ours"] / memory["peer"]:.2f}')
        if args.profile:
            for name, step in steps.items():
                print(f'\n  profile of one {mode} step, {name}:')
                print(profile_table(step, args.profile))
    if device.type == 'cpu' and hasattr(os, 'getloadavg'):
        print(f'\nload average (1, 5, 15 min) at the end: {os.getloadavg()}; at the start: '
              f'{load_at_start}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
