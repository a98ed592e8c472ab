"""Video classification datasets for mmaction2: class folders and mmaction2 list files.

Folder layout (the same as the image datasets)::

    data_root/
      train/<class name>/<video>   (any container decord reads, nested folders allowed)
      val/<class name>/<video>
      test/<class name>/<video>

Class indices are the positions of the training split's sorted class names, identical for every
split, also when a split lacks some class. mmaction2's list-file format (``path label`` per line,
paths relative to ``data_prefix['video']``) goes through the same class with ``ann_file``.

Class folders are scanned by :mod:`.class_folders` (the same rules as images, links included).
Every video is probed before training the way training reads it (decord from memory, in child
processes, see :mod:`.video_probe`): by default an unreadable one stops the run with an error
naming the file and the reason; ``skip_corrupt=True`` leaves such files out with a warning and a
count instead. Evaluation splits (``test_mode``) also decode, up front, the very frames their
pipeline will read, so a video that decodes at its start but breaks further in is refused or left
out (and counted) before any evaluation starts, never replaced by another sample.
"""
import copy
import logging
import os.path as osp
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmaction.datasets.base import BaseActionDataset
from mmengine.fileio import list_from_file
from mmengine.logging import print_log
from mmengine.registry import DefaultScope

from ..registry import register_dataset
from .class_folders import DatasetLayoutError, describe, scan_split, training_classes
from .image_folder import preserved_random_state
from .video_probe import ProbeResult, probe_video, probe_videos

VIDEO_EXTENSIONS: Tuple[str, ...] = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v', '.mpg',
                                     '.mpeg', '.flv', '.wmv', '.3gp', '.ogv', '.ts')


class VideoDatasetError(DatasetLayoutError):
    """A problem with the videos, list file or layout of a video dataset, naming the path."""


# ----------------------------------------------------------------------------------------------
# Pure helpers: list-file parsing, checking videos.
# ----------------------------------------------------------------------------------------------

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


def explain_unreadable(path: str) -> str:
    """Why ``path`` cannot be read as training reads it (probed in a child process)."""
    return probe_video(path) or 'no error: it decodes'


def find_unreadable_videos(paths: Sequence[str], num_workers: int = 4,
                           timeout: float = 120.0) -> Dict[str, str]:
    """Map each path that cannot be read as mmaction2 reads it to the reason."""
    results: Dict[str, ProbeResult] = probe_videos(paths, num_workers, timeout)
    return {path: result.reason for path, result in results.items()
            if result.reason is not None}


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
        skip_corrupt: Leave out videos that cannot be read (with a warning, a count and the
            paths) instead of stopping with an error that lists them. In training, a video
            that fails later is replaced by another sample (mmengine's refetch). Evaluation
            (``test_mode``) never substitutes a sample: its check decodes the frames the
            pipeline reads, so a video broken further in is left out and counted up front.
        check_videos: Probe every video before training, from memory as mmaction2's
            ``DecordInit`` reads it, in child processes (a decoder crash is reported, not
            fatal): its first and last frames, and in evaluation the frames the pipeline
            samples; turn off only for trusted datasets whose size makes the check too slow.
        check_workers: Child processes used for the check.
        check_timeout: Seconds one video may take to probe before it counts as unreadable.
        allow_mixed_sizes: By default a clip whose input shape differs from the clips before
            it stops with both files named (mmaction2 would zero-pad them into one batch
            silently); set True only for batch size 1 with sizes that vary on purpose.
        num_repeats: Repeated augmentation: each video yields this many samples per fetch,
            decoded once and augmented independently after the decode transform (use
            ``collate_fn=dict(type='repeat_pseudo_collate')``).
        extensions: File endings treated as videos in the folder layout.
        test_mode: Evaluation mode; default: True for every split but ``class_split`` in the
            folder layout, False for list files.
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
                 check_timeout: float = 120.0,
                 allow_mixed_sizes: bool = False,
                 num_repeats: int = 1,
                 extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 multi_class: bool = False,
                 num_classes: Optional[int] = None,
                 delimiter: str = ' ',
                 test_mode: Optional[bool] = None,
                 metainfo: Optional[dict] = None,
                 **kwargs) -> None:
        if num_repeats < 1:
            raise ValueError(f'num_repeats must be >= 1, got {num_repeats}')
        self.split = split
        self.class_split = class_split
        self.skip_corrupt = skip_corrupt
        self.check_videos = check_videos
        self.check_workers = check_workers
        self.check_timeout = check_timeout
        self.allow_mixed_sizes = allow_mixed_sizes
        self.num_repeats = num_repeats
        self.extensions = tuple(extensions)
        self.delimiter = delimiter
        self.skipped_videos: Dict[str, str] = {}
        # (filename, input shape) of the first clip this process prepared: every later clip
        # must have the same shape, or a batch would mix sizes (see allow_mixed_sizes).
        self._first_shape: Optional[Tuple[str, tuple]] = None
        if test_mode is None:
            test_mode = not ann_file and split != class_split

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
        if use_folders or osp.isdir(osp.join(data_root, self.class_split)):
            return training_classes(data_root, self.class_split)
        return None

    @property
    def num_skipped(self) -> int:
        """How many videos were skipped as unreadable (``skip_corrupt=True``)."""
        return len(self.skipped_videos)

    def load_data_list(self) -> List[dict]:
        """Collect ``(filename, label)`` records, then check that every video can be read."""
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
        class_to_index = {name: index for index, name in enumerate(self.metainfo['classes'])}
        scan = scan_split(split_dir, class_to_index, self.extensions)
        scan.warn(split_dir, 'video', self.extensions)
        if not scan.samples:
            raise VideoDatasetError(
                f'split folder {split_dir!r} holds no video (looked for {self.extensions})')
        return scan.samples

    def _drop_or_report_unreadable(self, samples: List[Tuple[str, object]]):
        paths = [path for path, _ in samples]
        results = probe_videos(paths, self.check_workers, self.check_timeout)
        unreadable = {path: r.reason for path, r in results.items() if r.reason is not None}
        if self.test_mode:
            # Evaluation never substitutes a sample, so a video that breaks after its first
            # frames must be found now: decode the very frames the pipeline will read.
            frames = {path: self._evaluation_frames(r.num_frames)
                      for path, r in results.items() if r.reason is None}
            if frames:
                later = probe_videos(list(frames), self.check_workers, self.check_timeout,
                                     frames=frames)
                unreadable.update({path: r.reason for path, r in later.items()
                                   if r.reason is not None})
        if not unreadable:
            return samples
        listing = describe(sorted(unreadable.items()))
        read_as = 'evaluation reads' if self.test_mode else 'training reads'
        if not self.skip_corrupt:
            raise VideoDatasetError(
                f'{len(unreadable)} of {len(samples)} videos cannot be read as {read_as} '
                f'them (decord, from memory):\n{listing}\nFix or remove them, or set '
                'skip_corrupt=True in the dataset config to leave them out.')
        self.skipped_videos = dict(unreadable)
        kept = [(path, label) for path, label in samples if path not in unreadable]
        print_log(f'skipped {len(unreadable)} of {len(samples)} unreadable videos, left out '
                  f'(skip_corrupt=True; read as {read_as} them); {len(kept)} remain:\n{listing}',
                  logger='current', level=logging.WARNING)
        if not kept:
            raise VideoDatasetError('no readable video left after skipping unreadable ones')
        return kept

    def _evaluation_frames(self, num_frames: int) -> Union[List[int], str]:
        """The frame indices the pipeline decodes from a video of ``num_frames`` frames: the
        sampling transforms between its ``...Init`` and ``...Decode`` steps run on the frame
        count alone (deterministic in test mode); ``'all'`` when that cannot be worked out."""
        transforms = list(getattr(self.pipeline, 'transforms', []))
        names = [type(t).__name__ for t in transforms]
        init = next((i for i, n in enumerate(names) if n.endswith('Init')), None)
        decode = next((i for i, t in enumerate(transforms) if _is_decode_transform(t)), None)
        if init is None or decode is None or decode < init:
            return 'all'
        results = dict(total_frames=num_frames, start_index=0, modality='RGB', filename='')
        try:
            with preserved_random_state():
                for transform in transforms[init + 1:decode]:
                    results = transform(results)
            indices = results['frame_inds']
        except Exception:  # a sampler that needs the decoder itself: decode everything
            return 'all'
        return sorted({int(i) for i in np.asarray(indices).reshape(-1)})

    def prepare_data(self, idx: int):
        """Run the pipeline (``num_repeats`` times after one decode); errors name the video."""
        data_info = self.get_data_info(idx)
        filename = data_info['filename']
        try:
            if self.num_repeats == 1:
                result = self.pipeline(data_info)
            else:
                result = self._prepare_repeats(data_info)
        except Exception as err:
            if self.skip_corrupt and not self.test_mode and _looks_like_decode_error(err):
                self.skipped_videos[filename] = str(err)
                print_log(f'skipping {filename!r} which failed while loading: {err}',
                          logger='current', level=logging.WARNING)
                return None  # training: BaseDataset fetches another sample
            hint = ''
            if self.test_mode:
                hint = (' (skip_corrupt does not substitute samples in evaluation; the '
                        'up-front check, check_videos=True, finds such a video before '
                        'evaluation starts, and skip_corrupt=True then leaves it out)')
            raise VideoDatasetError(f'while loading video {filename!r}: '
                                    f'{type(err).__name__}: {err}{hint}') from err
        if result is not None and not self.allow_mixed_sizes:
            for sample in (result if isinstance(result, list) else [result]):
                self._check_shape(filename, sample)
        return result

    def _check_shape(self, filename: str, sample: dict) -> None:
        inputs = sample.get('inputs') if isinstance(sample, dict) else None
        if inputs is None or not hasattr(inputs, 'shape'):
            return
        shape = tuple(inputs.shape)
        if self._first_shape is None:
            self._first_shape = (filename, shape)
            return
        first_file, first = self._first_shape
        if shape != first:
            raise VideoDatasetError(
                f'video {filename!r} gives inputs of shape {shape}, but {first_file!r} gave '
                f'{first}: mmaction2 would zero-pad clips of different sizes into one batch '
                'silently, so they are refused. Make the pipeline give one size, e.g. add '
                "dict(type='Resize', scale=(W, H), keep_ratio=False) or a crop after the "
                'decode step (or set allow_mixed_sizes=True when the batch size is 1).')

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
