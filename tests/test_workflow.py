"""End to end: search -> genotype.txt -> train, the files a user reads, kill-and-resume, bad input."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import genotypes
import model
import model_search_ran_softmax_sigmoid
from utils import count_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SEARCH = ['--epochs', '2', '--warmup_epochs', '1', '--init_channels', '8', '--layers', '3', '--batch_size', '16',
               '--image_size', '16', '--report_freq', '2', '--workers', '0', '--device', 'cpu']
TINY_TRAIN = ['--epochs', '2', '--init_channels', '8', '--layers', '3', '--batch_size', '16', '--image_size', '16',
              '--report_freq', '2', '--workers', '0', '--device', 'cpu', '--auxiliary', '--drop_path_prob', '0.2']


def run(script, args, cwd, check=True):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT}
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def only_dir(cwd, prefix):
    found = [d for d in os.listdir(cwd) if d.startswith(prefix)]
    assert len(found) == 1, found
    return os.path.join(cwd, found[0])


def test_search_then_train_writes_every_output(dataset, tmp_path):
    run('train_search.py', ['--data', dataset, '--save', 'T', *TINY_SEARCH], tmp_path)
    search_dir = only_dir(tmp_path, 'search-T-synthetic-')
    for name in ['log.txt', 'genotype.txt', 'normal.png', 'reduce.png', 'weights.pt', 'checkpoint.pt', 'args.json']:
        assert os.path.isfile(os.path.join(search_dir, name)), name
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(search_dir, 'tensorboard')))
    log = open(os.path.join(search_dir, 'log.txt')).read()
    assert 'torch 2.' in log and 'git commit' in log
    assert len(re.findall(r'[AP]M genotype = Genotype\(', log)) == 2 and log.count('best_acc') == 2 and 'valid_f1' in log
    assert 'best genotype = Genotype(' in log
    genotype = genotypes.parse_genotype(open(os.path.join(search_dir, 'genotype.txt')).read())
    assert f'best genotype = {genotypes.format_genotype(genotype)}' in log

    run('train.py', ['--data', dataset, '--save', 'T', '--genotype_file', search_dir, *TINY_TRAIN], tmp_path)
    eval_dir = only_dir(tmp_path, 'eval-T-synthetic-')
    for name in ['log.txt', 'metrics.json', 'confusion_matrix.png', 'best.pt', 'weights.pt', 'checkpoint.pt', 'args.json']:
        assert os.path.isfile(os.path.join(eval_dir, name)), name
    log = open(os.path.join(eval_dir, 'log.txt')).read()
    assert f'genotype = {genotypes.format_genotype(genotype)}' in log
    assert 'param size' in log and 'FLOPs' in log and 'test_f1' in log and 'final test accuracy' in log
    metrics = json.load(open(os.path.join(eval_dir, 'metrics.json')))
    for key in ['accuracy', 'precision', 'recall', 'f1', 'per_class_accuracy', 'confusion_matrix']:
        assert key in metrics['final'] and key in metrics['best']
    assert sum(map(sum, metrics['final']['confusion_matrix'])) == 28  # the whole test set, once
    assert metrics['params'] > 0 and metrics['flops'] > 0 and metrics['model_size_mb'] > 0


def kill_after_first_checkpoint(script, args, cwd, prefix):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT}
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        dirs = [d for d in os.listdir(cwd) if d.startswith(prefix)]
        if dirs and os.path.exists(os.path.join(cwd, dirs[0], 'checkpoint.pt')):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    run_dir = only_dir(cwd, prefix)
    assert torch.load(os.path.join(run_dir, 'checkpoint.pt'), weights_only=True)['epoch'] < 4
    return run_dir


@pytest.mark.parametrize('script, extra', [
    ('train_search.py', ['--sampling', 'random', '--epochs', '4', '--warmup_epochs', '1']),
    ('train.py', ['--epochs', '4', '--arch', 'DARTS_V2']),
])
def test_killed_and_resumed_run_ends_with_the_same_weights(dataset, tmp_path, script, extra):
    base = ['--data', dataset, *(TINY_SEARCH if script == 'train_search.py' else TINY_TRAIN), *extra]
    kind = 'search' if script == 'train_search.py' else 'eval'
    run(script, [*base, '--save', 'FULL'], tmp_path)
    full = torch.load(os.path.join(only_dir(tmp_path, f'{kind}-FULL-'), 'weights.pt'), weights_only=True)

    killed_dir = kill_after_first_checkpoint(script, [*base, '--save', 'KILL'], tmp_path, f'{kind}-KILL-')
    run(script, ['--resume', killed_dir, '--device', 'cpu', '--workers', '0'], tmp_path)
    resumed = torch.load(os.path.join(killed_dir, 'weights.pt'), weights_only=True)
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    assert 'resumed at epoch' in open(os.path.join(killed_dir, 'log.txt')).read()


@pytest.mark.parametrize('args, message', [
    (['--genotype', "Genotype(normal=[('conv_9x9', 0), ('skip_connect', 1)], normal_concat=[2], "
                    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])"], "unknown operation 'conv_9x9'"),
    (['--arch', 'NOT_A_GENOTYPE'], 'unknown architecture name'),
    (['--arch', 'DARTS_V2', '--genotype', 'Genotype()'], 'only one of'),
    (['--genotype_file', '/nonexistent/search-folder'], 'does not exist'),
    (['--dataset', 'rafdb', '--data', '/nonexistent/raf-basic'], '/nonexistent/raf-basic'),
    (['--image_size', '50'], 'multiples of 4'),
    (['--learning_rate', '1e30', '--grad_clip', '1e30'], 'non-finite'),
])
def test_bad_input_stops_with_one_clear_message(dataset, tmp_path, args, message):
    result = run('train.py', ['--data', dataset, *TINY_TRAIN, *args], tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and 'Traceback' not in result.stderr
    if message != 'non-finite':  # input errors stop before a run folder is created
        assert not [d for d in os.listdir(tmp_path) if d.startswith('eval-')]


def test_search_with_a_missing_dataset_folder_leaves_no_run_folder(tmp_path):
    result = run('train_search.py', ['--dataset', 'affectnet', '--data', str(tmp_path / 'AffectNet'), *TINY_SEARCH],
                 tmp_path, check=False)
    assert result.returncode == 2 and 'AffectNet does not exist' in result.stderr
    assert os.listdir(tmp_path) == []


def test_released_protocol_warns(dataset, tmp_path):
    result = run('train_search.py', ['--data', dataset, *TINY_SEARCH, '--epochs', '1', '--protocol', 'released'], tmp_path)
    assert 'architecture steps on the TEST set' in result.stdout


def test_benchmark_writes_every_figure(tmp_path):
    run('benchmark.py', ['--device', 'cpu', '--batch_size', '4', '--init_channels', '4', '--layers', '3',
                         '--eval_channels', '4', '--image_size', '16', '--steps', '1', '--repeats', '1',
                         '--sampling', 'random', '--json', str(tmp_path / 'benchmark.json')], tmp_path)
    results = json.load(open(tmp_path / 'benchmark.json'))
    for key in ['search_step_img_s', 'search_step_unrolled_img_s', 'search_step_overhead_ms', 'train_step_img_s',
                'eval_img_s', 'latency_bs1_ms', 'data_img_s', 'peak_mem_mb', 'eval_flops']:
        assert 0 < results[key] < float('inf'), key
    supernet = model_search_ran_softmax_sigmoid.Network(4, 7, 3, image_size=16)
    assert results['supernet_params'] == count_parameters(supernet, exclude=supernet.arch_parameters())
    assert results['eval_params'] == count_parameters(model.Network(4, 7, 3, False, genotypes.GLA_FERNet, image_size=16))
    assert results['config']['sampling'] == 'random' and results['torch'] == torch.__version__
