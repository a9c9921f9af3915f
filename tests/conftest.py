"""Shared fixtures: a tiny synthetic RAF-DB folder for the script tests."""
import pytest


@pytest.fixture(scope='session')
def dataset(tmp_path_factory):
    """64 training and 28 test images in the RAF-DB layout (28 = the test-set size the tests count on)."""
    from synthetic import make_synthetic
    root = tmp_path_factory.mktemp('data') / 'synthetic'
    make_synthetic(str(root), n_train=64, n_test=28, seed=3, log=lambda *a: None)
    return str(root)
