"""AtomicCheckpointHook: a save that dies half-way never costs the previous checkpoint, never
leaves a truncated ``epoch_N.pth``, and ``last_checkpoint`` always names a complete file."""
import os

import pytest
import torch
from mmengine.runner import runner as runner_module
from test_hooks import make_runner

import mmvit_plugin  # noqa: F401
from mmvit_plugin.engine.checkpointing import partial_name

pytestmark = pytest.mark.usefixtures('single_thread')

ATOMIC = dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=1)


class DiskDiedError(OSError):
    pass


def dying_save(fail_on_call: int):
    """mmengine's save_checkpoint, except that call ``fail_on_call`` writes half the bytes of
    the file it was asked for and then fails, as a kill or a full disk would leave it."""
    real = runner_module.save_checkpoint
    calls = []

    def save(checkpoint, filename, **kwargs):
        calls.append(filename)
        if len(calls) == fail_on_call:
            real(checkpoint, filename, **kwargs)
            with open(filename, 'rb') as f:
                data = f.read()
            with open(filename, 'wb') as f:
                f.write(data[:len(data) // 2])
            raise DiskDiedError(f'injected failure while writing {filename}')
        real(checkpoint, filename, **kwargs)

    return save, calls


@pytest.mark.parametrize('video', [False, True], ids=['image', 'video'])
def test_a_save_that_dies_keeps_the_last_complete_checkpoint(tmp_path, monkeypatch, video):
    work = tmp_path / 'work'
    save, calls = dying_save(fail_on_call=2)  # epoch 1 saves, epoch 2 dies mid-write
    monkeypatch.setattr(runner_module, 'save_checkpoint', save)
    runner = make_runner(tmp_path, video=video, epochs=2,
                         default_hooks=dict(checkpoint=ATOMIC))
    with pytest.raises(DiskDiedError):
        runner.train()
    assert len(calls) == 2
    files = sorted(os.listdir(work))
    assert 'epoch_1.pth' in files, files  # max_keep_ckpts=1 did not delete it first
    assert 'epoch_2.pth' not in files, files  # no truncated file under a real name
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_1.pth')
    assert torch.load(work / 'epoch_1.pth', weights_only=True)['meta']['epoch'] == 1

    monkeypatch.setattr(runner_module, 'save_checkpoint', dying_save(fail_on_call=0)[0])
    resumed = make_runner(tmp_path, video=video, epochs=2, resume=True,
                          default_hooks=dict(checkpoint=ATOMIC))
    resumed.train()
    files = sorted(os.listdir(work))
    assert resumed.epoch == 2
    assert 'epoch_2.pth' in files and 'epoch_1.pth' not in files, files  # old one deleted last
    assert not any(name.endswith('.partial') for name in files), files
    assert (work / 'last_checkpoint').read_text() == str(work / 'epoch_2.pth')


def test_best_checkpoint_survives_a_failed_replacement(tmp_path, monkeypatch):
    """The previous best file is deleted only once the new best one is complete."""
    from mmvit_plugin.engine.checkpointing import AtomicCheckpointHook
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'best_acc_epoch_1.pth').write_bytes(b'old best')

    class FakeRunner:
        epoch, iter, work_dir = 2, 8, str(work)

        class message_hub:
            runtime_info = {'best_score': 0.5}

            @staticmethod
            def update_info(key, value):
                FakeRunner.message_hub.runtime_info[key] = value

            @staticmethod
            def get_info(key):
                return FakeRunner.message_hub.runtime_info[key]

        class logger:
            info = warning = staticmethod(lambda *a, **k: None)

        @staticmethod
        def save_checkpoint(out_dir, filename, **kwargs):
            with open(os.path.join(out_dir, filename), 'wb') as f:
                f.write(b'half')
            raise DiskDiedError('injected')

    hook = AtomicCheckpointHook(interval=1, save_best='acc', rule='greater')
    hook.out_dir = str(work)
    from mmengine.fileio import get_file_backend
    hook.file_backend = get_file_backend(str(work))
    hook.best_ckpt_path = str(work / 'best_acc_epoch_1.pth')
    with pytest.raises(DiskDiedError):
        hook._save_best_checkpoint(FakeRunner, {'acc': 0.9})
    assert (work / 'best_acc_epoch_1.pth').read_bytes() == b'old best'
    assert not (work / 'best_acc_epoch_2.pth').exists()
    assert (work / partial_name('best_acc_epoch_2.pth')).exists()  # hidden, removed next run
