"""Recognise the action in one video: print the top-5 labels, optionally draw them on the video.

    python tools/demo_video.py CONFIG CHECKPOINT VIDEO LABELS [--out-file out.mp4]

LABELS is a text file with one class name per line (in class-index order) or the word
``kinetics400`` for the Kinetics-400 names that torchvision carries (no download). The test
pipeline of CONFIG (all its clips and crops) prepares the video; ``--out-file`` writes the video
with the predictions drawn by mmaction2's ActionVisualizer (.mp4/.avi via OpenCV, .gif).
"""
import argparse
import logging
import os
import os.path as osp
import sys
import uuid
from typing import List, Sequence, Tuple

import cv2
import numpy as np
import torch
from mmengine.config import Config, DictAction
from mmengine.dataset import Compose, pseudo_collate
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
from mmengine.structures import LabelData

KINETICS400 = 'kinetics400'


class DemoError(RuntimeError):
    """Bad input to the demo: the message says which argument and why."""


def kinetics400_names() -> List[str]:
    """The 400 Kinetics class names, from torchvision's weight metadata (no download)."""
    from torchvision.models.video import MViT_V2_S_Weights
    return list(MViT_V2_S_Weights.KINETICS400_V1.meta['categories'])


def read_label_names(labels: str) -> List[str]:
    if labels.lower() == KINETICS400:
        return kinetics400_names()
    if not osp.isfile(labels):
        raise DemoError(f'label file {labels!r} does not exist (give a text file with one class '
                        f'name per line, or "{KINETICS400}")')
    with open(labels, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise DemoError(f'label file {labels!r} holds no class names')
    return names


def check_video(path: str) -> None:
    """Fail early, naming the file and decord's reason, when the video cannot be decoded."""
    from mmvit_plugin.datasets.video_folder import explain_unreadable, probe_video
    if not osp.exists(path):
        raise DemoError(f'video {path!r} does not exist')
    if not osp.isfile(path):
        raise DemoError(f'video {path!r} is not a file')
    if probe_video(path) is not None:
        raise DemoError(f'video {path!r} cannot be read: {explain_unreadable(path)}')


def top_k(scores: torch.Tensor, names: Sequence[str], k: int) -> List[Tuple[int, str, float]]:
    """(index, name, score) of the ``k`` best classes, best first."""
    values, indices = scores.topk(min(k, scores.numel()))
    return [(int(i), names[int(i)], float(v)) for v, i in zip(values, indices)]


def test_pipeline_of(cfg: Config) -> list:
    pipeline = cfg.get('test_pipeline') or cfg.test_dataloader.dataset.pipeline
    return [dict(step) for step in pipeline]


def build_recognizer(cfg: Config, checkpoint: str, device: str):
    from mmaction.registry import MODELS

    import mmvit_plugin  # noqa: F401  (registers the plugin; configs import it as well)
    if not osp.isfile(checkpoint):
        raise DemoError(f'checkpoint {checkpoint!r} does not exist')
    model = MODELS.build(cfg.model)
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True, logger='silent')
    return model.to(device).eval()


def predict(model, cfg: Config, video: str) -> torch.Tensor:
    """Class probabilities for ``video`` (views averaged as the config's head says)."""
    pipeline = Compose(test_pipeline_of(cfg))
    data = pipeline(dict(filename=video, label=-1, start_index=0, modality='RGB'))
    with torch.no_grad():
        result = model.test_step(pseudo_collate([data]))[0]
    scores = result.pred_scores.item if 'pred_scores' in result else result.pred_score
    return scores.detach().float().cpu()


def write_visualisation(video: str, scores: torch.Tensor, names: Sequence[str], k: int,
                        out_file: str, fps: float, width: int) -> None:
    """Draw the top-k predictions on every frame with ActionVisualizer and save the video."""
    import decord
    from mmaction.structures import ActionDataSample
    from mmaction.visualization import ActionVisualizer

    reader = decord.VideoReader(video)
    frames = [frame[..., ::-1] for frame in reader.get_batch(range(len(reader))).asnumpy()]
    fps = fps or reader.get_avg_fps() or 25.0
    if width and frames[0].shape[1] != width:  # the text needs room on tiny clips
        height = round(frames[0].shape[0] * width / frames[0].shape[1])
        frames = [cv2.resize(f, (width, height), interpolation=cv2.INTER_NEAREST)
                  for f in frames]
    sample = ActionDataSample()
    best = [index for index, _, _ in top_k(scores, names, k)]
    sample.pred_labels = LabelData(item=torch.tensor(best), score=scores)
    visualizer = ActionVisualizer(name=f"demo_video_{uuid.uuid4().hex}")
    visualizer.dataset_meta = dict(classes=list(names))
    drawn = visualizer.add_datasample('demo', frames, sample, draw_gt=False, draw_pred=True,
                                      draw_score=True)
    out_dir = osp.dirname(out_file)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    ext = osp.splitext(out_file)[1].lower()
    if ext == '.gif':
        import imageio.v2 as imageio
        imageio.mimsave(out_file, [frame[..., ::-1] for frame in drawn], duration=1.0 / fps)
        return
    fourcc = {'.mp4': 'mp4v', '.avi': 'MJPG'}.get(ext)
    if fourcc is None:
        raise DemoError(f'--out-file {out_file!r}: use .mp4, .avi or .gif')
    height, width_px = drawn[0].shape[:2]
    writer = cv2.VideoWriter(out_file, cv2.VideoWriter_fourcc(*fourcc), fps, (width_px, height))
    if not writer.isOpened():
        raise DemoError(f'--out-file {out_file!r}: OpenCV cannot open it for writing')
    for frame in drawn:  # frames were handed over in OpenCV's BGR order and come back so
        writer.write(np.ascontiguousarray(frame))
    writer.release()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='model config (its test pipeline prepares the video)')
    parser.add_argument('checkpoint', help='trained weights (mmengine checkpoint)')
    parser.add_argument('video', help='video file (any container decord reads)')
    parser.add_argument('labels', help=f'class names file, one per line, or "{KINETICS400}"')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--topk', type=int, default=5, help='labels printed and drawn')
    parser.add_argument('--out-file', help='write the video with the predictions drawn on it')
    parser.add_argument('--fps', type=float, default=0, help='fps of --out-file (default: input)')
    parser.add_argument('--out-width', type=int, default=480,
                        help='width of --out-file frames, 0 keeps the input size')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # mmaction2's decord loader logs FileClient deprecation notices on every call: keep the
    # output to the predictions (errors still show).
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    try:
        if not osp.isfile(args.config):
            raise DemoError(f'config {args.config!r} does not exist')
        cfg = Config.fromfile(args.config)
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        init_default_scope(cfg.get('default_scope', 'mmaction'))
        names = read_label_names(args.labels)
        check_video(args.video)
        model = build_recognizer(cfg, args.checkpoint, args.device)
        num_classes = model.cls_head.num_classes
        if len(names) != num_classes:
            raise DemoError(f'{args.labels!r} names {len(names)} classes but the model predicts '
                            f'{num_classes}')
        scores = predict(model, cfg, args.video)
        print(f'top-{args.topk} for {args.video}:')
        for rank, (index, name, score) in enumerate(top_k(scores, names, args.topk), 1):
            print(f'{rank}. {name} (class {index}): {score:.4f}')
        if args.out_file:
            write_visualisation(args.video, scores, names, args.topk, args.out_file,
                                args.fps, args.out_width)
            print(f'wrote {args.out_file}')
    except DemoError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
