"""Every way a user loads a checkpoint reads it through the plugin's safe reader, even with
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` set: the runner's ``load_from`` and resume (given and
automatic), ``tools/test.py``, ``tools/demo_video.py``, mmaction2's ``init_recognizer``,
mmpretrain's ``get_model(pretrained=)`` and ``mmengine.runner.load_checkpoint``. Crafted files
(zip and legacy format) whose payload would write a marker are refused naming the file and the
global; damaged, empty and not-a-file inputs and a bad ``last_checkpoint`` are named too."""
import os
import os.path as osp
import subprocess
import sys
import uuid

import cv2
import numpy as np
import pytest
import torch
from helpers import WriteFilePayload, write_tiny_image_run
from mmengine.config import Config
from mmengine.runner import Runner

import mmvit_plugin  # noqa: F401  (registers the safe reader as mmengine's local loader)
from mmvit_plugin.checkpoint import CheckpointReadError, UnsafeCheckpointError
from mmvit_plugin.checkpoint.safe_load import TRUSTED_ENV

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
VIDEO_QUICKSTART = osp.join(REPO, 'configs', 'quickstart_video.py')
FORMATS = [False, True]
FORMAT_IDS = ['zip', 'legacy']

pytestmark = pytest.mark.usefixtures('single_thread')



@pytest.fixture(autouse=True)
def force_no_weights_only(monkeypatch):
    """The setting that let crafted files run code through mmengine's own torch.load."""
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    monkeypatch.delenv(TRUSTED_ENV, raising=False)


@pytest.fixture(scope='module')
def config(tmp_path_factory) -> str:
    return write_tiny_image_run(tmp_path_factory.mktemp('safe_paths'))


def make_runner(config: str, work_dir, **overrides) -> Runner:
    cfg = Config.fromfile(config)
    cfg.work_dir = str(work_dir)
    # a unique name: runners made within one second otherwise share mmengine's DefaultScope
    cfg.experiment_name = f'safe_paths_{uuid.uuid4().hex}'
    cfg.merge_from_dict(overrides)
    return Runner.from_cfg(cfg)


def crafted(path, marker, legacy: bool, state=None) -> str:
    """A checkpoint that looks like the runner's own but would write ``marker`` when read."""
    torch.save({'meta': {'epoch': 1, 'iter': 2, 'note': WriteFilePayload(str(marker))},
                'state_dict': state or {'w': torch.ones(2)}}, path,
               _use_new_zipfile_serialization=not legacy)
    return str(path)


def assert_refused(err, path, marker, global_name: str = 'builtins.exec') -> None:
    message = str(err.value)
    assert str(path) in message and global_name in message, message
    assert not marker.exists()


def subprocess_env() -> dict:
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD='1', OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([REPO, env.get('PYTHONPATH', '')])
    return env


@pytest.mark.parametrize('legacy', FORMATS, ids=FORMAT_IDS)
@pytest.mark.parametrize('how', ['load_from', 'resume', 'auto_resume'])
def test_runner_never_runs_a_crafted_file(tmp_path, config, legacy, how):
    marker = tmp_path / 'pwned.txt'
    evil = crafted(tmp_path / 'evil.pth', marker, legacy)
    work = tmp_path / 'work'
    if how == 'auto_resume':
        work.mkdir()
        (work / 'last_checkpoint').write_text(evil)
        runner = make_runner(config, work, resume=True)
    else:
        runner = make_runner(config, work, load_from=evil, resume=how == 'resume')
    with pytest.raises(UnsafeCheckpointError) as err:
        runner.train()
    assert_refused(err, evil, marker)
    assert TRUSTED_ENV in str(err.value)


def test_runner_resumes_its_own_checkpoints_and_trust_is_by_name(tmp_path, config,
                                                               monkeypatch):
    work = tmp_path / 'work'
    make_runner(config, work).train()
    resumed = make_runner(config, work, resume=True, train_cfg=dict(max_epochs=2))
    resumed.train()  # message hub (HistoryBuffer, numpy) and optimizer state, weights-only
    assert resumed.epoch == 2 and (work / 'epoch_2.pth').exists()
    # a file the user names in MMVIT_TRUSTED_CHECKPOINTS is unpickled in full
    marker = tmp_path / 'pwned.txt'
    state = torch.load(work / 'epoch_2.pth', weights_only=True)['state_dict']
    trusted = crafted(tmp_path / 'trusted.pth', marker, legacy=False, state=state)
    monkeypatch.setenv(TRUSTED_ENV, trusted)
    with pytest.warns(UserWarning, match='full unpickling'):
        make_runner(config, tmp_path / 'work2', load_from=trusted).train()
    assert marker.read_text() == 'pwned'


@pytest.mark.parametrize('resume', [False, True], ids=['load_from', 'resume'])
def test_runner_names_damaged_and_empty_files(tmp_path, config, resume):
    whole = tmp_path / 'whole.pth'
    torch.save({'state_dict': {'w': torch.arange(256.)}, 'meta': {}}, whole)
    data = whole.read_bytes()
    cases = {'truncated.pth': (data[:len(data) // 2], 'damaged or truncated checkpoint'),
             'empty.pth': (b'', 'the file is empty (0 bytes)')}
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        runner = make_runner(config, tmp_path / f'work_{name}', load_from=str(tmp_path / name),
                             resume=resume)
        with pytest.raises(CheckpointReadError) as err:
            runner.train()
        assert str(err.value).startswith(f'{tmp_path / name}: {expected}'), str(err.value)
    runner = make_runner(config, tmp_path / 'work_dir', load_from=str(tmp_path),
                         resume=resume)
    with pytest.raises(CheckpointReadError, match=f'{tmp_path}: is a folder'):
        runner.train()


@pytest.mark.parametrize('with_hook', [True, False], ids=['hook', 'no-hook'])
def test_bad_last_checkpoint_record_is_named(tmp_path, config, with_hook, monkeypatch):
    monkeypatch.chdir(tmp_path)  # mmengine reads a relative record from here
    work = tmp_path / 'work'
    work.mkdir()
    record = work / 'last_checkpoint'
    hooks = dict(custom_hooks=[dict(type='CheckpointFormatHook')] if with_hook else [])
    record.write_text('')
    with pytest.raises(CheckpointReadError) as err:
        make_runner(config, work, resume=True, **hooks).train()
    assert (f'{record} is empty' if with_hook else "last_checkpoint file is empty") \
        in str(err.value)
    torch.save({'state_dict': {}}, work / 'epoch_1.pth')
    record.write_text('epoch_1.pth')
    with pytest.raises(CheckpointReadError) as err:
        make_runner(config, work, resume=True, **hooks).train()
    assert (f"{record} names a relative path 'epoch_1.pth'" if with_hook else
            f'checkpoint file not found: epoch_1.pth (relative to the current folder '
            f'{os.getcwd()})') in str(err.value)


MMENGINE_LOAD = """
import resource, sys
import mmvit_plugin
from mmengine.runner.checkpoint import _load_checkpoint
with open('/proc/self/statm') as f:
    mapped = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), mapped + (2 << 30)))
try:
    _load_checkpoint(sys.argv[1], map_location='cpu', logger='silent')
except Exception as err:
    print(type(err).__name__, err)
"""


def test_mmengine_refuses_devices_and_fifos_without_reading(tmp_path):
    """What the runner's load_from=/dev/zero calls, in a child with 2 GB more address space
    than its imports and a time limit: it grew to 22 GB before."""
    fifo = tmp_path / 'pipe.pth'
    os.mkfifo(fifo)
    for path, expected in (('/dev/zero', 'is a character device'),
                           (str(fifo), 'is a FIFO (named pipe)')):
        done = subprocess.run([sys.executable, '-c', MMENGINE_LOAD, path], env=subprocess_env(),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f'CheckpointReadError {path}: {expected}, not a checkpoint file' in done.stdout


@pytest.mark.parametrize('legacy', FORMATS, ids=FORMAT_IDS)
def test_test_tool_never_runs_a_crafted_file(tmp_path, config, legacy):
    marker = tmp_path / 'pwned.txt'
    evil = crafted(tmp_path / 'evil.pth', marker, legacy)
    done = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'test.py'), config, evil,
                           '--work-dir', str(tmp_path / 'work')], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert 'UnsafeCheckpointError' in done.stderr and f'{evil}: refusing' in done.stderr
    assert 'builtins.exec' in done.stderr
    assert not marker.exists()


def test_demo_video_never_runs_a_crafted_file(tmp_path):
    marker = tmp_path / 'pwned.txt'
    evil = crafted(tmp_path / 'evil.pth', marker, legacy=False)
    video = str(tmp_path / 'clip.mp4')
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*'mp4v'), 10, (64, 48))
    for value in range(0, 240, 20):
        writer.write(np.full((48, 64, 3), value, dtype=np.uint8))
    writer.release()
    labels = tmp_path / 'labels.txt'
    labels.write_text('a\nb\n')
    done = subprocess.run([sys.executable, osp.join(REPO, 'tools', 'demo_video.py'),
                           VIDEO_QUICKSTART, evil, video, str(labels), '--device', 'cpu'],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert f'{evil}: refusing' in done.stderr and 'builtins.exec' in done.stderr
    assert not marker.exists()


@pytest.mark.parametrize('legacy', FORMATS, ids=FORMAT_IDS)
def test_mmaction_init_recognizer_never_runs_a_crafted_file(tmp_path, legacy):
    from mmaction.apis import init_recognizer
    marker = tmp_path / 'pwned.txt'
    evil = crafted(tmp_path / 'evil.pth', marker, legacy)
    with pytest.raises(UnsafeCheckpointError) as err:
        init_recognizer(VIDEO_QUICKSTART, evil, device='cpu')
    assert_refused(err, evil, marker)


@pytest.mark.parametrize('legacy', FORMATS, ids=FORMAT_IDS)
def test_mmpretrain_get_model_never_runs_a_crafted_file(tmp_path, config, legacy):
    from mmpretrain import get_model
    marker = tmp_path / 'pwned.txt'
    evil = crafted(tmp_path / 'evil.pth', marker, legacy)
    with pytest.raises(UnsafeCheckpointError) as err:
        get_model(Config.fromfile(config), pretrained=evil)
    assert_refused(err, evil, marker)


@pytest.mark.parametrize('legacy', FORMATS, ids=FORMAT_IDS)
def test_mmengine_load_checkpoint_never_runs_a_crafted_file(tmp_path, legacy):
    from mmengine.runner import load_checkpoint
    marker = tmp_path / 'pwned.txt'
    evil = crafted(tmp_path / 'evil.pth', marker, legacy)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(torch.nn.Linear(2, 2), evil, map_location='cpu')
    assert_refused(err, evil, marker)
    # the same, unwrapped: a file that needs nothing else loads
    plain = tmp_path / 'plain.pth'
    torch.save({'state_dict': {'weight': torch.ones(2, 2), 'bias': torch.zeros(2)}}, plain,
               _use_new_zipfile_serialization=not legacy)
    model = torch.nn.Linear(2, 2)
    load_checkpoint(model, str(plain), map_location='cpu', strict=True)
    assert torch.equal(model.weight, torch.ones(2, 2))


def test_mmengine_remote_loaders_are_weights_only(tmp_path, monkeypatch):
    """https (torch.hub passes weights_only=False) and open-mmlab:// read from their caches,
    so no network is needed: both refuse the payload; a trusted URL is the explicit way."""
    from mmengine.runner.checkpoint import _load_checkpoint

    from mmvit_plugin.checkpoint.safe_load import trusted_checkpoints
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.setenv('MMENGINE_HOME', str(tmp_path / 'mmengine_home'))
    marker = tmp_path / 'pwned.txt'
    (tmp_path / 'torch_home' / 'hub' / 'checkpoints').mkdir(parents=True)
    crafted(tmp_path / 'torch_home' / 'hub' / 'checkpoints' / 'evil.pth', marker, legacy=False)
    (tmp_path / 'mmengine_home').mkdir()
    crafted(tmp_path / 'mmengine_home' / 'evil.pth', marker, legacy=True)
    (tmp_path / 'mmengine_home' / 'open_mmlab.json').write_text('{"mmvit_evil": "evil.pth"}')
    url = 'https://example.invalid/models/evil.pth'
    for name in (url, 'open-mmlab://mmvit_evil'):
        with pytest.raises(UnsafeCheckpointError) as err:
            _load_checkpoint(name, map_location='cpu', logger='silent')
        # torch's unpickler words it "GLOBAL exec" (it drops "builtins.")
        assert_refused(err, name, marker, global_name='GLOBAL exec')
        assert os.environ['TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'] == '1'  # restored afterwards
    # stock mmengine ran this one even without the variable (torch.hub: weights_only=False)
    monkeypatch.delenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD')
    with pytest.raises(UnsafeCheckpointError):
        _load_checkpoint(url, map_location='cpu', logger='silent')
    assert not marker.exists() and 'TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD' not in os.environ
    with trusted_checkpoints(url), pytest.warns(UserWarning, match='full unpickling'):
        assert 'state_dict' in _load_checkpoint(url, map_location='cpu', logger='silent')
    assert marker.read_text() == 'pwned'
