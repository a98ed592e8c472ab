"""GPU check (issue 13): attention correctness, FlashAttention, speed against the peers and the
tools on CUDA, in one budgeted run; ``--dry-run`` runs every section on the CPU at tiny sizes.

    python tools/gpu_check.py --out OUT_DIR             # on a CUDA machine (tools/gpu_check.sh)
    python tools/gpu_check.py --out OUT_DIR --dry-run   # CPU, tiny archs, batch 2, 1 iteration
    python tools/gpu_check.py --out OUT_DIR --sections speed --speed-jobs vid-S:train:compiled

Sections (each in its own process with its own time budget, so a crash, a hang or a CUDA error
in one leaves the others' results): env (devices, versions, missing packages, bf16 matmul rate),
correctness (every ``attn_impl`` against the float64 reference path, outputs and gradients, in
fp32 with TF32 off and on, bf16 and fp16 autocast), flash (the flash kernel forced on the folded
relative positions; the backend SDPA picks per stage; each backend timed on each stage's
shapes), speed (ours against mmpretrain, timm, mmaction2 and torchvision, eager and compiled,
alternating in one process, identical weights copied through ``mmvit_plugin.checkpoint``,
outputs checked before timing), tools (``tools/train.py configs/quickstart_image.py --amp`` and
``tools/dist_train.sh ... 1``). Every row is printed as it is measured and written to
``OUT_DIR/gpu_check.json``; ``OUT_DIR/gpu_check.md`` holds the tables.
"""
import argparse
import contextlib
import copy
import gzip
import json
import math
import os
import os.path as osp
import platform
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SECTIONS = ('env', 'correctness', 'flash', 'speed', 'tools')
# Seconds per section on an H200: 440 s, plus about 5 s of imports per section and the wheel
# install, inside the 8 minutes the issue allows.
DEFAULT_BUDGETS = {'env': 20, 'correctness': 70, 'flash': 40, 'speed': 210, 'tools': 100}
ROLLOVER_TO = ('speed', 'tools')  # sections that get the time earlier sections left unused
DRY_BUDGETS = {'env': 30, 'correctness': 60, 'flash': 40, 'speed': 90, 'tools': 120}
GRACE_S = 20  # a section past its budget plus this is killed (its rows so far are kept)
# The python modules each part of the check imports, with the distribution that provides them.
NEEDED_MODULES = (('mmengine', 'mmengine'), ('mmcv', 'mmcv-lite'), ('mmpretrain', 'mmpretrain'),
                  ('mmaction', 'mmaction2'), ('decord', 'decord'), ('timm', 'timm'),
                  ('torchvision', 'torchvision'), ('cv2', 'opencv-python-headless'))
# Relative-error tolerances against float64, per precision (issue 13).
TOLERANCES = {'fp32': 1e-5, 'tf32': 1e-3, 'bf16': 1e-2, 'fp16': 1e-2}
EXPECTED = {'fp32': '< 1e-5', 'tf32': '~3e-4', 'bf16': '< 1e-2', 'fp16': '< 1e-2'}
# A fast path's gradient passes if it is within the tolerance, or no worse than this many times
# the reference path's own error in the same precision (the precision's floor).
FLOOR_FACTOR = 2.0
TIMM_ANCHOR = ('timm benchmark, MViTv2-T inference, AMP, RTX 4090: 2,155 img/s eager, '
               '4,421 img/s compiled')
TIMM_ANCHOR_FIGURES = {'eager': 2155.0, 'compiled': 4421.0}


# Recording ---------------------------------------------------------------------------------------

def _clean(value):
    if isinstance(value, float):
        return None if math.isnan(value) else (str(value) if math.isinf(value) else value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class Section:
    """One section's results: tables of rows and notes, saved to JSON after every addition."""

    def __init__(self, name: str, path: str, budget_s: float) -> None:
        self.name, self.path, self.budget_s = name, path, budget_s
        self.start = time.monotonic()
        self.data = {'name': name, 'status': 'running', 'budget_s': budget_s, 'tables': {},
                     'notes': []}
        self.save()

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def row(self, table: str, **fields) -> dict:
        self.data['tables'].setdefault(table, []).append(fields)
        shown = ', '.join(f'{k}={_fmt(v)}' for k, v in fields.items())
        print(f'[{self.name}/{table}] {shown}', flush=True)
        self.save()
        return fields

    def note(self, text: str) -> None:
        self.data['notes'].append(text)
        print(f'[{self.name}] {text}', flush=True)
        self.save()

    def finish(self, status: str, error: Optional[str] = None) -> None:
        self.data['status'] = status
        self.data['seconds'] = round(time.monotonic() - self.start, 1)
        if error:
            self.data['error'] = error
        self.save()

    def save(self) -> None:
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(_clean(self.data), f, indent=1)
        os.replace(tmp, self.path)


def _fmt(value) -> str:
    if isinstance(value, float):
        if value == 0 or math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) < 1e-2 or abs(value) >= 1e5:
            return f'{value:.2e}'
        return f'{value:.3g}' if abs(value) < 100 else f'{value:.1f}'
    return str(value)


def render_markdown(report: dict) -> str:
    """All sections' tables as markdown (one table per recorded table, columns in order)."""
    lines = ['# GPU check', '']
    for key in ('device', 'torch', 'started', 'mode'):
        if key in report:
            lines.append(f'- {key}: {report[key]}')
    lines.append('')
    for name in SECTIONS:
        sec = report.get('sections', {}).get(name)
        if sec is None:
            continue
        status = sec.get('status')
        lines.append(f'## {name}: {status} ({sec.get("seconds", "?")} s of '
                     f'{sec.get("budget_s")} s)')
        if sec.get('error'):
            lines += ['', '```', str(sec['error']).strip()[-2000:], '```']
        for note in sec.get('notes', []):
            lines.append(f'- {note}')
        for table, rows in sec.get('tables', {}).items():
            columns: List[str] = []
            for row in rows:
                columns += [c for c in row if c not in columns]
            lines += ['', f'### {table}', '', '| ' + ' | '.join(columns) + ' |',
                      '|' + ' --- |' * len(columns)]
            for row in rows:
                cells = [_fmt(row.get(c, '')).replace('|', '/').replace('\n', ' ')
                         for c in columns]
                lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
    return '\n'.join(lines) + '\n'


# Device helpers ----------------------------------------------------------------------------------

def sync(device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def set_tf32(on: bool) -> str:
    """TF32 for CUDA matmuls and convolutions on or off; returns what is now set."""
    torch.set_float32_matmul_precision('high' if on else 'highest')
    torch.backends.cudnn.allow_tf32 = on
    return (f'matmul precision {torch.get_float32_matmul_precision()}, '
            f'cudnn.allow_tf32 {torch.backends.cudnn.allow_tf32}')


def autocast_for(device, precision: str):
    if precision == 'bf16':
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == 'fp16':
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def rel_err(outs: Sequence, refs: Sequence) -> float:
    """||out - ref|| / ||ref|| over all tensors together (float64); NaN/inf give inf."""
    num = den = 0.0
    for out, ref in zip(outs, refs):
        ref = ref.detach().double()
        diff = out.detach().double() - ref
        num += float(diff.square().sum())
        den += float(ref.square().sum())
    if not math.isfinite(num):
        return math.inf
    return math.sqrt(num) / math.sqrt(den) if den > 0 else math.sqrt(num)


def flatten(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in flatten(o)]


def matmul_rate(device, size: int, dtype_name: str = 'bf16', warmup: int = 3,
                repeats: int = 10) -> float:
    """FLOP/s of a size^3 matrix product on random data (mean of ``repeats`` after warm-up)."""
    dtype = torch.bfloat16 if dtype_name == 'bf16' else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(warmup):
        torch.mm(a, b)
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    sync(device)
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    return platform.processor() or 'unknown CPU'


def load_text() -> str:
    return str(os.getloadavg()) if hasattr(os, 'getloadavg') else 'n/a'


def short_error(error: BaseException) -> str:
    text = f'{type(error).__name__}: {error}'.strip()
    return text if len(text) < 400 else text[:400] + ' ...'


# Model cases ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One model size: our arch (name or dict), its input size and peer names."""
    label: str
    arch: object
    size: Tuple[int, ...]
    timm_name: Optional[str] = None
    torchvision_named: bool = False

    @property
    def spec(self):
        from mmvit_plugin.core.arch import resolve_arch
        return resolve_arch(self.arch)

    @property
    def video(self) -> bool:
        return self.spec.video

    @property
    def cls(self) -> bool:
        return self.spec.with_cls_token

    @property
    def num_classes(self) -> int:
        return 400 if self.video else 1000


def _tiny(**kw) -> dict:
    arch = dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3), img_size=(32, 32),
                drop_path_rate=0.0)
    arch.update(kw)
    return arch


def cases(dry: bool) -> Dict[str, Case]:
    if dry:
        return {
            'T': Case('T (tiny stand-in, 32px)', _tiny(), (32, 32), 'mvitv2_tiny'),
            'B': Case('B (tiny stand-in, 32px)', _tiny(depth=5, stage_starts=(2, 3, 4)),
                      (32, 32), 'mvitv2_base'),
            'B-in21k': Case('B-in21k (tiny cls stand-in)', _tiny(with_cls_token=True),
                            (32, 32)),
            'S16x4': Case('S 16x4 (tiny stand-in, 4x32x32)',
                          _tiny(video=True, with_cls_token=True, img_size=(4, 32, 32)),
                          (4, 32, 32)),
        }
    return {
        'T': Case('T 224', 'tiny', (224, 224), 'mvitv2_tiny'),
        'B': Case('B 224', 'base', (224, 224), 'mvitv2_base'),
        'B-in21k': Case('B-in21k 224 (cls token)', 'base-in21k', (224, 224)),
        'S16x4': Case('S 16x4', 'small-16x4', (16, 224, 224), torchvision_named=True),
    }


def attn_impls() -> Tuple[str, ...]:
    from mmvit_plugin.models import mvitv2
    return tuple(getattr(mvitv2, 'ATTN_IMPLS', ('auto', 'onednn', 'sdpa', 'math', 'plain')))


REFERENCE_IMPL = 'plain'


def build_ours(case: Case, attn_impl: str, out_type: str, out_indices=-1):
    from mmvit_plugin.models.mvitv2 import MViTv2
    return MViTv2(case.arch, img_size=case.size, out_type=out_type, out_indices=out_indices,
                  drop_path_rate=0.0, attn_impl=attn_impl)


def randomise_(model, seed: int) -> None:
    """Random weights of a realistic scale: unit-ish activations through the depth, LayerNorm
    gains near 1 and relative-position tables whose q.R terms are about as large as q.k."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            leaf = name.rsplit('.', 1)[-1]
            if 'rel_pos' in leaf:
                param.copy_(noise / math.sqrt(param.shape[-1]))
            elif param.dim() == 1 and leaf == 'weight':  # LayerNorm gains
                param.copy_(1 + 0.1 * noise)
            elif leaf == 'bias':
                param.copy_(0.02 * noise)
            elif param.dim() >= 2 and leaf == 'weight':
                param.copy_(noise / math.sqrt(param[0].numel()))
            else:  # cls token
                param.copy_(0.5 * noise)


class Classifier(torch.nn.Module):
    """A backbone and a linear head; ``pick`` turns the backbone's output into features."""

    def __init__(self, backbone, dim: int, num_classes: int, pick: Callable) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(dim, num_classes)
        self.pick = pick

    def forward(self, x):
        return self.head(self.pick(self.backbone(x)))


def _first(out):
    return out[0]


def _mean_featmap(out):
    return out[-1].flatten(2).mean(-1)


def _cls_of_pair(out):
    return out[-1][1]


def stage_depths(spec) -> Tuple[int, int, int, int]:
    starts = (0,) + tuple(spec.stage_starts) + (spec.depth,)
    return tuple(b - a for a, b in zip(starts, starts[1:]))


def timm_cfg(spec):
    from timm.models.mvitv2 import MultiScaleVitCfg
    return MultiScaleVitCfg(depths=stage_depths(spec), embed_dim=spec.embed_dim,
                            num_heads=spec.num_heads, expand_attn=spec.dim_mul_in_att,
                            use_cls_token=spec.with_cls_token)


def torchvision_blocks(case: Case):
    from torchvision.models.video.mvit import MSBlockConfig

    from mmvit_plugin.core.arch import block_specs
    spec = case.spec
    return [MSBlockConfig(num_heads=b.num_heads, input_channels=b.dim_in,
                          output_channels=b.dim_out, kernel_q=list(spec.pool_kernel),
                          kernel_kv=list(spec.pool_kernel), stride_q=list(b.q_stride),
                          stride_kv=list(b.kv_stride))
            for b in block_specs(spec, case.size)]


def build_peer(kind: str, case: Case):
    """A peer model producing logits like our Classifier, and its checkpoint format name."""
    import warnings
    spec = case.spec
    mm_arch = dict(embed_dims=spec.embed_dim, num_layers=spec.depth, num_heads=spec.num_heads,
                   downscale_indices=list(spec.stage_starts))
    final_dim = spec.embed_dim * 8
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if kind == 'mmpretrain':
            from mmpretrain.models.backbones.mvit import MViT
            backbone = MViT(arch=mm_arch, img_size=case.size[0], out_scales=[3],
                            dim_mul_in_attention=spec.dim_mul_in_att)
            return Classifier(backbone, final_dim, case.num_classes, _mean_featmap), 'mmpretrain'
        if kind == 'mmaction2':
            from mmaction.models.backbones.mvit import MViT
            backbone = MViT(arch=mm_arch, spatial_size=case.size[1], temporal_size=case.size[0],
                            dim_mul_in_attention=spec.dim_mul_in_att)
            return Classifier(backbone, final_dim, case.num_classes, _cls_of_pair), 'mmaction2'
        if kind == 'timm':
            from timm.models.mvitv2 import MultiScaleVit
            return MultiScaleVit(timm_cfg(spec), img_size=case.size,
                                 num_classes=case.num_classes), 'timm'
        if kind == 'torchvision':
            from torchvision.models.video.mvit import MViT
            model = MViT(spatial_size=case.size[1:], temporal_size=case.size[0],
                         block_setting=torchvision_blocks(case), residual_pool=True,
                         residual_with_cls_embed=False, rel_pos_embed=True,
                         proj_after_attn=True, dropout=0.0, stochastic_depth_prob=0.0,
                         num_classes=case.num_classes)
            return model, 'torchvision'
    raise ValueError(f'unknown peer {kind!r}')


def peer_label(kind: str, case: Case) -> str:
    names = {'mmpretrain': 'mmpretrain MViT', 'mmaction2': 'mmaction2 MViT',
             'timm': f'timm {case.timm_name or "MultiScaleVit"}',
             'torchvision': 'torchvision mvit_v2_s' if case.torchvision_named
             else 'torchvision MViT'}
    return names[kind]


def build_ours_classifier(case: Case, attn_impl: str = 'auto'):
    out_type = 'cls_token' if case.cls else 'avg_featmap'
    backbone = build_ours(case, attn_impl, out_type)
    return Classifier(backbone, backbone.num_features, case.num_classes, _first)


def canonical_state(classifier) -> dict:
    """Our classifier's weights in the converter's canonical layout (backbone + head)."""
    from mmvit_plugin.checkpoint.formats import HEAD_PREFIX
    state = dict(classifier.backbone.state_dict())
    state[HEAD_PREFIX + 'weight'] = classifier.head.weight.detach().clone()
    state[HEAD_PREFIX + 'bias'] = classifier.head.bias.detach().clone()
    return state


def load_into_peer(peer, fmt: str, canonical: dict) -> None:
    """Our weights into a peer through the project's converter (strict: every key used)."""
    from mmvit_plugin.checkpoint import from_canonical
    state = from_canonical(canonical, fmt)
    if fmt in ('mmpretrain', 'mmaction2'):
        backbone = {k[len('backbone.'):]: v for k, v in state.items()
                    if k.startswith('backbone.')}
        head = {k.rsplit('.', 1)[-1]: v for k, v in state.items()
                if not k.startswith('backbone.')}
        peer.backbone.load_state_dict(backbone, strict=True)
        peer.head.load_state_dict(head, strict=True)
    else:
        peer.load_state_dict(state, strict=True)


# Section: env -----------------------------------------------------------------------------------

def section_env(sec: Section, args) -> None:
    device = torch.device(args.device)
    sec.row('machine', key='python', value=f'{platform.python_version()} ({sys.executable})')
    sec.row('machine', key='torch', value=f'{torch.__version__} (CUDA {torch.version.cuda}, '
            f'cuDNN {torch.backends.cudnn.version()})')
    sec.row('machine', key='cpu', value=f'{cpu_name()}, {os.cpu_count()} logical cores')
    sec.row('machine', key='load (1, 5, 15 min)', value=load_text())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        sec.row('machine', key='gpu', value=f'{props.name}, {props.total_memory / 2 ** 30:.0f} '
                f'GiB, capability {props.major}.{props.minor}, {props.multi_processor_count} SMs')
        sec.row('machine', key='bf16 supported', value=str(torch.cuda.is_bf16_supported()))
        with contextlib.suppress(Exception):
            smi = subprocess.run(['nvidia-smi', '--query-gpu=driver_version,clocks.sm,'
                                  'clocks.max.sm,power.draw,temperature.gpu',
                                  '--format=csv,noheader'], capture_output=True, text=True,
                                 timeout=20)
            sec.row('machine', key='nvidia-smi (driver, sm clock, max sm clock, power, temp)',
                    value=smi.stdout.strip() or smi.stderr.strip())
    else:
        sec.row('machine', key='gpu', value='none: torch.cuda.is_available() is False '
                '(every CUDA-only figure below is reported as skipped)')
    missing = []
    for module, dist in NEEDED_MODULES:
        try:
            mod = __import__(module)
            version = getattr(mod, '__version__', '?')
            sec.row('packages', module=module, distribution=dist, version=version,
                    where=osp.dirname(getattr(mod, '__file__', '') or ''))
        except Exception as error:  # noqa: BLE001  (any import failure is what we report)
            missing.append(dist)
            sec.row('packages', module=module, distribution=dist, version='MISSING',
                    where=short_error(error))
    try:
        import mmvit_plugin  # noqa: F401
        sec.row('packages', module='mmvit_plugin', distribution='this repo', version='ok',
                where=osp.dirname(mmvit_plugin.__file__))
    except Exception as error:  # noqa: BLE001
        missing.append('mmvit_plugin')
        sec.row('packages', module='mmvit_plugin', distribution='this repo',
                version='NOT IMPORTABLE', where=short_error(error))
    if missing:
        sec.note('MISSING: ' + ', '.join(missing) + ' (carry their wheels in .whl/: '
                 'bash tools/gpu_wheels.sh)')
    size = 256 if args.dry_run else 8192
    if device.type == 'cuda' or args.dry_run:
        rate = matmul_rate(device, size)
        sec.row('matmul', what=f'bf16 {size}^3 on random data, mean of 10 after 3 warm-ups',
                device=args.device, tflops=rate / 1e12)


# Section: correctness ----------------------------------------------------------------------------

def out_type_for(case: Case) -> str:
    return 'featmap_and_cls' if case.cls else 'featmap'


@dataclass
class Reference:
    state: dict
    x: object
    cotangents: list
    outs: list
    grad_x: object
    grads: Dict[str, object]


def reference(case: Case, device, batch: int, seed: int = 0) -> Reference:
    """Float64 outputs and gradients of the reference path, all four stages' outputs."""
    model = build_ours(case, REFERENCE_IMPL, out_type_for(case), out_indices=(0, 1, 2, 3))
    randomise_(model, seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model = model.to(device=device, dtype=torch.float64).train()
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn((batch, 3) + tuple(case.size), generator=gen, dtype=torch.float64)
    x = x.to(device).requires_grad_()
    outs = flatten(model(x))
    cotangents = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(device)
                  for o in outs]
    sum((o * g).sum() for o, g in zip(outs, cotangents)).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return Reference(state, x.detach(), cotangents, [o.detach() for o in outs],
                     x.grad.detach().clone(), grads)


def compare_to_reference(model, ref: Reference, device, precision: str,
                         sdpa_backends=None) -> dict:
    """Relative errors of one model (fp32 weights) in ``precision`` against the reference."""
    model.train()
    model.zero_grad(set_to_none=True)
    x = ref.x.float().requires_grad_()
    kernel_ctx = contextlib.nullcontext()
    if sdpa_backends is not None:
        from torch.nn.attention import sdpa_kernel
        kernel_ctx = sdpa_kernel(sdpa_backends)
    with kernel_ctx:
        with autocast_for(device, precision):
            outs = flatten(model(x))
        loss = sum((o.float() * g.float()).sum() for o, g in zip(outs, ref.cotangents))
        loss.backward()
        model.eval()
        with torch.no_grad(), autocast_for(device, precision):
            outs_eval = flatten(model(ref.x.float()))
        model.train()
    names = [n for n, _ in model.named_parameters()]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p)
             for _, p in model.named_parameters()]
    rel_pos = [i for i, n in enumerate(names) if 'rel_pos' in n]
    # The parameter whose gradient error is the largest part of the total (a bad kernel shows
    # here by name; biases of k get zero gradient in exact arithmetic, so no per-tensor ratio).
    worst = max(range(len(names)), key=lambda i: float(
        (grads[i].double() - ref.grads[names[i]]).square().sum()))
    return {
        'worst_param': names[worst],
        'out': rel_err(outs, ref.outs),
        'out_eval': rel_err(outs_eval, ref.outs),
        'grad_x': rel_err([x.grad], [ref.grad_x]),
        'grad_params': rel_err(grads, [ref.grads[n] for n in names]),
        'grad_rel_pos': rel_err([grads[i] for i in rel_pos], [ref.grads[names[i]]
                                                               for i in rel_pos]),
    }


ERROR_KEYS = ('out', 'out_eval', 'grad_x', 'grad_params', 'grad_rel_pos')


def within(err: float, tol: float, floor: Optional[float]) -> bool:
    """Within the tolerance, or within FLOOR_FACTOR of the reference path's own error in the
    same precision, when that floor is itself sane (under 5x the tolerance)."""
    if err < tol:
        return True
    return floor is not None and floor < 5 * tol and err <= FLOOR_FACTOR * floor


def precisions_for(device) -> List[str]:
    return ['fp32', 'tf32', 'bf16', 'fp16']


def section_correctness(sec: Section, args) -> None:
    device = torch.device(args.device)
    impls = attn_impls()
    sec.note(f'attn_impl values: {impls}; reference: {REFERENCE_IMPL!r} in float64; errors are '
             '||out - ref|| / ||ref|| over all four stage outputs (and the cls token), the input '
             'gradient, all parameter gradients, and the relative-position tables\' gradients; '
             f'an error also passes within {FLOOR_FACTOR:g}x of the reference path\'s own '
             'error in the same precision (plain_out / plain_grad), if that is under 5x the '
             'tolerance')
    all_cases = cases(args.dry_run)
    batch = 2
    for key in ('T', 'B-in21k', 'S16x4'):
        case = all_cases[key]
        if sec.left() < 5:
            sec.row('errors', arch=case.label, impl='*', precision='*',
                    status='skipped: section budget spent')
            continue
        start = time.monotonic()
        ref = reference(case, device, 1 if case.video else batch)
        sec.note(f'{case.label}: float64 reference in {time.monotonic() - start:.1f} s')
        floors: Dict[str, dict] = {}
        for impl in [REFERENCE_IMPL] + [i for i in impls if i != REFERENCE_IMPL]:
            try:
                model = build_ours(case, impl, out_type_for(case), out_indices=(0, 1, 2, 3))
            except Exception as error:  # noqa: BLE001
                sec.row('errors', arch=case.label, impl=impl, status=short_error(error))
                continue
            model.load_state_dict(ref.state)
            model.to(device)
            for precision in precisions_for(device):
                tol = TOLERANCES[precision]
                fields = dict(arch=case.label, impl=impl, precision=precision,
                              expected=EXPECTED[precision], tol=tol)
                if precision == 'tf32' and device.type != 'cuda':
                    sec.row('errors', **fields, status='skipped: no CUDA (TF32 is a CUDA '
                            'matmul/conv mode)')
                    continue
                if sec.left() < 2:
                    sec.row('errors', **fields, status='skipped: section budget spent')
                    continue
                set_tf32(precision == 'tf32')
                try:
                    errs = compare_to_reference(model, ref, device, precision)
                except Exception as error:  # noqa: BLE001
                    sec.row('errors', **fields, status='error: ' + short_error(error))
                    continue
                finally:
                    set_tf32(False)
                if impl == REFERENCE_IMPL:
                    floors[precision] = errs
                floor = floors.get(precision, {})
                ok = all(within(errs[k], tol, floor.get(k)) for k in ERROR_KEYS)
                sec.row('errors', **fields, out=errs['out'], out_eval=errs['out_eval'],
                        grad_x=errs['grad_x'], grad_params=errs['grad_params'],
                        grad_rel_pos=errs['grad_rel_pos'], worst_param=errs['worst_param'],
                        plain_out=floor.get('out'), plain_grad=floor.get('grad_params'),
                        status='pass' if ok else 'FAIL')
            del model
        del ref
        if device.type == 'cuda':
            torch.cuda.empty_cache()


# Section: flash ---------------------------------------------------------------------------------

SDPA_OP_BACKENDS = (('flash', 'flash'), ('efficient', 'efficient'), ('cudnn', 'cudnn'),
                    ('math', 'math'))


def sdpa_backend_of(op_name: str) -> Optional[str]:
    """'flash', 'efficient', 'cudnn' or 'math' for an aten SDPA implementation op, else None."""
    name = op_name.lower()
    if not name.startswith('aten::_') or 'backward' in name:
        return None
    if 'scaled_dot_product' not in name and 'attention' not in name:
        return None
    for needle, backend in SDPA_OP_BACKENDS:
        if needle in name:
            return backend
    return None


def sdpa_calls(step: Callable[[], None]) -> List[dict]:
    """Every SDPA implementation op one step runs: backend, query and key shapes."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    calls = []
    for event in prof.events():
        backend = sdpa_backend_of(event.name)
        if backend is None:
            continue
        shapes = [tuple(s) for s in (event.input_shapes or []) if s]
        calls.append({'op': event.name, 'backend': backend,
                      'q': shapes[0] if shapes else None,
                      'k': shapes[1] if len(shapes) > 1 else None})
    return calls


def count_ops(step: Callable[[], None], needle: str) -> Tuple[int, int]:
    """(forward, backward) ops whose name contains ``needle`` in one step."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    fwd = bwd = 0
    for event in prof.events():
        name = event.name.lower()
        if needle in name and name.startswith('aten::_'):
            if 'backward' in name:
                bwd += 1
            else:
                fwd += 1
    return fwd, bwd


def stage_query_tokens(case: Case) -> Dict[int, int]:
    """Number of patch-token queries of each stage -> its stage (1-4)."""
    spec = case.spec
    grid = [s // p for s, p in zip(case.size, spec.patch_stride)]
    out = {}
    for stage in range(4):
        out[math.prod(grid)] = stage + 1  # stages counted from 1, as in the paper
        grid = [g // q for g, q in zip(grid, spec.q_stride)]
    return out


def time_call(fn: Callable[[], None], device, reps: int, warmup: int = 2) -> float:
    """Median seconds of ``fn`` over ``reps`` timed calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


def section_flash(sec: Section, args) -> None:
    from torch.nn.attention import SDPBackend
    device = torch.device(args.device)
    all_cases = cases(args.dry_run)
    if device.type != 'cuda':
        sec.note('no CUDA: the flash kernel below is PyTorch\'s CPU flash attention '
                 '(same sdpa_kernel API); the CUDA flash kernel itself is not exercised')

    # 1. Flash forced: bf16 forward and backward run and match the float64 reference.
    for key in ('T', 'B-in21k', 'S16x4'):
        case = all_cases[key]
        if sec.left() < 10:
            sec.row('flash_forced', arch=case.label, status='skipped: section budget spent')
            continue
        try:
            ref = reference(case, device, 1 if case.video else 2, seed=3)
            model = build_ours(case, 'sdpa', out_type_for(case), out_indices=(0, 1, 2, 3))
            model.load_state_dict(ref.state)
            model.to(device)
            floor_model = build_ours(case, REFERENCE_IMPL, out_type_for(case),
                                     out_indices=(0, 1, 2, 3))
            floor_model.load_state_dict(ref.state)
            floor = compare_to_reference(floor_model.to(device), ref, device, 'bf16')
            errs = compare_to_reference(model, ref, device, 'bf16',
                                        sdpa_backends=[SDPBackend.FLASH_ATTENTION])
            from torch.nn.attention import sdpa_kernel

            def step():
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), autocast_for(device, 'bf16'):
                    out = flatten(model(ref.x.float()))
                sum(o.float().sum() for o in out).backward()
            fwd, bwd = count_ops(step, 'flash')
            ok = fwd > 0 and bwd > 0 and all(
                within(errs[k], TOLERANCES['bf16'], floor[k]) for k in ERROR_KEYS)
            sec.row('flash_forced', arch=case.label, out=errs['out'], grad_x=errs['grad_x'],
                    grad_params=errs['grad_params'], grad_rel_pos=errs['grad_rel_pos'],
                    worst_param=errs['worst_param'],
                    plain_bf16_out=floor['out'], plain_bf16_grad=floor['grad_params'],
                    flash_ops_fwd=fwd, flash_ops_bwd=bwd, tol=TOLERANCES['bf16'],
                    status='pass' if ok else 'FAIL')
        except Exception as error:  # noqa: BLE001
            sec.row('flash_forced', arch=case.label, status='error: ' + short_error(error))

    # 2. What SDPA picks by itself, per stage, under our attn_impl='auto' (training and
    # inference, bf16 autocast), at the T training batch.
    case = all_cases['T']
    batch = args.flash_batch
    stage_of = stage_query_tokens(case)
    shapes_by_stage: Dict[int, Tuple[tuple, tuple]] = {}
    try:
        model = build_ours(case, 'auto', 'featmap')
        randomise_(model, 5)
        model.to(device)
        x = torch.randn((batch, 3) + tuple(case.size), device=device)

        def train_step():
            with autocast_for(device, 'bf16'):
                out = model(x)[0]
            out.float().square().mean().backward()

        def infer_step():
            with torch.no_grad(), autocast_for(device, 'bf16'):
                model(x)
        for mode, step in (('train', train_step), ('inference', infer_step)):
            model.train(mode == 'train')
            step()  # warm-up
            calls = sdpa_calls(step)
            if not calls:
                sec.row('auto_pick', mode=mode, stage='-', backend='no SDPA call seen '
                        '(auto chose another kernel)')
            seen = set()
            for call in calls:
                q, k = call['q'], call['k']
                stage = stage_of.get(q[-2] if q else -1, '?')
                if (stage, q, k) in seen:
                    continue
                seen.add((stage, q, k))
                if mode == 'train' and isinstance(stage, int):
                    shapes_by_stage.setdefault(stage, (q, k))
                sec.row('auto_pick', mode=mode, stage=stage, q=str(q), k=str(k),
                        backend=call['backend'], op=call['op'])
    except Exception as error:  # noqa: BLE001
        sec.row('auto_pick', mode='*', stage='*', backend='error: ' + short_error(error))

    # 3. Each backend timed on each stage's shapes (bf16); the ports' way (an additive bias of
    # the unextended q.k, which rules flash out) beside it.
    backends = [('flash', SDPBackend.FLASH_ATTENTION), ('efficient',
                SDPBackend.EFFICIENT_ATTENTION), ('cudnn', SDPBackend.CUDNN_ATTENTION),
                ('math', SDPBackend.MATH)]
    reps = 3 if args.dry_run else 20
    head_dim = case.spec.embed_dim // case.spec.num_heads
    from torch.nn.attention import sdpa_kernel
    F = torch.nn.functional
    for stage in sorted(shapes_by_stage):
        q_shape, k_shape = shapes_by_stage[stage]
        if sec.left() < 3:
            sec.row('backend_times', stage=stage, backend='*', status='skipped: budget')
            continue
        variants = [(name, backend, False) for name, backend in backends]
        variants += [('efficient + bias (ports)', SDPBackend.EFFICIENT_ATTENTION, True),
                     ('math + bias (ports)', SDPBackend.MATH, True)]
        for name, backend, with_bias in variants:
            row = dict(stage=stage, backend=name, q=str(q_shape), k=str(k_shape))
            try:
                if with_bias:  # q, k at the head width; the (Nq, Nk) bias materialised
                    qs = q_shape[:-1] + (head_dim,)
                    ks = k_shape[:-1] + (head_dim,)
                else:
                    qs, ks = q_shape, k_shape
                row.update(q=str(qs), k=str(ks))
                q = torch.randn(qs, device=device, dtype=torch.bfloat16, requires_grad=True)
                k = torch.randn(ks, device=device, dtype=torch.bfloat16, requires_grad=True)
                v = torch.randn(ks, device=device, dtype=torch.bfloat16, requires_grad=True)
                bias = (torch.randn(qs[:-1] + (ks[-2],), device=device, dtype=torch.bfloat16)
                        if with_bias else None)

                def fwd():
                    with sdpa_kernel([backend]), torch.no_grad():
                        F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

                def fwd_bwd():
                    with sdpa_kernel([backend]):
                        F.scaled_dot_product_attention(q, k, v, attn_mask=bias).sum().backward()
                row['fwd_ms'] = time_call(fwd, device, reps) * 1e3
                row['fwd_bwd_ms'] = time_call(fwd_bwd, device, reps) * 1e3
                row['status'] = 'ok'
            except Exception as error:  # noqa: BLE001
                row['status'] = 'not available: ' + short_error(error).split('\n')[0][:160]
            sec.row('backend_times', **row)
            if device.type == 'cuda':
                torch.cuda.empty_cache()


# Section: speed ---------------------------------------------------------------------------------

@dataclass
class Group:
    """Models compared on one input: ours and the peers, one mode."""
    key: str  # e.g. img-T
    case: Case
    peers: Tuple[str, ...]
    modes: Dict[str, int]  # mode -> batch


def speed_groups(dry: bool) -> List[Group]:
    c = cases(dry)
    b = (lambda n: 2) if dry else (lambda n: n)
    return [
        Group('img-T', c['T'], ('timm', 'mmpretrain'), {'inference': b(256), 'train': b(128)}),
        Group('vid-S', c['S16x4'], ('mmaction2', 'torchvision'), {'train': b(8)}),
        Group('img-B', c['B'], ('timm', 'mmpretrain'), {'inference': b(256)}),
    ]


def speed_jobs(groups: List[Group]) -> List[Tuple[str, str, str]]:
    """(group, mode, eager|compiled) in priority order: every eager figure first."""
    jobs = [(g.key, m, 'eager') for g in groups for m in g.modes]
    return jobs + [(g.key, m, 'compiled') for g in groups for m in g.modes]


DRY_SPEED_JOBS = (('img-T', 'inference', 'eager'), ('img-T', 'train', 'eager'),
                  ('vid-S', 'train', 'eager'), ('img-T', 'inference', 'compiled'),
                  ('img-T', 'train', 'compiled'))


def count_flops(step: Callable[[], None]) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def make_step(model, x, labels, device, mode: str,
              precision: str = 'bf16') -> Callable[[], float]:
    if mode == 'inference':
        def infer() -> float:
            with torch.inference_mode(), autocast_for(device, precision):
                model(x)
            return 0.0
        return infer
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    F = torch.nn.functional

    def train() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        optimizer.step()
        return loss.detach()
    return train


def peak_step_memory(step: Callable, device) -> Optional[float]:
    if device.type != 'cuda':
        return None
    sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 30


class SpeedBench:
    """Builds each group's models once (identical weights), then runs timing jobs."""

    def __init__(self, sec: Section, args) -> None:
        self.sec, self.args = sec, args
        self.device = torch.device(args.device)
        self.built: Dict[str, Dict[str, object]] = {}
        self.flops: Dict[Tuple[str, str], Tuple[int, str]] = {}
        self.peak = None

    def models(self, group: Group) -> Dict[str, object]:
        if group.key in self.built:
            return self.built[group.key]
        case = group.case
        ours = build_ours_classifier(case)
        randomise_(ours, 11)
        canonical = canonical_state(ours)
        models = {'ours': ours}
        check_x = torch.randn((2, 3) + tuple(case.size), generator=torch.Generator()
                              .manual_seed(12)).to(self.device)
        set_tf32(False)
        with torch.no_grad():
            ref = ours.to(self.device).eval()(check_x)
        for kind in group.peers:
            label = peer_label(kind, case)
            try:
                peer, fmt = build_peer(kind, case)
                load_into_peer(peer, fmt, canonical)
                peer.to(self.device).eval()
                with torch.no_grad():
                    err = rel_err([peer(check_x)], [ref])
            except Exception as error:  # noqa: BLE001
                self.sec.row('output_check', group=group.key, model=label,
                             status='skipped: ' + short_error(error))
                continue
            ok = err < 1e-4
            self.sec.row('output_check', group=group.key, model=label,
                         rel_err_vs_ours_fp32=err, tol=1e-4,
                         status='same function: timed' if ok else 'DIFFERENT: not timed')
            if ok:
                models[kind] = peer
        self.built[group.key] = models
        return models

    def compile(self, model):
        return torch.compile(model, backend=self.args.compile_backend)

    def run_job(self, group: Group, mode: str, variant: str) -> None:
        sec, device = self.sec, self.device
        batch = group.modes[mode]
        case = group.case
        base = self.models(group)
        gen = torch.Generator().manual_seed(21)
        x = torch.randn((batch, 3) + tuple(case.size), generator=gen).to(device)
        labels = torch.randint(0, case.num_classes, (batch,), generator=gen).to(device)
        names = {'ours': 'ours (mmvit MViTv2)'}
        names.update({k: peer_label(k, case) for k in base if k != 'ours'})

        if (group.key, mode) not in self.flops:
            counted_on = next((k for k in base if k != 'ours'), 'ours')
            model = copy.deepcopy(base[counted_on]).train(mode == 'train')
            # Counted in fp32 (FLOPs do not depend on the dtype; some peers' einsum fails
            # under CPU bf16 autocast).
            step = make_step(model, x, labels, device, mode, precision='fp32')
            self.flops[(group.key, mode)] = (count_flops(step), names[counted_on])
            del model
        flops, counted_on = self.flops[(group.key, mode)]

        steps, compile_s, first_loss = {}, {}, {}
        for kind, model in base.items():
            model = copy.deepcopy(model).train(mode == 'train')
            if variant == 'compiled':
                model = self.compile(model)
            step = make_step(model, x, labels, device, mode)
            begin = time.perf_counter()
            try:
                loss = step()
                sync(device)
            except Exception as error:  # noqa: BLE001
                sec.row('speed', group=group.key, mode=mode, batch=batch, variant=variant,
                        model=names[kind], status='error: ' + short_error(error))
                continue
            compile_s[kind] = time.perf_counter() - begin
            first_loss[kind] = float(loss)
            steps[kind] = step
        if not steps:
            return
        warmup, iters = self.args.warmup, self.args.iters
        for _ in range(warmup):
            for step in steps.values():
                step()
        times: Dict[str, List[float]] = {k: [] for k in steps}
        order = list(steps)
        for i in range(iters):
            for kind in (order if i % 2 == 0 else order[::-1]):
                sync(device)
                begin = time.perf_counter()
                steps[kind]()
                sync(device)
                times[kind].append(time.perf_counter() - begin)
        memory = {k: peak_step_memory(s, device) for k, s in steps.items()} \
            if mode == 'train' else {}
        ours_t = statistics.median(times['ours']) if 'ours' in times else None
        for kind in order:
            t = statistics.median(times[kind])
            rate = flops / t
            row = dict(group=group.key, arch=case.label, mode=mode, batch=batch,
                       variant=variant, model=names[kind], ms=t * 1e3,
                       per_s=batch / t, tflops=rate / 1e12)
            if self.peak:
                row['share_of_bf16_peak'] = rate / self.peak
            if ours_t is not None and kind != 'ours':
                row['ours_speedup'] = t / ours_t  # > 1: ours is faster
            if kind in memory and memory[kind] is not None:
                row['train_peak_GiB'] = memory[kind]
            if variant == 'compiled':
                row['first_call_s'] = compile_s[kind]
            if mode == 'train':
                row['first_loss'] = first_loss[kind]
            row['flops_counted_on'] = counted_on
            sec.row('speed', **row)
        if case.timm_name == 'mvitv2_tiny' and mode == 'inference' and 'timm' in times:
            timm_rate = batch / statistics.median(times['timm'])
            sec.row('anchor', variant=variant, published=TIMM_ANCHOR,
                    published_timm_per_s=TIMM_ANCHOR_FIGURES[variant],
                    timm_here_per_s=timm_rate, ours_here_per_s=batch / ours_t,
                    device=self.args.device_name)
        del steps
        if device.type == 'cuda':
            torch.cuda.empty_cache()


def section_speed(sec: Section, args) -> None:
    device = torch.device(args.device)
    peak_size = 256 if args.dry_run else 8192
    bench = SpeedBench(sec, args)
    bench.peak = matmul_rate(device, peak_size)
    sec.note(f'bf16 matmul rate ({peak_size}^3, random data): {bench.peak / 1e12:.4g} TFLOP/s; '
             'share_of_bf16_peak = counted FLOPs per step / step time / that rate')
    sec.note(f'bf16 autocast everywhere; compile = torch.compile(backend='
             f'{args.compile_backend!r}); AdamW lr 1e-4, cross-entropy on random labels; '
             f'{args.iters} timed steps per model after {args.warmup} warm-up, alternating')
    groups = {g.key: g for g in speed_groups(args.dry_run)}
    wanted = None
    if args.dry_run and not args.speed_jobs:
        # B runs the same code as T, and video compiled the same as image compiled.
        wanted = set(DRY_SPEED_JOBS)
    if args.speed_jobs:
        wanted = {tuple(j.split(':')) for j in args.speed_jobs.split(',') if j}
    # Rough seconds a job needs; a job that does not fit in what is left is skipped.
    need = {'eager': 8, 'compiled': 45}
    if args.dry_run:
        need = {'eager': 1, 'compiled': 2}
    for key, mode, variant in speed_jobs(list(groups.values())):
        if wanted is not None and (key, mode, variant) not in wanted:
            continue
        if sec.left() < need[variant]:
            sec.row('speed', group=key, mode=mode, variant=variant,
                    status=f'skipped: {sec.left():.0f} s of the section budget left '
                    f'(rerun with --sections speed --speed-jobs {key}:{mode}:{variant})')
            continue
        try:
            bench.run_job(groups[key], mode, variant)
        except Exception as error:  # noqa: BLE001
            sec.row('speed', group=key, mode=mode, variant=variant,
                    status='error: ' + short_error(error))
            traceback.print_exc()
    again = matmul_rate(device, peak_size)
    sec.note(f'bf16 matmul rate again at the end: {again / 1e12:.4g} TFLOP/s')


# Section: tools ---------------------------------------------------------------------------------

FASHION_FILES = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                 't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')


def find_fashion_src(given: Optional[str]) -> Optional[str]:
    candidates = [given, os.environ.get('FASHION_MNIST_SRC'),
                  osp.join(ROOT, '.whl', 'fashion-mnist'), '/usr/share/datasets/fashion-mnist']
    for path in candidates:
        if path and all(osp.isfile(osp.join(path, f)) for f in FASHION_FILES):
            return path
    return None


def write_idx_gz(path: str, array) -> None:
    """An IDX file of unsigned bytes (the format the converter reads), gzipped."""
    header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + struct.pack(
        f'>{array.ndim}I', *array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype('uint8').tobytes())


def fashion_subset(src: str, dst: str, per_split: Dict[str, int]) -> str:
    """The first N real images of each official split, as IDX .gz files under the official
    names, so the converter runs unchanged on a small real subset."""
    sys.path.insert(0, osp.join(ROOT, 'tools', 'data'))
    from prepare_fashion_mnist import FILES, load_split
    os.makedirs(dst, exist_ok=True)
    for split, count in per_split.items():
        images, labels = load_split(src, split)
        image_file, label_file = FILES[split]
        write_idx_gz(osp.join(dst, image_file), images[:count])
        write_idx_gz(osp.join(dst, label_file), labels[:count])
    return dst


def run_logged(cmd: List[str], log_path: str, timeout: float, env=None) -> Tuple[int, str, float]:
    """Run ``cmd`` from the repo root, echoing and logging its output; (rc, text, seconds)."""
    begin = time.monotonic()
    full_env = dict(os.environ, PYTHONUNBUFFERED='1')
    full_env['PYTHONPATH'] = ROOT + os.pathsep + full_env.get('PYTHONPATH', '')
    if env:
        full_env.update(env)
    print('$ ' + ' '.join(cmd), flush=True)
    lines = []
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                if re.search(r'Epoch\(|accuracy|mixed precision|finished|backend|Error|rror:',
                             line):
                    print('    ' + line.rstrip()[:300], flush=True)
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(cmd, timeout)
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            proc.wait()
            rc = 124
    return rc, ''.join(lines), time.monotonic() - begin


def parse_training_log(text: str) -> dict:
    found = {}
    amp = re.findall(r'mixed precision: [^\n]*', text)
    if amp:
        found['amp'] = amp[-1].strip()
    top1 = re.findall(r'accuracy/top1: ([0-9.]+)', text)
    if top1:
        found['val_top1'] = float(top1[-1])
    test_top1 = re.findall(r'top-1: ([0-9.]+)%', text)
    if test_top1:
        found['test_top1'] = float(test_top1[-1])
    secs = re.findall(r'training finished in ([0-9.]+) s', text)
    if secs:
        found['train_s'] = float(secs[-1])
    backend = re.findall(r"backend['\"]?\s*[=:]\s*['\"](\w+)['\"]", text)
    if backend:
        found['dist_backend'] = backend[-1]
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def section_tools(sec: Section, args) -> None:
    work = osp.join(args.work, 'tools')
    os.makedirs(work, exist_ok=True)
    src = find_fashion_src(args.fashion_src)
    if src is None:
        sec.row('tools', step='data', status='skipped: no Fashion-MNIST .gz files (carry them '
                'in .whl/fashion-mnist: bash tools/gpu_wheels.sh)')
        return
    data = osp.join(work, 'fashion_mnist')
    val_size = '5000'
    if args.dry_run:
        # every class in train
        src = fashion_subset(src, osp.join(work, 'fashion_subset'), {'train': 80, 'test': 10})
        val_size = '10'
    rc, text, secs = run_logged([sys.executable, 'tools/data/prepare_fashion_mnist.py',
                                 '--src', src, '--out', data, '--val-size', val_size],
                                osp.join(work, 'prepare.log'), max(10.0, sec.left() - 5))
    sec.row('tools', step='prepare Fashion-MNIST', seconds=secs, rc=rc,
            result=(re.findall(r'done: [^\n]*|already holds[^\n]*', text) or [text[-200:]])[-1],
            status='ok' if rc == 0 else 'FAIL')
    if rc != 0:
        return
    config = 'configs/quickstart_image.py'
    roots = [f'{split}_dataloader.dataset.data_root={data}' for split in ('train', 'val', 'test')]
    extra = []
    if args.dry_run:  # one short epoch on the subset
        extra = ['train_cfg.max_epochs=1', 'train_dataloader.batch_size=8',
                 'val_dataloader.batch_size=10', 'test_dataloader.batch_size=10',
                 'default_hooks.logger.interval=1']
    # One compute thread per tool process (as tools/quickstart.sh): on a shared CPU, spinning
    # OpenMP threads made every step several times slower.
    tool_env = {'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1')}
    gpu = torch.cuda.is_available()

    # 1. tools/train.py --amp, end to end, then tools/test.py on the official test split.
    train_dir = osp.join(work, 'train')
    shutil.rmtree(train_dir, ignore_errors=True)
    budget = sec.left()
    rc, text, secs = run_logged(
        [sys.executable, 'tools/train.py', config, '--amp', '--work-dir', train_dir,
         '--cfg-options'] + roots + extra, osp.join(work, 'train.log'),
        max(10.0, budget * (0.55 if gpu else 0.5)), env=tool_env)
    found = parse_training_log(text)
    sec.row('tools', step='tools/train.py configs/quickstart_image.py --amp', seconds=secs,
            rc=rc, device='cuda' if gpu else 'cpu', amp=found.get('amp'),
            val_top1=found.get('val_top1'), train_s=found.get('train_s'),
            status='ok' if rc == 0 else ('TIMEOUT' if rc == 124 else 'FAIL: ' +
                                         text[-300:].replace('\n', ' ')))
    last = osp.join(train_dir, 'last_checkpoint')
    if rc == 0 and osp.isfile(last):
        with open(last) as f:
            checkpoint = f.read().strip()
        rc, text, secs = run_logged(
            [sys.executable, 'tools/test.py', config, checkpoint, '--work-dir',
             osp.join(train_dir, 'test'), '--cfg-options'] + roots + extra[1:],
            osp.join(work, 'test.log'), max(10.0, sec.left() * 0.3), env=tool_env)
        found = parse_training_log(text)
        sec.row('tools', step='tools/test.py (official test split)', seconds=secs, rc=rc,
                test_top1=found.get('test_top1'), status='ok' if rc == 0 else 'FAIL: ' +
                text[-300:].replace('\n', ' '))

    # 2. tools/dist_train.sh with one process (NCCL on a GPU, gloo without), one epoch.
    dist_dir = osp.join(work, 'dist')
    shutil.rmtree(dist_dir, ignore_errors=True)
    one_epoch = [o for o in extra if not o.startswith('train_cfg.max_epochs')] + [
        'train_cfg.max_epochs=1']
    rc, text, secs = run_logged(
        ['bash', 'tools/dist_train.sh', config, '1', '--amp', '--work-dir', dist_dir,
         '--cfg-options'] + roots + one_epoch, osp.join(work, 'dist_train.log'),
        max(10.0, sec.left() - 3), env=dict(tool_env, PORT=str(free_port())))
    found = parse_training_log(text)
    want = 'nccl' if gpu else 'gloo'
    backend = found.get('dist_backend')
    sec.row('tools', step='tools/dist_train.sh configs/quickstart_image.py 1 --amp (1 epoch)',
            seconds=secs, rc=rc, dist_backend=backend, amp=found.get('amp'),
            val_top1=found.get('val_top1'),
            status=('ok' if backend == want else f'ran, but backend {backend!r} (want {want})')
            if rc == 0 else ('TIMEOUT' if rc == 124 else 'FAIL: ' +
                             text[-300:].replace('\n', ' ')))
    if not gpu:
        sec.note('no CUDA: NCCL not exercised; dist_train.sh ran one process over gloo, and '
                 '--amp used the CPU bfloat16 path')


# Driver -----------------------------------------------------------------------------------------

SECTION_FUNCS = {'env': section_env, 'correctness': section_correctness,
                 'flash': section_flash, 'speed': section_speed, 'tools': section_tools}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='folder for gpu_check.{md,json}')
    parser.add_argument('--dry-run', action='store_true',
                        help='CPU, tiny archs, batch 2, one iteration, compile with the '
                        "'eager' backend: every section end to end in about a minute")
    parser.add_argument('--device', default=None, help='default: cuda (cpu with --dry-run)')
    parser.add_argument('--sections', default=','.join(SECTIONS),
                        help=f'comma-separated subset of {",".join(SECTIONS)}')
    parser.add_argument('--budget', action='append', default=[], metavar='SECTION=SECONDS',
                        help='override a section budget, e.g. --budget speed=300')
    parser.add_argument('--speed-jobs', default='',
                        help='only these speed jobs, e.g. img-T:train:compiled,vid-S:train:eager')
    parser.add_argument('--iters', type=int, default=None, help='timed steps (default 10; 1 '
                        'dry)')
    parser.add_argument('--warmup', type=int, default=None, help='untimed steps after the first')
    parser.add_argument('--flash-batch', type=int, default=None,
                        help='batch of the per-stage SDPA shapes (default 128; 2 dry)')
    parser.add_argument('--compile-backend', default=None,
                        help="torch.compile backend (default inductor; 'eager' dry)")
    parser.add_argument('--fashion-src', default=None,
                        help='folder of the four Fashion-MNIST .gz files (default: '
                        '$FASHION_MNIST_SRC, .whl/fashion-mnist, /usr/share/datasets/...)')
    parser.add_argument('--work', default=None,
                        help='scratch folder (default /tmp/gpu_check_work)')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.device = args.device or ('cpu' if dry else 'cuda')
    args.iters = args.iters if args.iters is not None else (1 if dry else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if dry else 2)
    args.flash_batch = args.flash_batch or (2 if dry else 128)
    args.compile_backend = args.compile_backend or ('eager' if dry else 'inductor')
    args.work = args.work or '/tmp/gpu_check_work'
    budgets = dict(DRY_BUDGETS if dry else DEFAULT_BUDGETS)
    for item in args.budget:
        name, _, value = item.partition('=')
        if name not in SECTIONS or not value:
            parser.error(f'--budget {item!r}: expected SECTION=SECONDS with SECTION in '
                         f'{SECTIONS}')
        budgets[name] = float(value)
    args.budgets = budgets
    args.section_list = [s for s in args.sections.split(',') if s]
    bad = set(args.section_list) - set(SECTIONS)
    if bad:
        parser.error(f'--sections: unknown {sorted(bad)}; choose from {SECTIONS}')
    return args


def child_main(args) -> int:
    """Run one section in this process (started by the parent with a timeout)."""
    name = args.child
    args.device_name = (torch.cuda.get_device_name(0) if args.device.startswith('cuda')
                        and torch.cuda.is_available() else f'{cpu_name()} (CPU)')
    sec = Section(name, osp.join(args.work, f'{name}.json'), args.budgets[name])
    if args.device.startswith('cuda') and not torch.cuda.is_available() and name != 'env':
        sec.note('skipped: no CUDA (torch.cuda.is_available() is False); run with --dry-run '
                 'for the CPU rehearsal')
        sec.finish('skipped: no CUDA')
        return 0
    torch.manual_seed(0)
    if args.dry_run:
        torch.set_num_threads(1)
    try:
        SECTION_FUNCS[name](sec, args)
    except Exception:  # noqa: BLE001
        sec.finish('error', traceback.format_exc())
        traceback.print_exc()
        return 1
    statuses = [str(r.get('status', 'ok')) for rows in sec.data['tables'].values()
                for r in rows]
    failed = any(s.startswith(('FAIL', 'error', 'DIFFERENT', 'TIMEOUT')) for s in statuses)
    skipped = any(s.startswith('skipped') for s in statuses)
    sec.finish('FAIL' if failed else 'partial' if skipped else 'ok')
    return 0


def merge(args, started: str) -> dict:
    import torch
    report = {'started': started, 'torch': torch.__version__,
              'device': (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                         else f'{cpu_name()} (no CUDA)'),
              'mode': 'dry run (CPU, tiny sizes)' if args.dry_run else 'full',
              'sections': {}}
    for name in args.section_list:
        path = osp.join(args.work, f'{name}.json')
        if osp.isfile(path):
            with open(path) as f:
                report['sections'][name] = json.load(f)
    return report


def write_report(args, report: dict) -> None:
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'gpu_check.json'), 'w') as f:
        json.dump(report, f, indent=1)
    with open(osp.join(args.out, 'gpu_check.md'), 'w') as f:
        f.write(render_markdown(report))


def parent_main(args, argv) -> int:
    started = time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())
    os.makedirs(args.work, exist_ok=True)
    for name in args.section_list:
        with contextlib.suppress(FileNotFoundError):
            os.remove(osp.join(args.work, f'{name}.json'))
    child_argv = [a for a in (argv if argv is not None else sys.argv[1:])]
    failures = 0
    unused = 0.0
    for name in args.section_list:
        budget = args.budgets[name]
        if name in ROLLOVER_TO:
            budget, unused = budget + unused, 0.0
        print(f'\n===== section {name} (budget {budget:.0f} s) =====', flush=True)
        cmd = [sys.executable, osp.abspath(__file__)] + child_argv + [
            '--budget', f'{name}={budget}', '--child', name]
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        begin = time.monotonic()
        try:
            proc = subprocess.run(cmd, env=env, timeout=budget + GRACE_S)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = 124
        unused += max(0.0, budget - (time.monotonic() - begin))
        path = osp.join(args.work, f'{name}.json')
        if rc != 0:
            failures += 1
            data = {'name': name, 'budget_s': budget, 'tables': {}, 'notes': []}
            if osp.isfile(path):
                with open(path) as f:
                    data = json.load(f)
            data['status'] = ('killed after its budget (rows so far kept)' if rc == 124
                              else f'crashed (exit {rc}; rows so far kept)')
            data['seconds'] = round(time.monotonic() - begin, 1)
            with open(path, 'w') as f:
                json.dump(data, f, indent=1)
        write_report(args, merge(args, started))
    report = merge(args, started)
    write_report(args, report)
    print('\n===== summary =====')
    for name, sec in report['sections'].items():
        print(f'{name:12s} {sec.get("status")} ({sec.get("seconds", "?")} s of '
              f'{sec.get("budget_s")} s)')
    print(f'tables: {osp.join(args.out, "gpu_check.md")}; figures: '
          f'{osp.join(args.out, "gpu_check.json")}')
    return 1 if failures else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    return parent_main(args, argv)


if __name__ == '__main__':
    sys.exit(main())
