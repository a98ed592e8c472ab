"""What the demos share: arguments, configs, models (through the safe loader), labels, top-k,
clips from in-memory frames, drawing and streaming video output.

Used by tools/demo_video.py, tools/demo_stream.py, tools/demo_long_video.py and
tools/demo_image.py. Nothing here keeps more than the frames it is handed.
"""
import argparse
import copy
import logging
import os
import os.path as osp
from collections import deque
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence, Tuple

import cv2  # before decord (decord first breaks cv2's PNG reading)
import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import Compose, pseudo_collate
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope

from mmvit_plugin.apis import build_config_model, config_scope

KINETICS400 = 'kinetics400'
IMAGENET1K = 'imagenet1k'
VIDEO_EXTENSIONS = {'.mp4': 'mp4v', '.avi': 'MJPG'}  # OpenCV fourcc per output container
# The steps of a video test pipeline that open and decode a file; the demos that hand frames
# over themselves replace them (what comes before the decode step samples frame indices).
LOADING_STEPS = ('Init', 'Decode')

TopK = List[Tuple[int, str, float]]


class DemoError(RuntimeError):
    """Bad input to a demo: the message says which argument and why."""


# ----------------------------------------------------------------------------- arguments


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """config, checkpoint and the flags every demo takes for its model."""
    parser.add_argument('config', help='model config (its test pipeline prepares the input)')
    parser.add_argument('checkpoint', help='trained weights (mmengine checkpoint)')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--topk', type=int, default=5, help='labels printed and drawn')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow full unpickling of CHECKPOINT (runs any code it holds; only '
                             'for files whose origin you trust). Default: weights only')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')


def add_labels_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--labels', help=f'class names file, one per line, "{KINETICS400}" or '
                                         f'"{IMAGENET1K}"; default: the classes the checkpoint '
                                         'names, else "class N"')


def add_window_args(parser: argparse.ArgumentParser) -> None:
    """--window and --stride of the demos that slide over a stream of frames."""
    parser.add_argument('--window', type=int, default=0,
                        help='frames in the sliding window (default: the span of one clip of '
                             'the config, clip_len x frame_interval)')
    parser.add_argument('--stride', type=int, default=0,
                        help='frames between two predictions (default: half the window)')


def add_output_video_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out-file', help='write the frames with the labels drawn on them '
                                           '(.mp4, .avi or .gif)')
    parser.add_argument('--fps', type=float, default=0,
                        help='fps of --out-file (default: the source\'s)')
    parser.add_argument('--out-width', type=int, default=480,
                        help='width of --out-file frames, 0 keeps the input size')


def quiet_logs() -> None:
    """mmaction2's loaders log FileClient deprecation notices on every call: keep the output to
    the predictions (errors still show)."""
    MMLogger.get_current_instance().setLevel(logging.ERROR)


def check_topk(k: int) -> None:
    if k < 1:
        raise DemoError(f'--topk {k}: give at least 1')


# ----------------------------------------------------------------------------- config, model


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    if not osp.isfile(path):
        raise DemoError(f'config {path!r} does not exist')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(config_scope(cfg))  # the pipeline's transforms are the host's
    return cfg


def is_video_config(cfg: Config) -> bool:
    return config_scope(cfg) == 'mmaction'


def build_model(cfg: Config, checkpoint: str, device: str, trusted: bool = False
                ) -> Tuple[torch.nn.Module, dict]:
    """The model of ``cfg`` with the weights of ``checkpoint``, in eval mode on ``device``, and
    the checkpoint's ``meta``.

    The file is read by the project's safe loader (mmengine's local loader once the plugin is
    imported): weights only, unless ``trusted``.
    """
    from mmengine.runner import load_checkpoint

    import mmvit_plugin  # noqa: F401  (registers the plugin and the safe checkpoint loader)
    from mmvit_plugin.checkpoint import CheckpointReadError, UnsafeCheckpointError
    from mmvit_plugin.checkpoint.safe_load import trusted_checkpoints

    if not osp.isfile(checkpoint):
        raise DemoError(f'checkpoint {checkpoint!r} does not exist')
    model = build_config_model(cfg)
    trust = trusted_checkpoints(osp.abspath(checkpoint)) if trusted else nullcontext()
    try:
        with trust:
            loaded = load_checkpoint(model, checkpoint, map_location='cpu', strict=True,
                                     logger='silent')
    except (UnsafeCheckpointError, CheckpointReadError) as err:
        raise DemoError(str(err)) from None
    except RuntimeError as err:  # load_state_dict: the weights do not fit the config's model
        raise DemoError(f'checkpoint {checkpoint!r} does not fit the model of the config: '
                        f'{err}') from None
    meta = loaded.get('meta') if isinstance(loaded, dict) else None
    return model.to(device).eval(), meta if isinstance(meta, dict) else {}


def num_classes_of(model: torch.nn.Module) -> int:
    """The class count of a recognizer (``cls_head``) or an image classifier (``head``)."""
    head = getattr(model, 'cls_head', None) or getattr(model, 'head', None)
    count = getattr(head, 'num_classes', None)
    if count is None:
        raise DemoError(f'{type(model).__name__} has no head with num_classes: the demos need '
                        'a classifier')
    return int(count)


# ----------------------------------------------------------------------------- labels


def kinetics400_names() -> List[str]:
    """The 400 Kinetics class names, from torchvision's weight metadata (no download)."""
    from torchvision.models.video import MViT_V2_S_Weights
    return list(MViT_V2_S_Weights.KINETICS400_V1.meta['categories'])


def imagenet1k_names() -> List[str]:
    """The 1000 ImageNet class names that mmpretrain ships."""
    from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
    return list(IMAGENET_CATEGORIES)


def read_label_names(labels: str) -> List[str]:
    if labels.lower() == KINETICS400:
        return kinetics400_names()
    if labels.lower() == IMAGENET1K:
        return imagenet1k_names()
    if not osp.isfile(labels):
        raise DemoError(f'label file {labels!r} does not exist (give a text file with one class '
                        f'name per line, "{KINETICS400}" or "{IMAGENET1K}")')
    with open(labels, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise DemoError(f'label file {labels!r} holds no class names')
    return names


def resolve_label_names(labels: Optional[str], model: torch.nn.Module, meta: dict
                        ) -> List[str]:
    """Names for every class of ``model``: from ``labels``, else the checkpoint's
    ``meta['dataset_meta']['classes']``, else ``class N``; a count that differs is an error."""
    count = num_classes_of(model)
    if labels:
        names = read_label_names(labels)
        if len(names) != count:
            raise DemoError(f'{labels!r} names {len(names)} classes but the model predicts '
                            f'{count}')
        return names
    classes = (meta.get('dataset_meta') or {}).get('classes')
    if classes is not None and len(classes) == count:
        return [str(name) for name in classes]
    return [f'class {i}' for i in range(count)]


def top_k(scores: torch.Tensor, names: Sequence[str], k: int) -> TopK:
    """(index, name, score) of the ``k`` best classes, best first."""
    values, indices = scores.topk(min(k, scores.numel()))
    return [(int(i), names[int(i)], float(v)) for v, i in zip(values, indices)]


def topk_record(best: TopK) -> List[Dict]:
    """``best`` as JSON-ready records."""
    return [dict(rank=rank, index=index, label=name, score=round(score, 6))
            for rank, (index, name, score) in enumerate(best, 1)]


def rank_line(rank: int, index: int, name: str, score: float) -> str:
    """``1. name (class 3): 0.1234``; the class index only when the name is not just it."""
    shown = '' if name == f'class {index}' else f' (class {index})'
    return f'{rank}. {name}{shown}: {score:.4f}'


def format_topk(best: TopK) -> str:
    return ' | '.join(f'{rank}. {name} {score:.4f}' for rank, (_, name, score) in
                      enumerate(best, 1))


# ----------------------------------------------------------------------------- prediction


def scores_of(result) -> torch.Tensor:
    """Class probabilities from an mmaction2 ActionDataSample or an mmpretrain DataSample."""
    scores = result.pred_scores.item if 'pred_scores' in result else result.pred_score
    return scores.detach().float().cpu()


def test_pipeline_of(cfg: Config) -> list:
    pipeline = cfg.get('test_pipeline') or cfg.test_dataloader.dataset.pipeline
    return [copy.deepcopy(dict(step)) for step in pipeline]


class FramesToClip:
    """A config's video test pipeline applied to frames already in memory (a sliding window).

    The steps before the config's decode step (``SampleFrames`` and the like) pick frame indices
    within the window as they would within a file of that many frames; the file-opening and
    decoding steps are dropped; the steps after (resize, crops, FormatShape, packing) run as
    configured.
    """

    def __init__(self, cfg: Config) -> None:
        steps = test_pipeline_of(cfg)
        decode = [i for i, step in enumerate(steps) if str(step['type']).endswith('Decode')]
        if not decode:
            raise DemoError('the test pipeline of the config has no decode step (DecordDecode, '
                            'OpenCVDecode, ...): it is not a video pipeline these demos can '
                            'feed with frames')
        keep = [step for step in steps[:decode[0]]
                if not str(step['type']).endswith(LOADING_STEPS)]
        self.sample = Compose(keep)
        self.rest = Compose(steps[decode[0] + 1:])
        self.sampler = next((step for step in keep if 'clip_len' in step), {})

    @property
    def span(self) -> int:
        """Frames one clip of the config spans (clip_len x frame_interval); 1 if unknown."""
        return int(self.sampler.get('clip_len', 1)) * int(self.sampler.get('frame_interval', 1))

    def __call__(self, frames_bgr: Sequence[np.ndarray]) -> dict:
        results = self.sample(dict(total_frames=len(frames_bgr), start_index=0, label=-1,
                                   modality='RGB', filename='<frames>'))
        indices = np.mod(np.asarray(results['frame_inds']).reshape(-1), len(frames_bgr))
        # decord (the configs' decoder) hands over RGB; OpenCV reads BGR
        results['imgs'] = [np.ascontiguousarray(frames_bgr[i][..., ::-1]) for i in indices]
        results['original_shape'] = results['img_shape'] = frames_bgr[0].shape[:2]
        return self.rest(results)


def predict_clip(model, to_clip: FramesToClip, frames_bgr: Sequence[np.ndarray]
                 ) -> torch.Tensor:
    """Class probabilities of a recognizer for one window of frames."""
    with torch.no_grad():
        return scores_of(model.test_step(pseudo_collate([to_clip(frames_bgr)]))[0])


class SlidingWindow:
    """The last ``size`` frames of a stream; a window is due every ``stride`` frames once full.

    Holds at most ``size`` frames, whatever the stream's length.
    """

    def __init__(self, size: int, stride: int) -> None:
        if size < 1 or stride < 1:
            raise DemoError(f'--window {size} / --stride {stride}: both must be at least 1')
        self.size, self.stride = size, stride
        self.frames: deque = deque(maxlen=size)
        self.seen = 0  # frames pushed so far
        self.last_end = 0  # end (exclusive frame index) of the last window handed out

    def push(self, frame: np.ndarray) -> bool:
        """Add a frame; True when the window now ending at it is due."""
        self.frames.append(frame)
        self.seen += 1
        due = self.seen >= self.size and (self.seen - self.size) % self.stride == 0
        if due:
            self.last_end = self.seen
        return due

    @property
    def start(self) -> int:
        """Frame index of the oldest frame held."""
        return self.seen - len(self.frames)

    def finish(self) -> bool:
        """At the end of the stream: True when frames came after the last window (or no window
        was due at all), so one more window (the last frames held) should cover them."""
        due = self.seen > self.last_end
        self.last_end = self.seen
        return due


def window_from_args(args: argparse.Namespace, to_clip: 'FramesToClip') -> SlidingWindow:
    """The sliding window that --window/--stride ask for (defaults: see add_window_args)."""
    size = args.window or to_clip.span
    return SlidingWindow(size, args.stride or max(1, size // 2))


# ----------------------------------------------------------------------------- sources


def open_capture(source: str) -> Tuple[cv2.VideoCapture, bool]:
    """An opened OpenCV capture of ``source`` (a camera index, a file or a URL) and whether it
    is a camera."""
    camera = source.isdigit()
    if not camera and '://' not in source:
        if not osp.exists(source):
            raise DemoError(f'source {source!r} does not exist (give a camera index such as 0, '
                            'a video file or a URL)')
        if not osp.isfile(source):
            raise DemoError(f'source {source!r} is not a file')
    capture = cv2.VideoCapture(int(source) if camera else source)
    if not capture.isOpened():
        raise DemoError(f'source {source!r}: OpenCV cannot open it'
                        + (' (no such camera?)' if camera else ' (not a video it can decode?)'))
    return capture, camera


def capture_fps(capture: cv2.VideoCapture, default: float = 25.0) -> float:
    fps = capture.get(cv2.CAP_PROP_FPS)
    return float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else default


# ----------------------------------------------------------------------------- drawing, output


def fit_width(frame: np.ndarray, width: int) -> np.ndarray:
    """``frame`` scaled to ``width`` pixels (the text needs room on tiny clips); 0 keeps it."""
    if not width or frame.shape[1] == width:
        return frame
    height = max(1, round(frame.shape[0] * width / frame.shape[1]))
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA
                      if width < frame.shape[1] else cv2.INTER_NEAREST)


def draw_topk(frame_bgr: np.ndarray, best: Optional[TopK], header: str = '') -> np.ndarray:
    """A copy of ``frame_bgr`` with ``header`` and the top-k lines written on a dark band."""
    frame = frame_bgr.copy()
    lines = ([header] if header else []) + [
        f'{name}: {score:.3f}' for _, name, score in (best or [])]
    if not lines:
        return frame
    scale = max(0.4, frame.shape[1] / 900)
    thickness = 1 if scale < 0.8 else 2
    line_height = int(22 * scale) + 4
    band = min(frame.shape[0], line_height * len(lines) + 6)
    frame[:band] = (frame[:band] * 0.4).astype(frame.dtype)
    for row, text in enumerate(lines):
        cv2.putText(frame, text, (6, line_height * (row + 1)), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), thickness, cv2.LINE_AA)
    return frame


def check_video_output(path: str, flag: str = '--out-file') -> None:
    ext = osp.splitext(path)[1].lower()
    if ext != '.gif' and ext not in VIDEO_EXTENSIONS:
        raise DemoError(f'{flag} {path!r}: use .mp4, .avi or .gif')


class VideoSink:
    """Writes BGR frames to .mp4/.avi (OpenCV) or .gif (imageio) as they come; opened on the
    first frame (its size is the video's)."""

    def __init__(self, path: str, fps: float) -> None:
        check_video_output(path)
        self.path, self.fps = path, fps
        self.writer = None
        self.size = None
        self.frames = 0

    def write(self, frame_bgr: np.ndarray) -> None:
        if self.writer is None:
            self._open(frame_bgr)
        if frame_bgr.shape[1::-1] != self.size:
            frame_bgr = cv2.resize(frame_bgr, self.size)
        if self.is_gif:
            self.writer.append_data(np.ascontiguousarray(frame_bgr[..., ::-1]))
        else:
            self.writer.write(np.ascontiguousarray(frame_bgr))
        self.frames += 1

    @property
    def is_gif(self) -> bool:
        return self.path.lower().endswith('.gif')

    def _open(self, frame: np.ndarray) -> None:
        out_dir = osp.dirname(self.path)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        self.size = (frame.shape[1], frame.shape[0])
        if self.is_gif:
            import imageio.v2 as imageio
            # imageio's GIF writer takes each frame's duration in milliseconds
            self.writer = imageio.get_writer(self.path, mode='I', duration=1000.0 / self.fps,
                                             loop=0)
            return
        fourcc = VIDEO_EXTENSIONS[osp.splitext(self.path)[1].lower()]
        self.writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*fourcc), self.fps,
                                      self.size)
        if not self.writer.isOpened():
            raise DemoError(f'--out-file {self.path!r}: OpenCV cannot open it for writing')

    def close(self) -> None:
        if self.writer is not None:
            (self.writer.close if self.is_gif else self.writer.release)()
            self.writer = None

    def __enter__(self) -> 'VideoSink':
        return self

    def __exit__(self, *exc) -> None:
        self.close()
