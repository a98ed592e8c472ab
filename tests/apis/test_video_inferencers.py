"""mmaction2's inferencers run the project's video configs on a real clip (issue 11, point 2)."""
import glob
import os.path as osp

import pytest
import torch
from media import REPO, config_path, random_checkpoint, real_clip
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from mmengine.runner import Runner

import mmvit_plugin  # noqa: F401  (registers the plugin)

VIDEO_CONFIGS = sorted(osp.basename(p) for p in glob.glob(osp.join(REPO, 'configs', '*.py'))
                       if Config.fromfile(p).get('default_scope') == 'mmaction')


@pytest.fixture(scope='module')
def quickstart_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'quickstart_video.pth'
    return random_checkpoint(config_path('quickstart_video.py'), path, 'mmaction')


def test_every_video_config_is_found():
    assert {'quickstart_video.py', 'mvitv2_s_16x4_k400.py', 'mvitv2_l_40x3_k400.py'} <= set(
        VIDEO_CONFIGS)


@pytest.mark.parametrize('name', VIDEO_CONFIGS)
def test_test_and_val_loaders_leave_collate_to_the_runner(name):
    """mmengine's BaseInferencer looks test_dataloader.collate_fn up by name: a dict breaks it."""
    cfg = Config.fromfile(config_path(name))
    for loader in ('val_dataloader', 'test_dataloader'):
        collate = cfg[loader].get('collate_fn')
        assert collate is None or isinstance(collate, str), (name, loader, collate)


def test_runner_still_batches_with_pseudo_collate(tmp_path):
    for split in ('train', 'test'):
        for name in ('a', 'b'):
            (tmp_path / split / name).mkdir(parents=True)
            (tmp_path / split / name / 'clip.mp4').symlink_to(real_clip())
    cfg = Config.fromfile(config_path('quickstart_video.py'))
    loader_cfg = cfg.test_dataloader.copy()
    loader_cfg.update(batch_size=2, num_workers=0, persistent_workers=False)
    loader_cfg.dataset.data_root = str(tmp_path)
    with DefaultScope.overwrite_default_scope('mmaction'):
        loader = Runner.build_dataloader(loader_cfg)
        batch = next(iter(loader))
    assert loader.collate_fn.func is pseudo_collate
    # pseudo_collate keeps one tensor per clip (mmaction2's data preprocessor stacks them)
    assert isinstance(batch['inputs'], list) and len(batch['inputs']) == 2
    assert tuple(batch['inputs'][0].shape)[:3] == (1, 3, 4)


def test_action_recog_inferencer_on_a_real_clip(quickstart_checkpoint):
    from mmaction.apis.inferencers import ActionRecogInferencer
    inferencer = ActionRecogInferencer(model=config_path('quickstart_video.py'),
                                       weights=quickstart_checkpoint, device='cpu')
    result = inferencer(real_clip(), return_datasamples=True)
    scores = result['predictions'][0].pred_scores.item
    assert scores.shape == (10,)
    assert float(scores.sum()) == pytest.approx(1.0, abs=1e-4)  # the head averages probabilities


def test_mmaction2_inferencer_on_a_real_clip(quickstart_checkpoint):
    from mmaction.apis.inferencers import MMAction2Inferencer
    inferencer = MMAction2Inferencer(rec=config_path('quickstart_video.py'),
                                     rec_weights=quickstart_checkpoint, device='cpu')
    prediction = inferencer(real_clip())['predictions'][0]
    assert len(prediction['rec_scores'][0]) == 10
    assert 0 <= prediction['rec_labels'][0][0] < 10


def test_init_recognizer_and_inference_recognizer_agree_with_the_inferencer(
        quickstart_checkpoint):
    from mmaction.apis import inference_recognizer, init_recognizer
    model = init_recognizer(config_path('quickstart_video.py'), quickstart_checkpoint, 'cpu')
    sample = inference_recognizer(model, real_clip())
    from mmaction.apis.inferencers import ActionRecogInferencer
    inferencer = ActionRecogInferencer(model=config_path('quickstart_video.py'),
                                       weights=quickstart_checkpoint, device='cpu')
    again = inferencer(real_clip(), return_datasamples=True)['predictions'][0]
    torch.testing.assert_close(sample.pred_scores.item, again.pred_scores.item)
