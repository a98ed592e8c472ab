import pytest


@pytest.fixture(autouse=True)
def _single_thread_for_every_ops_test(single_thread):
    """Every test of this folder runs with one intra-op thread (see tests/conftest.py)."""
    yield
