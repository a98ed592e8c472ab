"""Does 2D->3D initialisation help? The video quickstart trained from scratch and inflated.

    python tools/experiments/inflation.py [--out work_dirs/experiments/inflation]
        [--inits scratch center average] [--seeds 0 1 2] [--fractions 1.0 0.2 0.05]
        [--train-clips 1280] [--test-clips 1000] [--epochs 3] [--min-iters 120]
        [--image-ckpt PATH | --image-epochs 4 --image-train N] [--data-root DIR] [--threads 1]

Every run builds an mmengine Runner from the video quickstart configs
(``configs/quickstart_video.py`` for ``scratch``, ``configs/quickstart_video_inflated.py`` with
``WeightInflationHook`` for ``center`` and ``average``) and changes only what the experiment
needs: the data root, a class-stratified subset of the training clips (drawn per seed, the same
subset for every initialisation of that seed, so runs of one seed are paired), the seed, the
epoch count and an iteration-based learning-rate schedule of the quickstart's shape (linear
warm-up over the first 10%, at least one iteration, then cosine), so that any training-set size
trains. Small subsets train more epochs: every run gets at least ``--min-iters`` iterations.

Test top-1 is measured on the same test clips before training (what the initialisation alone
gives), at about ``--evals`` points during training and after the last epoch; the last one is
the run's result (no checkpoint is selected on the test clips). The image weights are, by
default, the image quickstart's recipe (configs/quickstart_image.py, 4 epochs on the 55,000
Fashion-MNIST training images) trained once by this tool and cached under OUT/image_*;
``--image-ckpt`` uses a checkpoint you already have, ``--image-epochs``/``--image-train``
shorten the pre-training. Without ``--data-root`` the "which item moves" task is built from
Fashion-MNIST (tools/data/prepare_video_task.py) with ``--train-clips``/``--test-clips`` clips;
any class-folder video task works, e.g. the motion task of tools/experiments/motion_task.py.

Prints mean +- std of the final test top-1 per setting, the paired difference to scratch per
seed (mean, std, 95% t-interval, wins) and the curves; writes everything to OUT/results.json,
after every run, so that a stopped experiment keeps its finished runs and a rerun with the same
settings skips them.
"""
import argparse
import gc
import hashlib
import importlib.util
import json
import math
import os
import os.path as osp
import platform
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRATCH_CONFIG = osp.join(REPO, 'configs', 'quickstart_video.py')
INFLATED_CONFIG = osp.join(REPO, 'configs', 'quickstart_video_inflated.py')
IMAGE_CONFIG = osp.join(REPO, 'configs', 'quickstart_image.py')
INITS = ('scratch', 'center', 'average')
WARMUP_FRACTION = 0.1  # the video quickstart warms up over 0.3 of its 3 epochs
IMAGE_WARMUP_FRACTION = 0.125  # the image quickstart: 0.5 of its 4 epochs
# two-sided 95% quantiles of Student's t for 1..10 degrees of freedom
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def _load_tool(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# Config overrides


def set_inflation(cfg, init: str, image_ckpt: Optional[str]) -> None:
    """Point the inflated config's WeightInflationHook at ``image_ckpt`` with method ``init``.

    The one place that knows where the hook sits in the config: ``default_hooks.weight_inflation``.
    """
    if init == 'scratch':
        return
    hook = cfg.get('default_hooks', {}).get('weight_inflation')
    if hook is None or hook.get('type') != 'WeightInflationHook':
        raise ValueError(f'{INFLATED_CONFIG}: expected a WeightInflationHook under '
                         f'default_hooks.weight_inflation, found {hook!r}')
    hook.checkpoint = image_ckpt
    hook.method = init


def set_schedule(cfg, epochs: int, iters_per_epoch: int, warmup_fraction: float) -> int:
    """Linear warm-up then cosine, in iterations, for ``epochs`` epochs; returns the total.

    Counted in iterations (not fractions of an epoch) so that a small training set still gets
    at least one warm-up iteration and a cosine phase that ends with the run.
    """
    total = epochs * iters_per_epoch
    if total < 2:
        raise ValueError(f'{epochs} epoch(s) of {iters_per_epoch} iteration(s) is too short for '
                         'a warm-up and a decay; raise --min-iters or --epochs')
    warmup = min(total - 1, max(1, round(warmup_fraction * total)))
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=warmup),
        dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=False, begin=warmup,
             end=total, T_max=total - warmup),
    ]
    cfg.train_cfg.max_epochs = epochs
    return total


def stratified_subset(labels: Sequence[int], fraction: float, seed: int) -> List[int]:
    """Sorted indices of ``fraction`` of each class (at least one per class), drawn with
    ``seed``."""
    labels = np.asarray(labels)
    if fraction >= 1.0:
        return list(range(len(labels)))
    rng = np.random.default_rng([seed, round(fraction * 1e6)])
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = max(1, round(len(members) * fraction))
        chosen.extend(rng.choice(members, size=take, replace=False).tolist())
    return sorted(int(i) for i in chosen)


def epochs_for(train_count: int, batch_size: int, epochs: int, min_iters: int):
    """(epochs, iterations per epoch): at least ``epochs`` and at least ``min_iters`` steps."""
    per_epoch = math.ceil(train_count / batch_size)
    return max(epochs, math.ceil(min_iters / per_epoch)), per_epoch


def eval_interval(epochs: int, evals: int) -> int:
    return max(1, math.ceil(epochs / max(1, evals)))


def _point_loaders(cfg, data_root: str, num_workers: int) -> None:
    for field in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[field].dataset.data_root = data_root
        cfg[field].num_workers = num_workers
        cfg[field].persistent_workers = num_workers > 0


def video_config(init: str, data_root: str, num_classes: int, indices: List[int], seed: int,
                 epochs: int, iters_per_epoch: int, interval: int, image_ckpt: Optional[str],
                 work_dir: str, batch_size: int, num_workers: int, verbose: bool):
    from mmengine.config import Config
    cfg = Config.fromfile(SCRATCH_CONFIG if init == 'scratch' else INFLATED_CONFIG)
    set_inflation(cfg, init, image_ckpt)
    _point_loaders(cfg, data_root, num_workers)
    cfg.train_dataloader.batch_size = batch_size
    cfg.train_dataloader.dataset.indices = indices
    # The per-epoch curve is measured on the test clips; nothing is selected on it.
    cfg.val_dataloader.dataset.split = 'test'
    cfg.model.cls_head.num_classes = num_classes
    set_schedule(cfg, epochs, iters_per_epoch, WARMUP_FRACTION)
    cfg.train_cfg.val_interval = interval
    cfg.default_hooks.checkpoint = None  # the weights' hash is recorded instead
    cfg.default_hooks.logger.interval = 10 ** 6
    cfg.randomness = dict(seed=seed, deterministic=False)
    cfg.work_dir = work_dir
    cfg.experiment_name = f'{osp.basename(work_dir)}_{time.time_ns()}'
    if not verbose:
        cfg.log_level = 'ERROR'  # mmaction2's deprecation notices, every epoch
    return cfg


# ---------------------------------------------------------------------------------------------
# Running


def weights_sha256(model) -> str:
    """SHA-256 over every parameter and buffer (names, dtypes, shapes, bytes) in key order."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        array = value.detach().cpu().contiguous().numpy()
        digest.update(f'{key}|{array.dtype}|{array.shape}|'.encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _recorder():
    from mmengine.hooks import Hook

    class Recorder(Hook):
        """Evaluates before training, keeps every evaluation, hashes the final weights."""
        priority = 'LOWEST'  # after WeightInflationHook: evaluates what training starts from

        def __init__(self, eval_at_start: bool) -> None:
            self.eval_at_start = eval_at_start
            self.curve: List[dict] = []

        def before_train(self, runner) -> None:
            if self.eval_at_start:
                runner.val_loop.run()

        def after_val_epoch(self, runner, metrics=None) -> None:
            key = next(k for k in metrics if k.endswith('top1'))
            # mmpretrain's Accuracy reports percent, mmaction2's AccMetric a fraction
            scale = 1.0 if key.startswith('accuracy/') else 100.0
            self.curve.append(dict(epoch=runner.epoch, iter=runner.iter,
                                   top1=round(scale * float(metrics[key]), 2)))

        def after_train(self, runner) -> None:
            self.sha256 = weights_sha256(runner.model)

    return Recorder


def train_once(cfg, eval_at_start: bool = True) -> dict:
    """Train one config with mmengine's Runner; the curve, the final weights' hash, seconds."""
    from mmengine.runner import Runner
    runner = Runner.from_cfg(cfg)
    recorder = _recorder()(eval_at_start)
    runner.register_hook(recorder)
    start = time.time()
    runner.train()
    seconds = time.time() - start
    result = dict(curve=recorder.curve, top1=recorder.curve[-1]['top1'],
                  seconds=round(seconds, 1), weights_sha256=recorder.sha256)
    del runner
    gc.collect()
    return result


def dataset_labels(data_root: str, split: str = 'train') -> List[int]:
    """Labels of a class-folder video split in VideoFolderDataset's order."""
    from mmaction.registry import DATASETS
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmaction'):
        dataset = DATASETS.build(dict(type='VideoFolderDataset', data_root=data_root,
                                      split=split, pipeline=[], test_mode=True))
    return [int(dataset.get_data_info(i)['label']) for i in range(len(dataset))]


def prepare_image_weights(args) -> dict:
    """The image checkpoint to inflate: given, cached, or trained here (quickstart recipe)."""
    if args.image_ckpt:
        return dict(checkpoint=osp.abspath(args.image_ckpt), source='given')
    name = f'image_e{args.image_epochs}_n{args.image_train or "all"}'
    work_dir = osp.join(args.out, name)
    marker = osp.join(work_dir, 'image_weights.json')
    if osp.isfile(marker):
        with open(marker) as f:
            info = json.load(f)
        if osp.isfile(info['checkpoint']):
            print(f'image weights: cached {info["checkpoint"]} (val top-1 {info["val_top1"]}%, '
                  f'trained in {info["seconds"]} s)', flush=True)
            return dict(info, source='cached')
    prepare = _load_tool('prepare_fashion_mnist',
                         osp.join(REPO, 'tools', 'data', 'prepare_fashion_mnist.py'))
    image_root = osp.join(args.data_dir, 'fashion_mnist')
    prepare.convert(args.fashion_src, image_root, args.image_val, 0, False)

    from mmengine.config import Config
    cfg = Config.fromfile(IMAGE_CONFIG)
    _point_loaders(cfg, image_root, args.workers)
    if args.image_train:
        from mmengine.registry import DefaultScope
        from mmpretrain.registry import DATASETS
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            dataset = DATASETS.build(dict(cfg.train_dataloader.dataset, pipeline=[]))
        labels = [int(dataset.get_data_info(i)['gt_label']) for i in range(len(dataset))]
        fraction = min(1.0, args.image_train / len(labels))
        cfg.train_dataloader.dataset.indices = stratified_subset(labels, fraction, 0)
        count = len(cfg.train_dataloader.dataset.indices)
    else:
        count = None
    if count is None:
        from mmengine.registry import DefaultScope
        from mmpretrain.registry import DATASETS
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            count = len(DATASETS.build(dict(cfg.train_dataloader.dataset, pipeline=[])))
    epochs, per_epoch = epochs_for(count, cfg.train_dataloader.batch_size, args.image_epochs, 2)
    set_schedule(cfg, epochs, per_epoch, IMAGE_WARMUP_FRACTION)
    cfg.train_cfg.val_interval = epochs  # one validation, at the end
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=epochs,
                                        max_keep_ckpts=1, save_best=None)
    cfg.default_hooks.logger.interval = 10 ** 6
    cfg.work_dir = work_dir
    cfg.experiment_name = f'{name}_{time.time_ns()}'
    if not args.verbose:
        cfg.log_level = 'ERROR'
    print(f'image weights: training {IMAGE_CONFIG} for {epochs} epoch(s) on {count} '
          f'images ({per_epoch} iterations each) -> {work_dir}', flush=True)
    result = train_once(cfg, eval_at_start=False)
    info = dict(checkpoint=osp.join(work_dir, f'epoch_{epochs}.pth'),
                epochs=epochs, train_images=count, val_top1=result['top1'],
                seconds=result['seconds'])
    with open(marker, 'w') as f:
        json.dump(info, f)
    print(f'image weights: val top-1 {info["val_top1"]}% after {info["seconds"]} s', flush=True)
    return dict(info, source='trained')


def prepare_video_data(args) -> str:
    if args.data_root:
        return osp.abspath(args.data_root)
    prepare = _load_tool('prepare_video_task',
                         osp.join(REPO, 'tools', 'data', 'prepare_video_task.py'))
    root = osp.join(args.data_dir, f'moving_fashion_{args.train_clips}_{args.test_clips}')
    prepare.build(args.fashion_src, root,
                  dict(train=args.train_clips, val=args.val_clips, test=args.test_clips),
                  num_frames=16, cell=32, seed=0, force=False)
    return root


# ---------------------------------------------------------------------------------------------
# Summaries


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    values = np.asarray(values, dtype=float)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return dict(mean=round(float(values.mean()), 2), std=round(std, 2), n=len(values))


def paired_difference(diffs: Sequence[float]) -> dict:
    """Mean, std, 95% t-interval of per-seed differences; significant when it excludes 0."""
    stats = mean_std(diffs)
    n = len(diffs)
    if n < 2:
        return dict(stats, ci95=None, significant=None, wins=int(sum(d > 0 for d in diffs)))
    half = T_975[min(n - 1, len(T_975)) - 1] * stats['std'] / math.sqrt(n)
    low, high = stats['mean'] - half, stats['mean'] + half
    return dict(stats, ci95=[round(low, 2), round(high, 2)], significant=bool(low > 0 or high < 0),
                wins=int(sum(d > 0 for d in diffs)))


def summarise(runs: List[dict], inits: Sequence[str], fractions: Sequence[float]) -> dict:
    settings, paired = [], []
    for fraction in fractions:
        by_init = {init: {r['seed']: r for r in runs
                          if r['init'] == init and r['fraction'] == fraction} for init in inits}
        for init in inits:
            done = list(by_init[init].values())
            if not done:
                continue
            start = [r['curve'][0]['top1'] for r in done if r['curve'][0]['epoch'] == 0]
            settings.append(dict(init=init, fraction=fraction, train_clips=done[0]['train_clips'],
                                 epochs=done[0]['epochs'], iters=done[0]['iters'],
                                 top1=mean_std([r['top1'] for r in done]),
                                 start_top1=mean_std(start) if start else None,
                                 seeds=sorted(by_init[init])))
            if init != 'scratch' and 'scratch' in by_init:
                seeds = sorted(set(by_init[init]) & set(by_init['scratch']))
                if seeds:
                    diffs = [by_init[init][s]['top1'] - by_init['scratch'][s]['top1']
                             for s in seeds]
                    paired.append(dict(init=init, fraction=fraction, seeds=seeds,
                                       diffs=[round(d, 2) for d in diffs],
                                       **paired_difference(diffs)))
    return dict(settings=settings, paired=paired)


def format_tables(summary: dict, runs: List[dict], inits: Sequence[str]) -> str:
    lines = ['', 'test top-1 after the last epoch, mean +- std over seeds (n):']
    header = f'  {"train clips":>18}  ' + '  '.join(f'{i:>18}' for i in inits)
    lines.append(header)
    fractions = sorted({s['fraction'] for s in summary['settings']}, reverse=True)
    for fraction in fractions:
        rows = {s['init']: s for s in summary['settings'] if s['fraction'] == fraction}
        any_row = next(iter(rows.values()))
        label = f'{any_row["train_clips"]} ({100 * fraction:g}%, {any_row["epochs"]} ep)'
        cells = []
        for init in inits:
            s = rows.get(init)
            cells.append(f'{s["top1"]["mean"]:6.2f} +- {s["top1"]["std"]:5.2f} ({s["top1"]["n"]})'
                         if s else f'{"-":>18}')
        lines.append(f'  {label:>18}  ' + '  '.join(f'{c:>18}' for c in cells))
    if summary['paired']:
        lines += ['', 'inflated minus scratch, same seed (same subset, order): mean +- std, '
                  '95% t-interval, seeds ahead']
        for p in summary['paired']:
            ci = f'[{p["ci95"][0]:+.2f}, {p["ci95"][1]:+.2f}]' if p['ci95'] else 'n/a'
            verdict = ('significant' if p['significant'] else 'not significant') \
                if p['significant'] is not None else 'one seed'
            lines.append(f'  {p["init"]:>8} {100 * p["fraction"]:5g}%: {p["mean"]:+6.2f} +- '
                         f'{p["std"]:5.2f}  {ci:>18}  {p["wins"]}/{p["n"]}  {verdict}')
    lines += ['', 'curves (test top-1 at epoch:value, epoch 0 = before training), per seed:']
    for r in sorted(runs, key=lambda r: (-r['fraction'], inits.index(r['init']), r['seed'])):
        points = ' '.join(f'{p["epoch"]}:{p["top1"]:.1f}' for p in r['curve'])
        lines.append(f'  {r["init"]:>8} {100 * r["fraction"]:5g}% seed {r["seed"]}: {points}'
                     f'  ({r["seconds"]:.0f} s)')
    return '\n'.join(lines)


def machine_info() -> dict:
    import torch
    cpu = platform.processor() or ''
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, check=False).stdout
        cpu = next((line.split(':', 1)[1].strip() for line in out.splitlines()
                    if line.startswith('Model name')), cpu)
    except OSError:
        pass
    import mmengine
    return dict(cpu=cpu, cores=os.cpu_count(), torch=torch.__version__,
                mmengine=mmengine.__version__, python=platform.python_version(),
                torch_threads=torch.get_num_threads())


def loadavg() -> str:
    try:
        with open('/proc/loadavg') as f:
            return ' '.join(f.read().split()[:3])
    except OSError:
        return 'unknown'


# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='work_dirs/experiments/inflation',
                        help='results.json, run logs and the cached image weights go here')
    parser.add_argument('--data-dir', default='data/experiments',
                        help='where the Fashion-MNIST image folders and the built video task go')
    parser.add_argument('--data-root', help='an existing class-folder video task to use instead '
                        'of building the moving Fashion-MNIST one')
    parser.add_argument('--task', default=None, help='name of the task in the output')
    parser.add_argument('--fashion-src', default='/usr/share/datasets/fashion-mnist')
    parser.add_argument('--inits', nargs='+', default=list(INITS), choices=INITS)
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--fractions', nargs='+', type=float, default=[1.0, 0.2, 0.05])
    parser.add_argument('--train-clips', type=int, default=1280,
                        help='training clips of the built task (100%%); the quickstart has 6000')
    parser.add_argument('--val-clips', type=int, default=50, help='(unused by the experiment)')
    parser.add_argument('--test-clips', type=int, default=1000,
                        help='test clips of the built task; the quickstart has 2000')
    parser.add_argument('--epochs', type=int, default=3, help='epochs at least (quickstart: 3)')
    parser.add_argument('--min-iters', type=int, default=120,
                        help='iterations at least: small subsets train more epochs')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--evals', type=int, default=4,
                        help='about this many test evaluations during training (+ before)')
    parser.add_argument('--no-eval-at-start', action='store_true')
    parser.add_argument('--image-ckpt', help='image checkpoint to inflate (skips pre-training)')
    parser.add_argument('--image-epochs', type=int, default=4)
    parser.add_argument('--image-train', type=int, default=0,
                        help='pre-train on this many images (stratified); 0: all 55,000')
    parser.add_argument('--image-val', type=int, default=5000,
                        help='validation hold-out of the image folders')
    parser.add_argument('--image-only', action='store_true',
                        help='prepare (train or reuse) the image weights and stop')
    parser.add_argument('--stop-at', metavar='HH:MM',
                        help='UTC time: start no run that the slowest finished run of the same '
                        'size says would end later (the grid runs seed by seed)')
    parser.add_argument('--threads', type=int, default=1, help='torch intra-op threads')
    parser.add_argument('--workers', type=int, default=1, help='dataloader workers')
    parser.add_argument('--verbose', action='store_true', help="show mmengine's log")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    sys.path.insert(0, REPO)
    import mmvit_plugin  # noqa: F401  (registers the plugin)
    args.out = osp.abspath(args.out)
    args.data_dir = osp.abspath(args.data_dir)
    os.makedirs(args.out, exist_ok=True)
    started, load_before = time.strftime('%Y-%m-%d %H:%M:%S %Z'), loadavg()
    t0 = time.time()

    needs_image = any(init != 'scratch' for init in args.inits)
    image = prepare_image_weights(args) if needs_image or args.image_only else None
    if args.image_only:
        return dict(image=image)
    data_root = prepare_video_data(args)
    task = args.task or osp.basename(data_root)
    labels = dataset_labels(data_root)
    num_classes = len(set(labels))
    test_count = len(dataset_labels(data_root, 'test'))

    grid = dict(task=task, data_root=data_root, inits=args.inits, seeds=args.seeds,
                fractions=args.fractions, epochs=args.epochs, min_iters=args.min_iters,
                batch_size=args.batch_size, evals=args.evals,
                eval_at_start=not args.no_eval_at_start,
                image_checkpoint=image and image['checkpoint'])
    results_path = osp.join(args.out, 'results.json')
    runs: List[dict] = []
    if osp.isfile(results_path):
        with open(results_path) as f:
            previous = json.load(f)
        if previous.get('grid') == grid:
            runs = previous['runs']
            print(f'{results_path}: {len(runs)} finished run(s) with these settings are kept',
                  flush=True)

    plan = [(seed, fraction, init) for seed in args.seeds for fraction in args.fractions
            for init in args.inits]
    print(f'task {task}: {len(labels)} training clips, {test_count} test clips, {num_classes} '
          f'classes; {len(plan)} runs; load average {load_before}', flush=True)
    skipped: List[dict] = []
    for k, (seed, fraction, init) in enumerate(plan, start=1):
        if any(r['seed'] == seed and r['fraction'] == fraction and r['init'] == init
               for r in runs):
            continue
        indices = stratified_subset(labels, fraction, seed)
        epochs, per_epoch = epochs_for(len(indices), args.batch_size, args.epochs,
                                       args.min_iters)
        if args.stop_at and not _time_left_for(args.stop_at, runs, fraction):
            print(f'[{k}/{len(plan)}] {init} {100 * fraction:g}% seed {seed}: not started, '
                  f'it would not end by {args.stop_at} UTC', flush=True)
            skipped.append(dict(init=init, fraction=fraction, seed=seed))
            continue
        interval = eval_interval(epochs, args.evals)
        work_dir = osp.join(args.out, 'runs', task, f'{init}_f{fraction:g}_s{seed}')
        cfg = video_config(init, data_root, num_classes, indices, seed, epochs, per_epoch,
                           interval, image and image['checkpoint'], work_dir, args.batch_size,
                           args.workers, args.verbose)
        result = train_once(cfg, eval_at_start=not args.no_eval_at_start)
        runs.append(dict(init=init, fraction=fraction, seed=seed, train_clips=len(indices),
                         epochs=epochs, iters=epochs * per_epoch, **result))
        points = ' '.join(f'{p["epoch"]}:{p["top1"]:.1f}' for p in result['curve'])
        print(f'[{k}/{len(plan)}] {init:>8} {100 * fraction:g}% ({len(indices)} clips, {epochs} '
              f'ep) seed {seed}: top-1 {result["top1"]:.2f}%  curve {points}  '
              f'({result["seconds"]:.0f} s, load {loadavg()})', flush=True)
        _write(results_path, args, grid, image, runs, started, load_before, t0)
    report = _write(results_path, args, grid, image, runs, started, load_before, t0, skipped)
    print(format_tables(report['summary'], runs, args.inits))
    if skipped:
        print(f'\n{len(skipped)} planned run(s) not started (--stop-at {args.stop_at}): '
              + ', '.join(f'{s["init"]} {100 * s["fraction"]:g}% seed {s["seed"]}'
                          for s in skipped))
    print(f'\n{len(runs)} runs in {report["machine"]["seconds"]:.0f} s on '
          f'{report["machine"]["cpu"]} ({report["machine"]["cores"]} cores), torch '
          f'{report["machine"]["torch"]}, {args.threads} thread(s); load average before '
          f'{load_before}, after {report["machine"]["load_after"]}; results: {results_path}')
    return report


def _time_left_for(stop_at: str, runs: List[dict], fraction: float) -> bool:
    """Whether a run of ``fraction`` ends before ``stop_at`` (UTC HH:MM, today), judged by
    the slowest finished run of that size plus a minute for building it; unknown: True."""
    hours, minutes = (int(x) for x in stop_at.split(':'))
    now = time.gmtime()
    left = (hours * 3600 + minutes * 60) - (now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec)
    done = [r['seconds'] for r in runs if r['fraction'] == fraction]
    return left > (max(done) + 60 if done else 0)


def _write(path, args, grid, image, runs, started, load_before, t0, skipped=()) -> dict:
    machine = dict(machine_info(), started=started, load_before=load_before,
                   load_after=loadavg(), seconds=round(time.time() - t0, 1))
    report = dict(command='python tools/experiments/inflation.py ' + ' '.join(sys.argv[1:]),
                  grid=grid, machine=machine, image=image, runs=runs,
                  not_started=list(skipped), summary=summarise(runs, args.inits, args.fractions))
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)
    return report


if __name__ == '__main__':
    main()
