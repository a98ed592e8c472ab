"""tools/extract_features.py end to end on real photos and a real clip with random tiny
checkpoints: shapes per stage and pooling, views kept or averaged, inputs as file, folder or
list, several processes giving the same files as one."""
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, load_tool

sys.path.append(str(REPO / 'tests' / 'apis'))
sys.path.append(str(REPO / 'tools'))
from media import config_path, random_checkpoint, real_clip, real_photo  # noqa: E402

pytestmark = pytest.mark.usefixtures('single_thread')
tool = load_tool('tools/extract_features.py')

IMAGE_CONFIG = config_path('quickstart_image.py')
# The quickstart video arch with a cls token, on bikes.mp4 resized to a 32-pixel short side.
VIDEO_CONFIG = f'''
_base_ = [{config_path('quickstart_video.py')!r}]
model = dict(backbone=dict(arch=dict(img_size=(4, 32, 32), with_cls_token=True)))
test_pipeline = [
    dict(type='DecordInit'),
    dict(type='SampleFrames', clip_len=4, frame_interval=2, num_clips=2, test_mode=True),
    dict(type='DecordDecode'),
    dict(type='Resize', scale=(-1, 32)),
    dict(type='CenterCrop', crop_size=32),
    dict(type='FormatShape', input_format='NCTHW'),
    dict(type='PackActionInputs'),
]
test_dataloader = dict(dataset=dict(pipeline=test_pipeline))
'''
WIDTHS = (48, 96, 192, 384)  # the quickstart arch's stage widths


@pytest.fixture(scope='module')
def work(tmp_path_factory):
    return tmp_path_factory.mktemp('features')


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
def photos(work):
    folder = work / 'photos'
    (folder / 'sub').mkdir(parents=True)
    real_photo(folder, 'astronaut')
    real_photo(folder, 'coffee')
    real_photo(folder / 'sub', 'chelsea')
    return folder


def read_index(out_dir):
    with open(out_dir / 'index.pkl', 'rb') as f:
        return pickle.load(f)


def test_every_stage_of_an_image_and_the_models_own_pooling(tmp_path, capsys, image_ckpt,
                                                            photos):
    photo = str(photos / 'astronaut.png')
    assert tool.main([IMAGE_CONFIG, image_ckpt, photo, str(tmp_path), '--stages', '0', '1',
                      '2', '3']) == 0
    assert 'stage(s) [0, 1, 2] have no norm in the checkpoint' in capsys.readouterr().out
    feats = np.load(tmp_path / 'astronaut.png.npz')
    assert {k: feats[k].shape for k in feats} == {f'stage{s}': (w,)
                                                  for s, w in enumerate(WIDTHS)}
    # The last stage's average is what the classifier's backbone (out_type='avg_featmap')
    # hands its head.
    cfg = tool.load_config(IMAGE_CONFIG)
    model, _ = tool.build_model(cfg, image_ckpt)
    views = tool.load_views(tool.MultiCrop(tool.test_pipeline_of(cfg), 0, False), photo)
    with torch.no_grad():
        own = model.backbone(tool.normalise(model, views, False))[-1][0]
    np.testing.assert_allclose(feats['stage3'], own.numpy(), rtol=1e-4, atol=1e-5)


def test_feature_maps_and_kept_crops(tmp_path, image_ckpt, photos):
    photo = str(photos / 'coffee.png')
    assert tool.main([IMAGE_CONFIG, image_ckpt, photo, str(tmp_path / 'map'), '--stages', '0',
                      '--pool', 'none', '--format', 'pkl']) == 0
    with open(tmp_path / 'map' / 'coffee.png.pkl', 'rb') as f:
        assert f_shapes(pickle.load(f)) == {'stage0': (48, 8, 8)}
    assert tool.main([IMAGE_CONFIG, image_ckpt, photo, str(tmp_path / 'kept'), '--crops', '5',
                      '--views', 'keep']) == 0
    assert tool.main([IMAGE_CONFIG, image_ckpt, photo, str(tmp_path / 'avg'), '--crops',
                      '5']) == 0
    kept, mean = np.load(tmp_path / 'kept' / 'coffee.png.npy'), np.load(tmp_path / 'avg' /
                                                                        'coffee.png.npy')
    assert kept.shape == (5, 384) and mean.shape == (384,)
    np.testing.assert_allclose(kept.mean(0), mean, rtol=1e-5, atol=1e-6)
    assert np.abs(kept[0] - kept[4]).max() > 1e-3  # a corner and the centre differ


def f_shapes(feats):
    return {k: v.shape for k, v in feats.items()}


def test_video_clips_crops_and_cls_token(tmp_path, video_config, video_ckpt):
    clip = real_clip()
    assert tool.main([video_config, video_ckpt, clip, str(tmp_path / 'keep'), '--stages', '0',
                      '-1', '--pool', 'none', '--views', 'keep', '--crops', '3']) == 0
    feats = np.load(tmp_path / 'keep' / 'bikes.mp4.npz')
    # 3 crops x 2 clips of 4x32x32 frames; tokens 2x8x8 (stage 0) and 2x1x1 (stage 3).
    assert f_shapes(feats) == {'stage0': (6, 48, 2, 8, 8), 'stage3': (6, 384, 2, 1, 1)}
    assert np.abs(feats['stage3'][0] - feats['stage3'][1]).max() > 1e-4
    assert tool.main([video_config, video_ckpt, clip, str(tmp_path / 'cls'), '--pool', 'cls',
                      '--num-clips', '1']) == 0
    assert np.load(tmp_path / 'cls' / 'bikes.mp4.npy').shape == (384,)


def test_multi_process_output_equals_single_process(tmp_path, image_ckpt, photos):
    one, two = tmp_path / 'one', tmp_path / 'two'
    assert tool.main([IMAGE_CONFIG, image_ckpt, str(photos), str(one), '--stages', '1',
                      '3']) == 0
    assert tool.main([IMAGE_CONFIG, image_ckpt, str(photos), str(two), '--stages', '1', '3',
                      '--workers', '2']) == 0
    names = ['astronaut.png.npz', 'coffee.png.npz', 'sub/chelsea.png.npz']
    for name in names:
        a, b = np.load(one / name), np.load(two / name)
        assert sorted(a) == sorted(b) == ['stage1', 'stage3']
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    index_one, index_two = read_index(one), read_index(two)
    assert [e['file'] for e in index_two['inputs']] == [str(two / n) for n in names]
    assert [e['input'] for e in index_one['inputs']] == [e['input']
                                                         for e in index_two['inputs']]
    assert index_two['inputs'][0]['shapes'] == {'stage1': (96,), 'stage3': (384,)}
    assert not list(two.glob('.part*'))


def test_list_file_input(tmp_path, image_ckpt, photos):
    shutil.copytree(photos, tmp_path / 'data')
    listing = tmp_path / 'data' / 'list.txt'
    listing.write_text('sub/chelsea.png 3\ncoffee.png 1\n')
    assert tool.main([IMAGE_CONFIG, image_ckpt, str(listing), str(tmp_path / 'out')]) == 0
    assert sorted(p.name for p in (tmp_path / 'out').rglob('*.npy')) == ['chelsea.png.npy',
                                                                        'coffee.png.npy']
    assert (tmp_path / 'out' / 'sub' / 'chelsea.png.npy').is_file()


def test_errors_name_the_problem(tmp_path, capsys, image_ckpt, video_config, video_ckpt,
                                 photos):
    photo = str(photos / 'astronaut.png')
    cases = [
        ([IMAGE_CONFIG, image_ckpt, photo, str(tmp_path), '--pool', 'cls'], 'needs a cls token'),
        ([IMAGE_CONFIG, image_ckpt, photo, str(tmp_path), '--stages', '4'], 'stages 0-3'),
        ([IMAGE_CONFIG, image_ckpt, photo, str(tmp_path), '--num-clips', '2'],
         'for video configs'),
        ([IMAGE_CONFIG, image_ckpt, str(tmp_path / 'none'), str(tmp_path)], 'does not exist'),
        ([IMAGE_CONFIG, image_ckpt, real_clip(), str(tmp_path)], 'is a video'),
        ([IMAGE_CONFIG, video_ckpt, photo, str(tmp_path)], 'does not fit the model'),
        ([video_config, video_ckpt, photo, str(tmp_path)], 'is an image'),
    ]
    for args, message in cases:
        assert tool.main(args) == 2, args
        assert message in capsys.readouterr().err, args
