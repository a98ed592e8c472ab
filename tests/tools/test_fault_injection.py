"""tools/fault_injection.py: one kill-during-save trial of the image quickstart end to end, and
the checkpoint comparison it reports with (it must see a one-bit difference)."""
import signal

import torch
from helpers import load_tool

fault = load_tool('tools/fault_injection.py')


def test_one_trial_kills_during_a_save_resumes_and_compares(tmp_path, capsys):
    code = fault.main(['--image-trials', '1', '--video-trials', '0', '--epochs', '2',
                       '--fork', '--work-dir', str(tmp_path)])
    out = capsys.readouterr().out
    # trial 0 is a 'save' kill: the run dies inside a checkpoint save and is resumed
    assert 'image trial 0: save kill (checkpoint file #' in out and ': killed;' in out, out
    assert 'image: 1 trials, 1 killed (1 during a checkpoint save), 1 resumed, ' \
           '1 bit-identical to the uninterrupted run' in out, out
    assert 'torch ' + torch.__version__ in out and 'load average' in out
    assert code == 0


def test_comparison_sees_one_changed_bit_and_a_missing_tensor():
    weights = {'a': torch.arange(6.).reshape(2, 3), 'b': torch.ones(2)}
    checkpoint = dict(state_dict=weights, meta=dict(epoch=2, iter=8),
                      optimizer=dict(state={0: dict(step=torch.tensor(8.), exp_avg=torch.ones(3))},
                                     param_groups=[dict(lr=0.1, params=[0])]))
    same = fault.compare_checkpoints(checkpoint, checkpoint)
    assert same.identical and same.tensors == 4 and same.values >= 2

    flipped = torch.arange(6.).reshape(2, 3)
    flipped.view(torch.int32)[1, 2] ^= 1  # the last bit of one float
    other = dict(checkpoint, state_dict=dict(weights, a=flipped))
    changed = fault.compare_checkpoints(checkpoint, other)
    assert changed.different == ['state_dict.a'] and 0 < changed.max_abs_diff < 1e-5

    only_a = dict(checkpoint, state_dict={'a': weights['a']})
    missing = fault.compare_checkpoints(checkpoint, only_a)
    assert missing.different == ['state_dict.b (missing on one side)']
    later = fault.compare_checkpoints(checkpoint, dict(checkpoint, meta=dict(epoch=2, iter=9)))
    assert later.different == ['meta.iter']


def test_hook_kills_after_the_given_iteration(monkeypatch):
    killed = []
    monkeypatch.setattr(fault.os, 'kill', lambda pid, sig: killed.append(sig))
    monkeypatch.setenv(fault.KILL_ITER_ENV, '3')

    class Runner:
        iter = 1

    hook = fault.FaultInjectionHook()
    hook.before_run(Runner)
    hook.after_train_iter(Runner, 1)
    assert killed == []
    Runner.iter = 2  # the 3rd iteration (mmengine counts from 0)
    hook.after_train_iter(Runner, 2)
    assert killed == [signal.SIGKILL]
