"""Epoch-based parameter schedules fitted to the number of iterations an epoch really has.

mmengine converts a ``convert_to_iter_based`` scheduler by ``int(epochs * iterations_per_epoch)``:
on a small dataset a warm-up of half an epoch becomes 0 iterations (mmengine then stops with
``end should be larger than begin``) or 1 iteration (``LinearLR`` then never leaves its start
factor, so the whole run trains at 1% of the learning rate). ``fit_schedulers`` does the same
conversion (identical results whenever every phase keeps at least 2 iterations) and then
stretches phases that came out too short, or refuses with a message naming the sizes.
"""
import copy
from typing import Dict, List, Optional, Sequence

INF = float('inf')
# Keys (besides begin/end) that the mmengine schedulers take in epochs when by_epoch=True.
_EPOCH_VALUED = ('T_max', 'step_size')


class ScheduleDoesNotFitError(ValueError):
    """A schedule cannot be laid out on the iterations the training run has."""


def _iters(epochs: float, epoch_length: int) -> float:
    return epochs if epochs == INF else int(epochs * epoch_length)


def fit_schedulers(schedulers: Sequence[dict], epoch_length: int, max_epochs: int,
                   describe_data: str = '') -> List[dict]:
    """Iteration-based copies of the ``convert_to_iter_based`` entries of ``schedulers``.

    Every phase lasts at least one iteration, and a phase that ramps a value (``LinearLR``,
    any ``Linear*``: it reaches its end factor on its last step) at least two. A phase that
    is stretched pushes the phases starting where it ended. A warm-up that cannot finish
    before training ends is refused; a later phase the run never reaches is harmless (as with
    mmengine). Other entries are returned unchanged.

    Args:
        schedulers: mmengine scheduler configs (dicts).
        epoch_length: iterations per epoch (``len(train_dataloader)``).
        max_epochs: epochs of the run.
        describe_data: words naming the dataset size and batch size, for the error message.
    """
    total = max_epochs * epoch_length
    out: List[dict] = []
    # begin (in epochs) -> begin (in iterations) after stretching, shared by chained phases
    moved: Dict[float, int] = {}
    for cfg in schedulers:
        cfg = copy.deepcopy(dict(cfg))
        if not (cfg.get('convert_to_iter_based') and cfg.get('by_epoch', True)):
            out.append(cfg)
            continue
        begin_ep = cfg.get('begin', 0)
        end_ep = cfg.get('end', max_epochs)
        begin = moved.get(begin_ep, _iters(begin_ep, epoch_length))
        end = _iters(end_ep, epoch_length)
        minimum = 2 if 'Linear' in str(cfg.get('type', '')) else 1
        stretched = end != INF and end - begin < minimum
        if stretched:
            end = begin + minimum
            moved[end_ep] = end
        if stretched and minimum == 2 and begin < total and end > total:
            # a ramp stretched past the end: the run would stop before the value got there
            # (a long warm-up that a shortened run never finishes is the user's choice)
            raise ScheduleDoesNotFitError(
                f'the warm-up {cfg.get("type")} (epochs {begin_ep}-{end_ep}) needs at least '
                f'{minimum} iterations from iteration {begin} to reach its value, but training '
                f'has only {total} ({max_epochs} epoch(s) x {epoch_length} iteration(s); '
                f'{describe_data}). Use a smaller train_dataloader.batch_size, more epochs '
                '(max_epochs), more data, or a shorter warm-up.')
        for key in _EPOCH_VALUED:
            if cfg.get(key) is not None:
                # T_max equal to the phase's length follows the (possibly stretched) phase
                if key == 'T_max' and cfg[key] == end_ep - begin_ep and end != INF:
                    cfg[key] = end - begin
                else:
                    cfg[key] = max(1, int(cfg[key] * epoch_length))
        if cfg.get('milestones') is not None:
            cfg['milestones'] = [int(m * epoch_length) for m in cfg['milestones']]
        cfg.pop('convert_to_iter_based')
        cfg.update(by_epoch=False, begin=int(begin))
        if end != INF:
            cfg['end'] = int(end)
        out.append(cfg)
    return out


def describe_schedule(schedulers: Sequence[dict]) -> Optional[str]:
    """'LinearLR 0-2, CosineAnnealingLR 2-40 (iterations)' for a log line."""
    parts = [f'{s.get("type")} {s.get("begin", 0)}-{s.get("end", "end")}' for s in schedulers
             if not s.get('by_epoch', True)]
    return ', '.join(parts) + ' (iterations)' if parts else None
