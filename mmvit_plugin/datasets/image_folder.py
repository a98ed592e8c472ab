"""Class-folder image dataset for mmpretrain and the image loader its pipelines start with.

Layout: one root holding ``train/``, ``val/`` and ``test/``; each split holds one folder per
class with the images inside (sub-folders allowed)::

    root/train/cat/0001.png
    root/train/dog/0002.jpg
    root/val/cat/...
    root/test/dog/...

Folders are scanned by :mod:`.class_folders` (the same rules as videos, links included). Before
training every image header is read (fast: no pixel decoding), and every image size the
pipeline cannot turn into its usual input size is found by running the pipeline on a blank
image of that size. Unusable files (unreadable, or too small for the pipeline) stop the run
with their paths listed, or, with ``skip_corrupt=True``, are left out with a warning and a
count. In evaluation (``test_mode``) ``skip_corrupt=True`` also decodes every image up front,
so that a bad one is left out and counted instead of being replaced by another sample.
"""
import contextlib
import os
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmengine.registry import DefaultScope
from mmpretrain.datasets import CustomDataset
from PIL import Image

from ..registry import register_dataset, register_transform
from .class_folders import DatasetLayoutError, describe, scan_split, training_classes

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
# Blank images of these sizes tell whether the pipeline gives one input size whatever the image
# (two shapes: a size that follows the aspect ratio shows as a difference).
_PROBE_SIZES = ((1024, 1024), (768, 1280))
# At most this many distinct small image sizes are run through the pipeline before training;
# any others are still checked when they are loaded.
_MAX_SIZES_TRIED = 1000

Size = Tuple[int, int]


def read_image_header(path: str) -> Tuple[Optional[str], Optional[Size]]:
    """(why unreadable or None, (height, width) or None) from the header of ``path``.

    Only the header is parsed; pixel data is not decoded, so a file cut short after its header
    passes here and is caught when it is loaded (or by the full decode in evaluation).
    """
    try:
        if os.path.getsize(path) == 0:
            return 'empty file', None
        with Image.open(path) as image:
            width, height = image.size
    except Exception as err:  # PIL raises many types for bad files; all mean "unreadable"
        return f'{type(err).__name__}: {err}', None
    if width <= 0 or height <= 0:
        return f'invalid size {width}x{height}', None
    return None, (height, width)


def check_image_header(path: str) -> Optional[str]:
    """Why the file at ``path`` is not a readable image, or None when its header is fine."""
    return read_image_header(path)[0]


@contextlib.contextmanager
def preserved_random_state():
    """Run random transforms without moving the random streams that training replays."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), \
        torch.random.get_rng_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)


def _blank_image(size: Size) -> np.ndarray:
    height, width = size
    ramp = (np.arange(height * width, dtype=np.uint32) % 251).astype(np.uint8)
    return np.repeat(ramp.reshape(height, width, 1), 3, axis=2)


def _spatial_size(sample) -> Optional[Size]:
    inputs = sample.get('inputs') if isinstance(sample, dict) else None
    if inputs is None or not hasattr(inputs, 'shape') or len(inputs.shape) < 2:
        return None
    return int(inputs.shape[-2]), int(inputs.shape[-1])


@register_dataset
class ImageClassFolder(CustomDataset):
    """Images in ``data_root/<split>/<class>/...``, classes from ``data_root/<class_split>``.

    Args:
        data_root: folder holding the splits.
        split: the split to read ('train', 'val', 'test' or any folder name under data_root).
        class_split: the split whose sorted class folders define the class indices.
        check_images: read every image header up front (fast), and find the image sizes the
            pipeline cannot use; report unusable files.
        skip_corrupt: leave unusable images out with a warning and a count instead of
            stopping. In training, an image that still fails to decode when it is loaded is
            replaced by another sample (mmengine's refetch). In evaluation every image is
            decoded up front and the bad ones are left out and counted; one that fails later
            stops the run: evaluation never substitutes a sample.
        check_workers: threads for the full decode in evaluation with ``skip_corrupt``.
        extensions: file name endings taken as images (case-insensitive).
        test_mode: evaluation mode; default: True for every split but ``class_split``.
        **kwargs: passed to mmpretrain's ``CustomDataset`` (pipeline, metainfo, ...).
    """

    def __init__(self,
                 data_root: str,
                 split: str = 'train',
                 class_split: str = 'train',
                 check_images: bool = True,
                 skip_corrupt: bool = False,
                 check_workers: int = 4,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS,
                 test_mode: Optional[bool] = None,
                 **kwargs) -> None:
        if not data_root:
            raise DatasetLayoutError('ImageClassFolder: data_root is empty; set '
                                     '<train|val|test>_dataloader.dataset.data_root')
        for reserved in ('ann_file', 'data_prefix', 'with_label'):
            if kwargs.pop(reserved, None):
                raise ValueError(f'ImageClassFolder reads class folders; `{reserved}` is not '
                                 'supported (use mmpretrain.CustomDataset for annotation files)')
        self.split = split
        self.class_split = class_split
        self.check_images = check_images
        self.skip_corrupt = skip_corrupt
        self.check_workers = check_workers
        self.skipped: List[Tuple[str, str]] = []
        self.input_size: Optional[Size] = None  # what the pipeline makes of any large image
        if test_mode is None:
            test_mode = split != class_split
        # Image pipelines name mmpretrain's transforms: build them in its scope even when the
        # dataset is built from an mmaction2-scoped config (or after one set the scope).
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            super().__init__(data_root=data_root, data_prefix=split, extensions=extensions,
                             test_mode=test_mode, **kwargs)

    @property
    def num_skipped(self) -> int:
        """How many images were left out as unusable (``skip_corrupt=True``)."""
        return len(self.skipped)

    def _class_names(self) -> List[str]:
        names = training_classes(self.data_root, self.class_split)
        given = self._metainfo.get('classes')
        if given is not None and tuple(given) != tuple(names):
            raise DatasetLayoutError(
                f'metainfo classes {tuple(given)} differ from the class folders of '
                f'{os.path.join(self.data_root, self.class_split)!r}: {tuple(names)}')
        return names

    # ------------------------------------------------------------------------------------------
    # What the pipeline makes of an image of a given size.
    # ------------------------------------------------------------------------------------------

    def _after_loading(self) -> list:
        transforms = list(self.pipeline.transforms)
        if transforms and type(transforms[0]).__name__.startswith('Load'):
            transforms = transforms[1:]
        return transforms

    def _output_size(self, size: Size) -> Optional[Size]:
        """Input size the pipeline gives a blank image of ``size``; None if it gives none."""
        image = _blank_image(size)
        sample = dict(img=image, img_shape=image.shape[:2], ori_shape=image.shape[:2],
                      gt_label=0, img_path=f'<blank {size[0]}x{size[1]} image>')
        with preserved_random_state():
            for transform in self._after_loading():
                sample = transform(sample)
                if sample is None:
                    return None
        return _spatial_size(sample)

    def _pipeline_input_size(self) -> Optional[Size]:
        try:
            sizes = {self._output_size(size) for size in _PROBE_SIZES}
        except Exception:  # a pipeline that needs more than an image: no size check up front
            return None
        return sizes.pop() if len(sizes) == 1 else None

    def _too_small(self, header_sizes: Dict[str, Size]) -> List[Tuple[str, str]]:
        """(path, why) for every image whose size the pipeline cannot make ``input_size``."""
        if self.input_size is None:
            return []
        bound = 2 * max(self.input_size)
        small = sorted({size for size in header_sizes.values() if min(size) < bound},
                       key=lambda s: (min(s), s))[:_MAX_SIZES_TRIED]
        refused: Dict[Size, str] = {}
        for size in small:
            try:
                out = self._output_size(size)
            except Exception as err:
                refused[size] = f'the pipeline fails on a {size[0]}x{size[1]} image ({err})'
                continue
            if out != self.input_size:
                refused[size] = (f'{size[0]}x{size[1]} image, too small for the pipeline: it '
                                 f'gives a {out[0]}x{out[1]} input where other images give '
                                 f'{self.input_size[0]}x{self.input_size[1]}' if out else
                                 f'{size[0]}x{size[1]} image, the pipeline gives no input')
        return [(path, refused[size]) for path, size in header_sizes.items() if size in refused]

    # ------------------------------------------------------------------------------------------
    # Loading the list of samples.
    # ------------------------------------------------------------------------------------------

    def load_data_list(self) -> List[dict]:
        class_names = self._class_names()
        class_to_idx = {name: idx for idx, name in enumerate(class_names)}
        self._metainfo['classes'] = tuple(class_names)
        self.folder_to_idx = class_to_idx

        split_dir = os.path.join(self.data_root, self.split)
        scan = scan_split(split_dir, class_to_idx, self.extensions)
        scan.warn(split_dir, 'image', self.extensions)
        samples = scan.samples
        if not samples:
            raise DatasetLayoutError(
                f'no images found in {split_dir!r} (expected {split_dir}/<class name>/<image>, '
                f'extensions {", ".join(sorted(self.extensions))})')

        self.input_size = self._pipeline_input_size()
        if self.check_images:
            bad, sizes = [], {}
            for path, _ in samples:
                reason, size = read_image_header(path)
                if reason is not None:
                    bad.append((path, reason))
                else:
                    sizes[path] = size
            bad.extend(self._too_small(sizes))
            if self.skip_corrupt and self.test_mode:
                bad.extend(self._fails_to_decode([p for p, _ in samples if p in sizes]))
            samples = self._drop_or_report(split_dir, samples, bad)

        keep_going = self.skip_corrupt and not self.test_mode
        return [dict(img_path=path, gt_label=label, skip_corrupt=keep_going)
                for path, label in samples]

    def _fails_to_decode(self, paths: Sequence[str]) -> List[Tuple[str, str]]:
        loader = self.pipeline.transforms[0] if self.pipeline.transforms else None
        if not isinstance(loader, LoadImageFromFile):
            loader = LoadImageChecked()

        def why(path: str) -> Optional[str]:
            try:
                if loader(dict(img_path=path)) is None:
                    return 'fails to decode'
            except Exception as err:
                return f'fails to decode: {err}'
            return None

        with ThreadPoolExecutor(max_workers=max(1, self.check_workers)) as pool:
            reasons = list(pool.map(why, paths))
        return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]

    def _drop_or_report(self, split_dir: str, samples, bad: List[Tuple[str, str]]):
        if not bad:
            return samples
        bad = sorted(dict(bad).items())
        if not self.skip_corrupt:
            raise DatasetLayoutError(
                f'{len(bad)} unusable image file(s) of {len(samples)} in {split_dir!r}:\n'
                f'{describe(bad)}\nRemove or repair them, or set skip_corrupt=True in the '
                'dataset config (e.g. --cfg-options train_dataloader.dataset.skip_corrupt=True) '
                'to leave them out.')
        bad_paths = {path for path, _ in bad}
        kept = [sample for sample in samples if sample[0] not in bad_paths]
        self.skipped = bad
        print_log(f'skipped {len(bad)} unusable image file(s) of {len(samples)} in '
                  f'{split_dir!r} (skip_corrupt=True); {len(kept)} remain:\n{describe(bad)}',
                  logger='current', level=30)
        if not kept:
            raise DatasetLayoutError(f'every image in {split_dir!r} is unusable')
        return kept

    def prepare_data(self, idx: int):
        """Run the pipeline; errors name the file, and so does an input of the wrong size."""
        data_info = self.get_data_info(idx)
        path = data_info['img_path']
        try:
            sample = self.pipeline(data_info)
        except DatasetLayoutError:
            raise
        except Exception as err:
            raise DatasetLayoutError(f'while preparing image {path!r}: '
                                     f'{type(err).__name__}: {err}') from err
        if sample is not None and self.input_size is not None:
            size = _spatial_size(sample)
            if size is not None and size != self.input_size:
                original = data_info.get('ori_shape') or '?'
                raise DatasetLayoutError(
                    f'image {path!r} ({original[0]}x{original[1]}) gives a {size[0]}x{size[1]} '
                    f'input where the pipeline gives {self.input_size[0]}x'
                    f'{self.input_size[1]} to other images: it is too small for this pipeline '
                    '(images of different sizes cannot share a batch). Remove it, or resize '
                    "it in the pipeline (e.g. dict(type='ResizeEdge', scale=...) before the "
                    'crop).' if original != '?' else
                    f'image {path!r} gives a {size[0]}x{size[1]} input where the pipeline '
                    f'gives {self.input_size[0]}x{self.input_size[1]} to other images.')
        return sample

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(data_root={self.data_root!r}, split={self.split!r}, '
                f'num_samples={len(self) if self._fully_initialized else "?"}, '
                f'num_classes={len(self._metainfo.get("classes", ()))}, '
                f'skipped={self.num_skipped})')


def _as_color_uint8(img: np.ndarray) -> np.ndarray:
    """An already loaded image as 8-bit 3-channel BGR, as the file loader would give it."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f'expected an HxW or HxWxC image, got shape {img.shape}')
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    elif img.shape[2] != 3:
        raise ValueError(f'expected 1, 3 or 4 channels, got {img.shape[2]}')
    return img


@register_transform
class LoadImageChecked(LoadImageFromFile):
    """Load an image; by default as 8-bit 3-channel color (grayscale replicated, alpha dropped).

    Channel order is BGR as with mmcv's ``LoadImageFromFile`` (the data preprocessor's
    ``to_rgb`` turns it into RGB). An image already loaded under ``img`` (as mmpretrain's
    inferencers, ``FeatureExtractor`` and ``verify_dataset`` pass it) is taken as it is, made
    3-channel 8-bit in the same way. A file that fails to decode raises an error naming it, or,
    when its data info carries ``skip_corrupt=True`` (set by ``ImageClassFolder`` in training),
    gives None so that the dataset draws another sample.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault('color_type', 'color')
        super().__init__(**kwargs)

    def transform(self, results: dict) -> Optional[dict]:
        path = results.get('img_path')
        if results.get('img') is not None:
            try:
                img = results['img']
                if self.color_type == 'color':
                    img = _as_color_uint8(np.asarray(img))
                if self.to_float32:
                    img = img.astype(np.float32)
            except ValueError as err:
                raise ValueError(f'image {path or "given as an array"}: {err}') from err
            results['img'] = img
            results['img_shape'] = img.shape[:2]
            results.setdefault('ori_shape', img.shape[:2])
            return results
        if path is None:
            raise KeyError("LoadImageChecked needs 'img_path' (a file to read) or 'img' (an "
                           f'image already loaded); got keys {sorted(results)}')
        try:
            loaded = super().transform(results)
        except Exception as err:
            if results.get('skip_corrupt', False):
                print_log(f'skipping image that fails to decode: {path} ({err})',
                          logger='current', level=30)
                return None
            raise ValueError(f'cannot decode image {path!r}: {err}') from err
        return loaded
