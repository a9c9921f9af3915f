"""Shared fixtures: a tiny synthetic RAF-DB folder for the script tests."""
import os

import pytest

# One thread per test process, set before torch is imported: the tests' networks are tiny, and the workers of
# pytest-xdist (one per core) with torch's default of a thread per core each would oversubscribe the cores.
os.environ.setdefault('OMP_NUM_THREADS', '1')


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


TINY_RUN = ['--batch_size', '16', '--image_size', '16', '--workers', '0', '--device', 'cpu', '--report_freq', '50']
TINY_DARTS = ['--init_channels', '8', '--layers', '3']  # the DARTS-family networks' size flags (search and gla_fernet)
# The train.py flags of a tiny run of each model that predict.py must export: GLA-FERNet and a baseline.
MODEL_RUNS = {'gla_fernet': ['--arch', 'GLA_FERNet', *TINY_DARTS], 'fgw_fer': ['--model', 'fgw_fer']}


def make_run(script, argv, folder, interrupt_after=None):
    """Run train.py's or train_search.py's main() in `folder` on tiny settings; returns the new run folder. With
    interrupt_after=E the run is stopped (as by Ctrl-C) once epoch E is saved: an unfinished run."""
    import os

    import cli
    import utils
    before = set(os.listdir(folder))
    real_save = utils.Run.save

    def save(run, epoch, *args, **kwargs):
        real_save(run, epoch, *args, **kwargs)
        if epoch == interrupt_after:
            raise KeyboardInterrupt
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(utils.Run, 'save', save)
        try:
            args = cli.parse(script.parser, script.check_args, getattr(script, 'recipe', None), TINY_RUN + argv)
            script.main(args, utils.Log())
        except KeyboardInterrupt:
            pass
    new, = set(os.listdir(folder)) - before
    return str(folder / new)


@pytest.fixture(scope='session')
def runs(dataset, tmp_path_factory):
    """Tiny runs on the synthetic set, made once: eval runs of two models (GLA-FERNet; FGW-FER with its recipe, so a
    validation split) x two seeds (2 epochs), one run of each model of MODEL_RUNS (by its name), an eval run stopped
    after its first epoch, and a search (2 epochs, 1 of warm-up)."""
    import train
    import train_search
    folder = tmp_path_factory.mktemp('runs')
    made = {}
    for name, flags in [('gla_seed0', ['--arch', 'GLA_FERNet', *TINY_DARTS, '--seed', '0']),
                        ('gla_seed1', ['--arch', 'GLA_FERNet', *TINY_DARTS, '--seed', '1']),
                        ('fgw_seed0', ['--model', 'fgw_fer', '--seed', '0']),
                        ('fgw_seed1', ['--model', 'fgw_fer', '--seed', '1'])]:
        made[name] = make_run(train, ['--data', dataset, '--epochs', '2', '--save', name, *flags], folder)
    made['gla_fernet'], made['fgw_fer'] = made['gla_seed0'], made['fgw_seed0']
    for model, flags in MODEL_RUNS.items():
        if model not in made:
            made[model] = make_run(train, ['--data', dataset, '--epochs', '1', '--model', model, *flags], folder)
    made['unfinished'] = make_run(train, ['--data', dataset, '--epochs', '2', '--save', 'unfinished', *TINY_DARTS],
                                  folder, interrupt_after=0)
    made['search'] = make_run(train_search, ['--data', dataset, '--epochs', '2', '--warmup_epochs', '1', '--save',
                                             'search', *TINY_DARTS], folder)
    return made


def pytest_collection_modifyitems(items):
    """Under pytest-xdist (--dist loadgroup), the tests that use the session's tiny runs go to one worker, which makes
    them once, rather than every worker making its own."""
    for item in items:
        if 'runs' in getattr(item, 'fixturenames', ()):
            item.add_marker(pytest.mark.xdist_group('runs'))
