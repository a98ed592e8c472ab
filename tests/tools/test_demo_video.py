"""tools/demo_video.py: top-5 on a real clip, the drawn video, Kinetics-400 names, clear errors."""
import cv2  # before decord (decord first breaks cv2's PNG reading)
import decord
import numpy as np
import pytest
from apis.media import config_path, random_checkpoint, real_clip
from helpers import load_tool
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmvit_plugin  # noqa: F401  (registers the plugin)

pytestmark = pytest.mark.usefixtures('single_thread')

QUICKSTART = config_path('quickstart_video.py')
demo = load_tool('tools/demo_video.py')


def write_clip(path: str, num_frames: int = 12, size=(64, 32)) -> str:
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), 10, size)
    rng = np.random.default_rng(0)
    for _ in range(num_frames):
        writer.write(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    writer.release()
    return path


def save_random_model(tmp_path, num_classes: int) -> str:
    def edit(cfg):
        cfg.model.cls_head.num_classes = num_classes
    return random_checkpoint(QUICKSTART, tmp_path / f'random_{num_classes}.pth', 'mmaction', edit)


@pytest.fixture(scope='module')
def checkpoint10(tmp_path_factory):
    return save_random_model(tmp_path_factory.mktemp('ckpt'), 10)


@pytest.fixture
def labels10(tmp_path):
    path = tmp_path / 'classes.txt'
    path.write_text('\n'.join(f'class_{i}' for i in range(10)) + '\n')
    return str(path)


def test_prints_top5_and_draws_the_video(tmp_path, capsys, checkpoint10, labels10):
    video = write_clip(str(tmp_path / 'clip.mp4'))
    out_file = str(tmp_path / 'out' / 'drawn.mp4')
    assert demo.main([QUICKSTART, checkpoint10, video, labels10, '--out-file', out_file,
                      '--out-width', '256']) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line[:2] in {f'{i}.' for i in range(1, 6)}]
    assert len(lines) == 5
    scores = [float(line.rsplit(':', 1)[1]) for line in lines]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert all('class_' in line for line in lines)
    drawn = decord.VideoReader(out_file)
    assert len(drawn) == 12 and drawn[0].shape == (128, 256, 3)
    # the prediction text is drawn on the frames: they differ from the plain upscaled input
    plain = cv2.resize(decord.VideoReader(video)[0].asnumpy(), (256, 128),
                       interpolation=cv2.INTER_NEAREST)
    assert np.abs(drawn[0].asnumpy().astype(int) - plain).mean() > 5


def test_kinetics400_names_on_a_real_clip(tmp_path, capsys):
    names = demo.kinetics400_names()
    assert len(names) == 400 and names[0] == 'abseiling' and 'zumba' in names
    checkpoint = save_random_model(tmp_path, 400)
    video = real_clip()
    assert demo.main([QUICKSTART, checkpoint, video, 'kinetics400',
                      '--cfg-options', 'model.cls_head.num_classes=400']) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith('1. ')]
    assert lines and lines[0].split(' (class')[0][3:] in names


def test_scores_are_probabilities_averaged_over_views(tmp_path, checkpoint10):
    cfg = Config.fromfile(QUICKSTART)
    cfg.test_pipeline[1]['num_clips'] = 3  # 3 views: the head averages their probabilities
    video = write_clip(str(tmp_path / 'clip.mp4'))
    with DefaultScope.overwrite_default_scope('mmaction'):
        model = demo.build_recognizer(cfg, checkpoint10, 'cpu')
        scores = demo.predict(model, cfg, video)
    assert scores.shape == (10,)
    assert scores.sum().item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize('case', ['missing', 'garbage', 'directory'])
def test_unusable_video_is_named(tmp_path, capsys, checkpoint10, labels10, case):
    video = tmp_path / 'broken.mp4'
    if case == 'garbage':
        video.write_bytes(b'this is not a video' * 10)
    elif case == 'directory':
        video.mkdir()
    assert demo.main([QUICKSTART, checkpoint10, str(video), labels10]) == 2
    err = capsys.readouterr().err
    assert str(video) in err
    expected = {'missing': 'does not exist', 'garbage': 'cannot be read',
                'directory': 'is not a file'}[case]
    assert expected in err
    if case == 'garbage':
        assert 'Invalid data found' in err or 'moov atom' in err


def test_other_bad_arguments(tmp_path, capsys, checkpoint10, labels10):
    video = write_clip(str(tmp_path / 'clip.mp4'))
    wrong_count = tmp_path / 'three.txt'
    wrong_count.write_text('a\nb\nc\n')
    cases = [
        ([QUICKSTART, checkpoint10, video, str(wrong_count)], 'names 3 classes but the model'),
        ([QUICKSTART, checkpoint10, video, str(tmp_path / 'none.txt')], 'label file'),
        ([QUICKSTART, str(tmp_path / 'none.pth'), video, labels10], 'checkpoint'),
        ([str(tmp_path / 'none.py'), checkpoint10, video, labels10], 'config'),
        ([QUICKSTART, checkpoint10, video, labels10, '--out-file', str(tmp_path / 'x.webp')],
         'use .mp4, .avi or .gif'),
    ]
    for argv, message in cases:
        assert demo.main(argv) == 2, argv
        assert message in capsys.readouterr().err
