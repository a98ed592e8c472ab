"""Safe loading: weights_only always, exactly mmengine's extra globals, refusals that name the
file and the way out, and a crafted payload that never runs unless the user trusts the file."""
import pickle

import numpy as np
import pytest
import torch
from mmengine.logging.history_buffer import HistoryBuffer

import mmvit_plugin  # noqa: F401  (registers the mmengine globals)
from mmvit_plugin.checkpoint import (CheckpointReadError, UnsafeCheckpointError,
                                     init_backbone_from_checkpoint, load_checkpoint_file)
from mmvit_plugin.checkpoint.safe_load import (history_buffer_getattr, mmengine_safe_globals,
                                               unsafe_globals_in_file)
from mmvit_plugin.models.mvitv2 import MViTv2


class WriteFilePayload:
    """Unpickling this object writes a file: stands for arbitrary code in a checkpoint."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f'open({self.target!r}, "w").write("pwned")',))


class ReachForBuiltins:
    """Uses the allowlisted getattr to reach something other than HistoryBuffer's methods."""

    def __reduce__(self):
        return (getattr, (HistoryBuffer, '__init__'))


def payload_checkpoint(path, marker) -> None:
    """A file that looks like a plugin checkpoint but carries the payload in its meta."""
    state = MViTv2(arch=dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                             img_size=(64, 64))).state_dict()
    torch.save({'meta': {'note': WriteFilePayload(str(marker))},
                'state_dict': {'backbone.' + k: v for k, v in state.items()}}, path)


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
    with pytest.raises(CheckpointReadError, match='garbage.pth: not a readable PyTorch'):
        load_checkpoint_file(garbage)
    backbone = MViTv2(arch=dict(embed_dim=16, depth=4, num_heads=1, stage_starts=(1, 2, 3),
                                img_size=(64, 64)))
    with pytest.raises(CheckpointReadError, match='nope.pth'):
        init_backbone_from_checkpoint(
            backbone, dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
