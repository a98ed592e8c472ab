"""Helpers shared by the test files: tool loading, models from configs, random weights, canonical
state dicts with a head, and a crafted checkpoint whose unpickling would run code.

Importable as ``helpers`` from every test (pytest puts ``tests/`` on ``sys.path`` for
``tests/conftest.py``).
"""
import functools
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Dict, Optional

import torch

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / 'configs'

#: A four-block MViTv2 small enough for every unit test.
TINY = dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3))
TINY_IMAGE = dict(TINY, img_size=(64, 64))
TINY_VIDEO = dict(TINY, img_size=(4, 64, 64), video=True, with_cls_token=True)


@functools.lru_cache(maxsize=None)
def load_tool(relative_path: str) -> ModuleType:
    """A script under the repository (e.g. 'tools/convert_checkpoint.py') as a module."""
    path = REPO / relative_path
    name = 'tool_' + '_'.join(Path(relative_path).with_suffix('').parts)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_model_from_config(config: str) -> torch.nn.Module:
    """The model of a plugin config, built the way tools/convert_checkpoint.py builds it."""
    return load_tool('tools/convert_checkpoint.py').build_model_from_config(str(config))


def randomise(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Distinct random values everywhere (norm scales near 1), eval mode; see
    tools/analysis/common.py, which the analysis scripts share."""
    return load_tool('tools/analysis/common.py').randomise(module, seed)


def fresh_mvitv2(arch, seed: int = 0, **kwargs) -> torch.nn.Module:
    """An MViTv2 with the official initialisation drawn from ``seed``, in eval mode."""
    from mmvit_plugin.models.mvitv2 import MViTv2
    torch.manual_seed(seed)
    model = MViTv2(arch=arch, **kwargs)
    model.init_weights()
    return model.eval()


def canonical_with_head(arch, classes: int = 7, seed: int = 0, random: bool = True,
                        cls_token: bool = False) -> Dict[str, torch.Tensor]:
    """Canonical weights of an MViTv2 of ``arch`` plus a ``head.projection`` of ``classes``.

    ``random``: distinct random values (else the official init); ``cls_token``: add an unused
    token, as the official in1k image files carry.
    """
    model = fresh_mvitv2(arch, seed)
    if random:
        randomise(model, seed)
    state = dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed + 1)
    if cls_token:
        state = dict(cls_token=torch.randn(1, 1, model.arch.embed_dim, generator=gen), **state)
    state['head.projection.weight'] = torch.randn(classes, model.num_features,
                                                  generator=gen) * 0.02
    state['head.projection.bias'] = torch.randn(classes, generator=gen) * 0.02
    return state


class WriteFilePayload:
    """Unpickling this object writes a file: stands for arbitrary code in a checkpoint."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f'open({self.target!r}, "w").write("pwned")',))


def write_payload_checkpoint(path, marker, checkpoint: Optional[dict] = None,
                             where: str = 'meta') -> None:
    """Save ``checkpoint`` (default: a tiny plugin checkpoint) with the payload under
    ``where``; loading the file with full unpickling would create ``marker``."""
    if checkpoint is None:
        from mmvit_plugin.models.mvitv2 import MViTv2
        state = MViTv2(arch=TINY_IMAGE).state_dict()
        checkpoint = {'meta': {}, 'state_dict': {'backbone.' + k: v for k, v in state.items()}}
    checkpoint = dict(checkpoint)
    payload = WriteFilePayload(str(marker))
    if where == 'meta':
        checkpoint['meta'] = dict(checkpoint.get('meta') or {}, note=payload)
    else:
        checkpoint[where] = payload
    torch.save(checkpoint, path)


TINY_IMAGE_RUN_CONFIG = '''
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmvit_plugin'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='MViTv2', out_type='avg_featmap',
                  arch=dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                            img_size=(32, 32))),
    neck=None,
    head=dict(type='LinearClsHead', num_classes=2, in_channels=64, topk=(1,),
              loss=dict(type='CrossEntropyLoss')),
    data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3))
_pipeline = [dict(type='LoadImageFromFile'), dict(type='Resize', scale=(32, 32)),
             dict(type='PackInputs')]
_loader = dict(batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
               dataset=dict(type='CustomDataset', data_root={root!r}, pipeline=_pipeline))
train_dataloader = _loader
test_dataloader = _loader
test_evaluator = dict(type='Accuracy', topk=(1,))
test_cfg = dict()
train_cfg = dict(by_epoch=True, max_epochs={max_epochs})
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.01))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=True)]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=1))
custom_hooks = [dict(type='CheckpointFormatHook')]
log_level = {log_level!r}
randomness = dict(seed=0)
experiment_name = {name!r}  # not the timestamp: runners made within one second share a scope
'''


def write_tiny_image_run(folder, max_epochs: int = 1, log_level: str = 'WARNING') -> str:
    """Two classes of two random 32x32 PNGs under ``folder/images`` and an mmpretrain config
    (8-wide four-block MViTv2, SGD, checkpoint every epoch) training on them; returns the
    config's path."""
    import uuid

    import cv2
    import numpy as np
    folder = Path(folder)
    rng = np.random.default_rng(0)
    for label in ('a', 'b'):
        (folder / 'images' / label).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            cv2.imwrite(str(folder / 'images' / label / f'{i}.png'),
                        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    path = folder / 'tiny_image_run.py'
    path.write_text(TINY_IMAGE_RUN_CONFIG.format(
        root=str(folder / 'images'), max_epochs=max_epochs, log_level=log_level,
        name=f'tiny_run_{uuid.uuid4().hex}'))
    return str(path)


def write_fake_fashion_mnist(root, counts=(('train', 40), ('t10k', 20)), seed: int = 0) -> str:
    """Fashion-MNIST look-alike IDX files (random 28x28 images, labels cycling 0..9) in the
    official ``<prefix>-{images-idx3,labels-idx1}-ubyte.gz`` names under ``root``."""
    import gzip

    import numpy as np

    def write_idx(path: Path, array: np.ndarray) -> None:
        header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
            int(n).to_bytes(4, 'big') for n in array.shape)
        with gzip.open(path, 'wb') as f:
            f.write(header + array.astype(np.uint8).tobytes())

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in counts:
        write_idx(root / f'{prefix}-images-idx3-ubyte.gz', rng.integers(0, 256, (count, 28, 28)))
        write_idx(root / f'{prefix}-labels-idx1-ubyte.gz', np.arange(count) % 10)
    return str(root)
