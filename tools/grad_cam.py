"""Grad-CAM heat maps of an MViTv2 image or video classifier: a PNG for an image, a GIF for a clip.

    python tools/grad_cam.py CONFIG CHECKPOINT INPUT [--out FILE] [--target-layer NAME]
        [--target-class N] [--method gradcam|gradcam++|xgradcam|layercam|hirescam|eigencam]
        [--alpha A] [--out-size S] [--list-layers] [--device DEV] [--trust-checkpoint]
        [--cfg-options key=value ...]

CONFIG's test pipeline prepares INPUT (one view: a video's first clip, the centre crop); the
heat map is computed with pytorch-grad-cam (the ``grad-cam`` package) on the tokens of the
target layer (default: the norm before the last block's attention, ``backbone.blocks.-1.norm1``),
reshaped to their (T,) H, W grid with the cls token dropped, for the predicted class or
``--target-class``. The overlay is drawn on the input as the model sees it (after resizing and
cropping), resized so that its short side is ``--out-size`` pixels: ``--out`` .png/.jpg for
an image; .gif (imageio), .mp4 or .avi for a clip, one frame per input frame. ``--list-layers``
prints the layers that hold tokens, with their grids.

The checkpoint is read with the project's weights-only loader; ``--trust-checkpoint`` allows
full unpickling (runs any code in the file: only for files you trust).
"""
import argparse
import logging
import math
import os
import os.path as osp
import re
import sys
from typing import Dict, List, Optional, Tuple

import cv2  # noqa: F401  (before decord: decord first breaks cv2's PNG reading)
import numpy as np
import torch
from extract_features import (  # this script's folder is first on sys.path
    MultiCrop,
    ToolError,
    build_model,
    check_kind,
    is_video_config,
    load_config,
    load_views,
    normalise,
    test_pipeline_of,
    video_pipeline,
)
from mmengine.config import DictAction
from mmengine.logging import MMLogger

DEFAULT_LAYER = 'backbone.blocks.-1.norm1'
IMAGE_OUTS = ('.png', '.jpg', '.jpeg')
VIDEO_OUTS = ('.gif', '.mp4', '.avi')


def cam_methods() -> Dict[str, type]:
    import pytorch_grad_cam as cams
    return {'gradcam': cams.GradCAM, 'gradcam++': cams.GradCAMPlusPlus,
            'xgradcam': cams.XGradCAM, 'layercam': cams.LayerCAM, 'hirescam': cams.HiResCAM,
            'eigencam': cams.EigenCAM}


def check_3d_cams() -> None:
    """Video heat maps need grad-cam >= 1.5 (its CAMs of 5-D activations)."""
    from importlib.metadata import version
    installed = version('grad-cam')
    if tuple(int(p) for p in re.findall(r'\d+', installed)[:2]) < (1, 5):
        raise ToolError(f'video Grad-CAM needs grad-cam >= 1.5 (3-D heat maps); grad-cam '
                        f'{installed} is installed: pip install "grad-cam>=1.5"')


class Logits(torch.nn.Module):
    """The classifier as a function of the preprocessed batch: (B, C, [T,] H, W) -> logits."""

    def __init__(self, model: torch.nn.Module, video: bool) -> None:
        super().__init__()
        self.model, self.video = model, video

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.video:  # a recognizer takes (B, views, C, T, H, W) and returns the head's
            return self.model(inputs[:, None], mode='tensor', stage='head')
        return self.model(inputs, mode='tensor')


class TokenGrids:
    """Records the token grid after the patch embedding and after every block, so that token
    tensors (B, [1 +] N, C) of any layer can be put back on their grid."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        self.backbone = backbone
        self.grids: List[Tuple[int, ...]] = []
        backbone.register_forward_pre_hook(lambda module, args: self.grids.clear())
        for module in [backbone.patch_embed, *backbone.blocks]:
            module.register_forward_hook(self._record)

    def _record(self, module, args, output) -> None:
        self.grids.append(tuple(int(s) for s in output[1]))

    def grid_of(self, tokens: int) -> Tuple[int, ...]:
        """The grid of a tensor with ``tokens`` tokens (cls token included, if any)."""
        extra = self.backbone.num_extra_tokens
        for grid in self.grids:
            if math.prod(grid) + extra == tokens:
                return grid
        raise ToolError(f'a target layer output has {tokens} tokens, which match no token '
                        f'grid of the backbone ({self.grids}, plus {extra} cls token); choose '
                        'a layer that outputs tokens (see --list-layers)')

    def to_grid(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B, [1 +] N, C) tokens -> (B, C, [T,] H, W); feature maps pass unchanged."""
        if tensor.dim() != 3:
            return tensor
        grid = self.grid_of(tensor.shape[1])
        patches = tensor[:, self.backbone.num_extra_tokens:]
        return patches.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], *grid)


def resolve_layer(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """A module by dotted name; ``blocks.-1`` and ``blocks[-1]`` count from the end."""
    module = model
    for part in re.sub(r'\[(-?\d+)\]', r'.\1', name).split('.'):
        if re.fullmatch(r'-?\d+', part) and isinstance(module, torch.nn.ModuleList):
            index = int(part)
            if not -len(module) <= index < len(module):
                raise ToolError(f'--target-layer {name!r}: index {index} is out of range '
                                f'(the list has {len(module)} entries)')
            module = module[index]
        elif isinstance(getattr(module, part, None), torch.nn.Module):
            module = getattr(module, part)
        else:
            raise ToolError(f'--target-layer {name!r}: {type(module).__name__} has no module '
                            f'{part!r}; run with --list-layers to see the choices')
    return module


def token_layers(model: torch.nn.Module, grids: TokenGrids, inputs: torch.Tensor
                 ) -> List[Tuple[str, Tuple[int, ...]]]:
    """(name, grid) of the backbone's LayerNorms, which hold tokens, for ``--list-layers``."""
    shapes: Dict[str, int] = {}
    hooks = [module.register_forward_hook(
        lambda m, a, out, name=name: shapes.__setitem__(name, out.shape[1]))
        for name, module in model.named_modules()
        if name.startswith('backbone.') and isinstance(module, torch.nn.LayerNorm)
        and '.attn.' not in name]
    with torch.no_grad():
        Logits(model, grids.backbone.video)(inputs)
    for hook in hooks:
        hook.remove()
    return [(name, grids.grid_of(tokens)) for name, tokens in shapes.items()]


def compute_cam(model: torch.nn.Module, inputs: torch.Tensor, layer: str,
                target_class: Optional[int] = None, method: str = 'gradcam',
                ) -> Tuple[np.ndarray, int, float]:
    """The heat map of one preprocessed input (1, C, [T,] H, W): an array of the input's
    ([T,] H, W) in [0, 1], the class it explains and that class's probability."""
    video = model.backbone.video
    wrapper = Logits(model, video).eval()
    grids = TokenGrids(model.backbone)
    target = resolve_layer(model, layer)
    scores, tokens = _scores_and_tokens(wrapper, target, inputs)
    grid = grids.grid_of(tokens)
    num_classes = scores.numel()
    if target_class is None:
        target_class = int(scores.argmax())
    elif not 0 <= target_class < num_classes:
        raise ToolError(f'--target-class {target_class}: the model has {num_classes} classes '
                        f'(0..{num_classes - 1})')
    if math.prod(grid[-2:]) == 1:
        raise ToolError(f'--target-layer {layer}: its tokens lie on a {grid} grid, too coarse '
                        'for a spatial heat map; choose an earlier layer (--list-layers)')
    if video:
        check_3d_cams()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    methods = cam_methods()
    if method not in methods:
        raise ToolError(f'--method {method!r}: choose one of {sorted(methods)}')
    with methods[method](model=wrapper, target_layers=[target],
                         reshape_transform=grids.to_grid) as cam:
        heat = cam(input_tensor=inputs, targets=[ClassifierOutputTarget(target_class)])[0]
    return heat, target_class, float(scores[target_class])


def _scores_and_tokens(wrapper: torch.nn.Module, layer: torch.nn.Module,
                       inputs: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Class probabilities of ``inputs`` and how many tokens ``layer`` outputs for them."""
    seen = []
    hook = layer.register_forward_hook(lambda m, a, out: seen.append(out))
    with torch.no_grad():
        scores = wrapper(inputs).softmax(-1)[0]
    hook.remove()
    out = seen[-1] if seen else None
    if not isinstance(out, torch.Tensor) or out.dim() != 3:
        raise ToolError('the target layer does not output tokens (B, N, C) '
                        f'(it gives {type(out).__name__}'
                        f'{tuple(out.shape) if isinstance(out, torch.Tensor) else ""}); '
                        'choose a norm layer (--list-layers)')
    return scores, out.shape[1]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float, short_side: int) -> np.ndarray:
    """A BGR uint8 image with the heat map (same H, W, values in [0, 1]) drawn on it in the
    jet colour map, resized so that its short side is ``short_side`` (0: as it is)."""
    height, width = image.shape[:2]
    scale = short_side / min(height, width) if short_side else 1.0
    size = (round(width * scale), round(height * scale))
    if scale != 1.0:
        shrink = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        image = cv2.resize(image, size, interpolation=shrink)
        heat = cv2.resize(heat.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
    return np.uint8(np.clip((1 - alpha) * image + alpha * colours, 0, 255))


def write_frames(frames: List[np.ndarray], out: str, fps: float) -> None:
    """BGR frames as a GIF (imageio) or an OpenCV video."""
    os.makedirs(osp.dirname(out) or '.', exist_ok=True)
    ext = osp.splitext(out)[1].lower()
    if ext == '.gif':
        import imageio.v2 as imageio
        imageio.mimsave(out, [f[..., ::-1] for f in frames], duration=1.0 / fps, loop=0)
        return
    height, width = frames[0].shape[:2]
    fourcc = {'.mp4': 'mp4v', '.avi': 'MJPG'}[ext]
    writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not writer.isOpened():
        raise ToolError(f'--out {out!r}: OpenCV cannot open it for writing')
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()


def clip_fps(path: str, pipeline: List[dict]) -> float:
    """Frame rate of the sampled frames: the video's over SampleFrames' frame interval."""
    import decord
    fps = decord.VideoReader(path).get_avg_fps() or 25.0
    interval = next((s.get('frame_interval', 1) for s in pipeline
                     if s.get('type') == 'SampleFrames'), 1)
    return fps / max(interval, 1)


def default_out(path: str, video: bool) -> str:
    return osp.splitext(osp.basename(path))[0] + ('_cam.gif' if video else '_cam.png')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='model config (its test pipeline prepares the input)')
    parser.add_argument('checkpoint', help='weights (mmengine checkpoint of the config\'s model)')
    parser.add_argument('input', help='an image or a video file')
    parser.add_argument('--out', help='output file: .png/.jpg for an image, .gif/.mp4/.avi '
                        'for a video (default: INPUT name + _cam.png/.gif, here)')
    parser.add_argument('--target-layer', default=DEFAULT_LAYER,
                        help=f'module whose tokens are explained (default: {DEFAULT_LAYER})')
    parser.add_argument('--target-class', type=int, help='class to explain (default: the '
                        'predicted one)')
    parser.add_argument('--method', default='gradcam', help='CAM method of pytorch-grad-cam: '
                        'gradcam, gradcam++, xgradcam, layercam, hirescam, eigencam')
    parser.add_argument('--alpha', type=float, default=0.5, help='weight of the heat map')
    parser.add_argument('--out-size', type=int, default=256,
                        help='short side of the output in pixels (0: the model input size)')
    parser.add_argument('--save-cam', help='also save the raw heat map as .npy')
    parser.add_argument('--list-layers', action='store_true',
                        help='print the token layers and their grids, then exit')
    parser.add_argument('--device', default='cuda:0' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow full unpickling of CHECKPOINT (runs any code it contains)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    MMLogger.get_current_instance().setLevel(logging.ERROR)  # decord's FileClient notices
    try:
        cfg = load_config(args.config, args.cfg_options)
        video = is_video_config(cfg)
        if not osp.isfile(args.input):
            raise ToolError(f'input {args.input!r} does not exist')
        check_kind(args.input, video)
        out = args.out or default_out(args.input, video)
        allowed = VIDEO_OUTS if video else IMAGE_OUTS
        if osp.splitext(out)[1].lower() not in allowed:
            raise ToolError(f'--out {out!r}: for {"a video" if video else "an image"} use '
                            f'{", ".join(allowed)}')
        model, _ = build_model(cfg, args.checkpoint, args.device, args.trust_checkpoint)
        pipeline = test_pipeline_of(cfg)
        if video:
            pipeline = video_pipeline(pipeline, num_clips=1)
        has_crop = any(s.get('type') in ('CenterCrop', 'ThreeCrop', 'TenCrop')
                       for s in pipeline)
        views = load_views(MultiCrop(pipeline, 1 if has_crop else 0, video), args.input)
        inputs = normalise(model, views[:1], video).to(args.device)
        if args.list_layers:
            for name, grid in token_layers(model, TokenGrids(model.backbone), inputs):
                print(f'{name}: grid {"x".join(map(str, grid))}')
            return 0
        heat, target_class, score = compute_cam(model, inputs, args.target_layer,
                                                args.target_class, args.method)
    except ToolError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'{args.method} of class {target_class} (p={score:.4f}) at {args.target_layer}, '
          f'heat map {"x".join(map(str, heat.shape))}')
    if float(heat.max()) <= 0:
        print('warning: the heat map is empty: no positive evidence for this class at this '
              'layer', file=sys.stderr)
    if args.save_cam:
        np.save(args.save_cam, heat)
    shown = views[0].numpy()
    if video:  # (C, T, H, W) RGB -> BGR frames
        frames = [overlay(np.ascontiguousarray(f[..., ::-1]), h, args.alpha, args.out_size)
                  for f, h in zip(shown.transpose(1, 2, 3, 0), heat)]
        write_frames(frames, out, clip_fps(args.input, pipeline))
    else:  # (C, H, W) in the loading order (BGR for mmcv's loaders)
        os.makedirs(osp.dirname(out) or '.', exist_ok=True)
        cv2.imwrite(out, overlay(np.ascontiguousarray(shown.transpose(1, 2, 0)), heat,
                                 args.alpha, args.out_size))
    print(f'wrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
