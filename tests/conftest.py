"""Fixtures shared by the whole suite."""
import pytest
import torch


@pytest.fixture
def single_thread():
    """One intra-op thread: for tiny models on a shared 2-core machine, OpenMP threads waiting
    for each other made every op ~10x slower. Modules opt in with ``pytestmark``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
