"""tools/get_flops.py counts parameters and FLOPs through the model's fast paths too."""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location('get_flops', REPO / 'tools' / 'get_flops.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_of_tiny_match_the_paper():
    params, gflops, shape = _tool().measure(REPO / 'configs' / '_base_' / 'models' /
                                            'mvitv2_tiny.py')
    assert params == 24_173_320
    assert shape == (224, 224)
    assert gflops == pytest.approx(4.70, abs=0.01)


@pytest.mark.parametrize('config', ['quickstart_image.py', 'quickstart_video.py'])
def test_quickstart_configs_are_counted(config):
    params, gflops, _ = _tool().measure(REPO / 'configs' / config)
    assert 1e6 < params < 5e6 and 0 < gflops < 1
