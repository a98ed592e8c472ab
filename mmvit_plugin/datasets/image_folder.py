"""Class-folder image dataset for mmpretrain.

Layout: one root holding ``train/``, ``val/`` and ``test/``; each split holds one folder per
class with the images inside (sub-folders allowed)::

    root/train/cat/0001.png
    root/train/dog/0002.jpg
    root/val/cat/...
    root/test/dog/...

Class indices come from the sorted class-folder names of the training split, so every split
uses the same indices even when it lacks a class. Before training starts every image header is
read (fast: no pixel decoding); unreadable files stop the run with their paths listed, or, with
``skip_corrupt=True``, are left out with a warning and a count.
"""
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmpretrain.datasets import CustomDataset
from PIL import Image

from ..registry import register_dataset, register_transform

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
SPLITS = ('train', 'val', 'test')
# At most this many bad paths are spelled out in an error or warning; the count is always given.
_MAX_LISTED = 20

Sample = Tuple[str, int]


def list_class_folders(split_dir: str) -> List[str]:
    """Sorted names of the class folders directly under ``split_dir``."""
    return sorted(entry.name for entry in os.scandir(split_dir)
                  if entry.is_dir() and not entry.name.startswith('.'))


def collect_samples(split_dir: str, class_to_idx: Dict[str, int], class_names: Sequence[str],
                    extensions: Sequence[str]) -> Tuple[List[Sample], List[str]]:
    """Walk the given class folders of one split.

    Returns (samples, empty_folders): samples are (absolute path, class index) sorted by class
    then path; empty_folders are the class folders holding no file with an allowed extension.
    """
    extensions = tuple(ext.lower() for ext in extensions)
    samples: List[Sample] = []
    empty_folders: List[str] = []
    for name in class_names:
        folder = osp.join(split_dir, name)
        paths = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith('.')]
            paths.extend(
                osp.join(dirpath, f) for f in filenames
                if f.lower().endswith(extensions) and not f.startswith('.'))
        if not paths:
            empty_folders.append(folder)
        samples.extend((path, class_to_idx[name]) for path in sorted(paths))
    return samples, empty_folders


def check_image_header(path: str) -> Optional[str]:
    """Why the file at ``path`` is not a readable image, or None when its header is fine.

    Only the header is parsed (format, size); pixel data is not decoded, so a file cut short
    after its header passes here and is caught when it is loaded.
    """
    try:
        if os.path.getsize(path) == 0:
            return 'empty file'
        with Image.open(path) as image:
            width, height = image.size
    except Exception as err:  # PIL raises many types for bad files; all mean "unreadable"
        return f'{type(err).__name__}: {err}'
    if width <= 0 or height <= 0:
        return f'invalid size {width}x{height}'
    return None


def find_unreadable(paths: Sequence[str]) -> List[Tuple[str, str]]:
    """(path, reason) for every path whose image header cannot be read."""
    bad = []
    for path in paths:
        reason = check_image_header(path)
        if reason is not None:
            bad.append((path, reason))
    return bad


def _describe(bad: Sequence[Tuple[str, str]]) -> str:
    lines = [f'  {path}: {reason}' for path, reason in bad[:_MAX_LISTED]]
    if len(bad) > _MAX_LISTED:
        lines.append(f'  ... and {len(bad) - _MAX_LISTED} more')
    return '\n'.join(lines)


@register_dataset
class ImageClassFolder(CustomDataset):
    """Images in ``data_root/<split>/<class>/...``, classes from ``data_root/<class_split>``.

    Args:
        data_root: folder holding the splits.
        split: the split to read ('train', 'val', 'test' or any folder name under data_root).
        class_split: the split whose sorted class folders define the class indices.
        check_images: read every image header up front (fast) and report unreadable files.
        skip_corrupt: leave unreadable images out with a warning and a count instead of
            stopping; also applies to files that fail to decode during loading when the
            pipeline uses ``LoadImageChecked``.
        extensions: file name endings taken as images (case-insensitive).
        **kwargs: passed to mmpretrain's ``CustomDataset`` (pipeline, test_mode, ...).
    """

    def __init__(self,
                 data_root: str,
                 split: str = 'train',
                 class_split: str = 'train',
                 check_images: bool = True,
                 skip_corrupt: bool = False,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 **kwargs) -> None:
        if not data_root:
            raise ValueError('ImageClassFolder: data_root is empty; set '
                             '<train|val|test>_dataloader.dataset.data_root')
        for reserved in ('ann_file', 'data_prefix', 'with_label'):
            if kwargs.pop(reserved, None):
                raise ValueError(f'ImageClassFolder reads class folders; `{reserved}` is not '
                                 'supported (use mmpretrain.CustomDataset for annotation files)')
        self.split = split
        self.class_split = class_split
        self.check_images = check_images
        self.skip_corrupt = skip_corrupt
        self.num_skipped = 0
        super().__init__(data_root=data_root, data_prefix=split, extensions=extensions,
                         **kwargs)

    def _class_names(self) -> List[str]:
        root = self.data_root
        if not osp.isdir(root):
            raise FileNotFoundError(f'dataset root {root!r} does not exist or is not a folder')
        class_dir = osp.join(root, self.class_split)
        if not osp.isdir(class_dir):
            raise FileNotFoundError(
                f'split folder {class_dir!r} is missing: class names are taken from it '
                f'(expected {root}/{self.class_split}/<class name>/<image>)')
        names = list_class_folders(class_dir)
        if not names:
            raise FileNotFoundError(f'{class_dir!r} holds no class folders '
                                    f'(expected {class_dir}/<class name>/<image>)')
        given = self._metainfo.get('classes')
        if given is not None and tuple(given) != tuple(names):
            raise ValueError(f'metainfo classes {tuple(given)} differ from the class folders '
                             f'of {class_dir!r}: {tuple(names)}')
        return names

    def load_data_list(self) -> List[dict]:
        class_names = self._class_names()
        class_to_idx = {name: idx for idx, name in enumerate(class_names)}
        self._metainfo['classes'] = tuple(class_names)
        self.folder_to_idx = class_to_idx

        split_dir = osp.join(self.data_root, self.split)
        if not osp.isdir(split_dir):
            raise FileNotFoundError(f'split folder {split_dir!r} does not exist')
        present = list_class_folders(split_dir)
        unknown = [name for name in present if name not in class_to_idx]
        if unknown:
            raise ValueError(
                f'{split_dir!r} has class folders that the {self.class_split!r} split does not '
                f'know: {unknown}; known classes: {class_names}')

        samples, empty_folders = collect_samples(split_dir, class_to_idx, present,
                                                 self.extensions)
        if empty_folders:
            print_log(f'{len(empty_folders)} class folder(s) hold no image '
                      f'(extensions {", ".join(self.extensions)}): {empty_folders}',
                      logger='current', level=30)
        if not samples:
            raise FileNotFoundError(f'no images found in {split_dir!r} (expected '
                                    f'{split_dir}/<class name>/<image>, extensions '
                                    f'{", ".join(sorted(self.extensions))})')

        if self.check_images:
            bad = find_unreadable([path for path, _ in samples])
            if bad and not self.skip_corrupt:
                raise ValueError(
                    f'{len(bad)} unreadable image file(s) in {split_dir!r}:\n{_describe(bad)}\n'
                    'Remove or repair them, or set skip_corrupt=True in the dataset config '
                    '(e.g. --cfg-options train_dataloader.dataset.skip_corrupt=True) to leave '
                    'them out.')
            if bad:
                bad_paths = {path for path, _ in bad}
                samples = [sample for sample in samples if sample[0] not in bad_paths]
                self.num_skipped = len(bad)
                print_log(f'skipped {len(bad)} unreadable image file(s) of {len(samples) + len(bad)}'
                          f' in {split_dir!r}:\n{_describe(bad)}', logger='current', level=30)
                if not samples:
                    raise ValueError(f'every image in {split_dir!r} is unreadable')

        return [dict(img_path=path, gt_label=label, skip_corrupt=self.skip_corrupt)
                for path, label in samples]

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(data_root={self.data_root!r}, split={self.split!r}, '
                f'num_samples={len(self) if self._fully_initialized else "?"}, '
                f'num_classes={len(self._metainfo.get("classes", ()))}, '
                f'skipped={self.num_skipped})')


@register_transform
class LoadImageChecked(LoadImageFromFile):
    """Load an image; by default as 8-bit 3-channel color (grayscale replicated, alpha dropped).

    Channel order is BGR as with mmcv's ``LoadImageFromFile`` (the data preprocessor's
    ``to_rgb`` turns it into RGB). A file that fails to decode raises an error naming it, or,
    when its data info carries ``skip_corrupt=True`` (set by ``ImageClassFolder``), gives None
    so that the dataset draws another sample during training.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault('color_type', 'color')
        super().__init__(**kwargs)

    def transform(self, results: dict) -> Optional[dict]:
        path = results['img_path']
        try:
            loaded = super().transform(results)
        except Exception as err:
            if results.get('skip_corrupt', False):
                print_log(f'skipping image that fails to decode: {path} ({err})',
                          logger='current', level=30)
                return None
            raise ValueError(f'cannot decode image {path!r}: {err}') from err
        return loaded
