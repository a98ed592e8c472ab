"""Train a model from an mmengine config (mmpretrain or mmaction2 scope).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp] [--auto-scale-lr]
        [--no-validate] [--seed N] [--deterministic] [--verbose]
        [--cfg-options key=value ...] [--launcher none|pytorch|slurm|mpi]

Multi-process: tools/dist_train.sh CONFIG NPROC (torchrun). Without a GPU the processes train
on the CPU over gloo.
"""
import argparse
import time

from mmengine.config import Config
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmvit_plugin  # noqa: F401  (registers the plugin; makes resume loading safe)
from mmvit_plugin.engine import console, launch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='config file')
    parser.add_argument('--work-dir', help='folder for logs and checkpoints '
                        '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', metavar='CKPT',
                        help='resume from CKPT, or, without a value, from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (float16 on a GPU, bfloat16 on the CPU)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by (total batch size) / '
                        'auto_scale_lr.base_batch_size')
    parser.add_argument('--no-validate', action='store_true',
                        help='skip validation during training')
    parser.add_argument('--no-persistent-workers', action='store_true',
                        help='restart dataloader workers every epoch')
    parser.add_argument('--seed', type=int, help='random seed (default: the config\'s '
                        'randomness.seed)')
    parser.add_argument('--deterministic', action='store_true',
                        help='deterministic cuDNN/torch algorithms (slower on a GPU)')
    launch.add_runner_arguments(
        parser, 'train_dataloader.dataset.data_root=/data/x train_cfg.max_epochs=5')
    return launch.parse_runner_arguments(parser)


def build_config(args: argparse.Namespace) -> Config:
    cfg = launch.load_config(args.config, args.cfg_options, args.work_dir)
    if args.seed is not None or args.deterministic:
        randomness = dict(cfg.get('randomness') or {})
        if args.seed is not None:
            randomness['seed'] = args.seed
        if args.deterministic:
            randomness['deterministic'] = True
        cfg.randomness = randomness
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    launch.apply_dataloader_defaults(cfg, persistent_workers=not args.no_persistent_workers)
    launch.apply_resume(cfg, args.resume)
    if args.auto_scale_lr:
        launch.apply_auto_scale_lr(cfg)
    if args.amp:
        print(launch.apply_amp(cfg), flush=True)
    launch.prepare_distributed(cfg, args.launcher)
    return cfg


def main() -> None:
    args = parse_args()
    console.quiet_console(verbose=args.verbose)
    cfg = build_config(args)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    start = time.time()
    runner.train()
    elapsed = time.time() - start
    runner.logger.info(f'training finished in {elapsed:.1f} s ({elapsed / 60:.2f} min); '
                       f'checkpoints in {cfg.work_dir}')
    launch.shutdown_distributed()


if __name__ == '__main__':
    main()
    launch.end_distributed_process()
