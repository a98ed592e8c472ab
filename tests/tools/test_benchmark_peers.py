"""tools/benchmark.py with every peer (mmpretrain, timm, mmaction2, torchvision), compiled copies
(plumbing only: compiling takes minutes here), the fastest-peer ratios and the scaling table."""
import pytest
import torch
from helpers import load_tool

from mmvit_plugin import ops

benchmark = load_tool('tools/benchmark.py')


@pytest.fixture(autouse=True)
def _cached_kernel_choices_in_a_temporary_folder(tmp_path, monkeypatch, single_thread):
    monkeypatch.setenv('MMVIT_CACHE_DIR', str(tmp_path / 'cache'))
    ops.calibrate.forget()
    yield
    ops.calibrate.forget()


def test_speedup_over_the_fastest_peer_is_taken_per_figure():
    table = {'a': {'medians': 1.5, 'CPU time': 1.1}, 'b': {'medians': 1.2, 'CPU time': 1.4}}
    assert benchmark.against_fastest(table) == {'medians': ('b', 1.2), 'CPU time': ('a', 1.1)}
    ours = benchmark.Timing([1.0, 1.0], [1.0, 1.0])
    peer = benchmark.Timing([2.0, 3.0], [1.5, 1.5])
    assert benchmark.speedups(ours, peer) == {'medians': 2.5, 'best steps': 2.0,
                                              'back-to-back pairs': 2.5, 'CPU time': 1.5}


def test_ratio_lines_name_each_peer_and_the_fastest():
    timings = {'ours': benchmark.Timing([1.0], [1.0]), 'p1': benchmark.Timing([2.0], [2.0]),
               'p2 [compiled]': benchmark.Timing([1.5], [3.0])}
    text = '\n'.join(benchmark.ratio_lines(timings, ['ours']))
    assert 'p1' in text and 'p2 [compiled]' in text
    fastest = next(line for line in text.splitlines() if 'fastest peer per figure' in line)
    assert fastest.split()[-4:] == ['1.50x', '1.50x', '1.50x', '2.00x']


def test_peer_choice_per_arch():
    assert benchmark.available_peers('tiny') == ['mmpretrain', 'timm']
    assert benchmark.available_peers('small-16x4') == ['mmaction2', 'torchvision']
    assert benchmark.available_peers('base-32x3') == ['mmaction2']
    assert benchmark.parse_peers('timm', 'base') == ['timm']
    with pytest.raises(SystemExit, match='torchvision has no model for --arch tiny'):
        benchmark.parse_peers('torchvision', 'tiny')
    with pytest.raises(SystemExit, match="unknown peer 'keras'"):
        benchmark.parse_peers('keras', 'tiny')


@pytest.mark.parametrize('arch,size', [('tiny', '64'), ('small-16x4', '4x64x64')])
def test_every_peer_gets_our_weights_and_agrees(arch, size):
    pair = benchmark.build_pair(arch, size, 1, 0.0, 'auto', False)
    assert len(pair.peers) == 2
    x = torch.randn(pair.input_shape, generator=torch.Generator().manual_seed(0))
    models = benchmark.models_to_time(pair, 'none')
    diffs = benchmark.check_outputs(models, x)
    assert len(diffs) == 2 and max(diffs.values()) < 1e-4, diffs


def test_resized_parameters_are_replaced_then_loaded_strictly():
    module = torch.nn.Sequential(torch.nn.Linear(2, 3))
    state = {'0.weight': torch.ones(3, 5), '0.bias': torch.zeros(3)}
    benchmark.load_resized(module, state)
    assert module[0].weight.shape == (3, 5) and torch.equal(module[0].weight, torch.ones(3, 5))
    with pytest.raises(RuntimeError, match='Missing key'):
        benchmark.load_resized(module, {'0.weight': torch.ones(3, 5)})


def test_compiled_copies_are_timed_beside_the_eager_models(monkeypatch, capsys):
    compiled = []

    def fake_compile(module):  # the plumbing only: a real compile takes minutes here
        compiled.append(type(module).__name__)
        return module
    monkeypatch.setattr(benchmark, 'compile_model', fake_compile)
    code = benchmark.main(['--arch', 'tiny', '--input-size', '64', '--batch-size', '1',
                           '--iters', '1', '--warmup', '0', '--no-memory', '--threads', '1',
                           '--compile', 'both', '--modes', 'inference'])
    out = capsys.readouterr().out
    assert code == 0
    assert compiled == ['MViTv2', 'MViT', 'TimmBackbone']
    for name in ('ours [compiled]', 'mmpretrain MViT(tiny) [compiled]',
                 'timm mvitv2_tiny [compiled]'):
        assert f'  {name} ' in out
    assert out.count('fastest peer per figure') == 2  # for ours and ours [compiled]
    assert 'takes minutes on 2 CPU cores' in out
    assert 'kernel calibration: ' in out


def test_help_says_the_first_compile_takes_minutes(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--help'])
    assert 'minutes on 2 CPU cores' in capsys.readouterr().out


def test_scaling_grid_and_int_lists():
    assert benchmark.scaling_grid(False, [1, 8], [224], [16]) == [(1, (224, 224)),
                                                                  (8, (224, 224))]
    assert benchmark.scaling_grid(True, [1], [224], [8, 16]) == [(1, (8, 224, 224)),
                                                                 (1, (16, 224, 224))]
    assert benchmark.parse_int_list('1,8, 64', '--scale-batch') == [1, 8, 64]
    with pytest.raises(SystemExit, match="--scale-batch 'x'"):
        benchmark.parse_int_list('x', '--scale-batch')


def _row(mode, batch, size, ours, peer, ours_mb=None, peer_mb=None):
    mib = 2 ** 20
    return benchmark.ScalingRow(mode, batch, size, ours, 'p', peer,
                                None if ours_mb is None else ours_mb * mib, 'p',
                                None if peer_mb is None else peer_mb * mib)


def test_crossovers_along_batch_and_input_size():
    rows = [_row('train', 1, (224, 224), 1.0, 0.8), _row('train', 8, (224, 224), 1.0, 1.3),
            _row('train', 1, (448, 448), 1.0, 1.2)]
    found = benchmark.crossovers(rows)
    assert any('ours leads from batch b8 224x224' in line for line in found)
    assert any('ours leads from input b1 448x448' in line for line in found)
    assert benchmark.crossovers([_row('train', 1, (224, 224), 1.0, 2.0)]) == []


def test_memory_growth_says_whose_grows_faster():
    rows = [_row('train', 1, (224, 224), 1, 1, 100, 100), _row('train', 8, (224, 224), 1, 1,
                                                               800, 400)]
    (line,) = benchmark.memory_growth(rows)
    assert 'ours x8.0' in line and 'least peer x4.0' in line and 'grows faster than' in line
    rows[1] = _row('train', 8, (224, 224), 1, 1, 300, 400)
    assert 'grows slower than' in benchmark.memory_growth(rows)[0]
    rows[1] = _row('train', 8, (224, 224), 1, 1, 404, 400)  # x4.04 vs x4.0: a tie, said so
    assert 'grows within 5% of' in benchmark.memory_growth(rows)[0]


def test_scaling_mode_prints_the_table(capsys):
    code = benchmark.main(['--arch', 'tiny', '--scaling', '--scale-batch', '1,2',
                           '--scale-size', '64', '--modes', 'inference', '--iters', '1',
                           '--warmup', '0', '--threads', '1', '--peers', 'timm'])
    out = capsys.readouterr().out
    assert code == 0
    table = out[out.index('scaling table'):]
    assert table.count('inference ') == 2 and 'timm mvitv2_tiny' in table
    assert 'crossover points:' in out and 'memory growth:' in out


def test_predicted_step_bytes_is_linear_in_the_batch():
    seen = {('train', (224, 224)): (8, 800)}
    assert benchmark.predicted_step_bytes(seen, 'train', (224, 224), 64) == 6400
    assert benchmark.predicted_step_bytes(seen, 'train', (448, 448), 64) is None
    assert benchmark.predicted_step_bytes(seen, 'inference', (224, 224), 64) is None


def test_scaling_skips_a_point_that_would_not_fit(capsys, monkeypatch):
    # 1 MiB "available": the b1 point runs (nothing measured yet), b4 is predicted not to fit.
    monkeypatch.setattr(benchmark, 'available_memory_bytes', lambda: 2 ** 20)
    code = benchmark.main(['--arch', 'tiny', '--scaling', '--scale-batch', '1,4',
                           '--scale-size', '64', '--modes', 'inference', '--iters', '1',
                           '--warmup', '0', '--threads', '1', '--peers', 'timm'])
    out = capsys.readouterr().out
    assert code == 0
    table = out[out.index('scaling table'):out.index('crossover points')]
    assert table.count('inference ') == 1
    assert 'points not run (they would not fit in memory here):' in out
    assert 'inference b4 64x64: a step would need about' in out and 'from b1' in out
