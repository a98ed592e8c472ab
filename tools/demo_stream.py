"""Recognise actions live on any OpenCV source (camera, file, URL) with a sliding window.

    python tools/demo_stream.py CONFIG CHECKPOINT SOURCE [--labels kinetics400]
        [--window N] [--stride N] [--no-show] [--out-file out.mp4] [--max-frames N]

SOURCE is a camera index (``0``), a video file or a URL OpenCV opens (rtsp://, http://...). The
last ``--window`` frames (default: one clip of the config) go through the config's test
pipeline every ``--stride`` frames; the top-k (averaged over the last ``--average-size``
predictions) is drawn on every frame shown in a window (``q`` or Esc stops), written to
``--out-file`` and printed, one line a prediction. ``--no-show`` runs without a display.
Cameras and URLs are read in a thread that drops the frames the model cannot keep up with
(``--live`` does that on a file, read at its frame rate); a file is otherwise read frame by
frame, every frame used.
"""
import argparse
import os
import os.path as osp
import queue
import sys
import threading
import time
from collections import deque
from typing import Iterator, Optional, Tuple

import cv2
import numpy as np
import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from demo_common import (  # noqa: E402
                         DemoError,
                         FramesToClip,
                         VideoSink,
                         add_labels_arg,
                         add_model_args,
                         add_output_video_args,
                         add_window_args,
                         build_model,
                         capture_fps,
                         check_topk,
                         draw_topk,
                         fit_width,
                         format_topk,
                         load_config,
                         open_capture,
                         predict_clip,
                         quiet_logs,
                         resolve_label_names,
                         top_k,
                         window_from_args,
)

WINDOW_NAME = 'mmvit stream demo (q: quit)'


class LiveReader:
    """Reads a capture in a thread and keeps the newest ``size`` frames: when the consumer is
    slower than the source, the oldest frames are dropped (and counted), not queued up."""

    def __init__(self, capture: cv2.VideoCapture, size: int, pace_fps: float = 0) -> None:
        self.capture = capture
        self.pace = 1.0 / pace_fps if pace_fps else 0.0  # a file read as if it were live
        self.frames: queue.Queue = queue.Queue(maxsize=size)
        self.dropped = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        started, count = time.perf_counter(), 0
        while not self.stopped.is_set():
            if self.pace:
                time.sleep(max(0.0, started + count * self.pace - time.perf_counter()))
            ok, frame = self.capture.read()
            count += 1
            if not ok:
                break
            while True:
                try:
                    self.frames.put_nowait(frame)
                    break
                except queue.Full:  # drop the oldest frame
                    try:
                        self.frames.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
        # the end marker waits for room (it must not push out the last frames)
        while not self.stopped.is_set():
            try:
                self.frames.put(None, timeout=0.1)
                return
            except queue.Full:
                pass

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            frame = self.frames.get()
            if frame is None:
                return
            yield frame

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)


def frames_of(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def check_display() -> None:
    """OpenCV's Qt window aborts the process when there is no display: say so before."""
    if sys.platform.startswith('linux') and not (os.environ.get('DISPLAY')
                                                 or os.environ.get('WAYLAND_DISPLAY')):
        raise DemoError('no display (DISPLAY is not set): run with --no-show (and --out-file '
                        'to keep the drawn frames)')


def show(frame: np.ndarray) -> bool:
    """Show ``frame``; False when the user asks to stop (q, Esc)."""
    try:
        cv2.imshow(WINDOW_NAME, frame)
        key = cv2.waitKey(1) & 0xFF
    except cv2.error as err:
        raise DemoError(f'cannot show frames ({str(err).strip().splitlines()[-1]}): run with '
                        '--no-show (and --out-file to keep the result)') from None
    return key not in (ord('q'), 27)


def run(model, to_clip: FramesToClip, names, frames: Iterator[np.ndarray], fps: float,
        args: argparse.Namespace, sink: Optional[VideoSink]) -> Tuple[int, int]:
    """Slide over ``frames``; returns (frames seen, predictions made)."""
    window = window_from_args(args, to_clip)
    recent = deque(maxlen=max(1, args.average_size))
    best = None
    predictions = 0
    for frame in frames:
        if window.push(frame):
            recent.append(predict_clip(model, to_clip, list(window.frames)))
            scores = torch.stack(list(recent)).mean(0)
            best = [item for item in top_k(scores, names, args.topk)
                    if item[2] >= args.threshold]
            predictions += 1
            if not args.quiet:
                print(f'frames {window.start}-{window.seen - 1} '
                      f'({window.start / fps:.2f}-{window.seen / fps:.2f} s): '
                      f'{format_topk(best) or "(nothing above --threshold)"}', flush=True)
        if sink is not None or not args.no_show:
            drawn = draw_topk(fit_width(frame, args.out_width), best,
                              header=f'{window.seen / fps:.1f} s')
            if sink is not None:
                sink.write(drawn)
            if not args.no_show and not show(drawn):
                break
        if args.max_frames and window.seen >= args.max_frames:
            break
    return window.seen, predictions


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(parser)
    parser.add_argument('source', help='camera index (0), video file or URL')
    add_labels_arg(parser)
    add_window_args(parser)
    parser.add_argument('--average-size', type=int, default=1,
                        help='average the scores of this many last predictions')
    parser.add_argument('--threshold', type=float, default=0.0,
                        help='show only labels scoring at least this')
    parser.add_argument('--no-show', action='store_true', help='no window (headless)')
    add_output_video_args(parser)
    parser.add_argument('--max-frames', type=int, default=0, help='stop after this many frames')
    parser.add_argument('--live', action='store_true',
                        help='drop frames the model cannot keep up with (default for cameras '
                             'and URLs)')
    parser.add_argument('--quiet', action='store_true', help='print no line per prediction')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_logs()
    capture = reader = None
    try:
        check_topk(args.topk)
        if not args.no_show:
            check_display()
        cfg = load_config(args.config, args.cfg_options)
        to_clip = FramesToClip(cfg)
        window_from_args(args, to_clip)  # bad --window/--stride before the model is built
        model, meta = build_model(cfg, args.checkpoint, args.device, args.trust_checkpoint)
        names = resolve_label_names(args.labels, model, meta)
        capture, camera = open_capture(args.source)
        fps = capture_fps(capture)
        live = args.live or camera or '://' in args.source
        if live:
            # a file given --live is read at its own frame rate, as a camera would deliver it
            pace = 0 if camera or '://' in args.source else fps
            reader = LiveReader(capture, max(args.window or to_clip.span, 1), pace)
        sink = VideoSink(args.out_file, args.fps or fps) if args.out_file else None
        started = time.perf_counter()
        try:
            seen, predictions = run(model, to_clip, names, iter(reader) if live
                                    else frames_of(capture), fps, args, sink)
        finally:
            if sink is not None:
                sink.close()
        took = time.perf_counter() - started
        dropped = f', {reader.dropped} dropped' if reader is not None else ''
        print(f'{seen} frames{dropped}, {predictions} predictions in {took:.1f} s'
              + (f'; wrote {args.out_file}' if sink is not None else ''))
        if predictions == 0:
            print(f'(the source ended before the first full window of '
                  f'{args.window or to_clip.span} frames)')
    except DemoError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    finally:
        if reader is not None:
            reader.stop()
        if capture is not None:
            capture.release()
        if not args.no_show:
            try:
                cv2.destroyAllWindows()
            except cv2.error:  # no GUI support: show() has said so
                pass
    return 0


if __name__ == '__main__':
    sys.exit(main())
