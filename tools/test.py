"""Evaluate a checkpoint on a config's test split and print top-1 / top-5.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out preds.{pkl,csv,json}]
        [--out-item pred|metrics] [--show-dir DIR] [--tta] [--amp] [--verbose]
        [--cfg-options key=value ...] [--launcher none|pytorch|slurm|mpi]

``--out`` writes one prediction per test sample: .pkl keeps the hosts' full data samples
(scores included); .csv / .json hold img_path (the image or video file), gt_label, pred_label,
pred_score, and the class names when the dataset has them (image and video configs alike).
``--out-item metrics`` writes the metrics instead. The printed top-1 is checked against the
predictions, and a test whose scores are NaN/Inf stops with an error instead of printing a
meaningless accuracy.
"""
import argparse
import copy
import json
import math
import os
import os.path as osp
import sys
import tempfile
from typing import Dict, List, Optional

import torch
from mmengine.config import Config, ConfigDict
from mmengine.dist import get_rank
from mmengine.fileio import dump, load
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmvit_plugin  # noqa: F401
from mmvit_plugin.engine import console, launch

OUT_FORMATS = ('.pkl', '.csv', '.json')


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test a checkpoint')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='folder for the test log (default: ./work_dirs/'
                        '<config name>)')
    parser.add_argument('--out', help=f'dump per-sample predictions ({", ".join(OUT_FORMATS)})')
    parser.add_argument('--out-item', choices=['pred', 'metrics'],
                        help="what --out holds: per-sample predictions ('pred', default) or "
                        "the metrics ('metrics', .pkl or .json)")
    parser.add_argument('--show-dir', help='draw each test sample with its prediction into '
                        'this folder (inside the work dir, as the hosts do)')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation: the config\'s tta_model/tta_pipeline, or '
                        'for image configs the average over the image and its horizontal flip')
    parser.add_argument('--amp', action='store_true',
                        help='mixed-precision inference (bfloat16 on the CPU)')
    launch.add_runner_arguments(parser, 'test_dataloader.dataset.data_root=/data/x')
    args = launch.parse_runner_arguments(parser)
    if args.out and osp.splitext(args.out)[1] not in OUT_FORMATS:
        parser.error(f'--out {args.out}: the file name must end with one of {OUT_FORMATS}')
    if args.out_item and not args.out:
        parser.error('--out-item needs --out FILE')
    if args.out_item == 'metrics' and args.out.endswith('.csv'):
        parser.error('--out-item metrics: write the metrics to a .json or .pkl file')
    if not osp.isfile(args.checkpoint):
        parser.error(f'checkpoint {args.checkpoint!r} does not exist')
    return args


def _values(field) -> Optional[torch.Tensor]:
    """A dumped label/score field as a flat tensor (mmpretrain stores tensors, mmaction2
    ``LabelData`` dicts: ``{'item': tensor}``)."""
    if field is None:
        return None
    if isinstance(field, dict):
        field = field.get('item')
    return None if field is None else torch.as_tensor(field).reshape(-1)


def _first(sample: dict, *keys):
    return next((sample[k] for k in keys if k in sample), None)


def prediction_rows(samples: List[dict], classes) -> List[Dict]:
    """Flat rows (img_path, gt_label, pred_label, pred_score[, class names]) of dumped samples.

    Works for mmpretrain (pred_score, gt_label, img_path) and mmaction2 (pred_scores,
    gt_labels, filename) samples. The predicted label is the arg-max of the scores, the rule
    the accuracy metrics use.
    """
    rows = []
    for sample in samples:
        scores = _values(_first(sample, 'pred_score', 'pred_scores'))
        if scores is None:
            raise KeyError(f'a dumped test sample has no pred_score/pred_scores (keys: '
                           f'{sorted(sample)})')
        pred = int(scores.argmax())
        gt = _values(_first(sample, 'gt_label', 'gt_labels'))
        row = dict(img_path=_first(sample, 'img_path', 'filename') or '',
                   gt_label=int(gt[0]) if gt is not None and gt.numel() else None,
                   pred_label=pred,
                   pred_score=float(scores[pred]))
        if classes:
            row['pred_class'] = classes[pred]
            if row['gt_label'] is not None:
                row['gt_class'] = classes[row['gt_label']]
        rows.append(row)
    return rows


def fill_missing_paths(rows: List[Dict], loader) -> None:
    """Take the file names the samples lack from the test dataset.

    mmaction2's ``PackActionInputs`` keeps no file name in its samples. mmengine's evaluator
    returns the results in dataset order (also when gathered from several processes), so
    row i is dataset item i whenever the sampler does not shuffle.
    """
    dataset = loader.dataset
    if all(row['img_path'] for row in rows) or len(rows) != len(dataset) or \
            getattr(loader.sampler, 'shuffle', False):
        return
    for index, row in enumerate(rows):
        if not row['img_path']:
            info = dataset.get_data_info(index)
            row['img_path'] = info.get('img_path') or info.get('filename') or ''


def non_finite_count(samples: List[dict]) -> int:
    """How many dumped samples have a NaN or infinite score."""
    count = 0
    for sample in samples:
        scores = _values(_first(sample, 'pred_score', 'pred_scores'))
        if scores is not None and not bool(torch.isfinite(scores.float()).all()):
            count += 1
    return count


def top1_of(rows: List[Dict]) -> Optional[float]:
    labelled = [r for r in rows if r['gt_label'] is not None]
    if not labelled:
        return None
    return 100.0 * sum(r['gt_label'] == r['pred_label'] for r in labelled) / len(labelled)


def printed_top1(metrics: Dict[str, float]) -> Optional[float]:
    for key, scale in (('accuracy/top1', 1), ('acc/top1', 100)):
        if key in metrics:
            return metrics[key] * scale
    return None


def apply_tta(cfg: Config) -> None:
    """Turn the config into its test-time-augmentation form, as mmpretrain's test.py does."""
    if cfg.get('default_scope') != 'mmpretrain' and 'tta_model' not in cfg:
        raise SystemExit('--tta: this config defines no tta_model; mmaction2 has no TTA wrapper '
                         'for recognizers: its test pipeline already averages the views it '
                         'samples (SampleFrames num_clips x ThreeCrop/TenCrop). Add tta_model '
                         'and tta_pipeline to the config to use --tta.')
    tta_model = cfg.get('tta_model') or dict(type='mmpretrain.AverageClsScoreTTA')
    if 'tta_pipeline' not in cfg:
        test_pipeline = cfg.test_dataloader.dataset.pipeline
        cfg.tta_pipeline = copy.deepcopy(test_pipeline)
        cfg.tta_pipeline[-1] = dict(
            type='TestTimeAug',
            transforms=[[dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
                        [test_pipeline[-1]]])
    cfg.model = ConfigDict(**tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline


def apply_show_dir(cfg: Config, show_dir: str) -> None:
    if cfg.get('default_scope') != 'mmpretrain':
        # mmaction2's VisualizationHook draws (C, T, H, W) inputs; the recipes pack
        # (views, C, T, H, W) clips, which it cannot draw.
        raise SystemExit('--show-dir draws image predictions; for a video use '
                         'tools/demo_video.py CONFIG CKPT VIDEO LABELS --out-file out.mp4')
    hooks = cfg.setdefault('default_hooks', ConfigDict())
    if 'visualization' not in hooks:
        hooks.visualization = ConfigDict(type='VisualizationHook')
    hooks.visualization.update(enable=True, out_dir=show_dir, interval=1)


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
    console.quiet_console(verbose=args.verbose)
    cfg = launch.load_config(args.config, args.cfg_options, args.work_dir)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    if args.tta:
        apply_tta(cfg)
    if args.show_dir:
        apply_show_dir(cfg, args.show_dir)
    launch.apply_dataloader_defaults(cfg)
    if args.amp:
        cfg.test_cfg = cfg.get('test_cfg') or {}
        cfg.test_cfg.fp16 = True
    launch.prepare_distributed(cfg, args.launcher)
    cfg.custom_hooks = list(cfg.get('custom_hooks') or []) + [dict(type='TestProgressHook')]

    # The predictions are always collected: the printed accuracy is checked against them.
    want_samples = args.out and args.out_item != 'metrics'
    dump_path = args.out if want_samples and args.out.endswith('.pkl') else osp.join(
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
    samples = load(dump_path)
    if dump_path != args.out:
        os.remove(dump_path)
    bad = non_finite_count(samples)
    if bad:
        print(f'\n{osp.basename(args.checkpoint)}: {bad} of {len(samples)} test samples got '
              'NaN/Inf scores, so no accuracy is printed (it would be meaningless). The '
              "checkpoint's weights or the inputs are not finite: check the weights for NaN/Inf "
              '(a run that trained on a NaN loss) and the test data.', file=sys.stderr,
              flush=True)
        raise SystemExit(1)
    classes = runner.test_dataloader.dataset.metainfo.get('classes')
    rows = prediction_rows(samples, classes)
    fill_missing_paths(rows, runner.test_dataloader)
    print(f'\n{osp.basename(args.checkpoint)} on '
          f'{len(runner.test_dataloader.dataset)} test samples: {format_metrics(metrics)}',
          flush=True)
    from_rows, from_metric = top1_of(rows), printed_top1(metrics)
    if from_rows is not None and from_metric is not None and \
            not math.isclose(from_rows, from_metric, abs_tol=0.01):
        print(f'warning: the predictions give top-1 {from_rows:.2f}%, the metric '
              f'{from_metric:.2f}% (ties between scores are broken differently)', flush=True)
    if args.out and args.out_item == 'metrics':
        dump(metrics, args.out)
    elif args.out and not args.out.endswith('.pkl'):
        write_rows(rows, args.out)
    if args.out:
        print(f'{"metrics" if args.out_item == "metrics" else "predictions"} written to '
              f'{args.out}', flush=True)
    if args.show_dir:
        print(f'drawn predictions in {args.show_dir}', flush=True)


if __name__ == '__main__':
    main()
    launch.end_distributed_process()
