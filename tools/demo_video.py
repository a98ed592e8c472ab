"""Recognise the action in one video: print the top-5 labels, optionally draw them on the video.

    python tools/demo_video.py CONFIG CHECKPOINT VIDEO LABELS [--out-file out.mp4]

LABELS is a text file with one class name per line (in class-index order), ``kinetics400`` for
the Kinetics-400 names that torchvision carries (no download) or ``imagenet1k``. The test
pipeline of CONFIG (all its clips and crops) prepares the video; ``--out-file`` writes the video
with the predictions drawn on every frame (.mp4/.avi via OpenCV, .gif), frame by frame.
CHECKPOINT is read weights-only unless ``--trust-checkpoint``.
"""
import argparse
import os.path as osp
import sys

import cv2  # noqa: F401  (before decord: decord first breaks cv2's PNG reading)
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from demo_common import (  # noqa: E402
                         KINETICS400,
                         DemoError,
                         VideoSink,
                         add_model_args,
                         build_model,
                         capture_fps,
                         check_topk,
                         check_video_output,
                         draw_topk,
                         fit_width,
                         kinetics400_names,
                         load_config,
                         open_capture,
                         quiet_logs,
                         rank_line,
                         read_label_names,
                         scores_of,
                         test_pipeline_of,
                         top_k,
)

__all__ = ['kinetics400_names', 'build_recognizer', 'predict', 'main']


def check_video(path: str) -> None:
    """Fail early, naming the file and decord's reason, when the video cannot be decoded."""
    from mmvit_plugin.datasets.video_folder import explain_unreadable, probe_video
    if not osp.exists(path):
        raise DemoError(f'video {path!r} does not exist')
    if not osp.isfile(path):
        raise DemoError(f'video {path!r} is not a file')
    if probe_video(path) is not None:
        raise DemoError(f'video {path!r} cannot be read: {explain_unreadable(path)}')


def build_recognizer(cfg: Config, checkpoint: str, device: str, trusted: bool = False):
    return build_model(cfg, checkpoint, device, trusted)[0]


def predict(model, cfg: Config, video: str) -> torch.Tensor:
    """Class probabilities for ``video`` (views averaged as the config's head says)."""
    pipeline = Compose(test_pipeline_of(cfg))
    data = pipeline(dict(filename=video, label=-1, start_index=0, modality='RGB'))
    with torch.no_grad():
        return scores_of(model.test_step(pseudo_collate([data]))[0])


def write_visualisation(video: str, best, out_file: str, fps: float, width: int) -> int:
    """Write ``video`` with the top-k ``best`` drawn on every frame; returns the frame count.
    One frame is held at a time."""
    capture, _ = open_capture(video)
    with VideoSink(out_file, fps or capture_fps(capture)) as sink:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            sink.write(draw_topk(fit_width(frame, width), best))
    capture.release()
    return sink.frames


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(parser)
    parser.add_argument('video', help='video file (any container decord reads)')
    parser.add_argument('labels', help=f'class names file, one per line, or "{KINETICS400}"')
    parser.add_argument('--out-file', help='write the video with the predictions drawn on it')
    parser.add_argument('--fps', type=float, default=0, help='fps of --out-file (default: input)')
    parser.add_argument('--out-width', type=int, default=480,
                        help='width of --out-file frames, 0 keeps the input size')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_logs()
    try:
        check_topk(args.topk)
        cfg = load_config(args.config, args.cfg_options)
        names = read_label_names(args.labels)
        check_video(args.video)
        if args.out_file:
            check_video_output(args.out_file)
        model = build_recognizer(cfg, args.checkpoint, args.device, args.trust_checkpoint)
        num_classes = model.cls_head.num_classes
        if len(names) != num_classes:
            raise DemoError(f'{args.labels!r} names {len(names)} classes but the model predicts '
                            f'{num_classes}')
        scores = predict(model, cfg, args.video)
        best = top_k(scores, names, args.topk)
        print(f'top-{args.topk} for {args.video}:')
        for rank, (index, name, score) in enumerate(best, 1):
            print(rank_line(rank, index, name, score))
        if args.out_file:
            frames = write_visualisation(args.video, best, args.out_file, args.fps,
                                         args.out_width)
            print(f'wrote {args.out_file} ({frames} frames)')
    except DemoError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
