"""Where a quickstart training iteration spends its time: data pipeline vs model step.

    python tools/analysis/profile_quickstart.py [--configs configs/quickstart_image.py ...]
        [--data-root CONFIG=DIR ...] [--iters 30] [--warmup 3] [--workers 0 1 2]
        [--threads 1] [--samples 200] [--compare-recompute] [--profile N]
        [--cfg-options k=v ...]

For each config it measures, in one process and with the config's own batch size:

- every transform of the training pipeline, per sample (decord open, frame sampling, decode,
  augmentation, packing), and the collate function per batch;
- the training dataloader alone, for each ``--workers`` count: time to the first batch
  (worker start) and the steady time per batch (nothing else runs);
- mmengine's Runner training ``--iters`` iterations of the config (its hooks, dataloader and
  workers included, validation and checkpoints off): the ``time`` and ``data_time`` it logs,
  i.e. what an iteration of the real run costs and how long it waited for data;
- the model step alone on batches held in memory: data preprocessor, forward + loss,
  backward, optimizer step (gradient clipping included), and the whole ``train_step``;
- with ``--compare-recompute`` the model step again with ``ops.use_kernels(recompute=False)``
  (attention probabilities, GELU and pooling outputs kept for the backward);
- optionally (``--profile N``) the top operators of N model steps (torch.profiler).

It prints the CPU, torch version, thread count and the load before and after. With one
dataloader worker on its own core the data side is hidden while it takes less than the model
step; the summary line says which side bounds an iteration.
"""
import argparse
import contextlib
import copy
import logging
import os
import os.path as osp
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, List

import cv2  # noqa: F401  (before decord: decord's libz breaks cv2's PNG reading otherwise)
import torch
from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, REPO)
import mmvit_plugin  # noqa: E402,F401  (registers the plugin)
from mmvit_plugin import ops  # noqa: E402
from mmvit_plugin.engine import launch  # noqa: E402

DEFAULT_CONFIGS = ('configs/quickstart_image.py', 'configs/quickstart_video.py')


def cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def load_average() -> str:
    try:
        return ' '.join(f'{x:.2f}' for x in os.getloadavg())
    except OSError:
        return 'unknown'


def median_ms(times: List[float]) -> str:
    return f'{1000 * statistics.median(times):8.2f} ms' if times else '      n/a'


def load_config(path: str, data_root: str, options: dict) -> Config:
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    if data_root:
        cfg.train_dataloader.dataset.data_root = data_root
    launch.apply_dataloader_defaults(cfg)
    return cfg


def time_transforms(cfg: Config, samples: int) -> Dict[str, List[float]]:
    """Seconds per sample of each pipeline transform, over the first ``samples`` items."""
    dataset = Runner.build_dataloader(dict(cfg.train_dataloader, num_workers=0,
                                           persistent_workers=False)).dataset
    transforms = dataset.pipeline.transforms
    names = [f'{i}:{type(t).__name__}' for i, t in enumerate(transforms)]
    times: Dict[str, List[float]] = {name: [] for name in names}
    for index in range(min(samples, len(dataset))):
        results = dataset.get_data_info(index)
        for name, transform in zip(names, transforms):
            start = time.perf_counter()
            results = transform(results)
            times[name].append(time.perf_counter() - start)
    return times


def time_collate(cfg: Config, repeats: int = 5) -> List[float]:
    loader = Runner.build_dataloader(dict(cfg.train_dataloader, num_workers=0,
                                          persistent_workers=False))
    dataset, batch_size = loader.dataset, loader.batch_size
    items = [dataset[i % len(dataset)] for i in range(batch_size)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loader.collate_fn(items)
        times.append(time.perf_counter() - start)
    return times


def time_loader(cfg: Config, workers: int, iters: int, warmup: int):
    """(seconds to the first batch, seconds per later batch) of the training dataloader."""
    loader_cfg = dict(cfg.train_dataloader, num_workers=workers,
                      persistent_workers=False)
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    start = time.perf_counter()
    it = iter(loader)
    times, first = [], None
    for step in range(iters + warmup):
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
        now = time.perf_counter()
        if first is None:
            first = now - start
        elif step >= warmup:
            times.append(now - start)
        start = now
    del it
    return first, times


def time_runner(cfg: Config, iters: int, warmup: int) -> Dict[str, List[float]]:
    """Seconds per iteration (``time``, ``data_time``) the Runner logs training the config's
    first ``warmup + iters`` batches (validation and checkpoints off)."""
    run = copy.deepcopy(cfg)
    run.work_dir = tempfile.mkdtemp(prefix='profile_quickstart_')
    run.train_dataloader.dataset.indices = (iters + warmup) * cfg.train_dataloader.batch_size
    run.train_cfg.max_epochs = 1
    run.val_cfg = run.val_dataloader = run.val_evaluator = None
    run.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1)
    run.default_hooks.logger = dict(type='LoggerHook', interval=max(iters + warmup, 1))
    run.log_level = 'WARNING'
    try:
        runner = Runner.from_cfg(run)
        runner.train()
        hub = runner.message_hub
        return {key: list(hub.get_scalar(f'train/{key}').data[0])[warmup:]
                for key in ('time', 'data_time')}
    finally:
        shutil.rmtree(run.work_dir, ignore_errors=True)


def build_model_and_optim(cfg: Config):
    from mmengine.optim import build_optim_wrapper

    from mmvit_plugin.apis import build_config_model
    torch.manual_seed(0)
    model = build_config_model(cfg, for_training=True)
    model.init_weights()
    model.train()
    return model, build_optim_wrapper(model, cfg.optim_wrapper)


PARTS = ('data_preprocessor', 'forward+loss', 'backward', 'optimizer step (clip incl.)',
         'train_step total')


def time_model(cfg: Config, scope: str, iters: int, warmup: int,
               settings: Dict[str, Callable]) -> Dict[str, Dict[str, List[float]]]:
    """Seconds of each part of the model step on ``warmup + iters`` batches in memory, per
    kernel setting (a model and optimizer each, same initial weights); the settings take
    turns step by step, so a change in the machine's load hits them alike."""
    runs = {label: build_model_and_optim(cfg) for label in settings}
    loader = Runner.build_dataloader(dict(cfg.train_dataloader, num_workers=0,
                                          persistent_workers=False), seed=0)
    batches, it = [], iter(loader)
    for _ in range(min(4, iters + warmup)):  # a few distinct batches, reused
        batches.append(next(it))
    parts = {label: {k: [] for k in PARTS} for label in settings}

    for step in range(iters + warmup):
        batch = batches[step % len(batches)]
        for label, kernels in settings.items():
            model, optim = runs[label]
            with kernels():
                marks = [time.perf_counter()]
                data = model.data_preprocessor(batch, True)
                marks.append(time.perf_counter())
                loss = model.parse_losses(model(**data, mode='loss'))[0]
                marks.append(time.perf_counter())
                optim.backward(loss)
                marks.append(time.perf_counter())
                optim.step()
                optim.zero_grad()
                marks.append(time.perf_counter())
            if step >= warmup:
                for name, begin, finish in zip(PARTS, marks, marks[1:]):
                    parts[label][name].append(finish - begin)
                parts[label]['train_step total'].append(marks[-1] - marks[0])
    return parts


def profile_model(cfg: Config, scope: str, steps: int, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile
    model, optim = build_model_and_optim(cfg)
    loader = Runner.build_dataloader(dict(cfg.train_dataloader, num_workers=0,
                                          persistent_workers=False), seed=0)
    batch = next(iter(loader))
    model.train_step(batch, optim)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            model.train_step(batch, optim)
    return prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=rows)


def report(path: str, args, data_root: str) -> None:
    cfg = load_config(path, data_root, args.cfg_options)
    scope = cfg.get('default_scope', 'mmpretrain')
    batch = cfg.train_dataloader.batch_size
    print(f'\n=== {path} (scope {scope}, batch {batch}, data '
          f'{cfg.train_dataloader.dataset.data_root}, config workers '
          f'{cfg.train_dataloader.get("num_workers", 0)})', flush=True)
    with DefaultScope.overwrite_default_scope(scope):
        print(f'-- pipeline, per sample (mean of {args.samples} samples; x{batch} per batch)')
        total = 0.0
        for name, times in time_transforms(cfg, args.samples).items():
            total += statistics.mean(times)
            print(f'  {name:<28} {1000 * statistics.mean(times):8.3f} ms')
        print(f'  {"sum":<28} {1000 * total:8.2f} ms  -> {1000 * total * batch:8.1f} ms a batch')
        collate = time_collate(cfg)
        print(f'  {"collate (one batch)":<28} {median_ms(collate)}', flush=True)

        print(f'-- dataloader alone, {args.iters} batches after {args.warmup}')
        for workers in args.workers:
            first, times = time_loader(cfg, workers, args.iters, args.warmup)
            print(f'  workers={workers}: first batch {1000 * first:8.1f} ms, then '
                  f'{median_ms(times)} a batch', flush=True)

        print(f'-- the Runner, {args.iters} iterations after {args.warmup} (config workers, '
              'hooks; no validation/checkpoints)')
        loop = time_runner(cfg, args.iters, args.warmup)
        print(f'  {"iteration (logged time)":<28} {median_ms(loop["time"])}')
        print(f'  {"waiting for data (data_time)":<28} {median_ms(loop["data_time"])}',
              flush=True)

        settings = {'recompute on (default)': contextlib.nullcontext}
        if args.compare_recompute:
            settings['recompute off'] = lambda: ops.use_kernels(recompute=False)
        timed = time_model(cfg, scope, args.iters, args.warmup, settings)
        for label, times_of in timed.items():
            print(f'-- model step alone, {args.iters} steps after {args.warmup} (batches in '
                  f'memory), {label}' + (', alternating' if len(timed) > 1 else ''))
            for name, times in times_of.items():
                print(f'  {name:<28} {median_ms(times)}', flush=True)
        parts = timed['recompute on (default)']  # the default: what the summary compares
        model_ms = 1000 * statistics.median(parts['train_step total'])
        data_ms = 1000 * (total * batch + statistics.median(collate))
        side = 'the model step' if model_ms >= data_ms else 'the data pipeline'
        print(f'  => one worker needs {data_ms:.0f} ms a batch, the model {model_ms:.0f} ms: '
              f'{side} bounds an iteration (when each has its own core)', flush=True)
        if args.profile:
            print(f'-- top operators over {args.profile} train_step calls (self CPU time)')
            print(profile_model(cfg, scope, args.profile), flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--configs', nargs='+', default=list(DEFAULT_CONFIGS))
    parser.add_argument('--data-root', nargs='+', default=[], metavar='CONFIG=DIR',
                        help='training data root per config file name, e.g. '
                        'quickstart_video.py=data/moving_fashion')
    parser.add_argument('--iters', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--workers', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--threads', type=int, default=1,
                        help='intra-op threads (the quickstart scripts use 1)')
    parser.add_argument('--samples', type=int, default=200,
                        help='samples for the per-transform timing')
    parser.add_argument('--compare-recompute', action='store_true',
                        help='also time the model step without recomputation in backward')
    parser.add_argument('--profile', type=int, default=0, metavar='N',
                        help='also list the top operators of N model steps')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    roots = {}
    for item in args.data_root:
        name, sep, root = item.partition('=')
        if not sep:
            raise SystemExit(f'--data-root {item!r}: expected CONFIG=DIR')
        roots[osp.basename(name)] = root
    torch.set_num_threads(args.threads)
    # the model build logs every parameter's initialisation and weight-decay setting
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    print(f'CPU: {cpu_name()} ({os.cpu_count()} cores), torch {torch.__version__}, '
          f'{args.threads} intra-op thread(s); load before: {load_average()}', flush=True)
    for path in args.configs:
        report(path, args, roots.get(osp.basename(path), ''))
    print(f'\nload after: {load_average()}')


if __name__ == '__main__':
    main()
