"""The plugin's model index (configs/metafile.yml) in mmpretrain's ModelHub and mmaction2.

After ``import mmvit_plugin``: ``mmpretrain.list_models('mmvit-*')``,
``mmpretrain.get_model('mmvit-mvitv2-tiny_in1k', pretrained=FILE)`` and
``mmpretrain.inference_model(NAME, IMAGE, pretrained=FILE)`` work for the image models;
``MViTv2ActionRecogInferencer(model='mmvit-mvitv2-small-16x4_k400', weights=FILE)`` for the
video models (mmengine's BaseInferencer looks names up only in the host's own metafiles).
"""
import os.path as osp
import warnings
from typing import List, Optional, Tuple

from mmengine.config import Config

PREFIX = 'mmvit-'
# Inside the package, where OpenMMLab packages keep theirs: in the source tree .mim/ links to
# the repository's model-index.yml and configs/, a wheel holds copies (setup.cfg package_data).
MODEL_INDEX = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), '.mim',
                       'model-index.yml')


def register_model_index(model_index: str = MODEL_INDEX) -> List[str]:
    """Add the plugin's models to mmpretrain's ModelHub (once); returns their names.

    A missing index only warns: the plugin's classes stay usable from config files.
    """
    from mmpretrain.apis import ModelHub
    if not osp.isfile(model_index):
        warnings.warn(
            f'the mmvit model index {model_index} is missing, so no mmvit- model names are '
            'registered: the package was built without its package data (setup.cfg '
            '[options.package_data]), or the symlinks in mmvit_plugin/.mim were not checked '
            'out as links; reinstall with pip install .', stacklevel=2)
        return []
    from modelindex.load_model_index import load
    index = load(model_index)
    index.build_models_with_collections()
    names = [model.name.lower() for model in index.models]
    bad = [name for name in names if not name.startswith(PREFIX)]
    if bad:
        raise ValueError(f'{model_index}: model names must start with {PREFIX!r} so they cannot '
                         f'collide with the hosts\' names: {bad}')
    if all(name in ModelHub._models_dict for name in names):
        return names  # registered by an earlier import
    ModelHub.register_model_index(model_index, config_prefix=osp.dirname(model_index))
    return names


def model_names(task: Optional[str] = None) -> List[str]:
    """The plugin's model names, optionally only those of one task (e.g. 'Action Recognition')."""
    from mmpretrain.apis import ModelHub
    register_model_index()
    names = []
    for name, info in sorted(ModelHub._models_dict.items()):
        if not name.startswith(PREFIX):
            continue
        tasks = {result.task for result in (info.results or [])}
        if task is None or task in tasks:
            names.append(name)
    return names


def config_and_weights(name: str) -> Tuple[Config, Optional[str]]:
    """The Config of an index entry and its hosted weights (None: convert the official file)."""
    from mmpretrain.apis import ModelHub
    register_model_index()
    if not ModelHub.has(name) or not name.lower().startswith(PREFIX):
        raise ValueError(f'{name!r} is not in the mmvit model index; available: '
                         f'{", ".join(model_names())}')
    info = ModelHub.get(name)
    return info.config, info.weights


def _action_inferencer_class():
    from mmaction.apis.inferencers import ActionRecogInferencer

    class MViTv2ActionRecogInferencer(ActionRecogInferencer):
        """mmaction2's ActionRecogInferencer that also knows the ``mmvit-`` model names."""

        def _load_model_from_metafile(self, model: str):
            if model.lower().startswith(PREFIX):
                return config_and_weights(model)
            return super()._load_model_from_metafile(model)

    return MViTv2ActionRecogInferencer


def __getattr__(attr: str):
    # Built on first use: importing mmaction.apis at plugin import time would slow every import.
    if attr == 'MViTv2ActionRecogInferencer':
        cls = _action_inferencer_class()
        globals()[attr] = cls
        return cls
    raise AttributeError(f'module {__name__!r} has no attribute {attr!r}')
