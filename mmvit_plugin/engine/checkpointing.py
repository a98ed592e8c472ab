"""Crash-safe checkpoint saving: ``AtomicCheckpointHook`` (mmengine's CheckpointHook, atomically).

mmengine's ``CheckpointHook`` deletes the oldest checkpoint *before* writing the new one and
writes the file and ``last_checkpoint`` in place, so a kill during saving with
``max_keep_ckpts=1`` leaves no complete checkpoint, or a truncated ``epoch_N.pth`` that looks
real. Here every file is written to a hidden temporary name in the same folder, flushed to disk
(fsync), then renamed over its final name; ``last_checkpoint`` is replaced the same way only
after the checkpoint is complete; old checkpoints are deleted last. At any instant the work dir
holds a complete checkpoint that ``last_checkpoint`` names (or, before the first save, none).
Remote back ends (paths with ``://``) keep mmengine's behaviour.
"""
import os
import os.path as osp
from contextlib import contextmanager
from typing import Callable, Iterator, List

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook

from ..registry import register_hook

PARTIAL_SUFFIX = '.partial'


def partial_name(filename: str) -> str:
    """The hidden temporary name a file is written under before it is renamed into place."""
    return f'.{filename}{PARTIAL_SUFFIX}'


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(partial: str, final: str) -> None:
    """fsync ``partial``, rename it to ``final`` (atomic on one file system), fsync the folder."""
    with open(partial, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(partial, final)
    _fsync_dir(osp.dirname(osp.abspath(final)))


def write_text_atomically(path: str, text: str) -> None:
    partial = osp.join(osp.dirname(osp.abspath(path)), partial_name(osp.basename(path)))
    with open(partial, 'w') as f:
        f.write(text)
    publish(partial, path)


def save_atomically(save: Callable, out_dir: str, filename: str, *args, **kwargs) -> None:
    """``save(out_dir, filename, ...)`` (a runner's ``save_checkpoint``), the file appearing
    under its name only when complete. Every rank calls it (the runner gathers state); rank 0
    alone renames."""
    if '://' in str(out_dir):
        save(out_dir, filename, *args, **kwargs)
        return
    save(out_dir, partial_name(filename), *args, **kwargs)
    if is_main_process():
        publish(osp.join(out_dir, partial_name(filename)), osp.join(out_dir, filename))


@register_hook
class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) whose saves survive a kill at any instant.

    Use as ``default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', ...))`` (the
    runtime bases of this project do). Leftover temporary files of a killed save are removed
    when the next run starts.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and '://' not in str(self.out_dir) and osp.isdir(self.out_dir):
            for name in os.listdir(self.out_dir):
                if name.startswith('.') and name.endswith(PARTIAL_SUFFIX):
                    os.remove(osp.join(self.out_dir, name))
                    runner.logger.warning(f'removed {name}, the unfinished file of a save '
                                          'that was interrupted')

    @contextmanager
    def _deferred_removals(self) -> Iterator[List[Callable[[], None]]]:
        """Collect the back end's file removals and run them after the block succeeds."""
        pending: List[Callable[[], None]] = []
        backend = self.file_backend
        original_remove, original_rmtree = backend.remove, backend.rmtree
        backend.remove = lambda path: pending.append(lambda: original_remove(path))
        backend.rmtree = lambda path: pending.append(lambda: original_rmtree(path))
        try:
            yield pending
        finally:
            backend.remove, backend.rmtree = original_remove, original_rmtree
        for remove in pending:
            remove()

    def _save_checkpoint_with_step(self, runner, step, meta):
        # mmengine's order, except: removals wait until the new file and last_checkpoint are
        # in place, and both are written atomically.
        with self._deferred_removals(), self._atomic_runner_saves(runner):
            if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                                and self.keep_ckpt_ids[-1] == step):
                if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                    old = self.keep_ckpt_ids.popleft()
                    if is_main_process():
                        old_path = self.file_backend.join_path(
                            self.out_dir, self.filename_tmpl.format(old))
                        if self.file_backend.isfile(old_path):
                            self.file_backend.remove(old_path)
                        elif self.file_backend.isdir(old_path):
                            self.file_backend.rmtree(old_path)
                self.keep_ckpt_ids.append(step)
                runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

            filename = self.filename_tmpl.format(step)
            self.last_ckpt = self.file_backend.join_path(self.out_dir, filename)
            runner.message_hub.update_info('last_ckpt', self.last_ckpt)
            runner.save_checkpoint(
                self.out_dir, filename, self.file_client_args,
                save_optimizer=self.save_optimizer,
                save_param_scheduler=self.save_param_scheduler, meta=meta,
                by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)
            if is_main_process():
                write_text_atomically(osp.join(runner.work_dir, 'last_checkpoint'),
                                      str(self.last_ckpt))

    def _save_best_checkpoint(self, runner, metrics) -> None:
        # The previous best file is removed only after the new best one is complete.
        with self._deferred_removals(), self._atomic_runner_saves(runner):
            super()._save_best_checkpoint(runner, metrics)

    @contextmanager
    def _atomic_runner_saves(self, runner) -> Iterator[None]:
        """Route ``runner.save_checkpoint`` through ``save_atomically`` for a block."""
        if getattr(runner, '_mmvit_atomic_save', False):  # nested (best -> step save)
            yield
            return
        original = runner.save_checkpoint

        def atomic(out_dir, filename, *args, **kwargs):
            save_atomically(original, out_dir, filename, *args, **kwargs)

        runner.save_checkpoint = atomic
        runner._mmvit_atomic_save = True
        try:
            yield
        finally:
            del runner.save_checkpoint  # the class method again
            runner._mmvit_atomic_save = False
