"""tools/train.py, tools/test.py and tools/dist_train.sh end to end on a tiny quickstart.

Each test trains the quickstart config (configs/quickstart_image.py) with a 4-block MViTv2 of
width 8 on 32x32 images made in tmp_path, for a few iterations, in subprocesses as a user would.
"""
import csv
import os
import os.path as osp
import signal
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import mmvit_plugin  # noqa: F401  (allows mmengine's checkpoint globals under weights_only)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
QUICKSTART = osp.join(REPO, 'configs', 'quickstart_image.py')
CLASSES = ('dark', 'light')

# Test-only hooks: record what each rank trained on, and kill the run at an iteration.
HOOKS_MODULE = '''
import os, signal
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class RecordSamplesHook(Hook):
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        path = os.path.join(runner.work_dir, f'seen_rank{get_rank()}_of{get_world_size()}.txt')
        with open(path, 'a') as f:
            for sample in data_batch['data_samples']:
                f.write(f"{runner.epoch} {sample.img_path}\\n")


@HOOKS.register_module()
class KillAtIterHook(Hook):
    def __init__(self, at_iter):
        self.at_iter = at_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at_iter:
            os.kill(os.getpid(), signal.SIGKILL)
'''


def _make_images(root: str, split: str, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        os.makedirs(osp.join(root, split, name), exist_ok=True)
        for i in range(per_class):
            low = 0 if label == 0 else 140
            image = rng.integers(low, low + 110, size=(28, 28), dtype=np.uint8)
            cv2.imwrite(osp.join(root, split, name, f'{i:03d}.png'), image)


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    """Tiny class-folder data set, the test hooks, and a config derived from the quickstart."""
    base = tmp_path_factory.mktemp('image_tools')
    data = str(base / 'data')
    _make_images(data, 'train', 16, seed=0)
    _make_images(data, 'val', 4, seed=1)
    _make_images(data, 'test', 5, seed=2)
    (base / 'tools_test_hooks.py').write_text(HOOKS_MODULE)
    config = base / 'tiny_quickstart.py'
    config.write_text(f'''
_base_ = [{QUICKSTART!r}]
custom_imports = dict(imports=['mmvit_plugin', 'tools_test_hooks'], allow_failed_imports=False)
model = dict(backbone=dict(arch=dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                                     img_size=(32, 32), drop_path_rate=0.1)),
             head=dict(in_channels=64, num_classes=2, topk=(1,)))
data_preprocessor = dict(num_classes=2)
# Random flips and drop path make the resume check depend on the random generators.
train_dataloader = dict(batch_size=4, num_workers=0,
                        dataset=dict(data_root={data!r}, pipeline=[
                            dict(type='LoadImageChecked'),
                            dict(type='RandomCrop', crop_size=32, padding=2),
                            dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                            dict(type='PackInputs')]))
val_dataloader = dict(batch_size=8, num_workers=0, dataset=dict(data_root={data!r}))
test_dataloader = dict(batch_size=8, num_workers=0, dataset=dict(data_root={data!r}))
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = dict(type='Accuracy', topk=(1,))
max_epochs = 3
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min_ratio=0.01, by_epoch=True, begin=1,
         end=max_epochs, convert_to_iter_based=True),
]
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval=1, max_keep_ckpts=5, save_best=None))
''')
    kill_config = base / 'tiny_quickstart_killed.py'
    kill_config.write_text(f'''_base_ = [{str(config)!r}]
# 8 iterations per epoch: die in the middle of the third epoch (iteration 20 of 24).
custom_hooks = [dict(type='EpochSeedHook'), dict(type='KillAtIterHook', at_iter=20)]
''')
    record_config = base / 'tiny_quickstart_recorded.py'
    record_config.write_text(f'''_base_ = [{str(config)!r}]
custom_hooks = [dict(type='EpochSeedHook'), dict(type='RecordSamplesHook')]
''')
    return dict(base=base, data=data, config=str(config), kill_config=str(kill_config),
                record_config=str(record_config))


def _env(workspace) -> dict:
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(workspace['base']), REPO,
                                         env.get('PYTHONPATH', '')])
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def _run(args, workspace, check=True, timeout=240):
    result = subprocess.run(args, cwd=REPO, env=_env(workspace), capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{args} failed ({result.returncode}):\n'
                             f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}')
    return result


def _train(workspace, work_dir, *extra, config='config', check=True):
    return _run([sys.executable, 'tools/train.py', workspace[config], '--work-dir',
                 str(work_dir), *extra], workspace, check=check)


def _load(path):
    # weights_only, as resume loads them: only the globals mmvit_plugin allows.
    return torch.load(path, map_location='cpu', weights_only=True)


def test_resume_after_kill_ends_like_an_uninterrupted_run(workspace, tmp_path):
    straight = tmp_path / 'straight'
    _train(workspace, straight)

    interrupted = tmp_path / 'interrupted'
    killed = _train(workspace, interrupted, config='kill_config', check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert osp.isfile(interrupted / 'epoch_2.pth')
    assert not osp.exists(interrupted / 'epoch_3.pth')

    resumed = _train(workspace, interrupted, '--resume')
    assert 'resumed epoch: 2, iter: 16' in resumed.stdout + resumed.stderr

    expected, got = _load(straight / 'epoch_3.pth'), _load(interrupted / 'epoch_3.pth')
    assert got['meta']['epoch'] == expected['meta']['epoch'] == 3
    assert got['meta']['iter'] == expected['meta']['iter'] == 24
    assert expected['state_dict'].keys() == got['state_dict'].keys()
    for key, value in expected['state_dict'].items():
        assert torch.equal(value, got['state_dict'][key]), key
    for group_a, group_b in zip(expected['optimizer']['state'].values(),
                                got['optimizer']['state'].values()):
        for name in ('exp_avg', 'exp_avg_sq'):
            assert torch.equal(group_a[name], group_b[name])
    # And training really changed the weights (not a trivially equal pair).
    first = _load(straight / 'epoch_1.pth')['state_dict']
    assert not torch.equal(first['head.fc.weight'], expected['state_dict']['head.fc.weight'])


def test_train_amp_then_test_prints_top1_and_dumps_predictions(workspace, tmp_path):
    work_dir = tmp_path / 'amp'
    trained = _train(workspace, work_dir, '--amp', '--cfg-options', 'train_cfg.max_epochs=1')
    log = trained.stdout + trained.stderr
    assert 'bfloat16 autocast on the CPU' in log
    # the config dump (log file only: the console is quiet) shows the wrapper used
    assert 'CPUAutocastOptimWrapper' in next(work_dir.glob('*/*.log')).read_text()
    out = tmp_path / 'preds.csv'
    tested = _run([sys.executable, 'tools/test.py', workspace['config'],
                   str(work_dir / 'epoch_1.pth'), '--work-dir', str(tmp_path / 'test'),
                   '--out', str(out)], workspace)
    assert 'on 10 test samples: top-1: ' in tested.stdout
    assert '] 2/2,' in tested.stdout  # the progress bar over the 2 test batches
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    assert {row['gt_class'] for row in rows} == set(CLASSES)
    assert all(row['pred_class'] in CLASSES and 0 <= float(row['pred_score']) <= 1
               for row in rows)
    # The printed top-1 agrees with the dumped predictions.
    correct = sum(row['gt_label'] == row['pred_label'] for row in rows)
    assert f'top-1: {100 * correct / 10:.2f}%' in tested.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU (gloo) path')
def test_dist_train_two_cpu_processes_see_different_data(workspace, tmp_path):
    work_dir = tmp_path / 'dist'
    env = _env(workspace)
    env['PORT'] = str(_free_port())
    result = subprocess.run(
        ['bash', 'tools/dist_train.sh', workspace['record_config'], '2', '--work-dir',
         str(work_dir), '--cfg-options', 'train_cfg.max_epochs=1'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = {}
    for rank in (0, 1):
        with open(work_dir / f'seen_rank{rank}_of2.txt') as f:
            seen[rank] = [line.split(' ', 1)[1].strip() for line in f]
    assert len(seen[0]) == len(seen[1]) == 16  # 32 training images split over 2 ranks
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 32
    assert osp.isfile(work_dir / 'epoch_1.pth')


def test_format_metrics_prints_both_hosts_accuracies_as_percentages():
    import importlib.util
    spec = importlib.util.spec_from_file_location('test_tool', osp.join(REPO, 'tools', 'test.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.format_metrics({'accuracy/top1': 91.234}).startswith('top-1: 91.23%')
    assert tool.format_metrics({'acc/top1': 0.795, 'acc/top5': 1.0}) == \
        'top-1: 79.50%  top-5: 100.00%'


def _test_tool():
    import importlib.util
    spec = importlib.util.spec_from_file_location('test_tool', osp.join(REPO, 'tools', 'test.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_prediction_rows_read_both_hosts_samples_and_spot_non_finite_scores():
    tool = _test_tool()
    image = dict(img_path='a.png', gt_label=torch.tensor([1]),
                 pred_score=torch.tensor([0.2, 0.8]), pred_label=torch.tensor([1]))
    # mmaction2 dumps LabelData fields as {'item': tensor} under plural names
    video = dict(filename='b.mp4', gt_labels={'item': torch.tensor([0])},
                 pred_scores={'item': torch.tensor([0.9, 0.1])},
                 pred_labels={'item': torch.tensor([0])})
    rows = tool.prediction_rows([image, video], ('x', 'y'))
    assert [(r['img_path'], r['gt_label'], r['pred_label'], r['pred_class']) for r in rows] == \
        [('a.png', 1, 1, 'y'), ('b.mp4', 0, 0, 'x')]
    assert tool.top1_of(rows) == 100.0
    nan = dict(image, pred_score=torch.tensor([float('nan'), 0.5]))
    assert tool.non_finite_count([image, nan, video]) == 1


def test_test_tool_tta_show_dir_and_metrics_out(workspace, tmp_path):
    work_dir = tmp_path / 'train'
    _train(workspace, work_dir, '--seed', '3', '--deterministic', '--cfg-options',
           'train_cfg.max_epochs=1')
    ckpt = str(work_dir / 'epoch_1.pth')
    assert _load(ckpt)['meta']['seed'] == 3
    show = tmp_path / 'drawn'
    metrics_out = tmp_path / 'metrics.json'
    # --tta wraps the model in AverageClsScoreTTA: CheckpointFormatHook looks through it
    tested = _run([sys.executable, 'tools/test.py', workspace['config'], ckpt, '--tta',
                   '--out', str(metrics_out), '--out-item', 'metrics',
                   '--work-dir', str(tmp_path / 'test')], workspace)
    assert 'on 10 test samples: top-1: ' in tested.stdout, tested.stdout + tested.stderr
    assert 'metrics written to' in tested.stdout
    import json
    assert 'accuracy/top1' in json.loads(metrics_out.read_text())
    drawn = _run([sys.executable, 'tools/test.py', workspace['config'], ckpt,
                  '--show-dir', str(show), '--work-dir', str(tmp_path / 'test')], workspace)
    assert f'drawn predictions in {show}' in drawn.stdout
    # mmpretrain names a drawing after the image's file name: dark/000.png and light/000.png
    # share one
    assert {p.name for p in show.glob('*.png')} == {f'{i:03d}.png_0.png' for i in range(5)}


def test_train_console_is_quiet_unless_verbose(workspace, tmp_path):
    quiet = _train(workspace, tmp_path / 'quiet', '--cfg-options', 'train_cfg.max_epochs=1')
    assert 'Config:' not in quiet.stdout and 'paramwise_options' not in quiet.stdout
    assert 'config: in the log file' in quiet.stdout
    assert 'Epoch(train)' in quiet.stdout  # progress still shows
    log = next((tmp_path / 'quiet').glob('*/*.log')).read_text()
    assert 'Config:' in log  # the full dump is kept in the log file
    verbose = _train(workspace, tmp_path / 'verbose', '--verbose', '--cfg-options',
                     'train_cfg.max_epochs=1')
    assert 'Config:' in verbose.stdout
