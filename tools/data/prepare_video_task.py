"""Build a small real-data video task, "which item moves", from Fashion-MNIST.

    python tools/data/prepare_video_task.py [--src /usr/share/datasets/fashion-mnist]
        [--out data/moving_fashion] [--train 6000] [--val 500] [--test 2000]

Every clip shows two real Fashion-MNIST items side by side, each in its own cell: one item
moves (it drifts across its cell and bounces at the edges), the other stays still. The label is
the category of the moving item, so a single frame cannot tell the answer (which of the two
items is it?): the model has to see the motion, and to recognise the item. The two items always
come from different categories.

Writes ``OUT/{train,val,test}/<index>_<name>/<n>.mp4`` (class folders named like the
Fashion-MNIST image task's, so an image model's head lines up with the video classes),
``OUT/classes.txt`` for the demo and ``OUT/<split>_clips.csv`` (moving and still item's class,
side of the moving one) for error analysis. ``train`` and ``val`` clips use images of the official
training set (disjoint), ``test`` clips images of the official 10,000-image test set.
A finished build is left alone unless --force.
"""
import argparse
import csv
import os
import os.path as osp
import sys
from typing import Dict

import cv2
import numpy as np

# The Fashion-MNIST reader and class-folder names are the image converter's (same folder).
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from finished_output import mark_finished, reuse_or_clear  # noqa: E402
from prepare_fashion_mnist import CLASS_NAMES, class_folder, load_split  # noqa: E402


def bounce_positions(num_frames: int, slack: int, start: int, step: int) -> np.ndarray:
    """Positions in [0, slack] of a point moving ``step`` per frame, reflected at both ends."""
    if slack == 0:
        return np.zeros(num_frames, dtype=int)
    period = 2 * slack
    raw = (start + step * np.arange(num_frames)) % period
    return np.where(raw <= slack, raw, period - raw)


def render_clip(moving: np.ndarray, still: np.ndarray, moving_left: bool,
                num_frames: int, cell: int, rng: np.random.Generator) -> np.ndarray:
    """A (T, cell, 2 * cell) uint8 clip: ``moving`` drifts in its cell, ``still`` stays put."""
    item = moving.shape[0]
    slack = cell - item
    if slack < 1:
        raise ValueError(f'cell {cell} must exceed the item size {item} to leave room to move')
    frames = np.zeros((num_frames, cell, 2 * cell), dtype=np.uint8)
    still_y, still_x = rng.integers(0, slack + 1, size=2)
    step_y, step_x = rng.choice([-1, 1], size=2) * rng.integers(1, 3, size=2)
    ys = bounce_positions(num_frames, slack, int(rng.integers(0, 2 * slack)), int(step_y))
    xs = bounce_positions(num_frames, slack, int(rng.integers(0, 2 * slack)), int(step_x))
    moving_x0, still_x0 = (0, cell) if moving_left else (cell, 0)
    for t in range(num_frames):
        frames[t, still_y:still_y + item, still_x0 + still_x:still_x0 + still_x + item] = still
        y, x = ys[t], moving_x0 + xs[t]
        frames[t, y:y + item, x:x + item] = moving
    return frames


def write_video(path: str, frames: np.ndarray, fps: int = 10, codec: str = 'mp4v') -> None:
    """Write grey (T, H, W) frames as a video that decord reads (``codec``: an OpenCV FourCC,
    mp4v for .mp4, MJPG for an intra-only .avi)."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f'OpenCV cannot write {path} with the {codec} codec')
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()


def split_pool(labels: np.ndarray, val_fraction: float, rng: np.random.Generator
               ) -> Dict[str, np.ndarray]:
    """Disjoint train/val image indices, the same fraction of every class (at least one)."""
    train, val = [], []
    for c in range(len(CLASS_NAMES)):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < 2:
            raise ValueError(f'class {c} ({CLASS_NAMES[c]}) has {len(members)} training '
                             'image(s); train and val clips need at least one each')
        take = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val.append(members[:take])
        train.append(members[take:])
    return dict(train=np.concatenate(train), val=np.concatenate(val))


def build_split(out_dir: str, images: np.ndarray, labels: np.ndarray, pool: np.ndarray,
                num_clips: int, num_frames: int, cell: int, rng: np.random.Generator
                ) -> Dict[str, int]:
    """Write ``num_clips`` clips (classes balanced) drawing items from ``pool`` indices."""
    by_class = {c: rng.permutation(pool[labels[pool] == c]) for c in range(len(CLASS_NAMES))}
    cursor = {c: 0 for c in by_class}

    missing = [CLASS_NAMES[c] for c, members in by_class.items() if len(members) == 0]
    if missing:
        raise ValueError(f'{out_dir}: no source image for classes {missing}')

    def take(c: int) -> np.ndarray:
        members = by_class[c]
        image = images[members[cursor[c] % len(members)]]
        cursor[c] += 1
        return image

    counts: Dict[str, int] = {}
    rows = []
    for clip_id in range(num_clips):
        label = clip_id % len(CLASS_NAMES)
        other = int(rng.choice([c for c in range(len(CLASS_NAMES)) if c != label]))
        moving_left = bool(rng.integers(0, 2))
        frames = render_clip(take(label), take(other), moving_left, num_frames, cell, rng)
        folder = osp.join(out_dir, class_folder(label))
        os.makedirs(folder, exist_ok=True)
        path = osp.join(folder, f'{clip_id:05d}.mp4')
        write_video(path, frames)
        rows.append(dict(path=osp.relpath(path, out_dir), moving_label=label, still_label=other,
                         moving_side='left' if moving_left else 'right'))
        counts[class_folder(label)] = counts.get(class_folder(label), 0) + 1
        if (clip_id + 1) % 1000 == 0:
            print(f'  {out_dir}: {clip_id + 1}/{num_clips}', flush=True)
    # What each clip shows, for error analysis: is a mistake the still item's class?
    with open(f'{out_dir}_clips.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return counts


def build(src: str, out: str, sizes: Dict[str, int], num_frames: int, cell: int, seed: int,
          force: bool) -> dict:
    wanted = dict(src=osp.abspath(src), sizes=sizes, num_frames=num_frames, cell=cell,
                  seed=seed)
    finished = reuse_or_clear(out, wanted, sizes, force)
    if finished is not None:
        return finished
    os.makedirs(out, exist_ok=True)

    rng = np.random.default_rng(seed)
    train_images, train_labels = load_split(src, 'train')
    test_images, test_labels = load_split(src, 'test')
    pools = split_pool(train_labels, sizes['val'] / (sizes['train'] + sizes['val']), rng)
    counts = {}
    for split in ('train', 'val', 'test'):
        images, labels = (test_images, test_labels) if split == 'test' else \
            (train_images, train_labels)
        pool = np.arange(len(test_labels)) if split == 'test' else pools[split]
        print(f'writing {sizes[split]} {split} clips under {out}', flush=True)
        per_class = build_split(osp.join(out, split), images, labels, pool, sizes[split],
                                num_frames, cell, rng)
        counts[split] = sum(per_class.values())
    with open(osp.join(out, 'classes.txt'), 'w') as f:
        f.write('\n'.join(class_folder(i) for i in range(len(CLASS_NAMES))) + '\n')
    summary = mark_finished(out, dict(wanted, counts=counts))
    print(f'done: {counts}')
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--src', default='/usr/share/datasets/fashion-mnist',
                        help='folder holding the Fashion-MNIST *-ubyte.gz files')
    parser.add_argument('--out', default='data/moving_fashion', help='output root')
    parser.add_argument('--train', type=int, default=6000, help='training clips')
    parser.add_argument('--val', type=int, default=500, help='validation clips')
    parser.add_argument('--test', type=int, default=2000, help='test clips')
    parser.add_argument('--frames', type=int, default=16, help='frames per clip')
    parser.add_argument('--cell', type=int, default=32,
                        help='side of each item cell (items are 28 px): clips are cell x 2*cell')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true', help='rebuild a finished task')
    args = parser.parse_args()
    sizes = dict(train=args.train, val=args.val, test=args.test)
    if min(sizes.values()) < 1:
        sys.exit(f'every split needs at least one clip, got {sizes}')
    build(args.src, args.out, sizes, args.frames, args.cell, args.seed, args.force)


if __name__ == '__main__':
    main()
