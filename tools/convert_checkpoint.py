"""Convert an MViTv2 checkpoint of any supported format into this plugin's format (or another).

    python tools/convert_checkpoint.py SRC DST [--src-format FMT] [--dst-format FMT]
        [--config CONFIG] [--trust-checkpoint] [--allow-nonfinite] [--overwrite]
    python tools/convert_checkpoint.py --list-formats

Formats (``--list-formats`` prints README's table of them): official facebookresearch/mvit
.pyth, SlowFast .pyth, mmpretrain, mmaction2, timm, torchvision, and this plugin's own files
(detected from the keys, or named with --src-format). By default the result is an mmengine
checkpoint ({meta, state_dict}) whose keys are those of the plugin model (backbone.*, head.fc.*
for images, cls_head.fc_cls.* for video), head included, so it loads with strict=True into the
model built from the matching config; the tool names that config. With --config it builds that
model, fits the weights to it (the relative-position tables are interpolated when the config's
input size differs) and checks the strict load before writing. --dst-format writes the weights
in another format's layout and packaging instead.

The source is read with torch.load(weights_only=True); a file that needs more (arbitrary
Python objects) is refused unless you pass --trust-checkpoint. Weights with NaN or Inf values
are refused unless you pass --allow-nonfinite.
"""
import argparse
import dataclasses
import os
import os.path as osp
import sys
import time
from collections import OrderedDict
from typing import Optional

import torch
from mmengine.utils import ProgressBar

import mmvit_plugin  # noqa: F401  (registers the model; allows mmengine's own checkpoints)
from mmvit_plugin.checkpoint import (
    EXACT,
    FORMATS,
    ArchitectureMismatchError,
    CheckpointReadError,
    NonFiniteWeightsError,
    UnknownCheckpointFormatError,
    UnsafeCheckpointError,
    arch_name_for,
    decide_cls_token,
    get_format,
    load_checkpoint_file,
    markdown_table,
)
from mmvit_plugin.checkpoint.arch_info import IN21K_CLASSES
from mmvit_plugin.checkpoint.load import (
    canonical_from_object,
    canonical_model_state,
    fit_loaded,
    model_keys_from_canonical,
    model_parts,
)
from mmvit_plugin.core.arch import GEOMETRY_FIELDS, MViTv2Arch
from mmvit_plugin.core.infer import infer_arch

_SIZE_LETTER = {'tiny': 't', 'small': 's', 'base': 'b', 'large': 'l', 'huge': 'h'}


def config_for(arch_name: Optional[str], num_classes: Optional[int]) -> Optional[str]:
    """The plugin config (path from the repository root) of a named arch and head size."""
    if arch_name is None:
        return None
    size, _, variant = arch_name.partition('-')
    letter = _SIZE_LETTER.get(size)
    if letter is None:
        return None
    if variant and variant[0].isdigit():  # video, e.g. small-16x4
        return f'configs/mvitv2_{letter}_{variant}_k400.py'
    dataset = 'imagenet21k' if num_classes == IN21K_CLASSES else 'imagenet'
    return f'configs/mvitv2_{letter}_{dataset}.py'


def arch_dict(arch: MViTv2Arch) -> dict:
    """The ``arch=dict(...)`` fields that build a backbone for these weights."""
    fields = dict(embed_dim=arch.embed_dim, depth=arch.depth, num_heads=arch.num_heads,
                  stage_starts=arch.stage_starts, dim_mul_in_att=arch.dim_mul_in_att,
                  with_cls_token=arch.with_cls_token, video=arch.video,
                  img_size=arch.img_size, mlp_ratio=arch.mlp_ratio)
    defaults = MViTv2Arch(**fields)  # geometry left to the modality's defaults
    for name in GEOMETRY_FIELDS:
        if getattr(arch, name) != getattr(defaults, name):
            fields[name] = getattr(arch, name)
    return fields


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Convert an MViTv2 checkpoint (' + ', '.join(FORMATS) + ') into the '
        'plugin format or another one')
    parser.add_argument('src', nargs='?', help='source checkpoint file')
    parser.add_argument('dst', nargs='?', help='output file (.pth)')
    parser.add_argument('--src-format', choices=list(FORMATS),
                        help='source format (default: detected from the keys)')
    parser.add_argument('--dst-format', choices=list(FORMATS), default='mmvit',
                        help='layout and packaging of DST (default: mmvit, the plugin\'s)')
    parser.add_argument('--config', help='plugin config whose model the output must load '
                        'into (strict); default: only name the matching config')
    parser.add_argument('--trust-checkpoint', action='store_true',
                        help='allow full unpickling of SRC (runs any code it contains); only '
                        'for files from a source you trust that need it')
    parser.add_argument('--allow-nonfinite', action='store_true',
                        help='convert weights that hold NaN or Inf values (refused otherwise)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing DST')
    parser.add_argument('--list-formats', action='store_true',
                        help="print the supported formats as README's markdown table and exit")
    args = parser.parse_args(argv)
    if not args.list_formats and (args.src is None or args.dst is None):
        parser.error('SRC and DST are required (or --list-formats)')
    return args


def step(index: int, total: int, text: str) -> None:
    print(f'[{index}/{total}] {text}', flush=True)


def build_model_from_config(config_path: str) -> torch.nn.Module:
    from mmvit_plugin.apis import build_config_model
    return build_config_model(config_path).eval()


def convert(args: argparse.Namespace) -> str:
    total = 4
    if osp.abspath(args.src) == osp.abspath(args.dst):
        raise SystemExit('error: DST is SRC; write the converted file elsewhere')
    if osp.exists(args.dst) and not args.overwrite:
        raise SystemExit(f'error: {args.dst} exists; pass --overwrite to replace it')
    dst_format = get_format(args.dst_format)

    start = time.time()
    step(1, total, f'reading {args.src} (weights only'
         f'{", TRUSTED: full unpickling" if args.trust_checkpoint else ""})')
    obj = load_checkpoint_file(args.src, trusted=args.trust_checkpoint)
    loaded = canonical_from_object(obj, args.src, args.src_format,
                                   allow_nonfinite=args.allow_nonfinite)
    inferred = infer_arch(loaded.state)
    arch = inferred.arch
    uses_cls, why = decide_cls_token(inferred, loaded.fmt, loaded.info.get('cfg'))
    arch_name = arch_name_for(arch, uses_cls)
    config = config_for(arch_name, inferred.num_classes)
    print(f'      format: {loaded.fmt} ({FORMATS[loaded.fmt].description})')
    print(f'      {len(loaded.state)} tensors; embed_dim={arch.embed_dim} depth={arch.depth} '
          f'heads={arch.num_heads} stage_starts={arch.stage_starts} '
          f'dim_mul_in_att={arch.dim_mul_in_att} video={arch.video} '
          f'input={arch.img_size} classes={inferred.num_classes}')
    print(f'      cls token: {"used" if uses_cls else "not used"} ({why})')
    fallback = ('none shipped; build the model with arch='
                f'{arch_dict(dataclasses.replace(arch, with_cls_token=uses_cls))}')
    print(f'      arch: {arch_name or "custom (arch dict)"}; matching config: '
          f'{config or fallback}')

    state = OrderedDict(loaded.state)
    if args.config:
        step(2, total, f'fitting the weights to the model of {args.config}')
        model = build_model_from_config(args.config)
        backbone, backbone_prefix, head_prefix = model_parts(model)
        if not uses_cls and not backbone.with_cls_token:
            state.pop('cls_token', None)
        loaded.state = state
        fitted, report = fit_loaded(loaded, canonical_model_state(model), EXACT,
                                    target_name=args.config)
        new_keys = report.keys_with('newly initialised')
        if new_keys:
            raise ArchitectureMismatchError(
                f'{args.src} does not fill the model of {args.config}: {len(new_keys)} keys '
                f'would stay at their initial values, first: {new_keys[:5]} (another class '
                'count?)')
        for line in report.lines(skip_copied=True):
            print(f'      {line}')
        model.load_state_dict(model_keys_from_canonical(fitted, backbone_prefix, head_prefix),
                              strict=True)
        print(f'      strict load into {args.config}: ok ({report.summary()})')
        state = fitted
    else:
        step(2, total, f'renaming to the {dst_format.name} layout')
        if not uses_cls and state.pop('cls_token', None) is not None:
            print('      dropped: cls_token (unused by the model the file came from)')
    out = dst_format.from_canonical(state)
    if dst_format.holds_other_modules:
        out.update(loaded.others)
    elif loaded.others:
        print(f'      dropped: {len(loaded.others)} weights of other modules (a '
              f'{dst_format.name} file holds the MViTv2 only), first: {list(loaded.others)[:3]}')

    step(3, total, f'copying {len(out)} tensors')
    progress = ProgressBar(len(out)) if sys.stdout.isatty() else None
    result = OrderedDict()
    for key, value in out.items():
        result[key] = value.detach().to('cpu').contiguous().clone()
        if progress is not None:
            progress.update()
    if progress is not None:
        print()

    step(4, total, f'writing {args.dst}')
    meta = dict(converted_from=loaded.fmt, source=osp.basename(args.src),
                arch=arch_name or 'custom', config=args.config or config or '',
                mmvit_checkpoint_version=1)
    os.makedirs(osp.dirname(osp.abspath(args.dst)), exist_ok=True)
    partial = args.dst + '.partial'
    torch.save(dst_format.package(result, cfg_yaml=loaded.info.get('cfg', ''), meta=meta),
               partial)
    os.replace(partial, args.dst)  # never leave a half-written DST
    size_mb = osp.getsize(args.dst) / 2**20
    use = ('Use it as load_from / tools/test.py CHECKPOINT, or as backbone '
           f"init_cfg=dict(type='Pretrained', checkpoint='{args.dst}')."
           if dst_format.name == 'mmvit' else f'A {dst_format.name} checkpoint.')
    print(f'done in {time.time() - start:.1f} s: {args.dst} ({size_mb:.1f} MiB, '
          f'{len(result)} tensors). {use}')
    return args.dst


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list_formats:
        print(markdown_table())
        return 0
    try:
        convert(args)
    except (CheckpointReadError, UnsafeCheckpointError, UnknownCheckpointFormatError,
            ArchitectureMismatchError, NonFiniteWeightsError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
