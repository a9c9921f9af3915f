"""torchrun with 2 CPU processes (Gloo), on one node or two: both scripts finish, log once and free their process
group; metrics cover the whole test set; each process draws its own augmentation; the noise record of an epoch is
that epoch's alone."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import augment
import data_loader
import noise
import utils
from errors import UserError
from test_workflow import ROOT, TINY_SEARCH, TINY_TRAIN, only_dir

ENTRY = os.path.join(ROOT, 'tests', 'torchrun_entry.py')
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT}
NOISY_EPOCHS = 3  # the record of epoch 0 was always right: the stale scores of an earlier epoch begin at epoch 1


def torchrun(script, args, cwd):
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                             ENTRY, os.path.join(ROOT, script), *args],
                            cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Each process freed its group (and so joined Gloo's threads) before exiting: the exit cannot abort.
    assert result.stdout.count('process group freed: True') == 2, result.stdout[-3000:]
    return result.stdout


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def torchrun_two_nodes(script, args, cwd, **env):
    """docs/running.md's two-node commands, each node a torchrun of one process on this machine: node 0 hosts the
    rendezvous at --master_addr:--master_port, node 1 joins it. Returns the two nodes' output."""
    port, nodes = free_port(), []
    for node_rank in (0, 1):
        output = open(cwd / f'node{node_rank}.txt', 'w')
        command = [sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2', '--node_rank', str(node_rank),
                   '--nproc_per_node', '1', '--master_addr', '127.0.0.1', '--master_port', str(port), ENTRY,
                   os.path.join(ROOT, script), *args]
        nodes.append((subprocess.Popen(command, cwd=cwd, env={**ENV, **env}, stdout=output, stderr=subprocess.STDOUT),
                      output))
    try:
        for process, _ in nodes:
            process.wait(timeout=300)
    finally:
        for process, output in nodes:
            if process.poll() is None:  # the other node failed: this one waits for it at the rendezvous
                process.terminate()  # torchrun stops its workers on SIGTERM
                process.wait(timeout=60)
            output.close()
    outputs = [(cwd / f'node{node_rank}.txt').read_text() for node_rank in (0, 1)]
    for (process, _), output in zip(nodes, outputs):
        assert process.returncode == 0 and 'process group freed: True' in output, output[-3000:]
    return outputs


def check_logged_once(stdout, run_dir):
    log = open(os.path.join(run_dir, 'log.txt')).read()
    assert log.count('git commit') == 1 and stdout.count('git commit') == 1
    assert log.count('epoch 1 lr') == 1


def test_a_search_with_two_processes_finishes_and_logs_once(dataset, tmp_path):
    # Batches of 8: each process holds half of the search's 32-image weight split.
    stdout = torchrun('train_search.py', ['--data', dataset, '--save', 'DDP', *TINY_SEARCH, '--batch_size', '8'],
                      tmp_path)
    run_dir = only_dir(tmp_path, 'search-DDP-')  # only rank 0 made a folder
    check_logged_once(stdout, run_dir)
    assert os.path.isfile(os.path.join(run_dir, 'genotype.txt'))


@pytest.fixture(scope='module')
def two_node_run(dataset, tmp_path_factory):
    """A train.py run on two nodes of one process each (torchrun_two_nodes), NOISY_EPOCHS epochs on the synthetic
    set's noisy labels (20 % flipped), each process recording its draws and its noise record (torchrun_entry.py):
    (the nodes' output, the run folder, the records of ranks 0 and 1)."""
    cwd = tmp_path_factory.mktemp('two_nodes')
    (cwd / 'draws').mkdir()
    # Batches of 8: each process takes 32 of the 64 training images, 4 steps an epoch.
    outputs = torchrun_two_nodes('train.py', ['--data', dataset, '--save', 'NODES', *TINY_TRAIN, '--batch_size', '8',
                                              '--epochs', str(NOISY_EPOCHS), '--noise', '20', '--noise_method', 'none'],
                                 cwd, RECORD_DRAWS=str(cwd / 'draws'))
    draws = [torch.load(cwd / 'draws' / f'rank{rank}.pt', weights_only=False) for rank in (0, 1)]
    return outputs, only_dir(cwd, 'eval-NODES-'), draws  # only the global rank 0 made a folder


@pytest.mark.xdist_group('two_node_run')
def test_training_on_two_nodes_completes_and_logs_once(two_node_run):
    outputs, run_dir, _ = two_node_run
    check_logged_once(''.join(outputs), run_dir)
    metrics = json.load(open(os.path.join(run_dir, 'metrics.json')))
    assert metrics['complete'] and sum(map(sum, metrics['last']['confusion_matrix'])) == 28  # each test image once


@pytest.mark.xdist_group('two_node_run')
def test_each_process_draws_its_own_augmentation(two_node_run):
    _, _, draws = two_node_run
    first = [d['batch'] for d in draws]  # each process's first augmented batch

    def augmented(images, state):
        generator = torch.Generator().set_state(state)
        return data_loader.prepare_batch(images, first[0]['image_size'], augment.Augmentation(**first[0]['augment']),
                                         generator)

    for batch in first:  # the record replays
        assert torch.equal(augmented(batch['images'], batch['state']), batch['augmented'])
    # Process 1's draws on process 0's images: the same images would come out otherwise (flips, noise, erasing).
    assert not torch.equal(augmented(first[0]['images'], first[1]['state']), first[0]['augmented'])
    for epoch_0, epoch_1 in zip(*(d['epochs'] for d in draws), strict=True):  # the noise methods' draws too
        assert not torch.equal(epoch_0['generator'], epoch_1['generator'])


@pytest.mark.xdist_group('two_node_run')
def test_two_processes_log_the_auroc_of_one_process_in_every_epoch(two_node_run):
    """The AUROC an epoch logs under torchrun is that of one process given every sample's score of the epoch (what
    the two processes recorded at their steps), exactly: the processes' records are gathered, never added to an
    earlier epoch's."""
    _, run_dir, draws = two_node_run
    for epoch in range(NOISY_EPOCHS):
        steps = [d['epochs'][epoch] for d in draws]
        assert [s['epoch'] for s in steps] == [epoch, epoch]
        index, scores, flipped = (torch.cat([torch.cat(s[name]) for s in steps]) for name in ('index', 'scores',
                                                                                             'flipped'))
        assert len(index) == len(index.unique()) == 64  # disjoint shards of the whole training set
        assert flipped.any() and not flipped.all()
        one_process = noise.auroc(scores, flipped).item()
        assert steps[0]['record']['auroc'] == steps[1]['record']['auroc'] == one_process, epoch
    metrics = json.load(open(os.path.join(run_dir, 'metrics.json')))
    assert metrics['label_noise']['auroc'] == one_process


def test_a_single_process_draws_as_before_ranks_entered_the_seeds():
    # Figures of the code before the rank entered the seeds: one process (rank 0) draws them still, so that earlier
    # runs repeat and resume exactly; rank 1 draws otherwise.
    assert augment.epoch_seed(2, 5, 3) == augment.epoch_seed(2, 5, 3, rank=0) == 7053646052667171806
    assert augment.epoch_seed(2, 5, 3, rank=1) != 7053646052667171806
    assert torch.rand(2, generator=noise.epoch_generator(2, 5, 'cpu')).tolist() == [0.8174609541893005,
                                                                                    0.3163483142852783]
    mixer = augment.BatchMixer(7, 0.2, 0, seed=2)
    mixer.set_epoch(5)
    assert mixer.rng.random() == 0.2709350645369918


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
        port = free_port()
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
