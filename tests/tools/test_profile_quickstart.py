"""tools/analysis/profile_quickstart.py end to end on tiny image and video configs."""
import os
import os.path as osp
import re
import shutil

import cv2
import numpy as np
import pytest
from apis.media import REPO, real_clip  # tests/apis/media.py
from helpers import load_tool

pytestmark = pytest.mark.usefixtures('single_thread')


def _image_data(root):
    rng = np.random.default_rng(0)
    for label, low in (('dark', 0), ('light', 140)):
        os.makedirs(osp.join(root, 'train', label))
        for i in range(8):
            cv2.imwrite(osp.join(root, 'train', label, f'{i}.png'),
                        rng.integers(low, low + 110, (28, 28), dtype=np.uint8))


def _video_data(root):
    for label, name in (('near', 'carphone_pristine.mp4'), ('far', 'carphone_distorted.mp4')):
        os.makedirs(osp.join(root, 'train', label))
        for i in range(4):
            shutil.copy(real_clip(name), osp.join(root, 'train', label, f'{i}.mp4'))


TINY = 'embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3)'
CASES = {
    'image': (_image_data, f'''
_base_ = [{osp.join(REPO, 'configs', 'quickstart_image.py')!r}]
model = dict(backbone=dict(arch=dict({TINY}, img_size=(32, 32))),
             head=dict(in_channels=64, num_classes=2, topk=(1,)))
train_dataloader = dict(batch_size=4)
''', ['LoadImageChecked', 'RandomCrop', 'PackInputs']),
    'video': (_video_data, f'''
_base_ = [{osp.join(REPO, 'configs', 'quickstart_video.py')!r}]
model = dict(backbone=dict(arch=dict({TINY}, video=True, img_size=(4, 32, 64))),
             cls_head=dict(in_channels=64, num_classes=2))
train_pipeline = [
    dict(type='DecordInit'), dict(type='SampleFrames', clip_len=4, frame_interval=2, num_clips=1),
    dict(type='DecordDecode'), dict(type='Resize', scale=(64, 32), keep_ratio=False),
    dict(type='Flip', flip_ratio=0.5), dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs')]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
''', ['DecordInit', 'DecordDecode', 'PackActionInputs']),
}


@pytest.mark.parametrize('kind', sorted(CASES))
def test_profile_reports_pipeline_loader_runner_and_model_step(kind, tmp_path, capsys):
    make_data, config_text, transforms = CASES[kind]
    make_data(str(tmp_path / 'data'))
    config = tmp_path / f'tiny_{kind}.py'
    config.write_text(config_text)
    tool = load_tool('tools/analysis/profile_quickstart.py')
    tool.main(['--configs', str(config), '--data-root', f'{config.name}={tmp_path / "data"}',
               '--iters', '2', '--warmup', '1', '--samples', '3', '--workers', '0', '1',
               '--compare-recompute'])
    out = capsys.readouterr().out
    assert re.search(r'^CPU: .+, torch \S+, 1 intra-op thread\(s\); load before: ', out, re.M)
    for name in transforms:
        assert re.search(rf'\d+:{name}\s+[0-9.]+ ms', out), name
    assert re.search(r'collate \(one batch\)\s+[0-9.]+ ms', out)
    for workers in (0, 1):
        assert re.search(rf'workers={workers}: first batch\s+[0-9.]+ ms, then\s+[0-9.]+ ms',
                         out)
    assert re.search(r'iteration \(logged time\)\s+[0-9.]+ ms', out)
    assert re.search(r'waiting for data \(data_time\)\s+[0-9.]+ ms', out)
    for label in ('recompute on (default)', 'recompute off'):
        assert label in out
    steps = re.findall(r'train_step total\s+([0-9.]+) ms', out)
    parts = re.findall(r'(?:data_preprocessor|forward\+loss|backward|optimizer step '
                       r'\(clip incl\.\))\s+([0-9.]+) ms', out)
    assert len(steps) == 2 and len(parts) == 8
    # the parts are medians of the same steps: they add up to about the whole step
    assert sum(map(float, parts[:4])) == pytest.approx(float(steps[0]), rel=0.5)
    assert re.search(r'=> one worker needs \d+ ms a batch, the model \d+ ms: the (model step|'
                     r'data pipeline) bounds an iteration', out)
    assert 'load after: ' in out
