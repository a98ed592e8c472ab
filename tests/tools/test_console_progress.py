"""Concise console progress (mmvit_plugin/engine/console.py) for the main job's long phases.

The quickstart scripts pipe tools/train.py and tools/test.py through the filter; it keeps one
line per logged iteration and the validation/test results on the console and writes the whole
output to a log file.
"""
import io
import os
import os.path as osp
import re
import subprocess

import cv2
import numpy as np
import pytest

from mmvit_plugin.engine.console import ProgressFilter, filter_progress

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPTS = ('tools/quickstart.sh', 'tools/quickstart_video.sh')
TRAIN = ('12/02 14:34:13 - mmengine - INFO - Epoch(train) [1][ 20/188]  base_lr: 1.0000e-03 '
         'lr: 9.5000e-04  eta: 0:09:12  time: 1.0262  data_time: 0.0522  grad_norm: 6.7977  '
         'loss: 0.7528  top1_acc: 1.0000  loss_cls: 0.7528\n')
VAL_PROGRESS = ('12/02 14:34:15 - mmengine - INFO - Epoch(val) [1][ 5/10]    eta: 0:00:01  '
                'time: 1.1477  data_time: 0.3535  \n')
VAL_RESULT = ('12/02 14:34:17 - mmengine - INFO - Epoch(val) [1][10/10]    acc/top1: 0.7500  '
              'acc/top5: 1.0000  data_time: 0.3456  time: 1.3803\n')


def test_records_become_one_concise_line_each():
    progress = ProgressFilter('scratch')
    line = progress.line(TRAIN)
    assert line.startswith('[scratch] 14:34:13 train epoch 1 [ 20/188]')
    for part in ('loss 0.7528', 'lr 9.50e-04', 'eta 0:09:12', '1.03 s/iter (data 0.05)'):
        assert part in line
    assert 'grad_norm' not in line and 'base_lr' not in line
    assert progress.line(VAL_PROGRESS) is None  # the loop's own progress, not a result
    assert progress.line(VAL_RESULT) == \
        '[scratch] 14:34:17 val epoch 1: acc/top1 0.7500  acc/top5 1.0000'
    test_result = VAL_RESULT.replace('Epoch(val) [1][10/10]', 'Epoch(test) [10/10]')
    assert progress.line(test_result) == \
        '[scratch] 14:34:17 test: acc/top1 0.7500  acc/top5 1.0000'
    for hidden in ('12/02 14:34:11 - mmengine - WARNING - "FileClient" will be deprecated\n',
                   '12/02 14:34:07 - mmengine - INFO - Checkpoints will be saved to /x.\n',
                   '    sys.platform: linux\n'):
        assert progress.line(hidden) is None
    assert progress.line('12/02 14:34:07 - mmengine - ERROR - bad thing\n') == \
        '[scratch] 14:34:07 ERROR: bad thing'


def test_progress_bar_in_tenths_and_records_glued_behind_a_frame(tmp_path):
    # mmengine's ProgressBar redraws with a carriage return and no newline, so a record can
    # follow a frame on the same line
    frames = [f'\r[{">" * i}{" " * (40 - i)}] {i}/40, 2.0 task/s, elapsed: {i}s, ETA: '
              f'{40 - i:5}s' for i in range(1, 41)]
    text = ''.join(frames[:-1]) + frames[-1] + VAL_RESULT.replace(
        'Epoch(val) [1][10/10]', 'Epoch(test) [40/40]')
    out, log = tmp_path / 'out.txt', tmp_path / 'log.txt'
    with open(out, 'w') as o, open(log, 'w') as f:
        # read as main() reads stdin: universal newlines turn each frame into a line
        filter_progress(io.TextIOWrapper(io.BytesIO(text.encode()), newline=None), o, log=f)
    shown = out.read_text().splitlines()
    bars = [line for line in shown if ' batches, ' in line]
    # the first frame, then one per tenth of the batches
    assert [int(re.search(r'test (\d+)/40', b).group(1)) for b in bars] == \
        [1] + [4 * k for k in range(1, 11)]
    assert shown[-1].endswith('test: acc/top1 0.7500  acc/top5 1.0000')
    assert log.read_text() == text.replace('\r', '\n')  # the log keeps everything


def _images(root: str) -> None:
    rng = np.random.default_rng(0)
    for split, count in (('train', 16), ('val', 4), ('test', 4)):
        for label, low in (('dark', 0), ('light', 140)):
            os.makedirs(osp.join(root, split, label))
            for i in range(count):
                cv2.imwrite(osp.join(root, split, label, f'{i}.png'),
                            rng.integers(low, low + 110, (28, 28), dtype=np.uint8))


def _progress_command(script: str) -> str:
    """The filter command a quickstart script pipes its tools through."""
    with open(osp.join(REPO, script)) as f:
        found = re.search(r'^PROGRESS="([^"]+)"', f.read(), re.M)
    assert found, f'{script} defines no PROGRESS filter'
    return found.group(1)


@pytest.mark.parametrize('script', SCRIPTS)
def test_every_training_and_test_run_of_the_scripts_shows_progress(script):
    with open(osp.join(REPO, script)) as f:
        text = f.read().replace('\\\n', ' ')  # join continued lines
    runs = [line for line in text.splitlines()
            if re.match(r'\s*python tools/(train|test)\.py', line)]
    assert runs, script
    for line in runs:
        # the whole output reaches the filter, which prints progress and keeps a log
        assert re.search(r'2>&1\s*\|\s*\$PROGRESS --tag \S+ --log \S+', line), line
        assert not re.search(r'>\s*"?\$', line.split('|')[0]), line  # no redirect to a file


def test_train_and_test_through_the_scripts_filter_show_progress_not_dumps(tmp_path):
    data = str(tmp_path / 'data')
    _images(data)
    config = tmp_path / 'tiny.py'
    config.write_text(f'''
_base_ = [{osp.join(REPO, 'configs', 'quickstart_image.py')!r}]
model = dict(backbone=dict(arch=dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                                     img_size=(32, 32))),
             head=dict(in_channels=64, num_classes=2, topk=(1,)))
train_dataloader = dict(batch_size=8, dataset=dict(data_root={data!r}))
val_dataloader = dict(batch_size=4, dataset=dict(data_root={data!r}))
test_dataloader = dict(batch_size=2, dataset=dict(data_root={data!r}))
val_evaluator = dict(topk=(1,))
test_evaluator = dict(topk=(1,))
default_hooks = dict(logger=dict(interval=2))
train_cfg = dict(max_epochs=1)
''')
    work = tmp_path / 'work'
    progress = _progress_command('tools/quickstart_video.sh')
    assert progress == _progress_command('tools/quickstart.sh')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    command = (f'python tools/train.py {config} --work-dir {work} 2>&1 | '
               f'{progress} --tag tiny --log {tmp_path}/train.log && '
               f'python tools/test.py {config} {work}/epoch_1.pth --work-dir {work}/test 2>&1 | '
               f'{progress} --tag tiny --log {tmp_path}/test.log')
    done = subprocess.run(['bash', '-o', 'pipefail', '-c', command], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    shown = done.stdout.splitlines()
    # 32 images, batch 8: iterations 2 and 4 are logged, then the validation result
    train = [line for line in shown if ' train epoch 1 [' in line]
    assert [re.search(r'\[(\d)/4\]', line).group(1) for line in train] == ['2', '4']
    assert all(re.search(r'loss [0-9.]+  lr [0-9.e+-]+  eta \d+:\d\d:\d\d', t) for t in train)
    assert any(re.search(r' val epoch 1: accuracy/top1 [0-9.]+$', line) for line in shown)
    assert any('training finished in ' in line for line in shown)
    assert any(re.search(r'test 4/4 batches', line) for line in shown)
    assert any(re.search(r'epoch_1\.pth on 8 test samples: top-1: [0-9.]+%', line)
               for line in shown)
    assert all(line.startswith('[tiny] ') for line in shown)
    assert len(shown) <= 12, shown
    for dump in ('Config:', 'System environment', 'paramwise', 'WARNING', 'Hooks will be'):
        assert dump not in done.stdout
    train_log = (tmp_path / 'train.log').read_text()
    # the log file keeps the tool's console output; mmengine's own log keeps the config
    assert 'Epoch(train) [1][4/4]' in train_log and 'config: in the log file' in train_log
    assert 'Config:' in next(work.glob('*/*.log')).read_text()
