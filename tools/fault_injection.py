"""Kill-and-resume trials for the quickstarts: SIGKILL, ``--resume``, compare with a clean run.

    python tools/fault_injection.py [--image-trials 5] [--video-trials 5] [--seed 0]
        [--epochs 3] [--fork] [--work-dir DIR] [--keep]

For each quickstart config (configs/quickstart_image.py, configs/quickstart_video.py) the tool
trains once without interruption (the reference), then runs trials: each starts the same
training, SIGKILLs it, resumes it with ``tools/train.py --resume`` in the same work dir, and
compares every tensor of the final checkpoint (weights, optimizer state) with the reference
(``torch.equal``). Trials alternate between two kinds of kill:

- ``save``: during a checkpoint save chosen at random (epoch or best checkpoint), after a random
  fraction (0-100 %) of the file's bytes are written: the moment a non-atomic save loses the run
  with ``max_keep_ckpts=1``;
- ``time``: at a random moment of the reference run's duration (start-up included).

Every run is ``tools/train.py`` in its own process: a fresh interpreter, or with ``--fork`` a
forked copy of this one (the same code path without the interpreter start-up and imports, which
dominate a tiny run on a busy machine).

Reduced so that a trial takes seconds on a CPU, which the printed header repeats: the configs'
own pipelines, optimiser, schedule, hooks, dataloader workers (the video one persistent) and
``max_keep_ckpts=1``, but a 4-block MViTv2 of width 8 (drop path 0.1, so the random generators
matter), 2 classes, a few epochs and small generated data (16 train images of 28x28 per class,
4 train clips of 16 frames of 32x64 per class, 2 val/test samples per class).

Imported by a training process (the derived configs list it in ``custom_imports``), this file
registers ``FaultInjectionHook``, which kills that process as the environment asks
(``MMVIT_FI_KILL_ITER``: after that training iteration; ``MMVIT_FI_KILL_SAVE`` and
``MMVIT_FI_KILL_FRACTION``: during that checkpoint save, after that fraction of the bytes).
"""
import argparse
import os
import os.path as osp
import platform
import random
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import cv2  # before anything imports decord (libz clash breaks cv2's PNG reading)
import numpy as np
import torch
from mmengine.hooks import Hook

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(REPO, 'tools')
CONFIGS = {'image': osp.join(REPO, 'configs', 'quickstart_image.py'),
           'video': osp.join(REPO, 'configs', 'quickstart_video.py')}
CLASSES = ('dark', 'light')
TINY_ARCH = dict(embed_dim=8, depth=4, num_heads=1, stage_starts=(1, 2, 3), drop_path_rate=0.1)
KILL_ITER_ENV = 'MMVIT_FI_KILL_ITER'
KILL_SAVE_ENV = 'MMVIT_FI_KILL_SAVE'
KILL_FRACTION_ENV = 'MMVIT_FI_KILL_FRACTION'
SAVE_LINE = '[fault_injection] checkpoint file'


# ----------------------------------------------------------------------------------------------
# In the training process: the hook that kills it.
# ----------------------------------------------------------------------------------------------

class FaultInjectionHook(Hook):
    """SIGKILL this process after a training iteration or in the middle of a checkpoint save,
    as the environment variables say; does nothing when they are unset."""
    priority = 'LOWEST'

    def before_run(self, runner) -> None:
        self.kill_iter = int(os.environ.get(KILL_ITER_ENV, 0))
        _watch_saves(int(os.environ.get(KILL_SAVE_ENV, 0)),
                     float(os.environ.get(KILL_FRACTION_ENV, 0.5)))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.kill_iter and runner.iter + 1 == self.kill_iter:
            os.kill(os.getpid(), signal.SIGKILL)


def _watch_saves(kill_at: int, fraction: float) -> None:
    """Print a line for every checkpoint file written (``SAVE_LINE``); make the
    ``kill_at``-th one (0: none) end after ``fraction`` of its bytes and SIGKILL the process."""
    from mmengine.runner import runner as runner_module
    real = runner_module.save_checkpoint
    calls = []

    def save(checkpoint, filename, *args, **kwargs):
        calls.append(filename)
        print(f'{SAVE_LINE} #{len(calls)}: {osp.basename(str(filename))}', flush=True)
        real(checkpoint, filename, *args, **kwargs)
        if len(calls) == kill_at:
            with open(filename, 'rb') as f:
                data = f.read()
            with open(filename, 'wb') as f:
                f.write(data[:int(len(data) * fraction)])
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    runner_module.save_checkpoint = save


def _register_hook() -> None:
    from mmaction.registry import HOOKS as ACTION_HOOKS
    from mmpretrain.registry import HOOKS as PRETRAIN_HOOKS
    for registry in (PRETRAIN_HOOKS, ACTION_HOOKS):
        # force: the tool may be imported twice in one process (as a script and a module)
        registry.register_module(module=FaultInjectionHook, force=True)


_register_hook()


# ----------------------------------------------------------------------------------------------
# Data and configs.
# ----------------------------------------------------------------------------------------------

def make_image_data(root: str, train: int = 16, other: int = 2, seed: int = 0) -> str:
    """28x28 grey PNGs in ``root/{train,val,test}/{dark,light}/``: dark or light noise."""
    rng = np.random.default_rng(seed)
    for split, count in (('train', train), ('val', other), ('test', other)):
        for label, name in enumerate(CLASSES):
            folder = osp.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                low = 0 if label == 0 else 140
                image = rng.integers(low, low + 110, size=(28, 28), dtype=np.uint8)
                cv2.imwrite(osp.join(folder, f'{i:03d}.png'), image)
    return root


def write_clip(path: str, frames: np.ndarray, fps: int = 10) -> str:
    """Frames (T, H, W, 3) uint8 as an mp4 (mp4v)."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps, (width, height))
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path


def make_video_data(root: str, train: int = 4, other: int = 2, seed: int = 0,
                    num_frames: int = 16, size: Tuple[int, int] = (32, 64)) -> str:
    """Clips of the video quickstart's size in ``root/{train,val,test}/{left,right}/``: a bright
    square drifting in the left or the right half."""
    rng = np.random.default_rng(seed)
    height, width = size
    for split, count in (('train', train), ('val', other), ('test', other)):
        for label, name in enumerate(('left', 'right')):
            for i in range(count):
                frames = rng.integers(0, 60, size=(num_frames, height, width, 3), dtype=np.uint8)
                y = int(rng.integers(0, height - 8))
                for t in range(num_frames):
                    x = label * (width // 2) + (t * 2) % (width // 2 - 8)
                    frames[t, y:y + 8, x:x + 8] = 230
                write_clip(osp.join(root, split, name, f'{i:03d}.mp4'), frames)
    return root


def write_config(kind: str, data_root: str, folder: str, epochs: int = 3,
                 check_videos: bool = True) -> str:
    """A config derived from the ``kind`` quickstart: tiny arch, 2 classes, ``epochs`` epochs,
    small batches, ``max_keep_ckpts=1`` and this file's hook (``check_videos=False`` skips the
    video datasets' up-front probe). Returns its path."""
    base = CONFIGS[kind]
    common = f'''_base_ = [{base!r}]
custom_imports = dict(imports=['mmvit_plugin', 'fault_injection'], allow_failed_imports=False)
custom_hooks = [dict(type='FaultInjectionHook')]
max_epochs = {epochs}
train_cfg = dict(max_epochs=max_epochs)
'''
    if kind == 'image':
        arch = dict(TINY_ARCH, img_size=(32, 32))
        text = common + f'''
model = dict(backbone=dict(arch={arch!r}),
             head=dict(in_channels=64, num_classes=2, topk=(1,)))
train_dataloader = dict(batch_size=4, dataset=dict(data_root={data_root!r}))
val_dataloader = dict(batch_size=4, dataset=dict(data_root={data_root!r}))
test_dataloader = dict(batch_size=4, dataset=dict(data_root={data_root!r}))
val_evaluator = dict(type='Accuracy', topk=(1,))
test_evaluator = val_evaluator
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(max_keep_ckpts=1))
'''
    elif kind == 'video':
        arch = dict(TINY_ARCH, video=True, img_size=(4, 32, 64))
        dataset = dict(data_root=data_root, check_workers=2, check_videos=check_videos)
        text = common + f'''
model = dict(backbone=dict(arch={arch!r}), cls_head=dict(in_channels=64, num_classes=2))
train_dataloader = dict(batch_size=2, dataset={dataset!r})
val_dataloader = dict(batch_size=4, dataset={dataset!r})
test_dataloader = dict(batch_size=4, dataset={dataset!r})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(max_keep_ckpts=1))
'''
    else:
        raise ValueError(f'kind must be one of {sorted(CONFIGS)}, got {kind!r}')
    os.makedirs(folder, exist_ok=True)
    path = osp.join(folder, f'fault_{kind}.py')
    with open(path, 'w') as f:
        f.write(text)
    return path


# ----------------------------------------------------------------------------------------------
# Runs and checkpoints.
# ----------------------------------------------------------------------------------------------

@dataclass
class RunResult:
    returncode: int
    seconds: float
    output: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL


def train_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    for key in (KILL_ITER_ENV, KILL_SAVE_ENV, KILL_FRACTION_ENV):
        env.pop(key, None)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (TOOLS, REPO, env.get('PYTHONPATH')) if p)
    env.setdefault('OMP_NUM_THREADS', '1')
    env.update(extra or {})
    return env


class ForkedRun:
    """A training run in a forked copy of this process (the subset of ``Popen`` used here)."""

    def __init__(self, pid: int, log) -> None:
        self.pid, self.log_file, self.returncode = pid, log, None
        self.started = time.time()

    def poll(self) -> Optional[int]:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() >= deadline:
                raise subprocess.TimeoutExpired('forked training', timeout)
            time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _run_train_tool_here(args: List[str], env: Dict[str, str], log) -> None:
    """In a forked child: become ``python tools/train.py ARGS`` and exit with its status."""
    code = 1
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        # new streams on the descriptors (a test runner may have replaced sys.stdout)
        sys.stdout = open(1, 'w', buffering=1, closefd=False)
        sys.stderr = open(2, 'w', buffering=1, closefd=False)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(REPO)
        for path in (REPO, TOOLS):
            if path not in sys.path:
                sys.path.insert(0, path)
        torch.set_num_threads(int(env.get('OMP_NUM_THREADS', 1)))
        sys.argv = [osp.join(TOOLS, 'train.py'), *args]
        runpy.run_path(sys.argv[0], run_name='__main__')
        code = 0
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
    except BaseException:  # noqa: BLE001  (the child reports everything, then exits)
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def start_training(config: str, work_dir: str, resume: bool = False,
                   env: Optional[Dict[str, str]] = None, fork: bool = False):
    """``tools/train.py CONFIG --work-dir DIR [--resume]`` in a new process: a fresh interpreter,
    or (``fork``) a forked copy of this one, which skips the interpreter start-up and imports.
    Output goes to a temporary file, read by ``finish``."""
    args = [config, '--work-dir', work_dir] + (['--resume'] if resume else [])
    os.makedirs(osp.dirname(osp.abspath(work_dir)), exist_ok=True)
    log = tempfile.TemporaryFile(mode='w+')
    if fork:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_train_tool_here(args, train_env(env), log)
        return ForkedRun(pid, log)
    proc = subprocess.Popen([sys.executable, osp.join(TOOLS, 'train.py'), *args], cwd=REPO,
                            env=train_env(env), stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_file = log
    proc.started = time.time()
    return proc


def finish(proc, kill_after: Optional[float] = None,
           timeout: float = 600.0) -> RunResult:
    """Wait for a run (SIGKILL it ``kill_after`` seconds after its start, if still running)."""
    if kill_after is not None:
        try:
            proc.wait(timeout=max(0.0, proc.started + kill_after - time.time()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    seconds = time.time() - proc.started
    proc.log_file.seek(0)
    output = proc.log_file.read()
    proc.log_file.close()
    return RunResult(proc.returncode, seconds, output)


def train(config: str, work_dir: str, resume: bool = False,
          env: Optional[Dict[str, str]] = None, kill_after: Optional[float] = None,
          timeout: float = 600.0, fork: bool = False) -> RunResult:
    return finish(start_training(config, work_dir, resume, env, fork), kill_after, timeout)


def resumed_from(output: str) -> str:
    """'epoch N' (mmengine's 'resumed epoch: N' log line) or 'scratch'."""
    match = re.search(r'resumed epoch: (\d+)', output)
    return f'epoch {match.group(1)}' if match else 'scratch'


def load_checkpoint(path: str) -> dict:
    import mmvit_plugin  # noqa: F401,PLC0415  (allows mmengine's globals under weights_only)
    return torch.load(path, map_location='cpu', weights_only=True)


def _tensors(value, prefix: str = '') -> Dict[str, object]:
    """Every tensor and number in nested dicts/lists, keyed by its path."""
    found: Dict[str, object] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            found.update(_tensors(item, f'{prefix}{key}.'))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found.update(_tensors(item, f'{prefix}{index}.'))
    elif isinstance(value, (torch.Tensor, int, float, bool)):
        found[prefix.rstrip('.')] = value
    return found


@dataclass
class Comparison:
    tensors: int = 0
    values: int = 0
    different: List[str] = field(default_factory=list)
    max_abs_diff: float = 0.0

    @property
    def identical(self) -> bool:
        return not self.different


def compare_checkpoints(expected: dict, got: dict) -> Comparison:
    """Compare weights, optimizer state and scheduler state: tensors with ``torch.equal``,
    numbers with ``==`` (the message hub's timings and the meta's clock differ by nature)."""
    result = Comparison()
    for section in ('state_dict', 'optimizer', 'param_schedulers'):
        want = _tensors(expected.get(section), f'{section}.')
        have = _tensors(got.get(section), f'{section}.')
        for key in sorted(set(want) | set(have)):
            if key not in want or key not in have:
                result.different.append(f'{key} (missing on one side)')
                continue
            a, b = want[key], have[key]
            if isinstance(a, torch.Tensor):
                result.tensors += 1
                same = isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
                if not same and isinstance(b, torch.Tensor) and a.shape == b.shape:
                    diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
                    result.max_abs_diff = max(result.max_abs_diff, diff)
            else:
                result.values += 1
                same = a == b
            if not same:
                result.different.append(key)
    for key in ('epoch', 'iter'):
        if expected.get('meta', {}).get(key) != got.get('meta', {}).get(key):
            result.different.append(f'meta.{key}')
    return result


def final_checkpoint(work_dir: str, epochs: int) -> str:
    return osp.join(work_dir, f'epoch_{epochs}.pth')


# ----------------------------------------------------------------------------------------------
# Trials.
# ----------------------------------------------------------------------------------------------

@dataclass
class Trial:
    kind: str
    mode: str
    detail: str
    killed: bool = False
    resumed: bool = False
    resumed_from: str = ''
    identical: bool = False
    comparison: Optional[Comparison] = None
    error: str = ''


def run_trial(kind: str, config: str, work_dir: str, reference: dict, epochs: int,
              mode: str, rng: random.Random, reference_seconds: float,
              saves: int, fork: bool = False) -> Trial:
    """One kill (``mode`` 'save' or 'time'), one resume, one comparison."""
    if mode == 'save':
        call, fraction = rng.randint(1, max(1, saves)), rng.random()
        env = {KILL_SAVE_ENV: str(call), KILL_FRACTION_ENV: f'{fraction:.3f}'}
        detail = f'checkpoint file #{call} at {100 * fraction:.0f}% written'
        kill_after = None
    else:
        kill_after = rng.uniform(0.15, 1.0) * reference_seconds
        env, detail = {}, f'after {kill_after:.1f} s'
    trial = Trial(kind, mode, detail)
    first = train(config, work_dir, env=env, kill_after=kill_after, fork=fork)
    trial.killed = first.killed
    if mode == 'save' and first.killed and SAVE_LINE in first.output:
        trial.detail += ', ' + first.output.rsplit(SAVE_LINE, 1)[1].split(': ', 1)[-1].split(
            '\n', 1)[0]
    if not first.killed and first.returncode != 0:
        trial.error = f'the run to kill failed (rc {first.returncode}): {first.output[-800:]}'
        return trial
    second = train(config, work_dir, resume=True, fork=fork)
    trial.resumed_from = resumed_from(second.output)
    final = final_checkpoint(work_dir, epochs)
    if second.returncode != 0 or not osp.isfile(final):
        trial.error = f'resume failed (rc {second.returncode}): {second.output[-800:]}'
        return trial
    trial.resumed = True
    trial.comparison = compare_checkpoints(reference, load_checkpoint(final))
    trial.identical = trial.comparison.identical
    return trial


def count_saves(output: str) -> int:
    """Checkpoint files a run wrote (``FaultInjectionHook`` prints a line for each)."""
    return output.count(SAVE_LINE)


def run_kind(kind: str, trials: int, root: str, epochs: int, rng: random.Random,
             log=print, fork: bool = False) -> List[Trial]:
    data = osp.join(root, kind, 'data')
    (make_image_data if kind == 'image' else make_video_data)(data)
    config = write_config(kind, data, osp.join(root, kind), epochs)
    reference_run = train(config, osp.join(root, kind, 'reference'), fork=fork)
    if reference_run.returncode != 0:
        raise RuntimeError(f'{kind} reference run failed (rc {reference_run.returncode}):\n'
                           f'{reference_run.output[-3000:]}')
    reference = load_checkpoint(final_checkpoint(osp.join(root, kind, 'reference'), epochs))
    saves = count_saves(reference_run.output)
    log(f'{kind}: reference run {reference_run.seconds:.1f} s, {saves} checkpoint saves')
    results = []
    for index in range(trials):
        mode = 'save' if index % 2 == 0 else 'time'
        work_dir = osp.join(root, kind, f'trial_{index}')
        trial = run_trial(kind, config, work_dir, reference, epochs, mode, rng,
                          reference_run.seconds, saves, fork)
        results.append(trial)
        log(describe_trial(index, trial))
        shutil.rmtree(work_dir, ignore_errors=True)
    return results


def describe_trial(index: int, trial: Trial) -> str:
    kill = 'killed' if trial.killed else 'finished before the kill'
    text = f'  {trial.kind} trial {index}: {trial.mode} kill ({trial.detail}): {kill}'
    if trial.error:
        return f'{text}; {trial.error}'
    c = trial.comparison
    same = 'bit-identical' if trial.identical else (
        f'DIFFERENT: {len(c.different)} of {c.tensors + c.values} differ '
        f'(max abs diff {c.max_abs_diff:.3g}; first {c.different[:3]})')
    return (f'{text}; resumed from {trial.resumed_from}; '
            f'{c.tensors} tensors + {c.values} numbers compared: {same}')


def summary(kind: str, trials: List[Trial]) -> str:
    killed = sum(t.killed for t in trials)
    during_save = sum(t.killed and t.mode == 'save' for t in trials)
    resumed = sum(t.resumed for t in trials)
    identical = sum(t.identical for t in trials)
    return (f'{kind}: {len(trials)} trials, {killed} killed ({during_save} during a checkpoint '
            f'save), {resumed} resumed, {identical} bit-identical to the uninterrupted run')


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f
                       if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, 'getloadavg') else ('?',) * 3
    return (f'CPU {cpu}, {os.cpu_count()} cores; torch {torch.__version__}; '
            f'load average {" ".join(f"{x:.2f}" for x in load)}')


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--image-trials', type=int, default=5)
    parser.add_argument('--video-trials', type=int, default=5)
    parser.add_argument('--epochs', type=int, default=3)
    parser.add_argument('--seed', type=int, default=0, help='seed of the kill moments')
    parser.add_argument('--fork', action='store_true', help='start each run by forking this '
                        'process instead of a new interpreter (Linux; much faster)')
    parser.add_argument('--work-dir', help='folder for data and runs (default: a temporary '
                        'folder, removed at the end)')
    parser.add_argument('--keep', action='store_true', help='keep the work dir')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    root = args.work_dir or tempfile.mkdtemp(prefix='mmvit_fault_')
    rng = random.Random(args.seed)
    print('Reduced quickstarts: 4-block MViTv2 width 8, 2 classes, '
          f'{args.epochs} epochs, 32 train images / 8 train clips, max_keep_ckpts=1; runs '
          f'{"forked" if args.fork else "in new interpreters"}', flush=True)
    print(machine_line(), flush=True)
    start = time.time()
    results: Dict[str, List[Trial]] = {}
    try:
        for kind, trials in (('image', args.image_trials), ('video', args.video_trials)):
            if trials > 0:
                results[kind] = run_kind(kind, trials, root, args.epochs, rng,
                                         log=lambda text: print(text, flush=True),
                                         fork=args.fork)
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(root, ignore_errors=True)
    for kind, trials in results.items():
        print(summary(kind, trials))
    print(f'{time.time() - start:.0f} s; {machine_line()}')
    return 0 if all(t.identical for trials in results.values() for t in trials) else 1


if __name__ == '__main__':
    sys.exit(main())
