"""tools/grad_cam.py end to end on a real photo and a real clip with random tiny checkpoints:
heat-map sizes, GIF frames, cls-token handling, target class and layer, clear errors."""
import os.path as osp
import sys

import cv2
import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from helpers import REPO, TINY, load_tool, write_payload_checkpoint

sys.path.append(str(REPO / 'tests' / 'apis'))
sys.path.append(str(REPO / 'tools'))  # the tools import their sibling extract_features
from media import config_path, random_checkpoint, real_clip, real_photo  # noqa: E402

pytestmark = pytest.mark.usefixtures('single_thread')
tool = load_tool('tools/grad_cam.py')

IMAGE_CONFIG = config_path('quickstart_image.py')
# The quickstart video model on bikes.mp4 resized to 32x40 and centre-cropped to 32x32.
VIDEO_CONFIG = f'''
_base_ = [{config_path('quickstart_video.py')!r}]
model = dict(backbone=dict(arch=dict(img_size=(4, 32, 32))))
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=4, frame_interval=2, num_clips=3, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
'''


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    return tmp_path_factory.mktemp('grad_cam')


@pytest.fixture(scope='module')
def image_ckpt(work):
    torch.manual_seed(0)
    return random_checkpoint(IMAGE_CONFIG, str(work / 'image.pth'), 'mmpretrain')


@pytest.fixture(scope='module')
def video_config(work):
    path = work / 'video_cfg.py'
    path.write_text(VIDEO_CONFIG)
    return str(path)


@pytest.fixture(scope='module')
def video_ckpt(work, video_config):
    torch.manual_seed(0)
    return random_checkpoint(video_config, str(work / 'video.pth'), 'mmaction')


@pytest.fixture(scope='module')
def photo(work):
    return real_photo(work, 'astronaut')


def test_image_heat_map_has_the_input_size_and_is_drawn(tmp_path, capsys, image_ckpt, photo):
    out, cam = tmp_path / 'cam.png', tmp_path / 'cam.npy'
    assert tool.main([IMAGE_CONFIG, image_ckpt, photo, '--out', str(out), '--out-size', '0',
                      '--save-cam', str(cam), '--target-layer', 'backbone.blocks[1].norm1']) == 0
    assert 'gradcam of class' in capsys.readouterr().out
    heat = np.load(cam)
    assert heat.shape == (32, 32)  # the model input: 28x28 padded by 2
    assert heat.min() >= 0 and heat.max() <= 1 and heat.std() > 0.05
    drawn = cv2.imread(str(out))
    assert drawn.shape == (32, 32, 3)
    # Enlarged output: same picture, short side 96.
    big = tmp_path / 'big.png'
    assert tool.main([IMAGE_CONFIG, image_ckpt, photo, '--out', str(big), '--out-size',
                      '96', '--target-layer', 'backbone.blocks[1].norm1']) == 0
    assert cv2.imread(str(big)).shape == (96, 96, 3)


def test_default_layer_and_target_class(tmp_path, image_ckpt, photo):
    cfg = tool.load_config(IMAGE_CONFIG)
    model, _ = tool.build_model(cfg, image_ckpt)
    views = tool.load_views(tool.MultiCrop(tool.test_pipeline_of(cfg), 0, False), photo)
    inputs = tool.normalise(model, views, False)
    heat, predicted, score = tool.compute_cam(model, inputs, tool.DEFAULT_LAYER)
    with torch.no_grad():
        probs = model(inputs, mode='tensor').softmax(-1)[0]
    assert predicted == int(probs.argmax()) and score == pytest.approx(float(probs.max()))
    assert heat.shape == (32, 32) and heat.std() > 0.01
    other = (predicted + 1) % 10
    heat_other, explained, _ = tool.compute_cam(model, inputs, 'backbone.blocks.1.norm1',
                                                target_class=other)
    heat_pred, _, _ = tool.compute_cam(model, inputs, 'backbone.blocks.1.norm1')
    assert explained == other and not np.allclose(heat_other, heat_pred, atol=1e-3)


def test_video_gif_has_the_clip_frames(tmp_path, video_config, video_ckpt):
    out, cam = tmp_path / 'cam.gif', tmp_path / 'cam.npy'
    assert tool.main([video_config, video_ckpt, real_clip(), '--out', str(out), '--out-size',
                      '64', '--save-cam', str(cam),
                      '--target-layer', 'backbone.blocks.1.norm1']) == 0
    heat = np.load(cam)
    assert heat.shape == (4, 32, 32) and heat.std() > 0.05
    frames = imageio.mimread(str(out))
    assert len(frames) == 4 and frames[0].shape[:2] == (64, 64)
    # The frames are the sampled ones, not one frame repeated.
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1
    mp4 = tmp_path / 'cam.mp4'
    assert tool.main([video_config, video_ckpt, real_clip(), '--out', str(mp4),
                      '--target-layer', 'backbone.blocks.1.norm1']) == 0
    reader = cv2.VideoCapture(str(mp4))
    count = 0
    while reader.read()[0]:
        count += 1
    assert count == 4


@pytest.mark.parametrize('with_cls_token, video', [(False, False), (True, False),
                                                    (True, True)])
def test_tokens_go_back_to_their_grid_without_the_cls_token(with_cls_token, video):
    from mmvit_plugin.models.mvitv2 import MViTv2
    size = (4, 64, 64) if video else (64, 64)
    backbone = MViTv2(arch=dict(TINY, img_size=size, video=video,
                                with_cls_token=with_cls_token), out_indices=(0, 3)).eval()
    grids = tool.TokenGrids(backbone)
    seen = {}
    for name in ('norm0', 'norm'):
        getattr(backbone, name).register_forward_hook(
            lambda m, a, out, name=name: seen.__setitem__(name, out))
    with torch.no_grad():
        featmaps = backbone(torch.randn(1, 3, *size))
    assert backbone.num_extra_tokens == int(with_cls_token)
    for name, featmap in zip(('norm0', 'norm'), featmaps):
        assert torch.equal(grids.to_grid(seen[name]), featmap)


def test_list_layers_and_errors(tmp_path, capsys, image_ckpt, photo):
    base = [IMAGE_CONFIG, image_ckpt, photo, '--out', str(tmp_path / 'x.png')]
    assert tool.main(base + ['--list-layers']) == 0
    listing = capsys.readouterr().out
    assert 'backbone.blocks.0.norm1: grid 8x8' in listing
    assert 'backbone.norm: grid 1x1' in listing
    cases = {
        ('--target-layer', 'backbone.norm'): 'too coarse',
        ('--target-layer', 'backbone.blocks.9.norm1'): 'out of range',
        ('--target-layer', 'backbone.nothing'): "no module 'nothing'",
        ('--target-layer', 'backbone.patch_embed'): 'does not output tokens',
        ('--target-class', '10'): 'the model has 10 classes',
        ('--method', 'magic'): 'choose one of',
    }
    for extra, message in cases.items():
        assert tool.main(base + list(extra)) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert tool.main([IMAGE_CONFIG, image_ckpt, real_clip()]) == 2
    assert 'is a video but the config is an image model' in capsys.readouterr().err
    assert tool.main(base[:3] + ['--out', str(tmp_path / 'x.gif')]) == 2
    assert 'use .png' in capsys.readouterr().err


def test_checkpoint_with_code_is_refused_unless_trusted(tmp_path, capsys, image_ckpt, photo):
    evil, marker = tmp_path / 'evil.pth', tmp_path / 'pwned'
    write_payload_checkpoint(evil, marker, torch.load(image_ckpt, weights_only=True))
    args = [IMAGE_CONFIG, str(evil), photo, '--out', str(tmp_path / 'x.png'),
            '--target-layer', 'backbone.blocks.1.norm1']
    assert tool.main(args) == 2
    assert '--trust-checkpoint' in capsys.readouterr().err and not marker.exists()
    assert tool.main(args + ['--trust-checkpoint']) == 0
    assert marker.exists() and osp.isfile(tmp_path / 'x.png')


def test_video_needs_grad_cam_with_3d_heat_maps(monkeypatch):
    import importlib.metadata
    monkeypatch.setattr(importlib.metadata, 'version', lambda name: '1.4.8')
    with pytest.raises(tool.ToolError, match=r'grad-cam >= 1.5'):
        tool.check_3d_cams()
    monkeypatch.setattr(importlib.metadata, 'version', lambda name: '1.5.7')
    tool.check_3d_cams()
