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

# Under pytest-xdist (README's test command runs one worker per core) each worker, and every
# process it starts, computes with one intra-op thread: two workers with two OpenMP threads
# each on two cores wait for each other's descheduled threads.
if os.environ.get('PYTEST_XDIST_WORKER'):
    os.environ['OMP_NUM_THREADS'] = '1'
    torch.set_num_threads(1)


@pytest.fixture
def single_thread():
    """One intra-op thread: for tiny models on a shared 2-core machine, OpenMP threads waiting
    for each other made every op ~10x slower. Modules opt in with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
