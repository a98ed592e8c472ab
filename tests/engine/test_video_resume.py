"""A video run SIGKILLed in its second epoch and resumed ends bit-identical to an uninterrupted
one: the video quickstart config (persistent dataloader workers, random flips) with a tiny arch
and drop path, through tools/train.py, every tensor of the final checkpoint compared."""
import os
import signal

from helpers import load_tool
from mmengine.config import Config

fault = load_tool('tools/fault_injection.py')

EPOCHS = 2
ITERS_PER_EPOCH = 3  # 6 training clips, batch 2


def test_video_run_killed_in_epoch_2_resumes_bit_identically(tmp_path):
    data = fault.make_video_data(str(tmp_path / 'data'), train=3)
    # Probing is tested with the datasets; here it would only add child processes per run.
    config = fault.write_config('video', data, str(tmp_path), epochs=EPOCHS, check_videos=False)
    loader = Config.fromfile(config, import_custom_modules=False).train_dataloader
    assert loader.num_workers >= 1 and loader.persistent_workers  # as in the quickstart

    straight, interrupted = str(tmp_path / 'straight'), str(tmp_path / 'interrupted')
    # Both start at once (forked from this process: no interpreter start-up per run).
    runs = [fault.start_training(config, straight, fork=True),
            fault.start_training(config, interrupted, fork=True,
                                 env={fault.KILL_ITER_ENV: str(ITERS_PER_EPOCH + 2)})]
    reference, killed = (fault.finish(run, timeout=300) for run in runs)
    assert reference.returncode == 0, reference.output[-3000:]
    assert killed.returncode == -signal.SIGKILL, killed.output[-3000:]
    assert 'Epoch(train) [2][1/3]' in killed.output  # died inside epoch 2...
    assert sorted(n for n in os.listdir(interrupted) if n.startswith('epoch_')) == [
        'epoch_1.pth']  # ...after epoch 1's checkpoint
    first = fault.load_checkpoint(os.path.join(interrupted, 'epoch_1.pth'))['state_dict']

    resumed = fault.train(config, interrupted, resume=True, fork=True, timeout=300)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert f'resumed epoch: 1, iter: {ITERS_PER_EPOCH}' in resumed.output

    expected = fault.load_checkpoint(fault.final_checkpoint(straight, EPOCHS))
    got = fault.load_checkpoint(fault.final_checkpoint(interrupted, EPOCHS))
    comparison = fault.compare_checkpoints(expected, got)
    assert comparison.identical, (comparison.different[:10], comparison.max_abs_diff)
    # every weight and both Adam moments of every weight were compared
    weights = len(expected['state_dict'])
    assert comparison.tensors >= 3 * weights - 10 and weights > 50, comparison
    # and training moved the weights after the resume point (not a trivially equal pair)
    assert not all(v.equal(first[k]) for k, v in expected['state_dict'].items())
