import pytest

from mmvit_plugin import ops


@pytest.fixture(autouse=True)
def _single_thread_for_every_ops_test(single_thread):
    """Every test of this folder runs with one intra-op thread (see tests/conftest.py)."""
    yield


@pytest.fixture(autouse=True)
def _no_calibration_unless_asked(tmp_path, monkeypatch):
    """Kernel choices are the built-in defaults (no timing) and any cache goes to a temporary
    folder; tests/ops/test_calibration.py turns calibration on where it tests it."""
    monkeypatch.setenv('MMVIT_CACHE_DIR', str(tmp_path / 'mmvit_cache'))
    ops.calibrate.forget()
    with ops.use_kernels(calibration='off'):
        yield
    ops.calibrate.forget()
