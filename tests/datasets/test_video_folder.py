"""VideoFolderDataset: layout, class indices, list files, unreadable videos, looping, repeats."""
import os
import os.path as osp
from typing import List

import cv2
import numpy as np
import pytest
import torch
from mmaction.registry import DATASETS as ACTION_DATASETS
from mmpretrain.registry import DATASETS as PRETRAIN_DATASETS

import mmvit_plugin  # noqa: F401  (registers the plugin)
from mmvit_plugin.datasets import class_folders, video_folder
from mmvit_plugin.datasets.class_folders import DatasetLayoutError
from mmvit_plugin.datasets.video_folder import (
    VideoDatasetError,
    VideoFolderDataset,
    parse_list_file,
)

# Frame t of every test video is a flat grey of level LEVELS[t]: far enough apart that the
# codec's error never confuses two frames, so decoded frames tell their index.
LEVELS = np.arange(0, 250, 25)


def write_video(path: str, num_frames: int, size=(32, 24)) -> str:
    os.makedirs(osp.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 10, size)
    for t in range(num_frames):
        writer.write(np.full((size[1], size[0], 3), LEVELS[t], np.uint8))
    writer.release()
    return path


def frame_indices(inputs: torch.Tensor) -> List[int]:
    """Recover the source frame index of each frame of an (N, C, T, H, W) uint8 clip."""
    levels = inputs[0, 0, :, 0, 0].numpy().astype(int)
    return [int(np.abs(LEVELS - level).argmin()) for level in levels]


def pipeline(clip_len=8, frame_interval=1, test_mode=False):
    return [
        dict(type='DecordInit'),
        dict(type='SampleFrames', clip_len=clip_len, frame_interval=frame_interval,
             num_clips=1, test_mode=test_mode),
        dict(type='DecordDecode'),
        dict(type='Resize', scale=(16, 16), keep_ratio=False),
        dict(type='FormatShape', input_format='NCTHW'),
        dict(type='PackActionInputs'),
    ]


@pytest.fixture
def video_root(tmp_path):
    root = tmp_path / 'videos'
    for split, classes in {'train': ['walk', 'jump', 'run'], 'val': ['run', 'walk'],
                           'test': ['jump']}.items():
        for name in classes:
            write_video(str(root / split / name / f'{name}_0.mp4'), 10)
    write_video(str(root / 'train' / 'run' / 'nested' / 'run_1.avi'), 10)
    return str(root)


@pytest.fixture
def logged(monkeypatch):
    messages = []
    for module in (video_folder, class_folders):
        monkeypatch.setattr(module, 'print_log',
                            lambda msg, *args, **kwargs: messages.append(msg))
    return messages


def test_class_indices_come_from_sorted_training_folders(video_root):
    train = VideoFolderDataset(data_root=video_root, split='train', pipeline=pipeline())
    val = VideoFolderDataset(data_root=video_root, split='val', pipeline=pipeline(),
                             test_mode=True)
    test = VideoFolderDataset(data_root=video_root, split='test', pipeline=pipeline(),
                              test_mode=True)
    assert train.metainfo['classes'] == val.metainfo['classes'] == ('jump', 'run', 'walk')
    labels = {osp.basename(d['filename']): d['label'] for d in train.load_data_list()}
    assert labels == {'jump_0.mp4': 0, 'run_0.mp4': 1, 'run_1.avi': 1, 'walk_0.mp4': 2}
    # val lacks 'jump' and test has only 'jump': indices stay those of training
    assert sorted(d['label'] for d in val.load_data_list()) == [1, 2]
    assert [d['label'] for d in test.load_data_list()] == [0]
    sample = train[0]
    assert sample['inputs'].shape == (1, 3, 8, 16, 16)
    assert sample['data_samples'].gt_labels.item.tolist() == [0]


def test_builds_from_either_host_registry(video_root):
    cfg = dict(type='VideoFolderDataset', data_root=video_root, split='val',
               pipeline=pipeline(test_mode=True), test_mode=True)
    for registry in (ACTION_DATASETS, PRETRAIN_DATASETS):
        dataset = registry.build(dict(cfg))
        assert len(dataset) == 2
        assert dataset[0]['inputs'].shape == (1, 3, 8, 16, 16)


def test_layout_errors_name_the_path(video_root, tmp_path):
    with pytest.raises(DatasetLayoutError, match='does not exist'):
        VideoFolderDataset(data_root=str(tmp_path / 'nowhere'), pipeline=pipeline())
    with pytest.raises(DatasetLayoutError, match='data_root is empty'):
        VideoFolderDataset(pipeline=pipeline())
    with pytest.raises(DatasetLayoutError, match=r"split folder .*holdout.* does not exist"):
        VideoFolderDataset(data_root=video_root, split='holdout', pipeline=pipeline())
    write_video(osp.join(video_root, 'val', 'swim', 'swim_0.mp4'), 10)
    with pytest.raises(DatasetLayoutError, match=r"val.*\['swim'\]"):
        VideoFolderDataset(data_root=video_root, split='val', pipeline=pipeline())
    empty_split = osp.join(video_root, 'extra')
    os.makedirs(osp.join(empty_split, 'run'))
    with pytest.raises(DatasetLayoutError, match='holds no video'):
        VideoFolderDataset(data_root=video_root, split='extra', pipeline=pipeline())
    no_train = tmp_path / 'no_train'
    write_video(str(no_train / 'val' / 'a' / 'a.mp4'), 3)
    with pytest.raises(DatasetLayoutError, match=r'no_train/train.* is missing: class indices'):
        VideoFolderDataset(data_root=str(no_train), split='val', pipeline=pipeline())


def test_empty_class_and_stray_files_are_reported(video_root, logged):
    os.makedirs(osp.join(video_root, 'val', 'jump'))
    with open(osp.join(video_root, 'val', 'run', 'notes.txt'), 'w') as f:
        f.write('not a video')
    dataset = VideoFolderDataset(data_root=video_root, split='val', pipeline=pipeline(),
                                 test_mode=True)
    assert len(dataset) == 2
    assert any("1 class folder(s) hold no video" in m and osp.join(video_root, 'val', 'jump') in m
               for m in logged)
    assert any('ignored 1 file' in m and 'notes.txt' in m for m in logged)


def test_unreadable_video_is_named_before_training(video_root):
    bad = osp.join(video_root, 'train', 'jump', 'broken.mp4')
    with open(bad, 'wb') as f:
        f.write(b'\x00not a video container' * 20)
    with pytest.raises(VideoDatasetError) as info:
        VideoFolderDataset(data_root=video_root, split='train', pipeline=pipeline())
    message = str(info.value)
    assert bad in message and '1 of 5 videos' in message
    assert 'Invalid data found' in message or 'moov atom' in message  # decord's own words
    assert 'skip_corrupt=True' in message


def test_unreadable_videos_skipped_with_a_count(video_root, logged):
    bad = osp.join(video_root, 'train', 'jump', 'broken.mp4')
    with open(bad, 'wb') as f:
        f.write(b'')
    truncated = osp.join(video_root, 'train', 'walk', 'truncated.mp4')
    with open(osp.join(video_root, 'train', 'walk', 'walk_0.mp4'), 'rb') as f:
        data = f.read()
    with open(truncated, 'wb') as f:
        f.write(data[:len(data) // 2])
    dataset = VideoFolderDataset(data_root=video_root, split='train', pipeline=pipeline(),
                                 skip_corrupt=True)
    assert len(dataset) == 4
    assert set(dataset.skipped_videos) == {bad, truncated} and dataset.num_skipped == 2
    assert any('skipped 2 of 6 unreadable videos' in m for m in logged)
    assert all(d['filename'] not in (bad, truncated) for d in dataset.load_data_list())


def test_video_breaking_after_the_check_is_named(video_root, logged):
    dataset = VideoFolderDataset(data_root=video_root, split='val', pipeline=pipeline(),
                                 test_mode=True)
    victim = dataset.get_data_info(0)['filename']
    with open(victim, 'wb') as f:
        f.write(b'garbage')
    with pytest.raises(VideoDatasetError, match=f"while loading video '{victim}'"):
        dataset[0]
    # evaluation (val defaults to test_mode) never substitutes, even with skip_corrupt
    lenient_eval = VideoFolderDataset(data_root=video_root, split='val', pipeline=pipeline(),
                                      skip_corrupt=True, check_videos=False)
    assert lenient_eval.test_mode
    with pytest.raises(VideoDatasetError, match='does not substitute samples in evaluation'):
        lenient_eval[0]
    train = VideoFolderDataset(data_root=video_root, split='val', pipeline=pipeline(),
                               skip_corrupt=True, check_videos=False, test_mode=False)
    sample = train[0]  # training: the broken one is skipped, another video comes instead
    assert sample['data_samples'].gt_labels.item.tolist() == [2]
    assert victim in train.skipped_videos


@pytest.mark.parametrize('clip_len,frame_interval,test_mode,expected', [
    (8, 1, False, [0, 1, 2, 0, 1, 2, 0, 1]),
    (8, 1, True, [0, 1, 2, 0, 1, 2, 0, 1]),
    (4, 2, True, [0, 2, 1, 0]),  # a loop of the 3-frame video, read every 2nd frame
])
def test_short_videos_loop_into_a_full_clip(tmp_path, clip_len, frame_interval, test_mode,
                                            expected):
    write_video(str(tmp_path / 'train' / 'a' / 'short.mp4'), 3)
    dataset = VideoFolderDataset(
        data_root=str(tmp_path), pipeline=pipeline(clip_len, frame_interval, test_mode),
        test_mode=test_mode)
    sample = dataset[0]
    assert sample['inputs'].shape[2] == clip_len
    assert frame_indices(sample['inputs']) == expected


def test_list_file_format_through_the_same_class(video_root, tmp_path):
    ann = tmp_path / 'train_list.txt'
    ann.write_text('train/run/run_0.mp4 1\ntrain/jump/jump_0.mp4 0\n\n')
    dataset = VideoFolderDataset(data_root=video_root, ann_file=str(ann), pipeline=pipeline())
    assert dataset.metainfo['classes'] == ('jump', 'run', 'walk')  # from the train folders
    assert [d['label'] for d in dataset.load_data_list()] == [1, 0]
    assert dataset[1]['data_samples'].gt_labels.item.tolist() == [0]
    # paths relative to data_prefix, classes from a names file, no folder layout needed
    names = tmp_path / 'names.txt'
    names.write_text('jump\nrun\nwalk\n')
    ann.write_text('run/run_0.mp4 1\n')
    dataset = VideoFolderDataset(ann_file=str(ann), classes=str(names), pipeline=pipeline(),
                                 data_prefix=dict(video=osp.join(video_root, 'train')))
    assert len(dataset) == 1 and dataset.metainfo['classes'] == ('jump', 'run', 'walk')


def test_list_file_errors_name_file_and_line(tmp_path):
    ann = tmp_path / 'list.txt'
    ann.write_text('a.mp4 0\nb.mp4 7\n')
    with pytest.raises(VideoDatasetError, match=r'list.txt:2: label 7 outside \[0, 3\)'):
        parse_list_file(str(ann), '', num_classes=3)
    ann.write_text('a.mp4 zero\n')
    with pytest.raises(VideoDatasetError, match=r'list.txt:1: labels must be integers'):
        parse_list_file(str(ann), '')
    ann.write_text('a.mp4 0 1\n')
    with pytest.raises(VideoDatasetError, match='multi_class'):
        parse_list_file(str(ann), '')
    assert parse_list_file(str(ann), 'root', multi_class=True) == [('root/a.mp4', [0, 1])]
    with pytest.raises(VideoDatasetError, match='does not exist'):
        parse_list_file(str(tmp_path / 'missing.txt'), '')


def test_repeated_augmentation_decodes_once(video_root):
    cfg = pipeline()
    cfg.insert(3, dict(type='Flip', flip_ratio=0.5))
    dataset = VideoFolderDataset(data_root=video_root, split='val', pipeline=cfg,
                                 num_repeats=3)
    samples = dataset[0]
    assert isinstance(samples, list) and len(samples) == 3
    # the same frames in each repeat (sampled once), augmented independently afterwards
    assert len({tuple(frame_indices(s['inputs'])) for s in samples}) == 1
    with pytest.raises(ValueError, match='num_repeats'):
        VideoFolderDataset(data_root=video_root, pipeline=pipeline(), num_repeats=0)


def test_clips_of_different_sizes_are_refused_not_padded(tmp_path):
    root = tmp_path / 'videos'
    first = write_video(str(root / 'train' / 'a' / 'wide.mp4'), 10, size=(32, 24))
    other = write_video(str(root / 'train' / 'b' / 'big.mp4'), 10, size=(64, 48))
    no_resize = [step for step in pipeline() if step['type'] != 'Resize']
    dataset = VideoFolderDataset(data_root=str(root), pipeline=no_resize)
    assert dataset[0]['inputs'].shape == (1, 3, 8, 24, 32)
    with pytest.raises(VideoDatasetError) as info:
        dataset[1]
    message = str(info.value)
    assert (f"video '{other}' gives inputs of shape (1, 3, 8, 48, 64), but '{first}' gave "
            '(1, 3, 8, 24, 32)') in message
    assert 'zero-pad' in message and "dict(type='Resize'" in message
    # a pipeline that makes one size, or an explicit allowance, passes
    resized = VideoFolderDataset(data_root=str(root), pipeline=pipeline())
    assert resized[0]['inputs'].shape == resized[1]['inputs'].shape == (1, 3, 8, 16, 16)
    mixed = VideoFolderDataset(data_root=str(root), pipeline=no_resize, allow_mixed_sizes=True)
    assert mixed[1]['inputs'].shape == (1, 3, 8, 48, 64)


def write_truncated_mjpg(path: str) -> str:
    """An MJPG .avi cut to 60%: decord reads it from the path but crashes on it in memory."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'MJPG'), 10, (64, 48))
    noise = np.random.default_rng(0)
    for _ in range(30):
        writer.write(noise.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    with open(path, 'rb') as f:
        data = f.read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) * 6 // 10])
    return path


def test_truncated_mjpg_avi_is_named_not_a_crash(video_root, logged):
    bad = write_truncated_mjpg(osp.join(video_root, 'train', 'walk', 'cut.avi'))
    # What training does with it: mmaction2's DecordInit reads the bytes into memory, and
    # decord dies of SIGSEGV (the DataLoader worker did, without naming the file).
    code = ('import sys; from mmaction.datasets.transforms import DecordInit; '
            'DecordInit().transform(dict(filename=sys.argv[1]))')
    import subprocess
    import sys
    assert subprocess.run([sys.executable, '-c', code, bad]).returncode == -11

    with pytest.raises(VideoDatasetError) as info:
        VideoFolderDataset(data_root=video_root, split='train', pipeline=pipeline())
    message = str(info.value)
    assert f'{bad}: the decoder crashed (SIGSEGV) reading it from memory' in message
    assert 'failed when probed in parallel' not in message

    dataset = VideoFolderDataset(data_root=video_root, split='train', pipeline=pipeline(),
                                 skip_corrupt=True, check_workers=2)
    assert list(dataset.skipped_videos) == [bad] and len(dataset) == 4
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1,
                                         collate_fn=lambda batch: batch)
    assert sum(len(batch) for batch in loader) == 4  # no worker lost


def test_probe_reports_files_and_timeouts(tmp_path):
    from mmvit_plugin.datasets.video_probe import probe_video, probe_videos
    good = write_video(str(tmp_path / 'good.mp4'), 6)
    results = probe_videos([good, str(tmp_path / 'missing.mp4'), good], num_workers=2)
    assert len(results) == 2  # each distinct path once
    assert results[good].reason is None
    assert (results[good].num_frames, results[good].height, results[good].width) == (6, 24, 32)
    assert 'No such file' in results[str(tmp_path / 'missing.mp4')].reason
    assert 'longer than 0.001 s' in probe_video(good, timeout=0.001)
    assert video_folder.explain_unreadable(good) == 'no error: it decodes'
