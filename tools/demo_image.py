"""Classify images: a file or a folder -> the top-k labels of each, printed and as JSON,
optionally drawn on copies of the images.

    python tools/demo_image.py CONFIG CHECKPOINT IMAGE_OR_FOLDER [--labels imagenet1k]
        [--topk 5] [--out-json predictions.json] [--out-dir drawn/] [--batch-size 8]

A folder is searched for images (``--recursive`` for sub-folders too), sorted by path. The
config's test pipeline prepares each image. ``--out-json`` holds one record per image (path,
top-k with class index, label and score); ``--out-dir`` gets each image with its top-k written
on it, under the image's path relative to the folder. CHECKPOINT is read weights-only unless
``--trust-checkpoint``.
"""
import argparse
import json
import os
import os.path as osp
import sys
from typing import List

import cv2
import torch
from mmengine.dataset import Compose, pseudo_collate

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from demo_common import (  # noqa: E402
                         DemoError,
                         add_labels_arg,
                         add_model_args,
                         build_model,
                         check_topk,
                         draw_topk,
                         fit_width,
                         is_video_config,
                         load_config,
                         quiet_logs,
                         rank_line,
                         resolve_label_names,
                         scores_of,
                         test_pipeline_of,
                         top_k,
                         topk_record,
)


def image_extensions():
    from mmvit_plugin.datasets.image_folder import IMAGE_EXTENSIONS
    return IMAGE_EXTENSIONS


def find_images(source: str, recursive: bool) -> List[str]:
    """``source`` itself, or the images in the folder ``source`` (sorted)."""
    if not osp.exists(source):
        raise DemoError(f'input {source!r} does not exist (give an image or a folder of images)')
    if osp.isfile(source):
        return [source]
    extensions = image_extensions()
    found = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        found += [osp.join(root, name) for name in sorted(files)
                  if osp.splitext(name)[1].lower() in extensions]
        if not recursive:
            break
    if not found:
        raise DemoError(f'folder {source!r} holds no image ({", ".join(extensions)})'
                        + ('' if recursive else '; --recursive searches its sub-folders'))
    return found


def predict_images(model, pipeline: Compose, paths: List[str]) -> torch.Tensor:
    """Class probabilities, one row per image."""
    data = []
    for path in paths:
        try:
            data.append(pipeline(dict(img_path=path)))
        except (ValueError, OSError) as err:
            raise DemoError(f'image {path!r}: {err}') from None
    with torch.no_grad():
        return torch.stack([scores_of(result)
                            for result in model.test_step(pseudo_collate(data))])


def drawn_path(out_dir: str, source: str, path: str) -> str:
    relative = osp.basename(path) if osp.isfile(source) else osp.relpath(path, source)
    return osp.join(out_dir, relative)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(parser)
    parser.add_argument('input', help='an image file or a folder of images')
    add_labels_arg(parser)
    parser.add_argument('--recursive', action='store_true', help='search sub-folders too')
    parser.add_argument('--batch-size', type=int, default=8, help='images per forward pass')
    parser.add_argument('--out-json', help='write the predictions to this JSON file')
    parser.add_argument('--out-dir', help='write each image with its top-k drawn here')
    parser.add_argument('--out-width', type=int, default=480,
                        help='width of the drawn images, 0 keeps the input size')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_logs()
    try:
        check_topk(args.topk)
        if args.batch_size < 1:
            raise DemoError(f'--batch-size {args.batch_size}: give at least 1')
        cfg = load_config(args.config, args.cfg_options)
        if is_video_config(cfg):
            raise DemoError(f'config {args.config!r} is a video config (mmaction scope): use '
                            'tools/demo_video.py, demo_stream.py or demo_long_video.py')
        paths = find_images(args.input, args.recursive)
        model, meta = build_model(cfg, args.checkpoint, args.device, args.trust_checkpoint)
        names = resolve_label_names(args.labels, model, meta)
        pipeline = Compose(test_pipeline_of(cfg))
        records = []
        for first in range(0, len(paths), args.batch_size):
            batch = paths[first:first + args.batch_size]
            for path, scores in zip(batch, predict_images(model, pipeline, batch)):
                best = top_k(scores, names, args.topk)
                records.append(dict(image=path, topk=topk_record(best)))
                print(f'{path}:')
                for rank, (index, name, score) in enumerate(best, 1):
                    print(f'  {rank_line(rank, index, name, score)}')
                if args.out_dir:
                    target = drawn_path(args.out_dir, args.input, path)
                    os.makedirs(osp.dirname(target) or '.', exist_ok=True)
                    image = cv2.imread(path, cv2.IMREAD_COLOR)
                    if not cv2.imwrite(target, draw_topk(fit_width(image, args.out_width),
                                                         best)):
                        raise DemoError(f'--out-dir: OpenCV cannot write {target!r}')
        if args.out_json:
            os.makedirs(osp.dirname(args.out_json) or '.', exist_ok=True)
            with open(args.out_json, 'w', encoding='utf-8') as f:
                json.dump(dict(config=args.config, checkpoint=args.checkpoint,
                               predictions=records), f, indent=1)
        wrote = [path for path in (args.out_json, args.out_dir) if path]
        print(f'{len(records)} images' + (f'; wrote {", ".join(wrote)}' if wrote else ''))
    except DemoError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
