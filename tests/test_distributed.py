"""torchrun with 2 CPU processes (Gloo): both scripts finish, log once and free their process group; metrics cover
the whole test set."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import data_loader
import utils
from errors import UserError
from test_workflow import ROOT, TINY_SEARCH, TINY_TRAIN, only_dir


def torchrun(script, args, cwd):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT}
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                             os.path.join(ROOT, 'tests', 'torchrun_entry.py'), os.path.join(ROOT, script), *args],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Each process freed its group (and so joined Gloo's threads) before exiting: the exit cannot abort.
    assert result.stdout.count('process group freed: True') == 2, result.stdout[-3000:]
    return result


@pytest.mark.parametrize('script, kind', [('train_search.py', 'search'), ('train.py', 'eval')])
def test_two_processes_finish_and_log_once(dataset, tmp_path, script, kind):
    args = TINY_SEARCH if script == 'train_search.py' else TINY_TRAIN
    # Batches of 8: each process holds half of the search's 32-image weight split.
    result = torchrun(script, ['--data', dataset, '--save', 'DDP', *args, '--batch_size', '8'], tmp_path)
    run_dir = only_dir(tmp_path, f'{kind}-DDP-')  # only rank 0 made a folder
    log = open(os.path.join(run_dir, 'log.txt')).read()
    assert log.count('git commit') == 1 and result.stdout.count('git commit') == 1
    assert log.count('epoch 1 lr') == 1
    if kind == 'eval':
        metrics = json.load(open(os.path.join(run_dir, 'metrics.json')))
        assert sum(map(sum, metrics['last']['confusion_matrix'])) == 28  # every test image counted once
    else:
        assert os.path.isfile(os.path.join(run_dir, 'genotype.txt'))


def _evaluate_in_process(rank, world_size, port, images, labels, state, queue):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 7))
    net.load_state_dict(state)
    loader = data_loader.DeviceLoader(images, labels, 4, 'cpu', image_size=16, rank=rank, world_size=world_size)
    loss, matrix = utils.evaluate(net, loader, 7)
    if rank == 0:
        queue.put((matrix.matrix.tolist(), loss.average()))
    dist.destroy_process_group()


def test_all_reduced_metrics_equal_single_process():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (29, 3, 20, 20), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 7, (29,), generator=generator)
    torch.manual_seed(0)
    state = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 7)).state_dict()
    results = []
    for world_size in (1, 2):
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            port = s.getsockname()[1]
        queue = mp.get_context('spawn').SimpleQueue()
        mp.start_processes(_evaluate_in_process, args=(world_size, port, images, labels, state, queue),
                           nprocs=world_size, start_method='spawn')
        results.append(queue.get())
    (matrix_1, loss_1), (matrix_2, loss_2) = results
    assert sum(map(sum, matrix_1)) == 29
    assert matrix_1 == matrix_2
    assert loss_1 == pytest.approx(loss_2, rel=1e-6)  # float32 per-batch means, batched differently


def test_run_main_destroys_the_process_group_after_success_only(tmp_path):
    def fails(args, log):
        raise UserError('bad input')

    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1)
    try:
        with pytest.raises(SystemExit):
            utils.run_main(fails, None)
        assert dist.is_initialized()  # after an error the others may be inside a collective: no teardown
        utils.run_main(lambda args, log: None, None)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
