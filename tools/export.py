"""Export the model of a config to ONNX and TorchScript, each checked against PyTorch.

    python tools/export.py configs/mvitv2_t_imagenet.py --checkpoint model.pth
    python tools/export.py configs/mvitv2_s_16x4_k400.py --shape 16 224 224 --batch 2
    python tools/export.py CONFIG --formats onnx torchscript --attn-impl plain

Exports backbone + head (logits; the data preprocessor's normalisation is not included, as in
tools/get_flops.py) to OUT_DIR: ``model.onnx`` (static shapes), ``model_dynamic_batch.onnx``,
``model_dynamic_hw.onnx`` (dynamic batch, height and width: any side from the arch's total
stride + 1, so that every stage keeps at least 2 cells, up to 4096; a clear refusal where the
exporter cannot keep them symbolic) and ``model_traced.pt`` (TorchScript by tracing). Each
file is run (onnxruntime / torch.jit.load) on random inputs and compared with the PyTorch
model: dynamic files also at other batches or sizes. Prints the max abs difference per export
and PASS/FAIL at --tolerance (1e-4, fp32); exits non-zero if any export fails. ONNX uses the
dynamo exporter (``torch.onnx.export(dynamo=True)``; needs onnx, onnxscript and
onnxruntime). Without --checkpoint the weights are random (seeded), which tests the graph just
as well.
"""
import argparse
import logging
import os
import os.path as osp
import sys
import time
import warnings
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn

TOOLS = osp.dirname(osp.abspath(__file__))
if TOOLS not in sys.path:  # the sibling tools' helpers (also when this file is loaded by path)
    sys.path.insert(0, TOOLS)

from analysis.common import randomise  # noqa: E402
from convert_checkpoint import build_model_from_config  # noqa: E402
from get_flops import _BackboneAndHead  # noqa: E402

FORMATS = ('onnx', 'onnx-dynamic-batch', 'onnx-dynamic-hw', 'torchscript')
FILE_NAMES = {'onnx': 'model.onnx', 'onnx-dynamic-batch': 'model_dynamic_batch.onnx',
              'onnx-dynamic-hw': 'model_dynamic_hw.onnx', 'torchscript': 'model_traced.pt'}
DEFAULT_OPSET = 18


class ExportRefused(Exception):
    """This export cannot be made for this model (the message says why); not a failure."""


class Result(NamedTuple):
    fmt: str
    status: str  # 'PASS', 'FAIL' or 'REFUSED'
    max_diff: Optional[float]
    detail: str


# Model ---------------------------------------------------------------------------------------

def load_weights(model: nn.Module, path: str, trusted: bool = False) -> None:
    """Every checkpoint format the plugin reads, through its safe reader (weights only unless
    ``trusted``), converted to the model's keys and loaded strictly."""
    from mmvit_plugin.checkpoint import (
        UnsafeCheckpointError,
        convert_checkpoint_for_model,
        load_checkpoint_file,
        unwrap_checkpoint,
    )
    if not osp.isfile(path):
        raise SystemExit(f'error: checkpoint {path!r} does not exist')
    try:
        obj = load_checkpoint_file(path, trusted=trusted)
    except UnsafeCheckpointError as error:
        raise SystemExit(f'error: {error} (tools/export.py: pass --trust-checkpoint for a file '
                         'from a source you trust)') from None
    report = convert_checkpoint_for_model(obj, model, source=path, logger='silent')
    state = obj['state_dict'] if report is not None else unwrap_checkpoint(obj, path)[0]
    model.load_state_dict(state, strict=True)


def build_exportable(config: str, checkpoint: Optional[str] = None, trusted: bool = False,
                     attn_impl: Optional[str] = None, seed: int = 0
                     ) -> Tuple[nn.Module, nn.Module]:
    """(backbone + head in eval mode, the backbone) of ``config``, weights from ``checkpoint``
    or random ones drawn from ``seed``."""
    model = build_model_from_config(config)
    backbone = model.backbone
    if not hasattr(backbone, 'set_attn_impl'):
        raise SystemExit(f'error: {config}: the backbone is {type(backbone).__name__}, not '
                         'MViTv2')
    if checkpoint:
        load_weights(model, checkpoint, trusted)
    else:
        randomise(model, seed)
    if attn_impl is not None:
        backbone.set_attn_impl(attn_impl)
    return _BackboneAndHead(model).eval(), backbone


def other_input_shapes(shape: Sequence[int], fmt: str,
                       backbone: nn.Module) -> List[Tuple[int, ...]]:
    """More valid input shapes for a dynamic export: one more item, or (dynamic H/W) each
    spatial side grown by the coarsest stride, so every stage's grid changes, and a
    non-square size that no stride divides (pooled grids of uneven ratios)."""
    shape = tuple(shape)
    if fmt == 'onnx-dynamic-batch':
        return [(shape[0] + 1,) + shape[1:]]
    (height, width), (step_h, step_w) = shape[-2:], backbone.arch.reduction[-2:]
    return [shape[:-2] + (height + step_h, width + step_w),
            shape[:-2] + (height + step_h // 2 + 1, width)]


# Exports -------------------------------------------------------------------------------------

def min_dynamic_side(backbone: nn.Module) -> Tuple[int, int]:
    """Smallest height and width a dynamic-H/W export accepts: the last stage keeps at least
    2 cells (torch.export fixes any size that is 1 in a shape it traces)."""
    return tuple(factor + 1 for factor in backbone.arch.reduction[-2:])


def _dynamic_shapes(fmt: str, backbone: nn.Module) -> Optional[dict]:
    if fmt == 'onnx':
        return None
    dims = {0: torch.export.Dim('batch', min=1, max=1024)}
    if fmt == 'onnx-dynamic-hw':
        first = 3 if backbone.video else 2
        min_h, min_w = min_dynamic_side(backbone)
        dims[first] = torch.export.Dim('height', min=min_h, max=4096)
        dims[first + 1] = torch.export.Dim('width', min=min_w, max=4096)
    return {'x': dims}


def _check_dynamic_hw(module: nn.Module, x: torch.Tensor, dynamic_shapes: dict) -> None:
    """Refuse before writing a file: given dims it cannot keep symbolic, the ONNX exporter
    falls back to a static graph without an error."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            torch.export.export(module, (x,), dynamic_shapes=dynamic_shapes)
    except Exception as error:  # torch raises UserError / ConstraintViolationError here
        first = next((line.strip() for line in str(error).splitlines()
                      if 'Not all values' in line), str(error).splitlines()[0])
        raise ExportRefused(
            'dynamic height/width cannot be exported for this model: torch.export cannot keep '
            f'H and W symbolic ({first[:300]}...). Export one ONNX file per input size with '
            '--shape (static or dynamic batch).') from None


def export_onnx(module: nn.Module, x: torch.Tensor, path: str, fmt: str, backbone: nn.Module,
                opset: int = DEFAULT_OPSET) -> None:
    dynamic_shapes = _dynamic_shapes(fmt, backbone)
    if fmt == 'onnx-dynamic-hw':
        _check_dynamic_hw(module, x, dynamic_shapes)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')
        program = torch.onnx.export(module, (x,), dynamo=True, input_names=['x'],
                                    output_names=['logits'], opset_version=opset,
                                    dynamic_shapes=dynamic_shapes, verbose=False)
    program.save(path)


def onnx_runner(path: str, fmt: str, video: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    shape = session.get_inputs()[0].shape
    wanted = {'onnx': (), 'onnx-dynamic-batch': (0,),
              'onnx-dynamic-hw': (0, len(shape) - 2, len(shape) - 1)}[fmt]
    static = [i for i in wanted if not isinstance(shape[i], str)]
    if static:
        raise RuntimeError(f'{path}: input dims {static} came out static ({shape}); the '
                           'exporter did not keep them dynamic')
    name = session.get_inputs()[0].name
    return lambda t: torch.from_numpy(session.run(None, {name: t.numpy()})[0])


def export_torchscript(module: nn.Module, x: torch.Tensor, path: str) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # tracer warnings about Python ints from shapes
        traced = torch.jit.trace(module, (x,), check_trace=False)
    traced.save(path)


def torchscript_runner(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch.jit.load's deprecation notice
        loaded = torch.jit.load(path, map_location='cpu').eval()

    def run(t: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return loaded(t)
    return run


# Checks --------------------------------------------------------------------------------------

def max_abs_diff(module: nn.Module, run: Callable[[torch.Tensor], torch.Tensor],
                 shapes: Sequence[Tuple[int, ...]], seed: int) -> float:
    """Largest |export - PyTorch| over fresh random inputs of each shape."""
    gen = torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(shape, generator=gen)
        with torch.no_grad():
            expected = module(x)
        got = run(x)
        if got.shape != expected.shape:
            raise RuntimeError(f'output shape {tuple(got.shape)} != PyTorch '
                               f'{tuple(expected.shape)} for input {shape}')
        worst = max(worst, float((got - expected).abs().max()))
    return worst


def export_and_check(module: nn.Module, backbone: nn.Module, shape: Sequence[int], fmt: str,
                     out_dir: str, tolerance: float, opset: int = DEFAULT_OPSET,
                     seed: int = 0) -> Result:
    path = osp.join(out_dir, FILE_NAMES[fmt])
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    example, shapes = shape, [shape]
    if fmt in ('onnx-dynamic-batch', 'onnx-dynamic-hw'):
        # torch.export specialises a dim whose example is 1, so a dynamic batch is traced
        # with at least 2 items (and checked at the requested batch and at one more), and
        # dynamic sides with at least 2 cells in the last stage.
        example = (max(shape[0], 2),) + shape[1:]
        if fmt == 'onnx-dynamic-hw':
            smallest = min_dynamic_side(backbone)
            example = example[:-2] + tuple(max(s, m) for s, m in zip(example[-2:], smallest))
            shapes = [s for s in shapes if all(a >= m for a, m in zip(s[-2:], smallest))]
            shapes.append(example)
        shapes = list(dict.fromkeys(shapes + other_input_shapes(example, fmt, backbone)))
    x = torch.randn(example, generator=gen)
    try:
        if fmt == 'torchscript':
            export_torchscript(module, x, path)
            run = torchscript_runner(path)
        else:
            export_onnx(module, x, path, fmt, backbone, opset)
            run = onnx_runner(path, fmt, backbone.video)
        diff = max_abs_diff(module, run, shapes, seed)
    except ExportRefused as why:
        return Result(fmt, 'REFUSED', None, str(why))
    except Exception as error:  # any exporter/runtime error is this export's failure
        return Result(fmt, 'FAIL', None, f'{type(error).__name__}: '
                      f'{str(error).strip().splitlines()[0][:300]}')
    shown = ', '.join('x'.join(map(str, s)) for s in shapes)
    status = 'PASS' if diff <= tolerance else 'FAIL'
    return Result(fmt, status, diff, f'{path} (inputs {shown})')


# Command line ----------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from mmvit_plugin.models.mvitv2 import ATTN_IMPLS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='model config file')
    parser.add_argument('--checkpoint', help='weights to export (any format the plugin reads); '
                        'default: random weights')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow full unpickling of --checkpoint (runs any code it '
                        'contains); only for files from a source you trust that need it')
    parser.add_argument('--out-dir', help='default: work_dirs/export/<config name>')
    parser.add_argument('--shape', type=int, nargs='+',
                        help="H W (image) or T H W (video); default: the backbone's img_size")
    parser.add_argument('--batch', type=int, default=1, help='batch of the exported input')
    parser.add_argument('--formats', nargs='+', choices=FORMATS, default=list(FORMATS))
    parser.add_argument('--attn-impl', choices=ATTN_IMPLS,
                        help="attention implementation to export (default: the config's); "
                        'every one exports to standard ops')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET)
    parser.add_argument('--tolerance', type=float, default=1e-4,
                        help='largest max abs difference that passes (fp32)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f'--batch must be >= 1, got {args.batch}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # torch logs every guard it could not build (the refused dynamic dims) as a traceback;
    # the result line already says why.
    logging.getLogger('torch._guards').setLevel(logging.CRITICAL)
    if any(fmt.startswith('onnx') for fmt in args.formats):
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as error:
            raise SystemExit(f'error: ONNX export needs onnx, onnxscript and onnxruntime '
                             f"({error}); pip install -e '.[tools]' or choose --formats "
                             'torchscript') from None
    module, backbone = build_exportable(args.config, args.checkpoint, args.trust_checkpoint,
                                        args.attn_impl, args.seed)
    size = tuple(args.shape) if args.shape else tuple(backbone.img_size)
    if len(size) != (3 if backbone.video else 2):
        raise SystemExit(f'error: --shape {size}: this {"video" if backbone.video else "image"} '
                         f'model needs {"T H W" if backbone.video else "H W"}')
    shape = (args.batch, backbone.in_channels) + size
    try:
        with torch.no_grad():
            module(torch.zeros(shape))
    except ValueError as error:  # e.g. an input too small for the geometry
        raise SystemExit(f'error: {error}') from None
    out_dir = args.out_dir or osp.join(
        'work_dirs', 'export', osp.splitext(osp.basename(args.config))[0])
    os.makedirs(out_dir, exist_ok=True)
    print(f'{args.config}: {"video" if backbone.video else "image"} model, '
          f'attn_impl={backbone.attn_impl!r}, input {"x".join(map(str, shape))}, '
          f'{"checkpoint " + args.checkpoint if args.checkpoint else "random weights"}',
          flush=True)
    results = []
    for fmt in args.formats:
        start = time.time()
        result = export_and_check(module, backbone, shape, fmt, out_dir, args.tolerance,
                                  args.opset, args.seed)
        diff = '-' if result.max_diff is None else f'{result.max_diff:.2e}'
        print(f'{fmt:<20} {result.status:<8} max abs diff {diff:<9} '
              f'({time.time() - start:.0f} s) {result.detail}', flush=True)
        results.append(result)
    failed = [r.fmt for r in results if r.status == 'FAIL']
    passed = sum(r.status == 'PASS' for r in results)
    print(f'{passed} passed, {len(failed)} failed, '
          f'{sum(r.status == "REFUSED" for r in results)} refused (tolerance '
          f'{args.tolerance:g})' + (f': FAILED {", ".join(failed)}' if failed else ''))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
