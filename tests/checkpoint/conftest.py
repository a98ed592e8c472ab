import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: the models here are tiny, and on a shared 2-core machine OpenMP
    threads waiting for each other made every op ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
