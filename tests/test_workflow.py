"""End to end: search -> genotype.txt -> train, the files a user reads, kill-and-resume, bad input.

Scripts run as subprocesses where the process is what is tested (exit status, output, kills, --help without
torch); other failures are checked by calling main() in this process."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import baselines
import cli
import genotypes
import model
import model_search_ran_softmax_sigmoid
import run_folder
import train
import train_search
import utils
from errors import UserError
from utils import count_parameters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SEARCH = ['--epochs', '2', '--warmup_epochs', '1', '--init_channels', '8', '--layers', '3', '--batch_size', '16',
               '--image_size', '16', '--report_freq', '2', '--workers', '0', '--device', 'cpu']
TINY_TRAIN = ['--epochs', '2', '--init_channels', '8', '--layers', '3', '--batch_size', '16', '--image_size', '16',
              '--report_freq', '2', '--workers', '0', '--device', 'cpu', '--auxiliary', '--drop_path_prob', '0.2']


def run(script, args, cwd, check=True, env=None):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT, **(env or {})}
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_in_process(script, argv, cwd, monkeypatch):
    """main() of train.py or train_search.py in this process, with the flags checked as on the command line."""
    monkeypatch.chdir(cwd)
    args = cli.parse(script.parser, script.check_args, script.recipe, argv=argv)
    script.main(args, utils.Log())


def only_dir(cwd, prefix):
    found = [d for d in os.listdir(cwd) if d.startswith(prefix)]
    assert len(found) == 1, found
    return os.path.join(cwd, found[0])


def test_search_then_train_writes_every_output_and_records_what_it_used(dataset, tmp_path):
    result = run('train_search.py', ['--data', dataset, '--save', 'T', *TINY_SEARCH], tmp_path)
    search_dir = only_dir(tmp_path, 'search-T-synthetic-')
    for name in ['log.txt', 'genotype.txt', 'normal.png', 'reduce.png', 'weights.pt', 'checkpoint.pt', 'args.json']:
        assert os.path.isfile(os.path.join(search_dir, name)), name
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(search_dir, 'tensorboard')))
    log = open(os.path.join(search_dir, 'log.txt')).read()
    assert 'torch 2.' in log and 'git commit' in log and 'train_f1' in log
    # Each epoch ends with its validation accuracy, then the genotype it was measured with.
    epochs = re.findall(r'valid_acc (\S+), valid_balanced_acc \S+, valid_f1 \S+, (.*)\n.* genotype = (Genotype\(.*\))\n',
                        log)
    assert len(epochs) == 2 and 'no architecture step yet' in epochs[0][1] and 'best_acc' in epochs[1][1]
    best_epoch = int(re.search(r'best architecture-validation accuracy \S+ at epoch (\d+)', log).group(1))
    genotype = genotypes.parse_genotype(open(os.path.join(search_dir, 'genotype.txt')).read())
    assert epochs[best_epoch][2] == genotypes.format_genotype(genotype)
    assert f'best genotype = {genotypes.format_genotype(genotype)}' in log
    suggested = re.search(r'train it with: (python train.py .*)', result.stdout).group(1)
    assert f'--dataset synthetic --data {dataset} --image_size 16' in suggested

    run('train.py', ['--data', dataset, '--save', 'T', '--genotype_file', 'search-T-*', *TINY_TRAIN], tmp_path)
    eval_dir = only_dir(tmp_path, 'eval-T-synthetic-')
    for name in ['log.txt', 'metrics.json', 'confusion_matrix.png', 'best.pt', 'weights.pt', 'checkpoint.pt', 'args.json']:
        assert os.path.isfile(os.path.join(eval_dir, name)), name
    log = open(os.path.join(eval_dir, 'log.txt')).read()
    assert f'genotype = {genotypes.format_genotype(genotype)}' in log
    assert 'param size' in log and 'FLOPs' in log and 'train_f1' in log and 'test_balanced_acc' in log
    assert 'final test accuracy' in log
    args = json.load(open(os.path.join(eval_dir, 'args.json')))
    assert args['genotype_file'] == os.path.join(os.path.basename(search_dir), 'genotype.txt')  # not the pattern
    assert args['data'] == dataset
    metrics = json.load(open(os.path.join(eval_dir, 'metrics.json')))
    assert metrics['complete'] and metrics['epochs_done'] == 2
    for key in ['accuracy', 'balanced_accuracy', 'precision', 'recall', 'f1', 'per_class_accuracy', 'confusion_matrix']:
        assert key in metrics['last'] and key in metrics['test_selected']
    assert sum(map(sum, metrics['last']['confusion_matrix'])) == 28  # the whole test set, once
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
    assert torch.load(os.path.join(run_dir, 'checkpoint.pt'), weights_only=True)['epoch'] < 3
    return run_dir


def folder_state(folder):
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize('script, extra', [
    ('train_search.py', ['--sampling', 'random', '--epochs', '3', '--warmup_epochs', '1']),
    ('train.py', ['--epochs', '3', '--arch', 'DARTS_V2']),
])
def test_killed_and_resumed_run_ends_with_the_same_weights(dataset, tmp_path, script, extra):
    kind = 'search' if script == 'train_search.py' else 'eval'
    tiny = [*(TINY_SEARCH if script == 'train_search.py' else TINY_TRAIN), *extra]
    run(script, ['--data', dataset, *tiny, '--save', 'FULL'], tmp_path)
    full = torch.load(os.path.join(only_dir(tmp_path, f'{kind}-FULL-'), 'weights.pt'), weights_only=True)

    # The killed run's dataset moves before it is resumed: --data may change on resume, and is used.
    shutil.copytree(dataset, tmp_path / 'before')
    killed_dir = kill_after_first_checkpoint(script, ['--data', str(tmp_path / 'before'), *tiny, '--save', 'KILL'],
                                             tmp_path, f'{kind}-KILL-')
    os.rename(tmp_path / 'before', tmp_path / 'moved')
    run(script, ['--resume', killed_dir, '--data', str(tmp_path / 'moved'), '--workers', '0'], tmp_path)
    resumed = torch.load(os.path.join(killed_dir, 'weights.pt'), weights_only=True)
    assert full.keys() == resumed.keys()
    for key in full:
        assert torch.equal(full[key], resumed[key]), key
    assert 'resumed at epoch' in open(os.path.join(killed_dir, 'log.txt')).read()

    # Resuming the finished run says so and changes nothing: no log line, no event file, no rewritten result.
    before = folder_state(killed_dir)
    again = run(script, ['--resume', killed_dir, '--data', str(tmp_path / 'moved')], tmp_path)
    assert 'is complete' in again.stdout and folder_state(killed_dir) == before


def test_flags_and_help_answer_before_torch_is_imported(tmp_path):
    # A torch that cannot be imported: --help and flag errors must not need it (it takes seconds on a busy machine).
    (tmp_path / 'torch').mkdir()
    (tmp_path / 'torch' / '__init__.py').write_text("raise ImportError('torch was imported')")
    no_torch = {'PYTHONPATH': f'{tmp_path}{os.pathsep}{ROOT}'}
    for script in ('train.py', 'train_search.py', 'benchmark.py', 'predict.py', 'report.py'):
        result = run(script, ['--help'], tmp_path, env=no_torch)
        assert result.stdout.startswith('usage:') and '(issue' not in result.stdout
    for script, flags, message in [
        ('train.py', ['--batch_size', '0'], 'argument --batch_size: must be a positive integer, got 0'),
        ('train_search.py', ['--k', '0'], 'argument --k: must be a positive integer, got 0'),
        ('train_search.py', ['--k', '-2'], 'argument --k: must be a positive integer, got -2'),
        ('train_search.py', ['--k', '3'], 'argument --k: 3 does not divide --init_channels 16'),
        ('train_search.py', ['--epochs', '0'], 'argument --epochs: must be a positive integer, got 0'),
        ('train_search.py', ['--epochs', '10'], '15 warm-up epochs leave no architecture epoch in --epochs 10'),
        ('train_search.py', ['--save', 'runs/x'], "'runs/x' is a name, not a path"),
        ('train_search.py', ['--method', 'darts', '--sampling', 'random'], 'random sampling needs --k above 1'),
        ('train_search.py', ['--primitives', 'none,conv_9x9'], "unknown candidate operation(s) 'conv_9x9'"),
        ('train_search.py', ['--primitives', 'none'], 'need at least one besides none'),
        ('benchmark.py', ['--method', 'emonas', '--sampling', 'random'], 'random sampling needs --k above 1'),
        ('train.py', ['--arch', 'DARTS_V2', '--genotype', 'Genotype()'], 'only one of'),
        ('train.py', ['--image_size', '50'], 'argument --image_size: image size 50 is not supported: height and '
                                             'width must be multiples of 4'),
        ('train_search.py', ['--dataset', 'ckplus', '--fold', '10'], 'argument --fold: 10 is not one of the folds'),
        ('train.py', ['--model', 'rlr_cnet', '--mixup_alpha', '0.2'], "do not combine with rlr_cnet's two-branch"),
        ('train.py', ['--model', 'cores_se', '--layers', '5'], '--layers: applies to --model gla_fernet'),
        ('benchmark.py', ['--model', 'resnet'], "argument --model: invalid choice: 'resnet'"),
        ('predict.py', ['eval-X'], 'give images to classify, or --export PATH, or both'),
        ('predict.py', ['eval-X', '--export', 'net.zip'], 'must end in .pt2 (torch.export) or .onnx'),
    ]:
        result = run(script, flags, tmp_path, check=False, env=no_torch)
        assert result.returncode == 2 and message in result.stderr, (flags, result.stderr)
    assert os.listdir(tmp_path) == ['torch']  # no run folder


@pytest.mark.parametrize('args, message', [
    (['--genotype', "Genotype(normal=[('conv_9x9', 0), ('skip_connect', 1)], normal_concat=[2], "
                    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])"], "unknown operation 'conv_9x9'"),
    (['--arch', 'NOT_A_GENOTYPE'], 'unknown architecture name'),
    (['--genotype_file', '/nonexistent/search-folder'], 'does not exist'),
    (['--dataset', 'rafdb', '--data', '/nonexistent/raf-basic'], '/nonexistent/raf-basic'),
    (['--batch_size', '256'], 'the training set has 64 images, fewer than one batch of --batch_size 256'),
])
def test_bad_input_stops_before_a_run_folder_exists(dataset, tmp_path, monkeypatch, args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        run_in_process(train, ['--data', dataset, *TINY_TRAIN, *args], tmp_path, monkeypatch)
    assert os.listdir(tmp_path) == []


def test_held_out_split_smaller_than_a_batch_stops_instead_of_waiting_forever(dataset, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r'the set for architecture steps has \d+ images, fewer than one batch of '
                                        r'--batch_size 32; lower --batch_size or lower --train_portion \(now 0.9\)'):
        run_in_process(train_search, ['--data', dataset, *TINY_SEARCH, '--batch_size', '32', '--train_portion', '0.9'],
                       tmp_path, monkeypatch)
    assert os.listdir(tmp_path) == []


def test_nonfinite_loss_stops_with_one_line_and_marks_the_run_failed(dataset, tmp_path):
    result = run('train.py', ['--data', dataset, *TINY_TRAIN, '--learning_rate', '1e30', '--grad_clip', '1e30'],
                 tmp_path, check=False)
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.startswith('error: the loss became non-finite during training epoch 0')
    run_dir = only_dir(tmp_path, 'eval-')
    assert 'non-finite' in open(os.path.join(run_dir, run_folder.FAILED)).read()
    assert not os.path.exists(os.path.join(run_dir, 'checkpoint.pt'))


def test_no_genotype_file_before_the_first_architecture_epoch_ends(dataset, tmp_path, monkeypatch):
    seen = []
    real_save = utils.Run.save

    def save(run, epoch, *args, **kwargs):
        seen.append((epoch, os.path.exists(run.path('genotype.txt'))))
        real_save(run, epoch, *args, **kwargs)
    monkeypatch.setattr(utils.Run, 'save', save)
    run_in_process(train_search, ['--data', dataset, *TINY_SEARCH, '--epochs', '3', '--warmup_epochs', '2'], tmp_path,
                   monkeypatch)
    assert seen == [(0, False), (1, False), (2, True)]  # a search killed in warm-up leaves no genotype to train


def test_genotype_patterns_match_only_searches_that_wrote_a_genotype(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'search-X-a').mkdir()
    (tmp_path / 'search-X-a' / 'genotype.txt').write_text(genotypes.format_genotype(genotypes.DARTS_V2) + '\n')
    (tmp_path / 'search-X-b').mkdir()  # newer, but failed or still warming up
    assert run_folder.find_genotype_file('search-X-*') == os.path.join('search-X-a', 'genotype.txt')
    with pytest.raises(UserError, match='search-X-b holds no genotype.txt: a search writes it when its first '
                                        'architecture epoch'):
        run_folder.find_genotype_file('search-X-b')
    with pytest.raises(UserError, match="1 folder\\(s\\) match 'search-X-b\\*', but none holds a genotype.txt"):
        run_folder.find_genotype_file('search-X-b*')


def test_released_protocol_warns(dataset, tmp_path, monkeypatch, capsys):
    run_in_process(train_search, ['--data', dataset, *TINY_SEARCH, '--epochs', '1', '--warmup_epochs', '0',
                                  '--protocol', 'released'], tmp_path, monkeypatch)
    assert 'architecture steps on the TEST set' in capsys.readouterr().out


def test_benchmark_writes_every_result(tmp_path):
    run('benchmark.py', ['--device', 'cpu', '--batch_size', '4', '--init_channels', '4', '--layers', '3',
                         '--eval_channels', '4', '--image_size', '16', '--steps', '1', '--repeats', '2',
                         '--method', 'darts', '--k', '2', '--sampling', 'random',
                         '--json', str(tmp_path / 'benchmark.json')],
        tmp_path)
    results = json.load(open(tmp_path / 'benchmark.json'))
    for key in ['search_step_img_s', 'search_step_unrolled_img_s', 'search_step_overhead_ms', 'train_step_img_s',
                'eval_img_s', 'latency_bs1_ms']:
        low, high = results['spread'][key]
        assert 0 < low <= results[key] <= high < float('inf'), key  # the median of the repeats it measured
    assert results['peak_mem_mb'] > 100 and 100 < results['data_img_s'] < 1e7  # torch alone takes > 100 MB
    # the method's supernet (DARTS: softmax op weights, no edge weights), with the k given
    supernet = model_search_ran_softmax_sigmoid.Network(4, 7, 3, image_size=16, op_weights='softmax', edge_weights=False,
                                                        k=2)
    assert results['supernet_params'] == count_parameters(supernet, exclude=supernet.arch_parameters())
    assert results['config']['method'] == 'darts' and results['config']['k'] == 2
    # operator calls: an architecture step and a weight step run far more operators than one training step
    assert results['search_step_operator_calls'] > results['train_step_operator_calls'] > 100
    net = model.Network(4, 7, 3, False, genotypes.GLA_FERNet, image_size=16)
    assert results['eval_params'] == count_parameters(net) and results['eval_flops'] == utils.count_flops(net, 16)
    assert results['config']['sampling'] == 'random' and results['torch'] == torch.__version__


@pytest.mark.parametrize('method', list(genotypes.METHODS))
def test_each_method_searches_and_its_genotype_trains(dataset, tmp_path, monkeypatch, method):
    sizes = ['--init_channels', '8', '--batch_size', '16', '--image_size', '16', '--workers', '0', '--device', 'cpu',
             '--data', dataset, '--save', method, '--epochs', '1']
    run_in_process(train_search, ['--method', method, '--warmup_epochs', '0', *sizes], tmp_path, monkeypatch)
    search_dir = only_dir(tmp_path, f'search-{method}-')
    preset = genotypes.METHODS[method]
    searched = json.load(open(os.path.join(search_dir, 'args.json')))
    for flag, value in {**preset['supernet'], **preset['search']}.items():
        if flag not in ('init_channels', 'batch_size', 'epochs', 'warmup_epochs'):  # given above
            assert searched[flag] == value, flag
    assert json.load(open(os.path.join(search_dir, run_folder.METHOD)))['method'] == method
    genotype = genotypes.parse_genotype(open(os.path.join(search_dir, 'genotype.txt')).read())
    assert all(op in preset['supernet']['primitives'] for op, _ in genotype.normal + genotype.reduce)

    run_in_process(train, ['--genotype_file', f'search-{method}-*', *sizes], tmp_path, monkeypatch)
    trained = json.load(open(os.path.join(only_dir(tmp_path, f'eval-{method}-'), 'args.json')))
    assert trained['recipe'] == method
    # the discrete network of the method (EmoNAS: 5 cells, no auxiliary head, ...), or train.py's defaults
    for flag, value in {'layers': 8, 'auxiliary': False, 'epochs': 1, **preset['train'], 'init_channels': 8}.items():
        assert trained[flag] == (1 if flag == 'epochs' else value), flag
    assert json.load(open(os.path.join(only_dir(tmp_path, f'eval-{method}-'), 'metrics.json')))['complete']


def test_genotype_of_an_emonas_search_trains_emonas_network_unless_flags_say_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, method in [('search-E', 'emonas'), ('search-D', 'darts'), ('search-old', None)]:
        (tmp_path / name).mkdir()
        (tmp_path / name / 'genotype.txt').write_text(genotypes.format_genotype(genotypes.DARTS_V2) + '\n')
        if method:
            (tmp_path / name / run_folder.METHOD).write_text(json.dumps({'method': method}))
    args = cli.parse(train.parser, train.check_args, train.recipe, ['--genotype_file', 'search-E*'])
    assert args.recipe == 'emonas' and args.genotype_file == os.path.join('search-E', 'genotype.txt')
    assert (args.layers, args.init_channels, args.batch_size, args.learning_rate, args.epochs, args.auxiliary,
            args.drop_path_prob) == (5, 36, 16, 0.007, 70, False, 0.2)
    network = baselines.create_model('gla_fernet', 7, **baselines.model_options(args, genotypes.DARTS_V2))
    assert count_parameters(network) == 603_295  # docs/darts_family.md: DARTS-V2 cells, 36 channels, 5 cells
    given = cli.parse(train.parser, train.check_args, train.recipe, ['--genotype_file', 'search-E', '--layers', '8'])
    assert (given.layers, given.init_channels) == (8, 36)
    # DARTS' discrete network, and searches from before methods were recorded (GLA-FERNet's): train.py's defaults
    for folder in ('search-D', 'search-old'):
        args = cli.parse(train.parser, train.check_args, train.recipe, ['--genotype_file', folder])
        assert (args.layers, args.init_channels, args.epochs, args.drop_path_prob) == (8, 36, 600, 0.3)


def test_unreadable_method_file_stops_before_a_run_folder_exists(dataset, tmp_path, monkeypatch):
    (tmp_path / 'search-X').mkdir()
    (tmp_path / 'search-X' / 'genotype.txt').write_text(genotypes.format_genotype(genotypes.DARTS_V2) + '\n')
    (tmp_path / 'search-X' / run_folder.METHOD).write_text('{"method": "enas"}')
    with pytest.raises(UserError, match=r"method.json: unknown search method 'enas'; known: gla_fernet, pc_darts"):
        run_in_process(train, ['--data', dataset, *TINY_TRAIN, '--genotype_file', 'search-X'], tmp_path, monkeypatch)
    assert os.listdir(tmp_path) == ['search-X']


@pytest.mark.parametrize('flags, expected', [
    (['--method', 'emonas'], dict(op_weights='softmax', edge_weights=False, k=1, layers=5, batch_size=16,
                                  learning_rate=0.007, learning_rate_min=0.001, arch_learning_rate=3e-4,
                                  warmup_epochs=0, primitives=genotypes.PRIMITIVES[1:])),
    (['--method', 'emonas', '--primitives', 'all', '--layers', '8'], dict(primitives=genotypes.PRIMITIVES, layers=8)),
    (['--op_weights', 'softmax'], dict(op_weights='softmax', edge_weights=True, k=4, learning_rate=0.1)),  # ablation
    (['--method', 'darts', '--primitives', 'sep_conv_3x3,none, skip_connect'],
     dict(primitives=['none', 'skip_connect', 'sep_conv_3x3'], learning_rate=0.025, warmup_epochs=0)),
    (['--method', 'pc_darts', '--no-edge_weights', '--k', '2'], dict(op_weights='softmax', edge_weights=False, k=2)),
])
def test_method_presets_are_defaults_each_flag_overrides(flags, expected):
    args = cli.parse(train_search.parser, train_search.check_args, train_search.recipe, flags)
    assert {flag: getattr(args, flag) for flag in expected} == expected
