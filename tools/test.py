"""Evaluate a checkpoint on a config's test split and print top-1 / top-5.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out preds.{pkl,csv,json}]
        [--amp] [--cfg-options key=value ...] [--launcher none|pytorch|slurm]

``--out`` writes one prediction per test sample: .pkl keeps mmpretrain's full data samples
(scores included); .csv / .json hold img_path, gt_label, pred_label, pred_score, and the
class names when the dataset has them.
"""
import argparse
import json
import os
import os.path as osp
import tempfile
from typing import Dict, List

from mmengine.config import Config, DictAction
from mmengine.dist import get_rank
from mmengine.fileio import load
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmvit_plugin  # noqa: F401
from mmvit_plugin.engine import launch

OUT_FORMATS = ('.pkl', '.csv', '.json')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a checkpoint')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='folder for the test log (default: ./work_dirs/'
                        '<config name>)')
    parser.add_argument('--out', help=f'dump per-sample predictions ({", ".join(OUT_FORMATS)})')
    parser.add_argument('--amp', action='store_true',
                        help='mixed-precision inference (bfloat16 on the CPU)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config entries, e.g. '
                        'test_dataloader.dataset.data_root=/data/x')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    if args.out and osp.splitext(args.out)[1] not in OUT_FORMATS:
        parser.error(f'--out {args.out}: the file name must end with one of {OUT_FORMATS}')
    if not osp.isfile(args.checkpoint):
        parser.error(f'checkpoint {args.checkpoint!r} does not exist')
    return args


def prediction_rows(samples: List[dict], classes) -> List[Dict]:
    """Flat rows (img_path, gt_label, pred_label, pred_score[, class names]) of dumped samples."""
    rows = []
    for sample in samples:
        pred = int(sample['pred_label'].reshape(-1)[0])
        row = dict(img_path=sample.get('img_path', ''),
                   gt_label=int(sample['gt_label'].reshape(-1)[0]) if 'gt_label' in sample
                   else None,
                   pred_label=pred,
                   pred_score=float(sample['pred_score'][pred]))
        if classes:
            row['pred_class'] = classes[pred]
            if row['gt_label'] is not None:
                row['gt_class'] = classes[row['gt_label']]
        rows.append(row)
    return rows


def write_rows(rows: List[Dict], path: str) -> None:
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    if path.endswith('.json'):
        with open(path, 'w') as f:
            json.dump(rows, f, indent=1)
        return
    import csv
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ['img_path'])
        writer.writeheader()
        writer.writerows(rows)


def format_metrics(metrics: Dict[str, float]) -> str:
    """One line with top-1/top-5 first (accuracy/top1 -> 'top-1: 91.23%'), then the rest."""
    # mmpretrain's Accuracy reports percentages, mmaction2's AccMetric fractions.
    percent_scale = {'accuracy/top1': 1, 'accuracy/top5': 1, 'acc/top1': 100, 'acc/top5': 100}
    parts = []
    for key, scale in percent_scale.items():
        if key in metrics:
            parts.append(f'top-{key[-1]}: {metrics[key] * scale:.2f}%')
    parts += [f'{k}: {v}' for k, v in metrics.items() if k not in percent_scale]
    return '  '.join(parts)


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif not cfg.get('work_dir'):
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    cfg.load_from = args.checkpoint
    cfg.resume = False
    launch.apply_dataloader_defaults(cfg)
    if args.amp:
        cfg.test_cfg = cfg.get('test_cfg') or {}
        cfg.test_cfg.fp16 = True
    launch.prepare_distributed(cfg, args.launcher)
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='TestProgressHook')]

    dump_path = None
    if args.out:
        dump_path = args.out if args.out.endswith('.pkl') else osp.join(
            tempfile.mkdtemp(prefix='mmvit_test_'), 'predictions.pkl')
        evaluator = cfg.test_evaluator
        metrics = list(evaluator) if isinstance(evaluator, (list, tuple)) else [evaluator]
        metrics.append(dict(type='DumpResults', out_file_path=dump_path))
        cfg.test_evaluator = metrics

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    metrics = runner.test()
    rank = get_rank()
    launch.shutdown_distributed()
    if rank != 0:
        return
    print(f'\n{osp.basename(args.checkpoint)} on '
          f'{len(runner.test_dataloader.dataset)} test samples: {format_metrics(metrics)}',
          flush=True)
    if dump_path and not args.out.endswith('.pkl'):
        classes = runner.test_dataloader.dataset.metainfo.get('classes')
        write_rows(prediction_rows(load(dump_path), classes), args.out)
        os.remove(dump_path)
    if args.out:
        print(f'predictions written to {args.out}', flush=True)


if __name__ == '__main__':
    main()
    launch.end_distributed_process()
