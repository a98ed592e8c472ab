"""Kernel calibration: the decision rule on fake timings, the per-machine cache, when it may
measure, and that every calibrated choice still matches the standard ops."""
import json

import pytest
import torch
import torch.nn.functional as F

from mmvit_plugin import ops
from mmvit_plugin.ops import calibrate, onednn

needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason='this PyTorch build has no oneDNN ops')


def test_choose_keeps_the_default_unless_another_is_clearly_faster():
    assert calibrate.choose({'a': [1.0, 1.2], 'b': [0.97, 2.0]}, 'a') == 'a'  # within 5%
    assert calibrate.choose({'a': [1.0, 1.2], 'b': [0.90, 2.0]}, 'a') == 'b'
    assert calibrate.choose({'a': [3.0, 1.0], 'b': [1.5, 1.5]}, 'a') == 'a'  # best runs count
    assert calibrate.choose({'a': [1.0], 'b': [0.5], 'c': [0.4]}, 'a') == 'c'
    assert calibrate.choose({'a': [1.0], 'b': [0.9]}, 'a', margin=0.2) == 'a'
    with pytest.raises(ValueError, match="default 'z' was not timed"):
        calibrate.choose({'a': [1.0]}, 'z')


def test_buckets():
    assert [calibrate.bucket(n, 4096) for n in (1, 2, 3, 100, 4096, 25088)] == \
        [1, 2, 4, 128, 4096, 4096]
    with pytest.raises(ValueError, match='positive size'):
        calibrate.bucket(0, 8)
    assert calibrate.attention_items(8, 3136, 49) == 8
    # S 16x4 stage 1 (25088 queries x 392 keys): one item is already ~10M entries
    assert calibrate.attention_items(8, 25088, 392) == 1
    assert calibrate.attention_items(100, 10, 10) == 128


def test_mode_comes_from_the_setting_then_the_environment(monkeypatch):
    with ops.use_kernels(calibration=None):
        monkeypatch.delenv('MMVIT_CALIBRATE', raising=False)
        assert calibrate.calibration_mode() == 'on'
        monkeypatch.setenv('MMVIT_CALIBRATE', '0')
        assert calibrate.calibration_mode() == 'off'
        monkeypatch.setenv('MMVIT_CALIBRATE', 'Force')
        assert calibrate.calibration_mode() == 'force'
        with ops.use_kernels(calibration='on'):
            assert calibrate.calibration_mode() == 'on'
        monkeypatch.setenv('MMVIT_CALIBRATE', 'sometimes')
        with pytest.raises(ValueError, match="MMVIT_CALIBRATE.*'sometimes'"):
            calibrate.calibration_mode()
    with pytest.raises(ValueError, match='calibration must be None'):
        with ops.use_kernels(calibration='always'):
            pass


def test_cache_dir_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv('MMVIT_CACHE_DIR', str(tmp_path))
    assert calibrate.cache_path() == tmp_path / 'kernel_choices.json'
    monkeypatch.delenv('MMVIT_CACHE_DIR')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert calibrate.cache_path() == tmp_path / 'home' / '.cache' / 'mmvit' / 'kernel_choices.json'


class Counting:
    """Candidates that count how often they were built (= measured)."""

    def __init__(self, fast):
        self.fast, self.builds = fast, 0

    def __call__(self):
        self.builds += 1
        return {'slow': lambda: None, 'fast': lambda: None}


def time_as_if_fastest(monkeypatch, *quick: str) -> None:
    """time_candidates returns 1 ms for the ``quick`` candidates and 3 ms for the others."""
    def fake(candidates, repeats=calibrate.REPEATS):
        return {name: [1e-3 if name in quick else 3e-3] * repeats for name in candidates}
    monkeypatch.setattr(calibrate, 'time_candidates', fake)


@pytest.fixture
def fake_timer(monkeypatch):
    """time_candidates returns 1 ms for 'fast'/'torch'/'batched' and 3 ms for the others."""
    time_as_if_fastest(monkeypatch, 'fast', 'torch', 'batched')


def test_decide_measures_once_per_machine_and_key_and_caches_in_a_file(fake_timer):
    make = Counting('fast')
    with ops.use_kernels(calibration='on'):
        assert calibrate.decide(('k', 1), 'slow', make) == 'fast'
        assert calibrate.decide(('k', 1), 'slow', make) == 'fast'
        assert make.builds == 1
        data = json.loads(calibrate.cache_path().read_text())
        entry = data[calibrate.machine_id()]['k:1']
        assert entry['choice'] == 'fast' and entry['default'] == 'slow'
        assert entry['best_ms'] == {'slow': 3.0, 'fast': 1.0}
        calibrate.forget()  # a new process: the file answers
        assert calibrate.decide(('k', 1), 'slow', make) == 'fast' and make.builds == 1
        assert calibrate.decide(('k', 2), 'slow', make) == 'fast' and make.builds == 2
    with ops.use_kernels(calibration='force'):  # measured again once, then remembered
        calibrate.decide(('k', 1), 'slow', make)
        calibrate.decide(('k', 1), 'slow', make)
        assert make.builds == 3
    with ops.use_kernels(calibration='off'):
        assert calibrate.decide(('k', 3), 'slow', make) == 'slow' and make.builds == 3


def test_other_machines_entries_are_not_used(fake_timer):
    path = calibrate.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({'Other CPU | torch 0 | 64 threads': {'k:1': {'choice': 'x'}}}))
    make = Counting('fast')
    with ops.use_kernels(calibration='on'):
        assert calibrate.decide(('k', 1), 'slow', make) == 'fast' and make.builds == 1
    data = json.loads(path.read_text())
    assert data['Other CPU | torch 0 | 64 threads'] == {'k:1': {'choice': 'x'}}  # kept


def test_a_broken_cache_file_is_measured_over(fake_timer):
    path = calibrate.cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{not json')
    with ops.use_kernels(calibration='on'):
        assert calibrate.decide(('k', 1), 'slow', Counting('fast')) == 'fast'
    assert json.loads(path.read_text())[calibrate.machine_id()]['k:1']['choice'] == 'fast'


def test_nothing_is_measured_while_ops_are_recorded(fake_timer):
    from torch.utils.flop_counter import FlopCounterMode
    make = Counting('fast')
    seen = []

    def probe(x):
        seen.append(calibrate.decide(('k', 1), 'slow', make))
        return x + 1
    with ops.use_kernels(calibration='on'):
        torch.jit.trace(probe, torch.zeros(2), check_trace=False)
        with FlopCounterMode(display=False):
            seen.append(calibrate.decide(('k', 1), 'slow', make))
        with torch.profiler.profile():
            seen.append(calibrate.decide(('k', 1), 'slow', make))
    assert seen == ['slow'] * 3 and make.builds == 0
    assert not calibrate.cache_path().exists()


@needs_onednn
@pytest.mark.parametrize('faster', ['torch', 'onednn'])
def test_linear_and_mlp_follow_the_calibrated_choice_and_match(monkeypatch, faster):
    time_as_if_fastest(monkeypatch, faster)
    gen = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(s, generator=gen).requires_grad_() for s in ((3, 9, 8), (6, 8), (6,)))
    w2, b2 = (torch.randn(s, generator=gen).requires_grad_() for s in ((8, 6), (8,)))
    with ops.use_kernels(calibration='on'):
        out = ops.linear(x, w, b)
        hidden = ops.mlp(x, w, b, w2, b2)
    assert out.grad_fn.name().endswith('_LinearBackward') == (faster == 'onednn')
    assert hidden.grad_fn.name().endswith('_MlpBackward') == (faster == 'onednn')
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    want = F.linear(F.gelu(F.linear(x, w, b)), w2, b2)
    torch.testing.assert_close(hidden, want, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(hidden.sum(), [x, w, w2])
    for g, e in zip(got, torch.autograd.grad(want.sum(), [x, w, w2])):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    keys = calibrate.cached_choices()
    assert {k.split(':')[0] for k in keys} == {'linear', 'mlp'}
    assert all(entry['choice'] == faster for entry in keys.values())
    with ops.use_kernels(calibration='on', onednn=True):  # forcing wins over the cache
        assert ops.linear(x, w, b).grad_fn.name().endswith('_LinearBackward')


@needs_onednn
@pytest.mark.parametrize('faster', ['per_item', 'batched'])
def test_attention_follows_the_calibrated_choice_and_matches(monkeypatch, faster):
    time_as_if_fastest(monkeypatch, faster)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(s, generator=gen).requires_grad_() for s in
               ((4, 10, 6), (4, 7, 6), (4, 7, 5)))
    with ops.use_kernels(calibration='on'):
        assert onednn.per_item_attention(q, k, v, 6, None, True) == (faster == 'per_item')
        out = ops.attention(q, k, v, 0.5, None, None, heads=2, kernel='onednn')
    want = torch.softmax(0.5 * q @ k.transpose(1, 2), -1) @ v
    want = want.view(2, 2, 10, 5).transpose(1, 2).reshape(2, 10, 10)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for g, e in zip(torch.autograd.grad(out.sum(), [q, k, v]),
                    torch.autograd.grad(want.sum(), [q, k, v])):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    (key, entry), = calibrate.cached_choices().items()
    assert key.startswith('attention:4:10:7:6:5:False:train') and entry['choice'] == faster
    with ops.use_kernels(calibration='on', min_attention_entries=0):  # the threshold wins
        assert onednn.per_item_attention(q, k, v, 6, None, True)


@needs_onednn
def test_a_real_calibration_leaves_the_global_rng_and_grad_mode_alone():
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 16, generator=gen), torch.randn(12, 16, generator=gen)
    state = torch.get_rng_state()
    with ops.use_kernels(calibration='on'), torch.no_grad():
        out = ops.linear(x, w, None)
        assert not torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(out, F.linear(x, w), rtol=1e-5, atol=1e-5)
    (key, entry), = calibrate.cached_choices().items()
    assert key == 'linear:8:16:12:False:infer'
    assert entry['choice'] in ('onednn', 'torch') and set(entry['best_ms']) == {'onednn', 'torch'}


def test_cheap_candidates_get_more_rounds_within_the_budget():
    calls = {'a': 0, 'b': 0}

    def count(name):
        def run():
            calls[name] += 1
        return run
    times = calibrate.time_candidates({'a': count('a'), 'b': count('b')}, repeats=3,
                                      budget_s=10.0, max_repeats=7)
    assert [len(t) for t in times.values()] == [7, 7] and calls == {'a': 8, 'b': 8}
    times = calibrate.time_candidates({'a': count('a')}, repeats=3, budget_s=0.0)
    assert len(times['a']) == 3


def test_a_cached_choice_is_kept_whatever_the_load(fake_timer, monkeypatch):
    """A resumed run must pick the kernels its first part picked: no silent re-measuring."""
    make = Counting('fast')
    monkeypatch.setattr(calibrate.os, 'getloadavg', lambda: (14.0, 14.0, 14.0))
    with ops.use_kernels(calibration='on'):
        first = calibrate.decide(('k', 1), 'slow', make)
        monkeypatch.setattr(calibrate.os, 'getloadavg', lambda: (0.5, 0.5, 0.5))
        calibrate.forget()
        assert calibrate.decide(('k', 1), 'slow', make) == first
        assert make.builds == 1
    with ops.use_kernels(calibration='force'):
        calibrate.decide(('k', 1), 'slow', make)
        assert make.builds == 2
