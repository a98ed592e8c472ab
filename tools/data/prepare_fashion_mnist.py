"""Convert Fashion-MNIST (IDX files) into the class-folder layout read by ImageClassFolder.

    python tools/data/prepare_fashion_mnist.py [--src /usr/share/datasets/fashion-mnist]
        [--out data/fashion_mnist] [--val-size 5000]

Writes ``OUT/{train,val,test}/<index>_<name>/<n>.png``. ``test`` is the official 10,000-image
test set; ``val`` is a class-stratified, seeded hold-out of the official training set, and
``train`` is the rest. Folder names start with the official label index, so the sorted class
order equals the official label order. A finished conversion is left alone unless --force.
"""
import argparse
import gzip
import os
import os.path as osp
import struct
import sys
from typing import Dict, Tuple

import cv2
import numpy as np
from mmengine.utils import ProgressBar

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from finished_output import mark_finished, reuse_or_clear  # noqa: E402

CLASS_NAMES = ('T-shirt_top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
               'Sneaker', 'Bag', 'Ankle_boot')
FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz'),
}
PROGRESS_STEP = 2000  # redraw the progress bar every this many files


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array of its declared shape."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f'{path}: not an IDX file (bad magic number)')
    dtype_code, ndim = data[2], data[3]
    if dtype_code != 0x08:
        raise ValueError(f'{path}: IDX type 0x{dtype_code:02x} unsupported, expected unsigned '
                         'bytes (0x08)')
    shape = struct.unpack(f'>{ndim}I', data[4:4 + 4 * ndim])
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        raise ValueError(f'{path}: holds {payload.size} values, header says {shape}')
    return payload.reshape(shape)


def load_split(src: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    """(images N x 28 x 28 uint8, labels N) of the official 'train' or 'test' split."""
    image_file, label_file = (osp.join(src, name) for name in FILES[split])
    for path in (image_file, label_file):
        if not osp.isfile(path):
            raise FileNotFoundError(f'{path} not found: install Debian package '
                                    'dataset-fashion-mnist or pass --src')
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f'{split}: images {images.shape} and labels {labels.shape} disagree')
    if labels.max() >= len(CLASS_NAMES):
        raise ValueError(f'{label_file}: label {labels.max()} out of range')
    return images, labels


def stratified_holdout(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Boolean mask of ``size`` samples, the same share of each class, chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    classes = np.unique(labels)
    for position, cls in enumerate(classes):
        members = np.flatnonzero(labels == cls)
        take = size // len(classes) + (1 if position < size % len(classes) else 0)
        mask[rng.choice(members, size=take, replace=False)] = True
    return mask


def class_folder(label: int) -> str:
    return f'{label}_{CLASS_NAMES[label]}'


def write_split(out_dir: str, images: np.ndarray, labels: np.ndarray,
                ids: np.ndarray, progress: ProgressBar) -> Dict[str, int]:
    """Write each image as ``out_dir/<class>/<id>.png``; returns counts per class folder."""
    counts: Dict[str, int] = {}
    written = 0
    for label in np.unique(labels):
        os.makedirs(osp.join(out_dir, class_folder(int(label))), exist_ok=True)
    for image, label, sample_id in zip(images, labels, ids):
        folder = class_folder(int(label))
        path = osp.join(out_dir, folder, f'{sample_id:05d}.png')
        if not cv2.imwrite(path, image):
            raise OSError(f'could not write {path}')
        counts[folder] = counts.get(folder, 0) + 1
        written += 1
        if written % PROGRESS_STEP == 0:
            progress.update(PROGRESS_STEP)
    if written % PROGRESS_STEP:
        progress.update(written % PROGRESS_STEP)
    return counts


def convert(src: str, out: str, val_size: int, seed: int, force: bool) -> dict:
    wanted = dict(src=osp.abspath(src), val_size=val_size, seed=seed)
    finished = reuse_or_clear(out, wanted, ('train', 'val', 'test'), force, 'conversion')
    if finished is not None:
        return finished

    train_images, train_labels = load_split(src, 'train')
    test_images, test_labels = load_split(src, 'test')
    if not 0 <= val_size < len(train_labels):
        raise ValueError(f'--val-size {val_size} must be in [0, {len(train_labels)})')
    val_mask = stratified_holdout(train_labels, val_size, seed)
    train_ids = np.arange(len(train_labels))

    total = len(train_labels) + len(test_labels)
    print(f'writing {total} PNG files under {out}')
    progress = ProgressBar(total)
    counts = {
        'train': write_split(osp.join(out, 'train'), train_images[~val_mask],
                             train_labels[~val_mask], train_ids[~val_mask], progress),
        'val': write_split(osp.join(out, 'val'), train_images[val_mask],
                           train_labels[val_mask], train_ids[val_mask], progress),
        'test': write_split(osp.join(out, 'test'), test_images, test_labels,
                            np.arange(len(test_labels)), progress),
    }
    sys.stdout.write('\n')
    summary = mark_finished(out, dict(wanted, counts={k: sum(v.values())
                                                      for k, v in counts.items()}))
    print(f'done: {summary["counts"]}')
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--src', default='/usr/share/datasets/fashion-mnist',
                        help='folder holding the four *-ubyte.gz files')
    parser.add_argument('--out', default='data/fashion_mnist', help='output root')
    parser.add_argument('--val-size', type=int, default=5000,
                        help='images held out of the official training set for validation')
    parser.add_argument('--seed', type=int, default=0, help='seed of the validation hold-out')
    parser.add_argument('--force', action='store_true', help='redo a finished conversion')
    args = parser.parse_args()
    convert(args.src, args.out, args.val_size, args.seed, args.force)


if __name__ == '__main__':
    main()
