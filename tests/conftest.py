"""Shared fixtures: a tiny synthetic RAF-DB folder for the script tests."""
import pytest


@pytest.fixture(scope='session')
def dataset(tmp_path_factory):
    """64 training and 28 test images in the RAF-DB layout (28 = the test-set size the tests count on)."""
    from synthetic import make_synthetic
    root = tmp_path_factory.mktemp('data') / 'synthetic'
    make_synthetic(str(root), n_train=64, n_test=28, seed=3, log=lambda *a: None)
    return str(root)


@pytest.fixture
def one_thread():
    """Tiny networks gain nothing from intra-op threads, and on a busy machine threads that wait for each other make
    them many times slower: tests of tiny networks run on one thread."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
