"""Extract MViTv2 features from images or videos: one feature file per input.

    python tools/extract_features.py CONFIG CHECKPOINT INPUT OUT_DIR
        [--stages S [S ...]] [--pool avg|cls|none] [--views avg|keep]
        [--num-clips N] [--crops 0|1|3|5|10] [--workers N] [--format npy|pkl]
        [--batch-size B] [--device DEV] [--trust-checkpoint] [--cfg-options key=value ...]

INPUT is an image or video file, a folder (searched recursively for images and videos), or a
list file (.txt: one path per line, relative to the list's folder; mmaction2's
``path label`` lines work, the label is ignored). CONFIG's test pipeline prepares every input;
its views are the clips x crops of a video (``--num-clips`` sets SampleFrames' clips) or the
crops of an image. ``--crops N`` takes N crops of the pipeline's crop size where its crop step
(CenterCrop, ThreeCrop or TenCrop) takes its own: 1 = the centre, 3 = along the long side (as
mmaction2's ThreeCrop), 5 = the corners and the centre, 10 = those and their mirror images;
0 (default) keeps the pipeline's own cropping.

Per input, OUT_DIR gets ``<path relative to INPUT>.npy`` (one stage) or ``.npz`` (several,
keys ``stage<i>``), or ``.pkl`` with ``--format pkl`` (a dict stage -> array), and
``OUT_DIR/index.pkl`` lists every input with its file, shapes and views. Shapes, with V views
and C channels of the stage: ``--pool avg`` (mean of the stage's patch tokens) and ``cls``
(the cls token) give (C,), ``none`` gives the feature map (C, [T,] H, W); ``--views keep``
adds a leading V. Every stage's output passes a LayerNorm, as the backbone's own outputs do; a
stage the checkpoint has no norm for (a classifier keeps the last stage's only) is normalised
without a learned scale, and the tool says so.

``--workers N`` runs N processes (forked), each on its share of the inputs (every N-th), each
with its own model; the files are the same as with one process. The checkpoint is read with
the project's weights-only loader; ``--trust-checkpoint`` allows full unpickling (runs any code
in the file: only for files you trust).
"""
import argparse
import copy
import logging
import multiprocessing
import os
import os.path as osp
import pickle
import sys
import time
from typing import Dict, List, Sequence, Tuple

import cv2  # noqa: F401  (before decord: decord first breaks cv2's PNG reading)
import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import Compose
from mmengine.logging import MMLogger

import mmvit_plugin  # noqa: F401  (registers the plugin)
from mmvit_plugin.apis import build_config_model
from mmvit_plugin.checkpoint import load_checkpoint_file

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from demo_common import DemoError as ToolError  # noqa: E402  (one error type for the tools)
from demo_common import (  # noqa: E402
    is_video_config,
    load_config,
    test_pipeline_of,
)

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.ppm', '.pgm', '.tif', '.tiff', '.webp')
VIDEO_EXTS = ('.mp4', '.avi', '.mkv', '.mov', '.webm', '.m4v', '.mpg', '.mpeg', '.flv')
LIST_EXTS = ('.txt', '.list', '.lst')
POOLS = ('avg', 'cls', 'none')
CROPS = (0, 1, 3, 5, 10)
CROP_STEPS = ('CenterCrop', 'ThreeCrop', 'TenCrop')
INDEX = 'index.pkl'


# Config and model -------------------------------------------------------------------------

def read_state_dict(checkpoint: str, trusted: bool) -> Dict[str, torch.Tensor]:
    """The model weights of an mmengine checkpoint (or a bare state dict), read weights-only
    unless ``trusted``."""
    if not osp.isfile(checkpoint):
        raise ToolError(f'checkpoint {checkpoint!r} does not exist')
    try:
        obj = load_checkpoint_file(checkpoint, trusted=trusted)
    except RuntimeError as err:  # unsafe or damaged file: the message says which and why
        raise ToolError(str(err)) from err
    state = obj.get('state_dict', obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor)
                                              for v in state.values()):
        raise ToolError(f'checkpoint {checkpoint!r} holds no state dict of tensors')
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}


def build_model(cfg: Config, checkpoint: str, device: str = 'cpu', trusted: bool = False,
                optional: Sequence[str] = ()) -> Tuple[torch.nn.Module, List[str]]:
    """The model of ``cfg`` with the checkpoint's weights, in eval mode, and the keys it
    lacked.

    The load is strict except for keys starting with one of ``optional`` (modules the tool
    added to or removed from the config): the model's stay at their initial values when the
    checkpoint lacks them, the checkpoint's are left out when the model has no such module.
    """
    model = build_config_model(cfg)
    state = read_state_dict(checkpoint, trusted)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes differ: another arch or modality
        lines = [line.strip() for line in str(err).splitlines() if 'size mismatch' in line]
        raise ToolError(f'checkpoint {checkpoint!r} does not fit the model of the config: '
                        f'{len(lines)} tensors have other shapes, first: {lines[:2]}; is it '
                        'the checkpoint of another arch or modality?') from None
    lacking = [k for k in missing if k.startswith(tuple(optional))]
    missing = [k for k in missing if k not in lacking]
    unexpected = [k for k in unexpected if not k.startswith(tuple(optional))]
    if missing or unexpected:
        raise ToolError(
            f'checkpoint {checkpoint!r} does not fit the model of the config: '
            f'{len(missing)} missing keys (first: {missing[:3]}), {len(unexpected)} unexpected '
            f'(first: {unexpected[:3]}); convert it with tools/convert_checkpoint.py SRC DST '
            '--config CONFIG')
    return model.to(device).eval(), lacking


# Inputs -------------------------------------------------------------------------------------

def list_inputs(source: str) -> Tuple[List[str], str]:
    """The input files of a file, folder or list file, and the folder output names are
    relative to."""
    if osp.isdir(source):
        found = []
        for root, dirs, files in os.walk(source):
            dirs.sort()
            found += [osp.join(root, name) for name in sorted(files)
                      if name.lower().endswith(IMAGE_EXTS + VIDEO_EXTS)]
        if not found:
            raise ToolError(f'folder {source!r} holds no image ({", ".join(IMAGE_EXTS)}) or '
                            f'video ({", ".join(VIDEO_EXTS)}) files')
        return found, source
    if not osp.isfile(source):
        raise ToolError(f'input {source!r} does not exist')
    if source.lower().endswith(LIST_EXTS):
        root = osp.dirname(osp.abspath(source))
        with open(source, encoding='utf-8') as f:
            paths = [line.split()[0] for line in f if line.strip()]
        if not paths:
            raise ToolError(f'list file {source!r} names no inputs')
        paths = [p if osp.isabs(p) else osp.join(root, p) for p in paths]
        absent = [p for p in paths if not osp.isfile(p)]
        if absent:
            raise ToolError(f'list file {source!r}: {len(absent)} entries do not exist '
                            f'(first: {absent[0]!r}); relative paths are read from {root}')
        return paths, root
    return [source], osp.dirname(osp.abspath(source))


def check_kind(path: str, video: bool) -> None:
    ext = osp.splitext(path)[1].lower()
    if video and ext in IMAGE_EXTS:
        raise ToolError(f'{path!r} is an image but the config is a video model')
    if not video and ext in VIDEO_EXTS:
        raise ToolError(f'{path!r} is a video but the config is an image model')


def crop_boxes(height: int, width: int, crop_h: int, crop_w: int,
               crops: int) -> List[Tuple[int, int, bool]]:
    """Top-left corners (y, x) and mirror flags of ``crops`` views of an image."""
    if crop_h > height or crop_w > width:
        raise ToolError(f'crop {crop_w}x{crop_h} is larger than the resized image '
                        f'{width}x{height}')
    cy, cx = (height - crop_h) // 2, (width - crop_w) // 2
    if crops == 1:
        corners = [(cy, cx)]
    elif crops == 3:  # along the long side, as mmaction2's ThreeCrop
        corners = ([(cy, 0), (cy, cx), (cy, width - crop_w)] if width >= height
                   else [(0, cx), (cy, cx), (height - crop_h, cx)])
    else:
        corners = [(0, 0), (0, width - crop_w), (height - crop_h, 0),
                   (height - crop_h, width - crop_w), (cy, cx)]
    boxes = [(y, x, False) for y, x in corners]
    if crops == 10:
        boxes += [(y, x, True) for y, x in corners]
    return boxes


def _crop_size(step: dict) -> Tuple[int, int]:
    """(height, width) of a crop step's ``crop_size`` (an int or mmcv's (w, h))."""
    size = step['crop_size']
    return (size, size) if isinstance(size, int) else (int(size[1]), int(size[0]))


class MultiCrop:
    """The test pipeline with its crop step (CenterCrop, ThreeCrop or TenCrop) replaced by
    ``crops`` crops of the same size (0: the pipeline as it is); calling it on an input gives
    the views' tensors, (V, C, [T,] H, W) uint8, V = crops x clips, crop-major as mmaction2's
    ThreeCrop orders them."""

    def __init__(self, pipeline: List[dict], crops: int, video: bool) -> None:
        self.crops, self.video = crops, video
        if not crops:
            self.whole = Compose(pipeline)
            return
        where = [i for i, step in enumerate(pipeline) if step.get('type') in CROP_STEPS]
        if not where:
            raise ToolError(f'--crops {crops}: the config\'s test pipeline has no crop step '
                            f'({", ".join(CROP_STEPS)}) to take the crops at (its steps: '
                            f'{[s.get("type") for s in pipeline]})')
        self.crop_h, self.crop_w = _crop_size(pipeline[where[0]])
        self.before = Compose(pipeline[:where[0]])
        self.after = Compose(pipeline[where[0] + 1:])

    def __call__(self, results: dict) -> torch.Tensor:
        if not self.crops:
            inputs = self.whole(results)['inputs']
            return inputs if self.video else inputs[None]
        resized = self.before(results)
        key = 'imgs' if self.video else 'img'
        frames = resized[key] if self.video else [resized[key]]
        height, width = frames[0].shape[:2]
        views = []
        for y, x, flip in crop_boxes(height, width, self.crop_h, self.crop_w, self.crops):
            cropped = [np.ascontiguousarray(f[y:y + self.crop_h, x:x + self.crop_w]
                                            [:, ::-1 if flip else 1]) for f in frames]
            value = cropped if self.video else cropped[0]
            out = self.after(dict(resized, **{key: value}, img_shape=cropped[0].shape[:2]))
            views.append(out['inputs'] if self.video else out['inputs'][None])
        return torch.cat(views)


def video_pipeline(pipeline: List[dict], num_clips: int) -> List[dict]:
    """The test pipeline with ``num_clips`` clips (0: as configured)."""
    pipeline = copy.deepcopy(pipeline)
    if num_clips:
        samplers = [s for s in pipeline if s.get('type') == 'SampleFrames']
        if not samplers:
            raise ToolError('--num-clips: the config\'s test pipeline has no SampleFrames')
        samplers[0]['num_clips'] = num_clips
    return pipeline


def load_views(views: MultiCrop, path: str) -> torch.Tensor:
    """An input's views through the test pipeline, (V, C, [T,] H, W) uint8 (images in the
    channel order the pipeline loads them, videos RGB)."""
    if not views.video:
        return views(dict(img_path=path))
    from mmvit_plugin.datasets.video_folder import explain_unreadable, probe_video
    if probe_video(path) is not None:
        raise ToolError(f'video {path!r} cannot be read: {explain_unreadable(path)}')
    return views(dict(filename=path, label=-1, start_index=0, modality='RGB'))


def normalise(model: torch.nn.Module, views: torch.Tensor, video: bool) -> torch.Tensor:
    """The model's data preprocessor applied to the views: float (V, C, [T,] H, W)."""
    if video:
        return model.data_preprocessor(dict(inputs=[views], data_samples=None),
                                       False)['inputs'][0]
    return model.data_preprocessor(dict(inputs=list(views)), False)['inputs']


# Features -----------------------------------------------------------------------------------

class Extractor:
    """A model set up to give the chosen stages' features, and the input preparation."""

    def __init__(self, cfg: Config, checkpoint: str, stages: Sequence[int], pool: str,
                 views: str = 'avg', num_clips: int = 0, crops: int = 0, batch_size: int = 8,
                 device: str = 'cpu', trusted: bool = False) -> None:
        cfg = copy.deepcopy(cfg)
        self.video = is_video_config(cfg)
        if pool not in POOLS:
            raise ToolError(f'--pool {pool!r}: choose one of {POOLS}')
        if crops not in CROPS:
            raise ToolError(f'--crops {crops}: choose one of {CROPS} (0: as the config)')
        if not self.video and num_clips:
            raise ToolError('--num-clips is for video configs; this is an image model')
        backbone = cfg.model.backbone
        if backbone.get('type') not in ('MViTv2', 'mmvit.MViTv2'):
            raise ToolError(f'the config\'s backbone is {backbone.get("type")!r}, not MViTv2')
        bad = [s for s in stages if not -4 <= int(s) < 4]
        if bad:
            raise ToolError(f'--stages {bad}: MViTv2 has stages 0-3 (or -4..-1 from the end)')
        self.stages = sorted({int(s) % 4 for s in stages})
        backbone.out_indices = self.stages
        backbone.out_type = 'featmap_and_cls' if pool == 'cls' else 'featmap'
        norms = {s: f'backbone.{"norm" if s == 3 else f"norm{s}"}.' for s in range(4)}
        try:
            self.model, lacking = build_model(cfg, checkpoint, device, trusted,
                                              optional=tuple(norms.values()))
        except ValueError as err:  # e.g. out_type='featmap_and_cls' without a cls token
            raise ToolError(f'--pool {pool}: {err}') from err
        self.untrained_norms = [s for s, prefix in norms.items()
                                if any(k.startswith(prefix) for k in lacking)]
        self.pool, self.keep_views, self.batch_size = pool, views == 'keep', batch_size
        self.device = device
        pipeline = test_pipeline_of(cfg)
        if self.video:
            pipeline = video_pipeline(pipeline, num_clips)
        self.multi_crop = MultiCrop(pipeline, crops, self.video)

    def views(self, path: str) -> torch.Tensor:
        check_kind(path, self.video)
        return load_views(self.multi_crop, path)

    @torch.no_grad()
    def __call__(self, path: str) -> Dict[int, np.ndarray]:
        """Features of one input: stage -> array."""
        inputs = normalise(self.model, self.views(path), self.video).to(self.device)
        per_stage: Dict[int, List[torch.Tensor]] = {s: [] for s in self.stages}
        for start in range(0, len(inputs), self.batch_size):
            outs = self.model.backbone(inputs[start:start + self.batch_size])
            for stage, out in zip(self.stages, outs):
                per_stage[stage].append(self._pooled(out))
        result = {}
        for stage, chunks in per_stage.items():
            feats = torch.cat(chunks)
            if not self.keep_views:
                feats = feats.mean(0)
            result[stage] = feats.float().cpu().numpy()
        return result

    def _pooled(self, out) -> torch.Tensor:
        if self.pool == 'cls':
            return out[1]
        featmap = out[0] if isinstance(out, (list, tuple)) else out
        if self.pool == 'avg':
            return featmap.flatten(2).mean(-1)
        return featmap


# Output -------------------------------------------------------------------------------------

def output_path(out_dir: str, path: str, root: str, fmt: str, num_stages: int) -> str:
    rel = osp.relpath(osp.abspath(path), osp.abspath(root))
    if rel.startswith('..'):  # list entries outside the list's folder
        rel = osp.basename(path)
    ext = '.pkl' if fmt == 'pkl' else '.npy' if num_stages == 1 else '.npz'
    return osp.join(out_dir, rel + ext)


def save_features(feats: Dict[int, np.ndarray], file: str, fmt: str) -> None:
    os.makedirs(osp.dirname(file) or '.', exist_ok=True)
    if fmt == 'pkl':
        with open(file, 'wb') as f:
            pickle.dump({f'stage{s}': a for s, a in feats.items()}, f)
    elif len(feats) == 1:
        np.save(file, next(iter(feats.values())))
    else:
        np.savez(file, **{f'stage{s}': a for s, a in feats.items()})


def run_share(args: argparse.Namespace, cfg: Config, paths: List[str], root: str,
              worker: int, workers: int) -> List[dict]:
    """Extract the features of every ``workers``-th input from ``worker`` on; index entries."""
    extractor = Extractor(cfg, args.checkpoint, args.stages, args.pool, args.views,
                          args.num_clips, args.crops, args.batch_size, args.device,
                          args.trust_checkpoint)
    if worker == 0 and extractor.untrained_norms:
        print(f'note: stage(s) {extractor.untrained_norms} have no norm in the checkpoint: '
              'their tokens are layer-normalised without a learned scale and shift',
              flush=True)
    entries = []
    for index in range(worker, len(paths), workers):
        path = paths[index]
        file = output_path(args.out_dir, path, root, args.format, len(extractor.stages))
        feats = extractor(path)
        save_features(feats, file, args.format)
        entries.append(dict(index=index, input=path, file=file,
                            shapes={f'stage{s}': tuple(a.shape) for s, a in feats.items()}))
        print(f'[{index + 1}/{len(paths)}] {path} -> {file} '
              f'{" ".join(str(tuple(a.shape)) for a in feats.values())}', flush=True)
    return entries


def _worker(args, cfg, paths, root, worker, workers, threads) -> None:
    torch.set_num_threads(threads)
    try:
        entries = run_share(args, cfg, paths, root, worker, workers)
    except ToolError as err:
        print(f'error (worker {worker}): {err}', file=sys.stderr, flush=True)
        os._exit(2)
    with open(osp.join(args.out_dir, f'.part{worker}.pkl'), 'wb') as f:
        pickle.dump(entries, f)


def run_workers(args, cfg, paths: List[str], root: str) -> List[dict]:
    """Forked processes, each with a share of the inputs; their index entries in input
    order."""
    workers = min(args.workers, len(paths))
    threads = args.threads or max(1, torch.get_num_threads() // workers)
    context = multiprocessing.get_context('fork')
    processes = [context.Process(target=_worker,
                                 args=(args, cfg, paths, root, w, workers, threads))
                 for w in range(workers)]
    for process in processes:
        process.start()
    failed = []
    for w, process in enumerate(processes):
        process.join()
        if process.exitcode != 0:
            failed.append(w)
    entries = []
    for w in range(workers):
        part = osp.join(args.out_dir, f'.part{w}.pkl')
        if osp.exists(part):
            with open(part, 'rb') as f:
                entries += pickle.load(f)
            os.remove(part)
    if failed:
        raise ToolError(f'worker(s) {failed} of {workers} failed (their errors are above)')
    return sorted(entries, key=lambda e: e['index'])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='model config (its test pipeline prepares the inputs)')
    parser.add_argument('checkpoint', help='weights (mmengine checkpoint of the config\'s model)')
    parser.add_argument('input', help='image/video file, folder, or list file (.txt)')
    parser.add_argument('out_dir', help='folder for the feature files and index.pkl')
    parser.add_argument('--stages', type=int, nargs='+', default=[-1],
                        help='backbone stages 0-3 (negative from the end), default: the last')
    parser.add_argument('--pool', choices=POOLS, default='avg',
                        help='avg: mean of the patch tokens; cls: the cls token; none: the '
                        'whole feature map')
    parser.add_argument('--views', choices=('avg', 'keep'), default='avg',
                        help='average the views (clips x crops) or keep them all')
    parser.add_argument('--num-clips', type=int, default=0,
                        help='video: clips per video (default: as the test pipeline)')
    parser.add_argument('--crops', type=int, default=0, choices=CROPS,
                        help='crops per clip/image at the test pipeline\'s crop size: 1 '
                        'centre, 3 along the long side, 5 corners and centre, 10 those and '
                        'mirrored (default 0: as the test pipeline crops)')
    parser.add_argument('--format', choices=('npy', 'pkl'), default='npy',
                        help='npy: .npy (one stage) / .npz (several); pkl: a dict per input')
    parser.add_argument('--workers', type=int, default=1, help='processes')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads per process (default: cores / workers)')
    parser.add_argument('--batch-size', type=int, default=8, help='views per forward pass')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow full unpickling of CHECKPOINT (runs any code it contains)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error('--workers must be >= 1')
    if args.batch_size < 1:
        parser.error('--batch-size must be >= 1')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    # mmaction2's decord loader logs FileClient deprecation notices on every call.
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    start = time.time()
    try:
        cfg = load_config(args.config, args.cfg_options)
        paths, root = list_inputs(args.input)
        os.makedirs(args.out_dir, exist_ok=True)
        if args.workers == 1:
            entries = run_share(args, cfg, paths, root, 0, 1)
        else:
            entries = run_workers(args, cfg, paths, root)
    except ToolError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    for entry in entries:
        del entry['index']
    meta = dict(config=args.config, checkpoint=args.checkpoint, stages=args.stages,
                pool=args.pool, views=args.views, num_clips=args.num_clips, crops=args.crops)
    with open(osp.join(args.out_dir, INDEX), 'wb') as f:
        pickle.dump(dict(meta=meta, inputs=entries), f)
    print(f'{len(entries)} feature files and {osp.join(args.out_dir, INDEX)} written in '
          f'{time.time() - start:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
