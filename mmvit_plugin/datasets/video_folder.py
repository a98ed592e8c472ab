"""Video classification datasets for mmaction2: class folders and mmaction2 list files.

Folder layout (the same as the image datasets)::

    data_root/
      train/<class name>/<video>   (any container decord reads, nested folders allowed)
      val/<class name>/<video>
      test/<class name>/<video>

Class indices are the positions of the training split's sorted class names, identical for every
split, also when a split lacks some class. mmaction2's list-file format (``path label`` per line,
paths relative to ``data_prefix['video']``) goes through the same class with ``ann_file``.

Every video is opened with decord before training starts: by default an unreadable one stops the
run with an error naming the file and decord's message; ``skip_corrupt=True`` drops such files
with a warning and a count instead.
"""
import contextlib
import copy
import logging
import os
import os.path as osp
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from mmaction.datasets.base import BaseActionDataset
from mmengine.fileio import list_from_file
from mmengine.logging import print_log
from mmengine.registry import DefaultScope

from ..registry import register_dataset

VIDEO_EXTENSIONS: Tuple[str, ...] = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg',
                                     '.mpeg', '.flv', '.wmv', '.3gp', '.ogv', '.ts')


# decord prefixes its log lines with a time and a source location: '[06:06:29] file.cc:83: '.
_LOG_PREFIX = re.compile(r'^\[\d\d:\d\d:\d\d\] \S+:\d+: ')


class VideoDatasetError(ValueError):
    """A problem with the videos or the layout of a dataset, naming the path concerned."""


# ----------------------------------------------------------------------------------------------
# Pure helpers: folder scanning, list-file parsing, probing a file with decord.
# ----------------------------------------------------------------------------------------------

def find_class_names(split_dir: str) -> List[str]:
    """Sorted names of the class folders directly under ``split_dir``."""
    if not osp.isdir(split_dir):
        raise VideoDatasetError(f'split folder {split_dir!r} does not exist')
    names = sorted(entry.name for entry in os.scandir(split_dir)
                   if entry.is_dir() and not entry.name.startswith('.'))
    if not names:
        raise VideoDatasetError(
            f'{split_dir!r} holds no class folders (expected one folder per class)')
    return names


def scan_class_folders(
    split_dir: str,
    class_to_index: Dict[str, int],
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
) -> Tuple[List[Tuple[str, int]], List[str], List[str]]:
    """List ``(path, label)`` for every video under ``split_dir/<class>/``.

    Returns the samples (sorted by path), the class folders that hold no video, and the
    files that were ignored because their extension is not a video one.
    Raises when a class folder is unknown to ``class_to_index``.
    """
    class_dirs = find_class_names(split_dir)
    unknown = [name for name in class_dirs if name not in class_to_index]
    if unknown:
        raise VideoDatasetError(
            f'{split_dir!r} has class folders that the training split does not have: '
            f'{unknown}; known classes: {sorted(class_to_index)}')
    suffixes = tuple(ext.lower() for ext in extensions)
    samples: List[Tuple[str, int]] = []
    empty_classes: List[str] = []
    ignored: List[str] = []
    for name in class_dirs:
        found = 0
        for dirpath, dirnames, filenames in os.walk(osp.join(split_dir, name)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
            for filename in sorted(filenames):
                if filename.startswith('.'):
                    continue
                path = osp.join(dirpath, filename)
                if filename.lower().endswith(suffixes):
                    samples.append((path, class_to_index[name]))
                    found += 1
                else:
                    ignored.append(path)
        if found == 0:
            empty_classes.append(name)
    return samples, empty_classes, ignored


def parse_list_file(
    ann_file: str,
    video_prefix: str,
    num_classes: Optional[int] = None,
    multi_class: bool = False,
    delimiter: str = ' ',
) -> List[Tuple[str, Union[int, List[int]]]]:
    """Read mmaction2's list format: ``path label`` (or ``path l1 l2 ...`` for multi_class).

    A line with only a path gets label -1 (inference lists). Labels outside
    ``[0, num_classes)`` raise, naming the file and the line.
    """
    if not osp.isfile(ann_file):
        raise VideoDatasetError(f'annotation list {ann_file!r} does not exist')
    samples = []
    for line_no, line in enumerate(list_from_file(ann_file), start=1):
        fields = line.strip().split(delimiter) if delimiter != ' ' else line.split()
        if not fields or not fields[0]:
            continue
        filename, raw_labels = fields[0], fields[1:]
        try:
            labels = [int(value) for value in raw_labels]
        except ValueError:
            raise VideoDatasetError(
                f'{ann_file}:{line_no}: labels must be integers, got {raw_labels}') from None
        if not multi_class and len(labels) > 1:
            raise VideoDatasetError(
                f'{ann_file}:{line_no}: {len(labels)} labels on one line; expected '
                "'path label' (set multi_class=True for several labels)")
        if num_classes is not None:
            bad = [value for value in labels if not 0 <= value < num_classes]
            if bad:
                raise VideoDatasetError(
                    f'{ann_file}:{line_no}: label {bad[0]} outside [0, {num_classes})')
        path = osp.join(video_prefix, filename) if video_prefix else filename
        if multi_class:
            samples.append((path, labels))
        else:
            samples.append((path, labels[0] if labels else -1))
    if not samples:
        raise VideoDatasetError(f'annotation list {ann_file!r} lists no video')
    return samples


@contextlib.contextmanager
def _captured_native_stderr():
    """Capture what native code (decord's FFmpeg logging) writes to file descriptor 2."""
    with tempfile.TemporaryFile(mode='w+b') as sink:
        saved = os.dup(2)
        captured: List[str] = []
        try:
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode('utf-8', errors='replace'))


def probe_video(path: str) -> Optional[str]:
    """Open ``path`` with decord and decode its first frame; ``None`` if fine, else why not."""
    import decord  # noqa: PLC0415  (imported lazily: only needed when videos are read)
    try:
        reader = decord.VideoReader(path, num_threads=1)
        num_frames = len(reader)
        if num_frames <= 0:
            return 'decord found no frames'
        reader[0]
    except Exception as err:  # decord raises RuntimeError or DECORDError
        return f'{type(err).__name__}: {str(err).strip()}'
    return None


def explain_unreadable(path: str) -> str:
    """Probe ``path`` again, sequentially, keeping FFmpeg's own message that decord logs."""
    with _captured_native_stderr() as captured:
        reason = probe_video(path)
    log_lines = [_LOG_PREFIX.sub('', line).strip() for line in ''.join(captured).splitlines()
                 if line.strip()]
    reason = reason or 'failed when probed in parallel, decoded on retry'
    if log_lines:
        reason += ' | decord log: ' + ' / '.join(log_lines[-3:])
    return reason


def find_unreadable_videos(paths: Sequence[str], num_workers: int = 4) -> Dict[str, str]:
    """Map each path that decord cannot open or decode to the reason it gave."""
    unique_paths = list(dict.fromkeys(paths))
    # FFmpeg logs each failure to stderr; keep that quiet here, explain_unreadable reports it.
    with _captured_native_stderr(), ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        reasons = list(pool.map(probe_video, unique_paths))
    return {path: explain_unreadable(path)
            for path, reason in zip(unique_paths, reasons) if reason is not None}


def _is_decode_transform(transform: Callable) -> bool:
    return type(transform).__name__.endswith('Decode')


# ----------------------------------------------------------------------------------------------
# mmengine glue.
# ----------------------------------------------------------------------------------------------

@register_dataset
class VideoFolderDataset(BaseActionDataset):
    """Videos in class folders (``data_root/<split>/<class>/...``) or in an mmaction2 list file.

    Args:
        data_root: Root holding the split folders (folder layout) or the list file's base.
        split: Split folder to read in the folder layout: ``'train'``, ``'val'``, ``'test'``.
        pipeline: mmaction2 transforms, e.g. DecordInit, SampleFrames, DecordDecode, ...
        ann_file: An mmaction2 list file; when given, it is read instead of the split folder.
        data_prefix: ``dict(video=...)``, the folder that list-file paths are relative to.
        classes: Class names (a sequence or a text file with one name per line). Default: the
            sorted class folders of ``data_root/<class_split>`` when that folder exists.
        class_split: Name of the split whose sorted class folders define the class indices.
        skip_corrupt: Drop videos decord cannot read, with a warning and a count, instead of
            stopping with an error that lists them.
        check_videos: Open every video before training; turn off only for trusted datasets
            whose size makes the check too slow (errors then surface when a video is read).
        check_workers: Threads used for the check.
        num_repeats: Repeated augmentation: each video yields this many samples per fetch,
            decoded once and augmented independently after the decode transform (use
            ``collate_fn=dict(type='repeat_pseudo_collate')``).
        extensions: File endings treated as videos in the folder layout.
    """

    def __init__(self,
                 data_root: str = '',
                 split: str = 'train',
                 pipeline: Sequence[Union[dict, Callable]] = (),
                 ann_file: str = '',
                 data_prefix: Optional[dict] = None,
                 classes: Optional[Union[str, Sequence[str]]] = None,
                 class_split: str = 'train',
                 skip_corrupt: bool = False,
                 check_videos: bool = True,
                 check_workers: int = 4,
                 num_repeats: int = 1,
                 extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 multi_class: bool = False,
                 num_classes: Optional[int] = None,
                 delimiter: str = ' ',
                 test_mode: bool = False,
                 metainfo: Optional[dict] = None,
                 **kwargs) -> None:
        if num_repeats < 1:
            raise ValueError(f'num_repeats must be >= 1, got {num_repeats}')
        self.split = split
        self.class_split = class_split
        self.skip_corrupt = skip_corrupt
        self.check_videos = check_videos
        self.check_workers = check_workers
        self.num_repeats = num_repeats
        self.extensions = tuple(extensions)
        self.delimiter = delimiter
        self.skipped_videos: Dict[str, str] = {}

        if not data_root and not ann_file:
            raise VideoDatasetError('VideoFolderDataset: data_root is empty; set '
                                    '<train|val|test>_dataloader.dataset.data_root (or ann_file)')
        if data_root and not osp.isdir(data_root):
            raise VideoDatasetError(f'dataset root {data_root!r} does not exist')
        class_names = self._resolve_classes(data_root, classes, use_folders=not ann_file)
        metainfo = dict(metainfo or {})
        if class_names is not None:
            metainfo.setdefault('classes', tuple(class_names))
            if num_classes is None:
                num_classes = len(class_names)
        # Video pipelines name mmaction2's transforms: build them in its scope even when the
        # dataset itself is built from an mmpretrain-scoped config.
        with DefaultScope.overwrite_default_scope('mmaction'):
            super().__init__(
                ann_file,
                pipeline=list(pipeline),
                data_root=data_root,
                data_prefix=dict(video='') if data_prefix is None else data_prefix,
                test_mode=test_mode,
                multi_class=multi_class,
                num_classes=num_classes,
                metainfo=metainfo,
                **kwargs)

    def _resolve_classes(self, data_root: str, classes, use_folders: bool) -> Optional[List[str]]:
        if isinstance(classes, str):
            if not osp.isfile(classes):
                raise VideoDatasetError(f'class name file {classes!r} does not exist')
            names = [line.strip() for line in list_from_file(classes) if line.strip()]
            if not names:
                raise VideoDatasetError(f'class name file {classes!r} is empty')
            return names
        if classes is not None:
            return list(classes)
        train_dir = osp.join(data_root, self.class_split)
        if use_folders:
            if not osp.isdir(train_dir):
                raise VideoDatasetError(
                    f'training split {train_dir!r} does not exist: class indices come from '
                    'its sorted class folders (or pass classes=[...])')
            return find_class_names(train_dir)
        return find_class_names(train_dir) if osp.isdir(train_dir) else None

    @property
    def num_skipped(self) -> int:
        """How many videos were skipped as unreadable (``skip_corrupt=True``)."""
        return len(self.skipped_videos)

    def load_data_list(self) -> List[dict]:
        """Collect ``(filename, label)`` records, then check that decord reads every video."""
        if self.ann_file:
            samples = parse_list_file(self.ann_file, self.data_prefix.get('video', ''),
                                      self.num_classes, self.multi_class, self.delimiter)
        else:
            samples = self._scan_split_folder()
        if self.check_videos:
            samples = self._drop_or_report_unreadable(samples)
        return [dict(filename=path, label=label) for path, label in samples]

    def _scan_split_folder(self) -> List[Tuple[str, int]]:
        split_dir = osp.join(self.data_root, self.split)
        if not osp.isdir(split_dir):
            present = sorted(e.name for e in os.scandir(self.data_root) if e.is_dir()) \
                if osp.isdir(self.data_root) else []
            raise VideoDatasetError(
                f'split folder {split_dir!r} does not exist (folders in the root: {present})')
        class_to_index = {name: index for index, name in enumerate(self.metainfo['classes'])}
        samples, empty_classes, ignored = scan_class_folders(split_dir, class_to_index,
                                                             self.extensions)
        if ignored:
            print_log(f'{split_dir}: ignored {len(ignored)} file(s) without a video extension '
                      f'{self.extensions}, e.g. {ignored[0]!r}', logger='current',
                      level=logging.WARNING)
        if empty_classes:
            print_log(f'{split_dir}: class folder(s) without videos: {empty_classes}',
                      logger='current', level=logging.WARNING)
        if not samples:
            raise VideoDatasetError(
                f'split folder {split_dir!r} holds no video (looked for {self.extensions})')
        return samples

    def _drop_or_report_unreadable(self, samples: List[Tuple[str, object]]):
        unreadable = find_unreadable_videos([path for path, _ in samples], self.check_workers)
        if not unreadable:
            return samples
        listing = '\n'.join(f'  {path}: {reason}' for path, reason in unreadable.items())
        if not self.skip_corrupt:
            raise VideoDatasetError(
                f'{len(unreadable)} of {len(samples)} videos cannot be read by decord:\n'
                f'{listing}\nFix or remove them, or set skip_corrupt=True in the dataset config '
                'to skip them.')
        self.skipped_videos = dict(unreadable)
        print_log(f'skipped {len(unreadable)} of {len(samples)} unreadable videos '
                  f'(skip_corrupt=True):\n{listing}', logger='current', level=logging.WARNING)
        kept = [(path, label) for path, label in samples if path not in unreadable]
        if not kept:
            raise VideoDatasetError('no readable video left after skipping unreadable ones')
        return kept

    def prepare_data(self, idx: int):
        """Run the pipeline (``num_repeats`` times after one decode); errors name the video."""
        data_info = self.get_data_info(idx)
        filename = data_info['filename']
        try:
            if self.num_repeats == 1:
                return self.pipeline(data_info)
            return self._prepare_repeats(data_info)
        except Exception as err:
            if self.skip_corrupt and not self.test_mode and _looks_like_decode_error(err):
                self.skipped_videos[filename] = str(err)
                print_log(f'skipping {filename!r} which failed while loading: {err}',
                          logger='current', level=logging.WARNING)
                return None  # BaseDataset fetches another sample
            raise RuntimeError(f'while loading video {filename!r}: '
                               f'{type(err).__name__}: {err}') from err

    def _prepare_repeats(self, data_info: dict) -> List[dict]:
        transforms = self.pipeline.transforms
        decode_at = next((i for i, t in enumerate(transforms) if _is_decode_transform(t)), None)
        if decode_at is None:  # no decode step to share: run everything per repeat
            return [self.pipeline(copy.deepcopy(data_info)) for _ in range(self.num_repeats)]
        for transform in transforms[:decode_at + 1]:
            data_info = transform(data_info)
            if data_info is None:
                return None
        samples = []
        for _ in range(self.num_repeats):
            sample = copy.deepcopy(data_info)
            for transform in transforms[decode_at + 1:]:
                sample = transform(sample)
                if sample is None:
                    return None
            samples.append(sample)
        return samples


def _looks_like_decode_error(err: Exception) -> bool:
    """Decord and file errors may be skipped; other errors are bugs and must surface."""
    return isinstance(err, (OSError, EOFError)) or type(err).__name__ == 'DECORDError' or (
        isinstance(err, RuntimeError) and 'Error reading' in str(err))
