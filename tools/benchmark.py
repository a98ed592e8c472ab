"""Our MViTv2 against every installed peer port, eager and compiled, and how cost grows.

Peers: mmpretrain's MViT and timm's ``mvitv2_*`` for images, mmaction2's MViT and torchvision's
``mvit_v2_s`` (S 16x4) for video. All get identical weights through the checkpoint converter
(mmpretrain's / mmaction2's random weights renamed into ours by ``to_canonical``; ours renamed
into timm's and torchvision's by ``from_canonical``), their outputs are compared, then all are
timed alternately in one process on the same input, so background load hits all alike.
Printed per mode: time per step, throughput, our FLOP rate as a share of the fp32 (or bf16)
matrix-multiply peak measured in the same run, our speed-up over each peer and over the
fastest peer per figure (medians, best steps, back-to-back pairs, CPU time), and peak memory.
``--compile peers|ours|both`` adds ``torch.compile``d copies beside the eager models (the first
compile takes minutes on 2 CPU cores). ``--scaling`` prints instead a table over batch sizes,
image sides and clip lengths: ours and the fastest peer side by side, time and peak memory,
with the crossover points and how memory grows; a point whose step would not fit in the
available memory (predicted linearly in the batch from a smaller batch of the same input) is
skipped and listed.

    python tools/benchmark.py --arch tiny --batch-size 8               # image T @224
    python tools/benchmark.py --arch small-16x4 --batch-size 1         # video S 16x4
    python tools/benchmark.py --arch tiny --compile peers --modes inference
    python tools/benchmark.py --arch tiny --scaling --scale-batch 1,8 --scale-size 224,320
    python tools/benchmark.py --arch small-16x4 --device cuda --dtype bf16 --compile both

Our kernels (oneDNN or PyTorch's matmul per linear shape, per-item or batched attention) are
chosen by a short calibration the first time each shape runs on a machine (see
``mmvit_plugin.ops.calibrate``); the first, untimed step of our model does it, and the tool
prints the choices cached for this machine. ``--calibration force`` measures them again,
``--recompute`` turns on our memory option.

Peak memory on CPU is the largest amount of tensor memory alive during one step above what was
alive when it began (torch.profiler memory events, per-op granularity); on CUDA it is
``torch.cuda.max_memory_allocated`` above the memory allocated before the step.

On a CPU shared with other busy processes, run with ``OMP_WAIT_POLICY=passive``: with the
default (spinning) policy every parallel region waits for descheduled threads, and a step can
take several times longer for all models, with ratios that mostly measure the scheduler.
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

#: peer name -> (kind, checkpoint format); 'image' peers take image archs, 'video' ones video.
PEERS = {
    'mmpretrain': ('image', 'mmpretrain'),
    'timm': ('image', 'timm'),
    'mmaction2': ('video', 'mmaction2'),
    'torchvision': ('video', 'torchvision'),
}
TIMM_ARCHS = {'tiny': 'mvitv2_tiny', 'small': 'mvitv2_small', 'base': 'mvitv2_base',
              'large': 'mvitv2_large'}
TORCHVISION_ARCHS = {'small-16x4': 'mvit_v2_s'}


@dataclass
class Peer:
    name: str  # printed, e.g. 'timm mvitv2_tiny'
    module: nn.Module
    ours_view: Callable  # our backbone output -> this peer's output layout, for the check


@dataclass
class Pair:
    ours: nn.Module
    peers: List[Peer]
    video: bool
    input_shape: Tuple[int, ...]

    @property
    def peer(self) -> nn.Module:  # the first peer (the one our weights came from)
        return self.peers[0].module

    @property
    def peer_name(self) -> str:
        return self.peers[0].name


def _randomise(module: nn.Module, seed: int) -> None:
    # Random weights of a realistic scale: the check below must compare non-trivial outputs.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def load_resized(module: nn.Module, state: Dict[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` that also replaces parameters whose shape differs (the
    relative-position tables of a peer built for another input size, which it interpolates at
    run time: with tables of the exact size no interpolation runs, as in ours)."""
    own = module.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            owner_name, _, attr = key.rpartition('.')
            owner = module.get_submodule(owner_name)
            setattr(owner, attr, nn.Parameter(value.clone()))
    module.load_state_dict(state, strict=True)


class TimmBackbone(nn.Module):
    """timm's ``MultiScaleVit`` up to its final norm (tokens), i.e. without pooling and head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _tokens(ours_out):
    return ours_out[0].flatten(2).transpose(1, 2)


def _cls_only(ours_out):
    return ours_out[0][1]


def check_arch(arch_name: str):
    """The arch record of ``--arch``, or an error naming the choices."""
    from mmvit_plugin.models.mvitv2 import ARCHS
    if arch_name not in ARCHS:
        raise SystemExit(f'--arch {arch_name!r}: choose one of {sorted(ARCHS)}')
    return ARCHS[arch_name]


def available_peers(arch_name: str) -> List[str]:
    """The peer names that have a model for this arch."""
    arch = check_arch(arch_name)
    names = ['mmaction2'] if arch.video else ['mmpretrain']
    if not arch.video and arch_name in TIMM_ARCHS:
        names.append('timm')
    if arch.video and arch_name in TORCHVISION_ARCHS:
        names.append('torchvision')
    return names


def parse_peers(text: Optional[str], arch_name: str) -> List[str]:
    """``--peers``: 'all' (default) or a comma list; each must have a model for the arch."""
    have = available_peers(arch_name)
    if text is None or text.strip() == 'all':
        return have
    names = [n.strip() for n in text.split(',') if n.strip()]
    for name in names:
        if name not in PEERS:
            raise SystemExit(f'--peers: unknown peer {name!r}; choose from {sorted(PEERS)}')
        if name not in have:
            raise SystemExit(f'--peers: {name} has no model for --arch {arch_name}; '
                             f'peers for it: {have}')
    return names


def _first_peer(name: str, arch_name: str, arch, size, drop_path: float) -> Peer:
    if name == 'mmaction2':
        from mmaction.models.backbones.mvit import MViT as ActionMViT
        peer_arch = arch_name.split('-')[0]
        module = ActionMViT(arch=peer_arch, spatial_size=size[1], temporal_size=size[0],
                            drop_path_rate=drop_path, dim_mul_in_attention=arch.dim_mul_in_att)
        return Peer(f'mmaction2 MViT({peer_arch})', module, lambda out: out)
    from mmpretrain.models.backbones.mvit import MViT as PretrainMViT
    module = PretrainMViT(arch=arch_name, img_size=size[0], out_scales=[3],
                          drop_path_rate=drop_path, dim_mul_in_attention=arch.dim_mul_in_att)
    return Peer(f'mmpretrain MViT({arch_name})', module, lambda out: out)


def _other_peer(name: str, arch_name: str, size, drop_path: float,
                canonical: Dict[str, torch.Tensor]) -> Peer:
    from mmvit_plugin.checkpoint import from_canonical
    if name == 'timm':
        import timm
        model = timm.create_model(TIMM_ARCHS[arch_name], pretrained=False, num_classes=0,
                                  img_size=tuple(size[-2:]), drop_path_rate=drop_path)
        model.load_state_dict(from_canonical(canonical, 'timm'), strict=True)
        return Peer(f'timm {TIMM_ARCHS[arch_name]}', TimmBackbone(model), _tokens)
    from torchvision.models import video as tv_video
    model = getattr(tv_video, TORCHVISION_ARCHS[arch_name])(stochastic_depth_prob=drop_path)
    model.head = nn.Identity()  # its output: the normed cls token
    # Its forward takes the token grid from pos_encoding (built for 16x224x224).
    stride = model.conv_proj.stride
    model.pos_encoding.temporal_size = size[0] // stride[0]
    model.pos_encoding.spatial_size = (size[1] // stride[1], size[2] // stride[2])
    load_resized(model, from_canonical(canonical, 'torchvision'))
    return Peer(f'torchvision {TORCHVISION_ARCHS[arch_name]}', model, _cls_only)


def build_pair(arch_name: str, input_size: Optional[str], batch_size: int, drop_path: float,
               attn_impl: str, with_cp: bool, seed: int = 0,
               peers: Optional[Sequence[str]] = None) -> Pair:
    """Our MViTv2 and the peer ports of the same arch, all with the same weights.

    The first peer (mmpretrain's or mmaction2's MViT) gets random weights, copied into ours
    through the checkpoint converter (``to_canonical``); the others (timm, torchvision) get
    ours through ``from_canonical``.
    """
    import mmvit_plugin  # noqa: F401
    from mmvit_plugin.checkpoint import to_canonical
    from mmvit_plugin.models.mvitv2 import MViTv2

    arch = check_arch(arch_name)
    if arch.with_cls_token and not arch.video:
        raise SystemExit(f'--arch {arch_name}: mmpretrain has no cls token, so it has no peer')
    size = parse_input_size(input_size, arch.video, arch.img_size)
    names = list(peers) if peers is not None else available_peers(arch_name)
    first = 'mmaction2' if arch.video else 'mmpretrain'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        source = _first_peer(first, arch_name, arch, size, drop_path)
        _randomise(source.module, seed)
        ours = MViTv2(arch_name, img_size=size,
                      out_type='featmap_and_cls' if arch.video else 'featmap',
                      drop_path_rate=drop_path, with_cp=with_cp, attn_impl=attn_impl)
        ours.load_state_dict(to_canonical(source.module.state_dict(), first), strict=True)
        canonical = ours.state_dict()
        built = [source if name == first else _other_peer(name, arch_name, size, drop_path,
                                                             canonical)
                 for name in names]
    return Pair(ours, built, arch.video, (batch_size, 3, *size))


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


COMPILE_NOTE = ('torch.compile: the first step of each compiled model compiles it, which takes '
                'minutes on 2 CPU cores (a training step longest); inductor keeps the result in '
                'its on-disk cache (TORCHINDUCTOR_CACHE_DIR, default /tmp/torchinductor_$USER), '
                'so a rerun of the same shapes compiles faster. Warm-up steps are not timed.')


def compile_model(module: nn.Module) -> nn.Module:
    return torch.compile(module)


def speedups(ours: Timing, peer: Timing) -> Dict[str, float]:
    """How many times faster ours is than the peer, per figure."""
    return {'medians': ratio_of_medians(ours, peer), 'best steps': peer.best / ours.best,
            'back-to-back pairs': median_pair_ratio(ours, peer),
            'CPU time': peer.cpu_median / ours.cpu_median}


def against_fastest(table: Dict[str, Dict[str, float]]) -> Dict[str, Tuple[str, float]]:
    """Per figure, our speed-up over the fastest peer by that figure (the smallest speed-up),
    with that peer's name. ``table``: peer name -> figure -> speed-up."""
    figures = next(iter(table.values()))
    return {fig: min(((name, row[fig]) for name, row in table.items()), key=lambda t: t[1])
            for fig in figures}


@dataclass
class Model:
    name: str
    module: nn.Module
    is_ours: bool
    ours_view: Callable = None  # peers only


COMPILED = ' [compiled]'  # the name suffix of a compiled copy


def models_to_time(pair: Pair, compile_mode: str) -> List[Model]:
    """Ours and every peer, plus compiled copies as ``--compile`` asks (they share weights)."""
    models = [Model('ours', pair.ours, True)]
    if compile_mode in ('ours', 'both'):
        models.append(Model('ours' + COMPILED, compile_model(pair.ours), True))
    for peer in pair.peers:
        models.append(Model(peer.name, peer.module, False, peer.ours_view))
        if compile_mode in ('peers', 'both'):
            models.append(Model(peer.name + COMPILED, compile_model(peer.module), False,
                                peer.ours_view))
    return models


def check_outputs(models: List[Model], x: torch.Tensor) -> Dict[str, float]:
    """Largest |ours - peer| of every (our model, peer) pair in eval mode, fp32."""
    for model in models:
        model.module.eval()
    diffs = {}
    with torch.no_grad():
        outs = {m.name: m.module(x) for m in models}
    for ours in (m for m in models if m.is_ours):
        for peer in (m for m in models if not m.is_ours):
            diffs[f'{ours.name} vs {peer.name}'] = max_abs_diff(peer.ours_view(outs[ours.name]),
                                                                outs[peer.name])
    return diffs


def check_compiled(models: List[Model], x: torch.Tensor) -> Dict[str, float]:
    """Largest |compiled - eager| of every compiled model against its own eager module."""
    by_name = {m.name: m for m in models}
    diffs = {}
    with torch.no_grad():
        for model in models:
            if not model.name.endswith(COMPILED):
                continue
            twin = by_name[model.name[:-len(COMPILED)]].module
            twin.eval()  # (not chained: mmpretrain's MViT.train returns None)
            model.module.eval()
            diffs[model.name] = max_abs_diff(model.module(x), twin(x))
    return diffs


def run_modes(models: List[Model], x: torch.Tensor, modes: Sequence[str], device, dtype: str,
              iters: int, warmup: int, memory_modes: Sequence[str]):
    """Per mode: (steps, timings, peak memory or None), every model timed alternately."""
    results = []
    for mode in modes:
        train = mode == 'train'
        for model in models:
            model.module.train(train)
        make = make_train_step if train else make_inference_step
        steps = {m.name: make(m.module, x, device, dtype) for m in models}
        for m in models:
            if m.is_ours:
                continue
            try:
                steps[m.name]()
            except RuntimeError as error:  # e.g. the peers' einsum under CPU bf16 autocast
                print(f'[{mode}] {m.name} fails with dtype {dtype}: {error}; not timed')
                del steps[m.name]
        # At least one untimed step: the first one calibrates our kernels (once per machine
        # and shape, see mmvit_plugin.ops.calibrate) and compiles a compiled model.
        timings = time_alternately(steps, iters, max(1, warmup), device)
        memory = None
        if mode in memory_modes:
            memory = {name: step_peak_memory(step, device) for name, step in steps.items()}
        results.append((mode, steps, timings, memory))
    return results


def ratio_lines(timings: Dict[str, Timing], ours_names: Sequence[str]) -> List[str]:
    """Our speed-up over each peer and over the fastest peer per figure, as printed lines."""
    peers = [n for n in timings if n not in ours_names]
    if not peers:
        return []
    lines = []
    figures = list(speedups(timings[ours_names[0]], timings[peers[0]]))
    width = max(len(n) for n in peers + ['fastest peer per figure']) + 2
    head = ''.join(f'{fig:>20s}' for fig in figures)
    for ours in ours_names:
        table = {peer: speedups(timings[ours], timings[peer]) for peer in peers}
        lines.append(f'  {ours} speed-up over{"":{max(0, width - len(ours) - 13)}}{head}')
        for peer, row in table.items():
            lines.append(f'    {peer:{width}s}' + ''.join(f'{row[f]:19.2f}x' for f in figures))
        best = against_fastest(table)
        lines.append(f'    {"fastest peer per figure":{width}s}' + ''.join(
            f'{best[f][1]:19.2f}x' for f in figures))
        lines.append(f'    {"(which peer)":{width}s}' + ''.join(
            f'{best[f][0][:19]:>20s}' for f in figures))
    return lines


def memory_lines(memory: Dict[str, int], ours_names: Sequence[str], state_bytes: int,
                 mode: str) -> List[str]:
    lines = [f'  {mode}-step peak memory above parameters' +
             (f' and AdamW state ({_fmt_bytes(state_bytes).strip()}, the same for all)'
              if mode == 'train' else '') + ':']
    peers = {n: v for n, v in memory.items() if n not in ours_names}
    for name, value in memory.items():
        lines.append(f'    {name:40s} {_fmt_bytes(value)}')
    if peers:
        least = min(peers, key=peers.get)
        for ours in ours_names:
            ratios = ', '.join(f'{peer} {memory[ours] / v:.2f}' for peer, v in peers.items())
            lines.append(f'    {ours} / peer: {ratios}; / least peer ({least}): '
                         f'{memory[ours] / peers[least]:.2f}')
    return lines


def describe_kernels() -> str:
    """Which kernels the calibration chose on this machine so far (from its cache)."""
    from mmvit_plugin.ops import calibrate
    mode = calibrate.calibration_mode()
    if mode == 'off':
        return 'kernel calibration: off (built-in defaults: oneDNN, per-item attention from ' \
               f'{calibrate.DEFAULT_MIN_ATTENTION_ENTRIES} entries)'
    counts: Dict[str, int] = {}
    for key, entry in calibrate.cached_choices().items():
        tag = f'{key.split(":")[0]}->{entry.get("choice")}'
        counts[tag] = counts.get(tag, 0) + 1
    summary = ', '.join(f'{tag} x{n}' for tag, n in sorted(counts.items())) or 'none yet'
    return f'kernel calibration: {mode}; cached choices for this machine ' \
           f'({calibrate.cache_path()}): {summary}'


# Scaling ---------------------------------------------------------------------------------------

def parse_int_list(text: str, flag: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(',') if v.strip()]
    except ValueError:
        raise SystemExit(f'{flag} {text!r}: expected comma-separated ints, e.g. 1,8,64') from None
    if not values or min(values) < 1:
        raise SystemExit(f'{flag} {text!r}: expected positive ints')
    return values


def scaling_grid(video: bool, batches: Sequence[int], sizes: Sequence[int],
                 frames: Sequence[int]) -> List[Tuple[int, Tuple[int, ...]]]:
    """(batch, input size) points: every batch x size (x clip length for video)."""
    if video:
        return [(b, (t, s, s)) for t in frames for s in sizes for b in batches]
    return [(b, (s, s)) for s in sizes for b in batches]


@dataclass
class ScalingRow:
    mode: str
    batch: int
    size: Tuple[int, ...]
    ours_s: float
    peer: str  # the fastest peer at this point
    peer_s: float
    ours_bytes: Optional[int] = None
    peer_mem_name: Optional[str] = None  # the peer with the least memory at this point
    peer_bytes: Optional[int] = None

    @property
    def speedup(self) -> float:
        return self.peer_s / self.ours_s


def crossovers(rows: Sequence[ScalingRow]) -> List[str]:
    """Where our speed-up over the fastest peer crosses 1 along the batch axis, and along the
    input size (longer clips / larger images) at a fixed batch."""
    found = []
    by_mode: Dict[str, List[ScalingRow]] = {}
    for row in rows:
        by_mode.setdefault(row.mode, []).append(row)
    for mode, group in by_mode.items():
        for axis, fixed, vary in (('batch', lambda r: r.size, lambda r: r.batch),
                                  ('input', lambda r: r.batch, lambda r: r.size)):
            lines: Dict[tuple, List[ScalingRow]] = {}
            for row in group:
                lines.setdefault((fixed(row),), []).append(row)
            for line in lines.values():
                line.sort(key=vary)
                for a, b in zip(line, line[1:]):
                    if (a.speedup >= 1) != (b.speedup >= 1):
                        who = 'ours' if b.speedup >= 1 else 'the fastest peer'
                        found.append(f'{mode}: {who} leads from {axis} {_point(b)} on '
                                     f'({a.speedup:.2f}x at {_point(a)} -> {b.speedup:.2f}x)')
    return found


def memory_growth(rows: Sequence[ScalingRow]) -> List[str]:
    """Per mode: how much our peak memory and the least peer's grow from the smallest to the
    largest point, and whether ours grows faster."""
    out = []
    by_mode: Dict[str, List[ScalingRow]] = {}
    for row in rows:
        if row.ours_bytes and row.peer_bytes:
            by_mode.setdefault(row.mode, []).append(row)
    for mode, group in by_mode.items():
        if len(group) < 2:
            continue
        small = min(group, key=lambda r: (r.ours_bytes, r.batch))
        large = max(group, key=lambda r: (r.ours_bytes, r.batch))
        ours, peer = large.ours_bytes / small.ours_bytes, large.peer_bytes / small.peer_bytes
        verdict = ('faster than' if ours > peer * 1.05 else 'slower than' if ours < peer / 1.05
                   else 'within 5% of')
        out.append(f'{mode}: peak memory from {_point(small)} to {_point(large)}: '
                   f'ours x{ours:.1f}, '
                   f'least peer x{peer:.1f} (ours grows {verdict} the peer\'s); ours/peer '
                   f'{small.ours_bytes / small.peer_bytes:.2f} -> '
                   f'{large.ours_bytes / large.peer_bytes:.2f}')
    return out


def predicted_step_bytes(seen: Dict[Tuple[str, Tuple[int, ...]], Tuple[int, int]], mode: str,
                         size: Tuple[int, ...], batch: int) -> Optional[int]:
    """A step's peak memory at ``batch``, from the largest batch measured at the same mode and
    input size (``seen``: (mode, size) -> (batch, the largest model's peak bytes)); activations
    grow linearly with the batch. None when nothing was measured there."""
    if (mode, size) not in seen:
        return None
    measured_batch, measured_bytes = seen[(mode, size)]
    return measured_bytes * batch // measured_batch


def available_memory_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (what can be allocated without swapping), or None."""
    try:
        with open('/proc/meminfo') as meminfo:
            for line in meminfo:
                if line.startswith('MemAvailable:'):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# A point runs only if its predicted step peak fits in this share of the available memory
# (the allocator, the other models' weights and fragmentation need the rest).
MEMORY_HEADROOM = 0.8


def _size_text(size: Sequence[int]) -> str:
    """(16, 224, 224) -> '16x224x224', the form ``--input-size`` reads."""
    return 'x'.join(map(str, size))


def _point(row: ScalingRow) -> str:
    return f'b{row.batch} {_size_text(row.size)}'


def scaling_table(rows: Sequence[ScalingRow]) -> List[str]:
    lines = [f'  {"mode":9s} {"batch":>5s} {"input":>11s} {"ours ms":>10s} {"peer ms":>10s} '
             f'{"speed-up":>8s}  {"fastest peer":24s} {"ours MiB":>9s} {"peer MiB":>9s} '
             f'{"mem":>5s}  least-memory peer']
    for r in rows:
        mem = ''
        if r.ours_bytes is not None and r.peer_bytes:
            mem = (f'{r.ours_bytes / 2 ** 20:9.0f} {r.peer_bytes / 2 ** 20:9.0f} '
                   f'{r.ours_bytes / r.peer_bytes:5.2f}  {r.peer_mem_name}')
        lines.append(f'  {r.mode:9s} {r.batch:5d} {_size_text(r.size):>11s} '
                     f'{r.ours_s * 1e3:10.1f} {r.peer_s * 1e3:10.1f} {r.speedup:7.2f}x  '
                     f'{r.peer[:24]:24s} {mem}')
    return lines


def run_scaling(args, device, modes: Sequence[str]) -> int:
    arch = check_arch(args.arch)
    grid = scaling_grid(arch.video, parse_int_list(args.scale_batch, '--scale-batch'),
                        parse_int_list(args.scale_size, '--scale-size'),
                        parse_int_list(args.scale_frames, '--scale-frames'))
    peers = parse_peers(args.peers, args.arch)
    print(f'scaling: {len(grid)} points x {len(modes)} modes, {args.iters} timed steps each '
          f'after {args.warmup} warm-up; peers {peers}; compile {args.compile}')
    rows: List[ScalingRow] = []
    seen: Dict[Tuple[str, Tuple[int, ...]], Tuple[int, int]] = {}
    skipped: List[str] = []
    for batch, size in grid:
        point_modes = list(modes)
        free = available_memory_bytes() if device.type == 'cpu' else None
        for mode in modes:
            need = predicted_step_bytes(seen, mode, size, batch)
            if need is not None and free is not None and need > MEMORY_HEADROOM * free:
                point_modes.remove(mode)
                skipped.append(f'{mode} b{batch} {_size_text(size)}: a step would need about '
                               f'{need / 2 ** 30:.1f} GiB (linear in the batch from b'
                               f'{seen[(mode, size)][0]}), {free / 2 ** 30:.1f} GiB available')
                print(f'  skipped {skipped[-1]}', flush=True)
        if not point_modes:
            continue
        pair = build_pair(args.arch, _size_text(size), batch, args.drop_path,
                          args.attn_impl, args.with_cp, peers=peers)
        models = models_to_time(pair, args.compile)
        for m in models:
            m.module.to(device)
        x = torch.randn(pair.input_shape, generator=torch.Generator().manual_seed(1)).to(device)
        ours_names = [m.name for m in models if m.is_ours]
        memory_modes = [] if args.no_memory else point_modes
        for mode, _, timings, memory in run_modes(models, x, point_modes, device, args.dtype,
                                                  args.iters, args.warmup, memory_modes):
            if memory is not None:
                seen[(mode, size)] = (batch, max(memory.values()))
            peer_t = {n: t for n, t in timings.items() if n not in ours_names}
            if not peer_t:
                continue
            fastest = min(peer_t, key=lambda n: peer_t[n].median)
            ours_t = min((timings[n] for n in ours_names), key=lambda t: t.median)
            row = ScalingRow(mode, batch, size, ours_t.median, fastest, peer_t[fastest].median)
            if memory is not None:
                peer_mem = {n: v for n, v in memory.items() if n not in ours_names}
                least = min(peer_mem, key=peer_mem.get)
                row.ours_bytes = min(memory[n] for n in ours_names)
                row.peer_mem_name, row.peer_bytes = least, peer_mem[least]
            rows.append(row)
            print('\n'.join(scaling_table([row])[1:]), flush=True)
        del pair, models, x
    print('\nscaling table (ours = the fastest of our entries; peer = the fastest peer at '
          'each point; memory = peak above the parameters' +
          (' and AdamW state' if 'train' in modes else '') + '):')
    print('\n'.join(scaling_table(rows)))
    print('\ncrossover points:')
    print('\n'.join('  ' + line for line in crossovers(rows)) or
          '  none: the same model leads at every point of this grid')
    if skipped:
        print('points not run (they would not fit in memory here):')
        print('\n'.join('  ' + line for line in skipped))
    growth = memory_growth(rows)
    if growth:
        print('memory growth:')
        print('\n'.join('  ' + line for line in growth))
    return 0


# Command line ------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from mmvit_plugin.models.mvitv2 import ATTN_IMPLS
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog=COMPILE_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', default='tiny',
                        help='our arch name: tiny/small/base/large (peers: mmpretrain, timm) or '
                             'small-16x4/base-32x3/large-40x3 (peers: mmaction2, and '
                             'torchvision for small-16x4)')
    parser.add_argument('--peers', default='all',
                        help="'all' or a comma list of mmpretrain,timm (images) / "
                             'mmaction2,torchvision (video)')
    parser.add_argument('--batch-size', type=int, default=None,
                        help='default 8 for images, 1 for video')
    parser.add_argument('--input-size', default=None,
                        help="e.g. 224, 256x320, 16x224x224 (default: the arch's size)")
    parser.add_argument('--device', default='cpu', help='cpu or cuda[:i]')
    parser.add_argument('--dtype', choices=('fp32', 'bf16'), default='fp32',
                        help='bf16 runs all models under torch.autocast')
    parser.add_argument('--modes', default='inference,train',
                        help='comma-separated subset of inference,train')
    parser.add_argument('--iters', type=int, default=5, help='timed steps per model and mode')
    parser.add_argument('--warmup', type=int, default=1,
                        help='untimed steps per model and mode (at least 1: the first step '
                             'calibrates our kernels and compiles compiled models)')
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads (CPU)')
    parser.add_argument('--attn-impl', choices=ATTN_IMPLS, default='auto',
                        help="our attention implementation (see MViTv2's attn_impl)")
    parser.add_argument('--compile', choices=('none', 'ours', 'peers', 'both'), default='none',
                        help='also time torch.compile\'d copies of ours, of every peer, or of '
                             'both (beside the eager models). The first compile takes minutes '
                             'on 2 CPU cores (see below).')
    parser.add_argument('--recompute', action='store_true',
                        help='our memory option: recompute attention probabilities, GELU and '
                             'pooling conv in the backward (use_kernels(recompute=True))')
    parser.add_argument('--calibration', choices=('on', 'off', 'force'), default=None,
                        help='kernel calibration (default: $MMVIT_CALIBRATE, else on); force '
                             're-measures this machine\'s choices')
    parser.add_argument('--with-cp', action='store_true',
                        help='activation checkpointing in our model (the peers have none)')
    parser.add_argument('--drop-path', type=float, default=0.0,
                        help='drop-path rate of all models while training')
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest allowed output difference (fp32, eval mode)')
    parser.add_argument('--no-memory', action='store_true',
                        help='skip the (slow on CPU) peak-memory measurement')
    parser.add_argument('--profile', type=int, default=0, metavar='ROWS',
                        help='also print the top ROWS ops of one step of each model')
    parser.add_argument('--scaling', action='store_true',
                        help='print a table over batch sizes, image sizes and clip lengths '
                             '(ours and the fastest peer; time and peak memory) instead')
    parser.add_argument('--scale-batch', default='1,8,64', help='batch sizes for --scaling')
    parser.add_argument('--scale-size', default='224,448', help='image sides for --scaling')
    parser.add_argument('--scale-frames', default='8,16,32',
                        help='clip lengths for --scaling (video archs)')
    return parser.parse_args(argv)


def _fmt_bytes(n: float) -> str:
    return f'{n / 2 ** 20:8.1f} MiB'


def _cpu_name() -> str:
    from mmvit_plugin.ops import calibrate
    return calibrate.cpu_model()


def ceiling_line(timings: dict, ours_names: Sequence[str], flops: float, peak: float) -> str:
    """The largest speed-up over the fastest peer that any implementation of these FLOPs can
    reach here: the peer's median over the time of all FLOPs run at the matmul peak."""
    peers = {name: t.median for name, t in timings.items() if name not in ours_names}
    if not peers or peak <= 0:
        return '  ceiling: no peer timed'
    fastest = min(peers, key=peers.get)
    return (f'  ceiling: {peers[fastest] / (flops / peak):.2f}x over {fastest} if every FLOP '
            f'ran at the matmul peak ({flops / peak * 1e3:.0f} ms) and nothing else cost time')


def cpu_times() -> Optional[List[int]]:
    """The machine's cumulative CPU times (/proc/stat jiffies: user ... steal), or None."""
    try:
        with open('/proc/stat') as stat:
            return [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None


def steal_share(start: Optional[List[int]], end: Optional[List[int]]) -> Optional[float]:
    """Share of CPU time the hypervisor gave to other guests between two ``cpu_times``
    (a virtual machine's cores run slower by about this much, whatever the load says)."""
    if not start or not end or len(start) < 8 or len(end) < 8:
        return None
    spent = [b - a for a, b in zip(start, end)]
    return spent[7] / sum(spent) if sum(spent) > 0 else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    load_at_start = os.getloadavg() if hasattr(os, 'getloadavg') else None
    times_at_start = cpu_times()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit('--device cuda: no CUDA device is available here')
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    bad = set(modes) - set(MODES)
    if bad:
        raise SystemExit(f'--modes: unknown {sorted(bad)}; choose from {MODES}')
    from mmvit_plugin import ops
    settings = ops.use_kernels(recompute=args.recompute, calibration=args.calibration)
    with settings:
        where = torch.cuda.get_device_name(device) if device.type == 'cuda' else \
            f'{_cpu_name()}, {args.threads} threads'
        print(f'device: {where}; torch {torch.__version__}; python '
              f'{platform.python_version()}; OMP_WAIT_POLICY='
              f'{os.environ.get("OMP_WAIT_POLICY", "unset")}; load average {load_at_start}')
        if args.compile != 'none':
            print(COMPILE_NOTE)
        code = run_scaling(args, device, modes) if args.scaling else \
            _run_once(args, device, modes)
        if device.type == 'cpu':
            print(describe_kernels())
    if device.type == 'cpu' and hasattr(os, 'getloadavg'):
        steal = steal_share(times_at_start, cpu_times())
        print(f'\nload average (1, 5, 15 min) at the end: {os.getloadavg()}; at the start: '
              f'{load_at_start}' + ('' if steal is None else
                                    f'; CPU steal (hypervisor) during the run {steal:.0%}'))
    return code


def _run_once(args, device, modes) -> int:
    arch_video = args.arch.endswith(('x4', 'x3'))
    batch = args.batch_size or (1 if arch_video else 8)
    check_arch(args.arch)
    peers = parse_peers(args.peers, args.arch)
    pair = build_pair(args.arch, args.input_size, batch, args.drop_path, args.attn_impl,
                      args.with_cp, peers=peers)
    pair.ours.to(device)
    for peer in pair.peers:
        peer.module.to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(pair.input_shape, generator=gen).to(device)
    print(f'ours: mmvit MViTv2({args.arch}, attn_impl={args.attn_impl}, with_cp={args.with_cp}, '
          f'recompute={args.recompute}) vs peers: {[p.name for p in pair.peers]}; input '
          f'{tuple(x.shape)}; dtype {args.dtype}; compile {args.compile}; drop_path '
          f'{args.drop_path}')

    models = models_to_time(pair, args.compile)
    eager = [m for m in models if not m.name.endswith(COMPILED)]
    diffs = check_outputs(eager, x)
    for what, diff in diffs.items():
        print(f'output check (fp32, eval): max |{what}| = {diff:.2e} '
              f'(tolerance {args.tolerance:g})')
    if not all(d <= args.tolerance for d in diffs.values()):
        print('FAIL: outputs differ beyond the tolerance; timings would compare different '
              'models', file=sys.stderr)
        return 1

    peaks = matmul_peak_flops(device, args.dtype)
    # One FLOP count for all models: the first peer's (eager, plain attention) per step.
    flops_of = {}
    for mode in modes:
        pair.peer.train(mode == 'train')
        make = make_train_step if mode == 'train' else make_inference_step
        flops_of[mode] = count_flops(make(pair.peer, x, device, 'fp32'))  # FLOPs: dtype-free

    if args.compile != 'none':
        start = time.perf_counter()
        diffs = check_compiled(models, x)
        print(f'output check after torch.compile ({time.perf_counter() - start:.0f} s, '
              'compiling inference): ' + '; '.join(f'max |{name} - eager| = {d:.2e}'
                                                   for name, d in diffs.items()))
        wrong = [name for name, d in diffs.items() if not d <= args.tolerance]
        for name in wrong:
            print(f'EXCLUDED {name}: torch.compile changed its outputs by {diffs[name]:.2e} '
                  f'(> tolerance {args.tolerance:g}); a wrong model is not timed as a peer',
                  flush=True)
        models = [m for m in models if m.name not in wrong]
    memory_modes = [] if args.no_memory else ['train']
    results = run_modes(models, x, modes, device, args.dtype, args.iters, args.warmup,
                        memory_modes)

    # The peak again at the end: on a shared machine one measurement may catch a busy moment.
    for name, value in matmul_peak_flops(device, args.dtype).items():
        peaks[name] = max(peaks[name], value)
    peak = max(peaks.values())
    print(f'{args.dtype} matmul peak (2048^3, best of this run): ' + ', '.join(
        f'{name} {value / 1e9:.0f} GFLOP/s' for name, value in peaks.items()))
    unit = 'clips' if pair.video else 'images'
    ours_names = [m.name for m in models if m.is_ours]
    state = sum(p.numel() * p.element_size() for p in pair.ours.parameters()) * 3
    width = max(len(m.name) for m in models)
    for mode, steps, timings, memory in results:
        flops = flops_of[mode]
        print(f'\n[{mode}] batch {batch}, {args.iters} timed steps per model after '
              f'{args.warmup} warm-up; {flops / 1e9:.1f} GFLOP per step (counted on '
              f'{pair.peer_name})')
        for name, t in timings.items():
            rate = flops / t.median
            print(f'  {name:{width}s} median {t.median * 1e3:9.1f} ms (min {t.best * 1e3:.1f}, '
                  f'max {max(t.seconds) * 1e3:.1f}; CPU {t.cpu_median * 1e3:.0f} ms) '
                  f'{batch / t.median:7.2f} {unit}/s {rate / 1e9:5.0f} GFLOP/s = '
                  f'{100 * rate / peak:3.0f}% of the matmul peak')
        print('\n'.join(ratio_lines(timings, [n for n in ours_names if n in timings])))
        print(ceiling_line(timings, ours_names, flops, peak))
        if memory is not None:
            print('\n'.join(memory_lines(memory, ours_names, state, mode)))
        if args.profile:
            for name, step in steps.items():
                print(f'\n  profile of one {mode} step, {name}:')
                print(profile_table(step, args.profile))
    return 0


if __name__ == '__main__':
    sys.exit(main())
