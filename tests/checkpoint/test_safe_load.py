"""Safe loading: weights_only always, exactly mmengine's extra globals, refusals that name the
file and the way out, and a crafted payload that never runs unless the user trusts the file.
Also: files that cannot be checkpoints (devices, FIFOs, folders, empty, random bytes, truncated)
are named as such before anything is read or unpickled, and object-dtype arrays are refused."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import WriteFilePayload
from mmengine.logging.history_buffer import HistoryBuffer

import mmvit_plugin  # noqa: F401  (registers the mmengine globals)
from mmvit_plugin.checkpoint import (
    CheckpointReadError,
    UnsafeCheckpointError,
    load_checkpoint_file,
    load_into_backbone,
)
from mmvit_plugin.checkpoint.safe_load import (
    TRUSTED_ENV,
    check_last_checkpoint,
    history_buffer_getattr,
    load_from_local_weights_only,
    mmengine_safe_globals,
    trusted_checkpoints,
    unsafe_globals_in_file,
)
from mmvit_plugin.models.mvitv2 import MViTv2


class ReachForBuiltins:
    """Uses the allowlisted getattr to reach something other than HistoryBuffer's methods."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, '__init__'))


class ObjectArrayWithoutBuild:
    """An object-dtype array made by calling the allowlisted ``numpy.ndarray`` itself."""

    def __reduce__(self):
        return (np.ndarray, ((2,), 'O'))


def payload_checkpoint(path, marker, legacy: bool = False) -> None:
    """A file that looks like a plugin checkpoint but carries the payload in its meta."""
    state = MViTv2(arch=dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                             img_size=(64, 64))).state_dict()
    torch.save({'meta': {'note': WriteFilePayload(str(marker))},
                'state_dict': {'backbone.' + k: v for k, v in state.items()}}, path,
               _use_new_zipfile_serialization=not legacy)


def test_mmengine_message_hub_objects_load_weights_only(tmp_path):
    buffer = HistoryBuffer()
    for value in (0.5, 0.25, 0.125):
        buffer.update(value)
    checkpoint = {
        'meta': {'epoch': 1, 'iter': 3, 'seed': np.int64(7), 'lr': np.float64(0.1)},
        'message_hub': {'log_scalars': {'train/loss': buffer},
                        'runtime_info': {'flags': np.array([True, False])}},
        'state_dict': {'w': torch.ones(2)},
    }
    path = tmp_path / 'runner.pth'
    torch.save(checkpoint, path)
    assert unsafe_globals_in_file(path) == []
    # plain torch.load (what mmengine's runner calls) works through the registration
    loaded = torch.load(path, weights_only=True)
    assert loaded['message_hub']['log_scalars']['train/loss'].mean() == pytest.approx(0.875 / 3)
    assert loaded['meta']['seed'] == 7 and loaded['meta']['lr'] == pytest.approx(0.1)
    assert load_checkpoint_file(path)['meta']['iter'] == 3


def test_allowlist_is_exactly_mmengine_needs():
    names = {entry[1] if isinstance(entry, tuple) else
             f'{entry.__module__}.{entry.__qualname__}' for entry in mmengine_safe_globals()}
    assert 'mmengine.logging.history_buffer.HistoryBuffer' in names
    assert 'builtins.getattr' in names
    assert {'numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct',
            'numpy.core.multiarray.scalar', 'numpy._core.multiarray.scalar'} <= names
    assert not any(name.startswith(('os.', 'posix.', 'subprocess.')) or name in
                   ('builtins.exec', 'builtins.eval', 'builtins.open') for name in names)
    assert history_buffer_getattr(HistoryBuffer, 'mean') is HistoryBuffer.mean
    with pytest.raises(pickle.UnpicklingError):
        history_buffer_getattr(HistoryBuffer, '__init__')


def test_restricted_getattr_refuses_other_attributes(tmp_path):
    path = tmp_path / 'getattr.pth'
    torch.save({'x': ReachForBuiltins()}, path)
    with pytest.raises(UnsafeCheckpointError, match='getattr'):
        load_checkpoint_file(path)


def test_payload_never_runs_and_the_error_says_what_to_do(tmp_path):
    marker = tmp_path / 'pwned.txt'
    path = tmp_path / 'evil.pth'
    payload_checkpoint(path, marker)
    assert 'builtins.exec' in unsafe_globals_in_file(path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint_file(path)
    message = str(err.value)
    assert str(path) in message and 'exec' in message
    assert 'trusted=True' in message and '--trust-checkpoint' in message
    assert not marker.exists()
    # plain torch.load (mmengine's load_from / resume path) refuses it as well
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    assert not marker.exists()


def test_init_cfg_refuses_the_payload(tmp_path):
    marker = tmp_path / 'pwned.txt'
    path = tmp_path / 'evil.pth'
    payload_checkpoint(path, marker)
    backbone = MViTv2(arch=dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                                img_size=(64, 64)),
                      init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(UnsafeCheckpointError, match='refusing'):
        backbone.init_weights()
    assert not marker.exists()


def test_trusted_opt_in_loads_with_full_unpickling(tmp_path):
    marker = tmp_path / 'pwned.txt'
    path = tmp_path / 'evil.pth'
    payload_checkpoint(path, marker)
    with pytest.warns(UserWarning, match='full unpickling'):
        loaded = load_checkpoint_file(path, trusted=True)
    assert 'state_dict' in loaded
    assert marker.read_text() == 'pwned'  # the opt-in really is full unpickling


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(CheckpointReadError, match='not found: .*nope.pth'):
        load_checkpoint_file(tmp_path / 'nope.pth')
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'this is not a checkpoint at all')
    with pytest.raises(CheckpointReadError, match='garbage.pth: not a PyTorch checkpoint'):
        load_checkpoint_file(garbage)
    backbone = MViTv2(arch=dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                                img_size=(64, 64)))
    with pytest.raises(CheckpointReadError, match='nope.pth'):
        load_into_backbone(backbone, str(tmp_path / 'nope.pth'))


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy'])
def test_torch_env_override_cannot_turn_off_weights_only(tmp_path, monkeypatch, legacy):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 makes plain torch.load unpickle fully; ours holds."""
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    marker = tmp_path / 'pwned.txt'
    path = tmp_path / 'evil.pth'
    payload_checkpoint(path, marker, legacy=legacy)
    assert unsafe_globals_in_file(path) == ['builtins.exec']
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint_file(path)
    assert str(path) in str(err.value) and 'builtins.exec' in str(err.value)
    assert not marker.exists()


def test_object_dtype_arrays_are_refused_numeric_ones_load(tmp_path):
    built = tmp_path / 'object_built.pth'
    torch.save({'meta': {'names': np.array([1, 'x', None], dtype=object)}}, built)
    called = tmp_path / 'object_called.pth'
    torch.save({'meta': {'names': ObjectArrayWithoutBuild()}}, called)
    for path in (built, called):
        with pytest.raises(UnsafeCheckpointError) as err:
            load_checkpoint_file(path)
        message = str(err.value)
        assert str(path) in message and ('object' in message or 'ObjectDType' in message)
    # the one that torch's unpickler builds is caught after loading, with where it sits
    with pytest.raises(UnsafeCheckpointError, match=r"\['meta'\]\['names'\] is a numpy object "
                                                    r"of dtype object"):
        load_checkpoint_file(called)
    assert load_checkpoint_file(called, trusted=True)['meta']['names'].dtype == object
    numeric = tmp_path / 'numeric.pth'
    torch.save({'a': np.arange(3, dtype=np.int16), 'b': np.float32(2), 'c': np.dtype('c8'),
                'd': np.array([True])}, numeric)
    assert load_checkpoint_file(numeric)['a'].tolist() == [0, 1, 2]


LOAD_IN_SUBPROCESS = """
import resource, sys
from mmvit_plugin.checkpoint.safe_load import load_checkpoint_file
with open('/proc/self/statm') as f:
    mapped = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), mapped + (2 << 30)))
try:
    load_checkpoint_file(sys.argv[1])
except Exception as err:
    print(type(err).__name__, err)
"""


def load_in_subprocess(path) -> str:
    """Read ``path`` in a child with 2 GB more address space and 60 s: a regression that reads
    /dev/zero or waits on a FIFO fails the test instead of taking the machine down."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
         os.environ.get('PYTHONPATH', '')]))
    done = subprocess.run([sys.executable, '-c', LOAD_IN_SUBPROCESS, str(path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_devices_fifos_and_folders_are_refused_before_reading(tmp_path):
    assert load_in_subprocess('/dev/zero') == (
        'CheckpointReadError /dev/zero: is a character device, not a checkpoint file; '
        'checkpoints are read only from regular files')
    fifo = tmp_path / 'pipe.pth'
    os.mkfifo(fifo)
    assert f'{fifo}: is a FIFO (named pipe), not a checkpoint file' in load_in_subprocess(fifo)
    with pytest.raises(CheckpointReadError, match=f'{tmp_path}: is a folder'):
        load_checkpoint_file(tmp_path)


def test_random_bytes_are_not_a_checkpoint_and_not_called_unsafe(tmp_path):
    path = tmp_path / 'random.pth'
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointReadError) as err:
        load_checkpoint_file(path)
    message = str(err.value)
    assert message.startswith(f'{path}: not a PyTorch checkpoint')
    assert 'trust' not in message and not isinstance(err.value, UnsafeCheckpointError)


def test_empty_and_truncated_files_are_named(tmp_path):
    empty = tmp_path / 'empty.pth'
    empty.write_bytes(b'')
    with pytest.raises(CheckpointReadError, match=f'{empty}: the file is empty'):
        load_checkpoint_file(empty)
    for legacy in (False, True):
        whole = tmp_path / f'whole_{legacy}.pth'
        torch.save({'state_dict': {'w': torch.arange(64.)}}, whole,
                   _use_new_zipfile_serialization=not legacy)
        data = whole.read_bytes()
        for cut in (len(data) // 2, len(data) - 3, 40):
            part = tmp_path / f'part_{legacy}_{cut}.pth'
            part.write_bytes(data[:cut])
            with pytest.raises(CheckpointReadError,
                               match=f'{part}: damaged or truncated checkpoint') as err:
                load_checkpoint_file(part)
            assert not isinstance(err.value, UnsafeCheckpointError)
        assert load_checkpoint_file(whole)['state_dict']['w'].sum() == 2016


def test_every_refusal_names_what_was_refused(tmp_path):
    """torch cuts some reasons to "WeightsUnpickler error:" and a blank line; ours keep them."""
    getattr_file = tmp_path / 'getattr.pth'
    torch.save({'x': ReachForBuiltins()}, getattr_file)
    with pytest.raises(UnsafeCheckpointError,
                       match=r"refusing getattr\(HistoryBuffer, '__init__'\)"):
        load_checkpoint_file(getattr_file)
    build_file = tmp_path / 'build.pth'
    torch.save({'x': np.array([None], dtype=object)}, build_file)
    with pytest.raises(UnsafeCheckpointError, match='numpy.dtypes.ObjectDType') as err:
        load_checkpoint_file(build_file)
    assert 'WeightsUnpickler error:)' not in str(err.value)
    # protocol 4 names globals with STACK_GLOBAL, which the weights-only unpickler never runs
    protocol4 = tmp_path / 'protocol4.pth'
    torch.save({'w': torch.ones(2)}, protocol4, pickle_protocol=4)
    with pytest.raises(UnsafeCheckpointError, match='torch._utils._rebuild_tensor_v2 '
                                                    r'\(via STACK_GLOBAL\)'):
        load_checkpoint_file(protocol4)


def test_mmengine_loader_trusts_only_files_the_user_names(tmp_path, monkeypatch):
    marker = tmp_path / 'pwned.txt'
    path = tmp_path / 'evil.pth'
    payload_checkpoint(path, marker)
    monkeypatch.setenv('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD', '1')
    monkeypatch.setenv(TRUSTED_ENV, str(tmp_path / 'other.pth'))
    with pytest.raises(UnsafeCheckpointError, match=TRUSTED_ENV):
        load_from_local_weights_only(str(path))
    assert not marker.exists()
    with trusted_checkpoints(path), pytest.warns(UserWarning, match='full unpickling'):
        assert 'state_dict' in load_from_local_weights_only(str(path))
    assert marker.read_text() == 'pwned'
    marker.unlink()
    with pytest.raises(UnsafeCheckpointError):  # the context is over
        load_from_local_weights_only(str(path))
    monkeypatch.setenv(TRUSTED_ENV, os.pathsep.join([str(tmp_path / 'other.pth'), str(path)]))
    with pytest.warns(UserWarning, match='full unpickling'):
        load_from_local_weights_only(str(path))
    assert marker.exists()
    monkeypatch.setenv(TRUSTED_ENV, 'evil.pth')
    with pytest.raises(ValueError, match=f"{TRUSTED_ENV}: 'evil.pth' is not an absolute"):
        load_from_local_weights_only(str(path))


def test_last_checkpoint_record_is_checked(tmp_path, monkeypatch):
    assert check_last_checkpoint(str(tmp_path)) is None
    record = tmp_path / 'last_checkpoint'
    record.write_text('\n')
    with pytest.raises(CheckpointReadError, match=f'{record} is empty'):
        check_last_checkpoint(str(tmp_path))
    checkpoint = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': {}}, checkpoint)
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    record.write_text('epoch_1.pth')
    with pytest.raises(CheckpointReadError, match=f"{record} names a relative path "
                       f"'epoch_1.pth'.*write {checkpoint} into it"):
        check_last_checkpoint(str(tmp_path))
    record.write_text(str(checkpoint))
    assert check_last_checkpoint(str(tmp_path)) == str(checkpoint)
    monkeypatch.chdir(tmp_path)  # a relative path that is there, as mmengine reads it
    record.write_text('epoch_1.pth')
    assert check_last_checkpoint(str(tmp_path)) == 'epoch_1.pth'
    record.write_text(str(checkpoint))
    checkpoint.write_bytes(b'')
    with pytest.raises(CheckpointReadError, match=f'{checkpoint}: the file is empty'):
        check_last_checkpoint(str(tmp_path))
