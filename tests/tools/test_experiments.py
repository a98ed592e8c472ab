"""tools/experiments: the inflation experiment end to end on tiny data, and the motion task.

The experiment runs its whole path (Fashion-MNIST look-alike IDX files -> image folders ->
image pre-training -> moving-item clips -> scratch and inflated video runs -> results.json) on
a few dozen samples for one epoch. The motion task is checked for what it promises: a clip
and its reversal hold the same frames and opposite labels, so one frame cannot tell the label.
"""
import csv
import json
import os.path as osp
from collections import Counter

import cv2  # noqa: F401  (before decord: decord's bundled zlib 1.2.3 breaks cv2's PNG reading)
import decord
import numpy as np
import pytest
from helpers import load_tool, write_fake_fashion_mnist

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
pytestmark = pytest.mark.usefixtures('single_thread')


inflation = load_tool('tools/experiments/inflation.py')
motion_task = load_tool('tools/experiments/motion_task.py')


def test_inflation_experiment_end_to_end(tmp_path):
    src = write_fake_fashion_mnist(tmp_path / 'fmnist', (('train', 60), ('t10k', 30)))
    out = tmp_path / 'out'
    argv = ['--out', str(out), '--data-dir', str(tmp_path / 'data'), '--fashion-src', src,
            '--inits', 'scratch', 'average', '--seeds', '0', '--fractions', '1.0', '0.5',
            '--train-clips', '20', '--val-clips', '10', '--test-clips', '10',
            '--epochs', '1', '--min-iters', '2', '--batch-size', '8', '--evals', '1',
            '--image-epochs', '1', '--image-train', '30', '--image-val', '10', '--workers', '0']
    report = inflation.main(argv)

    with open(out / 'results.json') as f:
        saved = json.load(f)
    assert saved['summary'] == report['summary']
    assert saved['image']['source'] == 'trained' and osp.isfile(saved['image']['checkpoint'])
    assert 0 <= saved['image']['val_top1'] <= 100
    settings = {(s['init'], s['fraction']): s for s in saved['summary']['settings']}
    assert set(settings) == {(i, f) for i in ('scratch', 'average') for f in (1.0, 0.5)}
    assert settings[('scratch', 1.0)]['train_clips'] == 20
    assert settings[('scratch', 0.5)]['train_clips'] == 10  # one of the two clips per class
    for s in settings.values():
        assert s['top1']['n'] == 1 and 0 <= s['top1']['mean'] <= 100
    assert len(saved['runs']) == 4
    for run in saved['runs']:
        assert run['curve'][0]['epoch'] == 0  # before training
        assert run['curve'][-1]['epoch'] == run['epochs']
        assert all(0 <= p['top1'] <= 100 for p in run['curve'])
        assert len(run['weights_sha256']) == 64
    assert {(p['init'], p['fraction']) for p in saved['summary']['paired']} == \
        {('average', 1.0), ('average', 0.5)}
    assert saved['machine']['torch'] and saved['machine']['load_before']

    # a rerun with the same settings reuses the cached image weights and the finished runs
    again = inflation.main(argv)
    assert again['image']['source'] == 'cached'
    assert again['runs'] == saved['runs']


def test_schedule_trains_any_dataset_size():
    from mmengine.config import Config
    cfg = Config(dict(train_cfg=dict(max_epochs=3)))
    # 72 clips at batch 32: 3 iterations an epoch; a warm-up of 0.3 epoch would be 0 iterations
    total = inflation.set_schedule(cfg, epochs=1, iters_per_epoch=3, warmup_fraction=0.1)
    warmup, cosine = cfg.param_scheduler
    assert total == 3 and warmup['end'] == 1 and cosine['begin'] == 1 and cosine['end'] == 3
    assert cfg.train_cfg.max_epochs == 1
    with pytest.raises(ValueError, match='too short'):
        inflation.set_schedule(cfg, epochs=1, iters_per_epoch=1, warmup_fraction=0.1)
    assert inflation.epochs_for(64, 32, epochs=3, min_iters=120) == (60, 2)
    assert inflation.epochs_for(1280, 32, epochs=3, min_iters=120) == (3, 40)


def test_subsets_are_stratified_and_seeded():
    labels = [c for c in range(4) for _ in range(25)]
    a = inflation.stratified_subset(labels, 0.2, seed=0)
    assert Counter(labels[i] for i in a) == {c: 5 for c in range(4)}
    assert a == inflation.stratified_subset(labels, 0.2, seed=0)
    assert a != inflation.stratified_subset(labels, 0.2, seed=1)
    assert inflation.stratified_subset(labels, 0.01, seed=0) and \
        len(inflation.stratified_subset(labels, 0.01, seed=0)) == 4  # one per class at least
    assert inflation.stratified_subset(labels, 1.0, seed=3) == list(range(100))


def test_paired_difference_calls_a_spread_out_gain_not_significant():
    clear = inflation.paired_difference([2.0, 2.5, 3.0])
    assert clear['significant'] and clear['wins'] == 3 and clear['ci95'][0] > 0
    noisy = inflation.paired_difference([4.0, -3.0, 1.0])
    assert not noisy['significant'] and noisy['ci95'][0] < 0 < noisy['ci95'][1]


def _frames(path: str) -> np.ndarray:
    reader = decord.VideoReader(path)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


@pytest.fixture(scope='module')
def camera_pan(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('camera_pan'))
    sources = motion_task.find_sources()
    summary = motion_task.build(out, dict(train=12, val=12, test=12), lengths=(8, 12, 16),
                                seed=0, sources=sources)
    return out, summary


def test_motion_task_single_frames_cannot_tell_the_label(camera_pan):
    out, summary = camera_pan
    assert summary['counts'] == dict(train=12, val=12, test=12)
    for split in ('train', 'val', 'test'):
        with open(osp.join(out, f'{split}_clips.csv')) as f:
            rows = list(csv.DictReader(f))
        by_key = {(r['group'], r['member']): r for r in rows}
        # labels balanced, and balanced within forward and reversed playback
        assert Counter((r['label'], r['playback']) for r in rows) == {
            (label, playback): len(rows) // 4 for label in motion_task.CLASSES
            for playback in ('forward', 'reversed')}
        for r in rows:
            twin = by_key[(r['group'], r['twin_member'])]
            assert twin['label'] != r['label'] and twin['playback'] != r['playback']
            clip = _frames(osp.join(out, split, r['path']))
            other = _frames(osp.join(out, split, twin['path']))
            # the decoded twin is this clip backwards: the same set of frames, other label
            np.testing.assert_array_equal(other, clip[::-1])
            assert sorted(map(bytes, clip)) == sorted(map(bytes, other))
            assert len(clip) == int(r['length']) and len(clip) in (8, 12, 16)
            # ... and the order matters: the clip is not its own reversal (the camera moves)
            assert np.abs(clip.astype(int) - clip[::-1].astype(int)).mean() > 1


def test_motion_task_splits_use_disjoint_footage(camera_pan):
    out, summary = camera_pan
    spans = {}
    for split in ('train', 'val', 'test'):
        with open(osp.join(out, f'{split}_clips.csv')) as f:
            for r in csv.DictReader(f):
                last = int(r['t0']) + (int(r['length']) - 1) * int(r['step'])
                spans.setdefault((r['source'], split), []).append((int(r['t0']), last))
    for source in summary['sources']:  # three groups of four per split: every source
        train_end = max(b for _, b in spans[(source, 'train')])
        val_start = min(a for a, _ in spans[(source, 'val')])
        val_end = max(b for _, b in spans[(source, 'val')])
        test_start = min(a for a, _ in spans[(source, 'test')])
        assert train_end < val_start <= val_end < test_start


def test_motion_task_loads_as_video_folders(camera_pan):
    out, _ = camera_pan
    labels = inflation.dataset_labels(out, 'test')
    assert sorted(Counter(labels).values()) == [6, 6]
