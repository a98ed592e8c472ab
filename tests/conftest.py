"""Fixtures shared by the whole suite."""
import atexit
import os
import shutil
import tempfile

import pytest
import torch

# Kernel choices are the built-in defaults in every test and every process a test starts (no
# timing, so runs compare bit for bit whatever the load), and no test writes to ~/.cache;
# tests/ops/test_calibration.py turns calibration on where it tests it.
os.environ['MMVIT_CALIBRATE'] = 'off'
os.environ['MMVIT_CACHE_DIR'] = tempfile.mkdtemp(prefix='mmvit_test_cache_')
atexit.register(shutil.rmtree, os.environ['MMVIT_CACHE_DIR'], ignore_errors=True)


@pytest.fixture
def single_thread():
    """One intra-op thread: for tiny models on a shared 2-core machine, OpenMP threads waiting
    for each other made every op ~10x slower. Modules opt in with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
