"""Label a long video window by window: a labelled video and a CSV/JSON timeline, in bounded
memory.

    python tools/demo_long_video.py CONFIG CHECKPOINT VIDEO [--labels kinetics400]
        [--window N] [--stride N] [--out-file labelled.mp4] [--timeline timeline.json|.csv]

The video is read frame by frame (OpenCV); only the sliding window (``--window`` frames, default
one clip of the config) and the frames not yet written are held, so memory does not grow with
the video's length (mmaction2's long-video demo decodes the whole video first). Every
``--stride`` frames the window goes through the config's test pipeline; after the last full
window, one more window ending at the last frame covers the rest (a video shorter than the
window is one window, its frames looped as the sampler does). Each output frame carries the
labels of the first window that ends at or after it (the earliest window holding it when
stride <= window). The timeline has one row per window: start and end frame (end exclusive),
start and end time in seconds, the top-k labels and scores; it is written as the windows come.
"""
import argparse
import csv
import json
import os
import os.path as osp
import sys
import time
from collections import deque
from typing import Dict, Optional, Sequence

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
                         check_video_output,
                         draw_topk,
                         fit_width,
                         format_topk,
                         load_config,
                         open_capture,
                         predict_clip,
                         quiet_logs,
                         resolve_label_names,
                         top_k,
                         topk_record,
                         window_from_args,
)

TIMELINE_EXTENSIONS = ('.csv', '.json')


class TimelineWriter:
    """Writes one window a row (CSV) or one object a window (JSON), as they come."""

    def __init__(self, path: str, topk: int, header: Dict) -> None:
        self.ext = osp.splitext(path)[1].lower()
        if self.ext not in TIMELINE_EXTENSIONS:
            raise DemoError(f'--timeline {path!r}: use .csv or .json')
        out_dir = osp.dirname(path)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        self.file = open(path, 'w', encoding='utf-8', newline='')
        self.count = 0
        if self.ext == '.csv':
            self.csv = csv.writer(self.file)
            self.csv.writerow(['window', 'start_frame', 'end_frame', 'start_s', 'end_s']
                              + [f'{what}_{rank}' for rank in range(1, topk + 1)
                                 for what in ('label', 'score')])
        else:  # a JSON object whose "windows" list is streamed
            self.file.write(json.dumps(header)[:-1] + ', "windows": [')

    def write(self, entry: Dict) -> None:
        if self.ext == '.csv':
            cells = [entry[key] for key in ('window', 'start_frame', 'end_frame', 'start_s',
                                            'end_s')]
            for item in entry['topk']:
                cells += [item['label'], item['score']]
            self.csv.writerow(cells)
        else:
            self.file.write((',' if self.count else '') + '\n  ' + json.dumps(entry))
        self.file.flush()
        self.count += 1

    def close(self) -> None:
        if self.ext == '.json':
            self.file.write('\n]}\n')
        self.file.close()


def label_video(model, to_clip: FramesToClip, names: Sequence[str], capture, fps: float,
                args: argparse.Namespace, sink: Optional[VideoSink],
                timeline: Optional[TimelineWriter]) -> Dict:
    """Slide over the capture, write labelled frames and timeline rows as windows finish;
    returns counts (frames, windows, most frames held at once)."""
    window = window_from_args(args, to_clip)
    pending: deque = deque()  # frames read but not yet written (they await their window)
    held = 0
    windows = 0

    def finish_window() -> None:
        nonlocal windows
        scores = predict_clip(model, to_clip, list(window.frames))
        best = top_k(scores, names, args.topk)
        entry = dict(window=windows, start_frame=window.start, end_frame=window.seen,
                     start_s=round(window.start / fps, 3), end_s=round(window.seen / fps, 3),
                     topk=topk_record(best))
        windows += 1
        if timeline is not None:
            timeline.write(entry)
        if not args.quiet:
            print(f'window {entry["window"]}: frames {entry["start_frame"]}-'
                  f'{entry["end_frame"] - 1} ({entry["start_s"]:.2f}-{entry["end_s"]:.2f} s): '
                  f'{format_topk(best)}', flush=True)
        while pending:
            index, frame = pending.popleft()
            if sink is not None:
                sink.write(draw_topk(fit_width(frame, args.out_width), best,
                                     header=f'{index / fps:.1f} s  window {entry["window"]}'))

    while True:
        ok, frame = capture.read()
        if not ok:
            break
        if sink is not None:
            pending.append((window.seen, frame))
        due = window.push(frame)
        held = max(held, len(pending), len(window.frames))
        if due:
            finish_window()
    if window.seen and window.finish():
        finish_window()
    return dict(frames=window.seen, windows=windows, held=held)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(parser)
    parser.add_argument('video', help='video file (anything OpenCV opens)')
    add_labels_arg(parser)
    add_window_args(parser)
    add_output_video_args(parser)
    parser.add_argument('--timeline', help='write the per-window labels to this .csv or .json')
    parser.add_argument('--quiet', action='store_true', help='print no line per window')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_logs()
    capture = timeline = None
    try:
        check_topk(args.topk)
        if args.out_file:
            check_video_output(args.out_file)
        if args.timeline and osp.splitext(args.timeline)[1].lower() not in TIMELINE_EXTENSIONS:
            raise DemoError(f'--timeline {args.timeline!r}: use .csv or .json')
        if osp.isdir(args.video):
            raise DemoError(f'video {args.video!r} is a folder, not a file')
        cfg = load_config(args.config, args.cfg_options)
        to_clip = FramesToClip(cfg)
        window = window_from_args(args, to_clip)
        model, meta = build_model(cfg, args.checkpoint, args.device, args.trust_checkpoint)
        names = resolve_label_names(args.labels, model, meta)
        capture, _ = open_capture(args.video)
        fps = capture_fps(capture)
        if args.timeline:
            timeline = TimelineWriter(args.timeline, args.topk, dict(
                video=args.video, fps=fps, window=window.size, stride=window.stride,
                topk=args.topk))
        sink = VideoSink(args.out_file, args.fps or fps) if args.out_file else None
        started = time.perf_counter()
        try:
            counts = label_video(model, to_clip, names, capture, fps, args, sink, timeline)
        finally:
            if sink is not None:
                sink.close()
        if counts['frames'] == 0:
            raise DemoError(f'video {args.video!r}: OpenCV read no frame from it')
        wrote = [path for path in (args.out_file, args.timeline) if path]
        print(f'{counts["frames"]} frames, {counts["windows"]} windows of {window.size} frames '
              f'(stride {window.stride}) in {time.perf_counter() - started:.1f} s; at most '
              f'{counts["held"]} frames held' + (f'; wrote {", ".join(wrote)}' if wrote else ''))
    except DemoError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    finally:
        if timeline is not None:
            timeline.close()
        if capture is not None:
            capture.release()
    return 0


if __name__ == '__main__':
    sys.exit(main())
