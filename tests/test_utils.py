"""utils.py: metrics, the run folder (log, checkpoints, failures), progress lines, compilation, model statistics."""
import argparse
import json
import os
import random

import pytest
import torch

import run_folder
import training_step
import utils
from errors import UserError


def test_confusion_matrix_metrics_match_hand_computation():
    matrix = utils.ConfusionMatrix(3, 'cpu')
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 1, 1, 2, 2])
    matrix.update(torch.nn.functional.one_hot(predictions, 3).float(), targets)
    metrics = matrix.compute()
    assert metrics['confusion_matrix'] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert metrics['accuracy'] == pytest.approx(100 * 4 / 6) == matrix.accuracy()
    precision = [1.0, 0.5, 0.5]
    recall = [2 / 3, 0.5, 1.0]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert metrics['precision'] == pytest.approx(100 * sum(precision) / 3)
    assert metrics['recall'] == pytest.approx(100 * sum(recall) / 3)
    assert metrics['balanced_accuracy'] == pytest.approx(100 * sum(recall) / 3)
    assert metrics['f1'] == pytest.approx(100 * sum(f1) / 3)
    assert metrics['per_class_accuracy'] == pytest.approx([100 * r for r in recall])


def test_class_never_predicted_counts_zero_precision_and_absent_class_no_recall():
    matrix = utils.ConfusionMatrix(3, 'cpu')
    matrix.update(torch.tensor([[1., 0., 0.], [1., 0., 0.]]), torch.tensor([0, 1]))
    metrics = matrix.compute()
    assert metrics['precision'] == pytest.approx(50 / 3) and metrics['f1'] == pytest.approx(100 * (2 / 3) / 3)
    assert metrics['balanced_accuracy'] == pytest.approx(50.0)  # class 2 has no test image: not averaged in


# ---------------------------------------------------------------- run folder

def test_log_lines_before_the_folder_exists_reach_log_txt_and_progress_stays_on_the_console(tmp_path, capsys):
    log = utils.Log()
    log('loading data')
    log('train 0 003/20 ...', to_file=False)
    log.attach(str(tmp_path))
    log('epoch 0')
    lines = (tmp_path / 'log.txt').read_text().splitlines()
    assert [line.split(' ', 3)[3] for line in lines] == ['loading data', 'epoch 0']
    assert 'train 0 003/20' in capsys.readouterr().out


def make_run(tmp_path, monkeypatch, epochs=3):
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(resume=None, save='T', dataset='synthetic', epochs=epochs, device='cpu', gpu=None,
                              seed=0, deterministic=False)
    run = utils.Run('eval', argparse.ArgumentParser(), args, utils.Log())
    run.start()
    return run


def test_epoch_records_of_a_resumed_run_replace_the_repeated_epochs(tmp_path, monkeypatch):
    run = make_run(tmp_path, monkeypatch)
    for epoch in (0, 1, 2, 1, 2):  # killed after writing epoch 2 but before its checkpoint: resumed at epoch 1
        run.write_epoch_record('history.json', epoch, {'value': epoch})
    assert json.load(open(run.path('history.json'))) == [{'epoch': e, 'value': e} for e in (0, 1, 2)]
    assert json.load(open(run.path('args.json')))['kind'] == 'eval'  # the kind of run, recorded for its readers


def test_nonfinite_weights_or_statistics_are_never_saved(tmp_path, monkeypatch):
    run = make_run(tmp_path, monkeypatch)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    stateful = {'model': net}
    run.check_weights(net, 0)
    run.save(0, {'epoch': 0}, stateful)
    saved = (tmp_path / run.folder / 'checkpoint.pt').read_bytes()
    net[1].running_var[0] = float('inf')  # the loss can stay finite while a statistic overflows
    with pytest.raises(UserError, match=r'after epoch 1 the network holds non-finite values \(1.running_var\).*'
                                        r'the checkpoint after epoch 0 .* is intact'):
        run.check_weights(net, 1)
    with pytest.raises(AssertionError):  # saving without the check is a bug, not an option
        run.save(1, {'epoch': 1}, stateful)
    assert (tmp_path / run.folder / 'checkpoint.pt').read_bytes() == saved


def test_nonfinite_loss_message_says_no_checkpoint_exists_yet(tmp_path, monkeypatch):
    run = make_run(tmp_path, monkeypatch)
    meter = utils.LossMeter('cpu')
    meter.update(torch.tensor(1.0), 4)
    run.check_loss(meter, 'epoch 0')
    meter.update(torch.tensor(float('nan')), 4)
    with pytest.raises(UserError, match='non-finite during epoch 0; nothing of it was saved and no checkpoint had '
                                        'been written yet'):
        run.check_loss(meter, 'epoch 0')


@pytest.mark.parametrize('error, status', [(UserError('bad input'), 2), (ValueError('a bug'), None)])
def test_a_run_that_fails_after_its_folder_exists_is_marked_failed(tmp_path, monkeypatch, error, status):
    monkeypatch.chdir(tmp_path)

    def main(args, log):
        log.attach(str(tmp_path))
        log('epoch 0')
        raise error
    with pytest.raises(SystemExit if status else ValueError) as raised:
        utils.run_main(main, None)
    if status:
        assert raised.value.code == status
        assert (tmp_path / 'log.txt').read_text().splitlines()[-1].endswith('error: bad input')
    assert str(error) in (tmp_path / run_folder.FAILED).read_text()


def test_interrupted_run_says_how_to_resume(tmp_path, capsys):
    def main(args, log):
        log.attach(str(tmp_path))
        (tmp_path / 'checkpoint.pt').write_bytes(b'')
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as raised:
        utils.run_main(main, None)
    assert raised.value.code == 130 and f'continue with --resume {tmp_path}' in capsys.readouterr().err
    assert not (tmp_path / run_folder.FAILED).exists()


# ---------------------------------------------------------------- progress

class FakeLoader:
    batch_size, world_size = 16, 1

    def __len__(self):
        return 23


def test_progress_reports_by_time_on_the_console_and_by_step_in_the_log():
    lines, now = [], [0.0]
    progress = utils.Progress(lambda message, to_file=True: lines.append((message, to_file)), 'train 2', FakeLoader(),
                              report_freq=50, epoch=2, epochs=5, clock=lambda: now[0])
    meter, matrix = utils.LossMeter('cpu'), utils.ConfusionMatrix(7, 'cpu')
    meter.update(torch.tensor(1.0), 16)
    for step in range(23):
        now[0] += 10.0  # a slow machine: 10 s a step
        progress(step, meter, matrix)
    steps = [int(message.split()[2].split('/')[0]) for message, _ in lines]
    assert steps == [0, 3, 6, 9, 12, 15, 18, 21, 22]  # first and last steps, and one line every 30 s
    assert [to_file for _, to_file in lines] == [True] + [False] * 7 + [True]
    # 10 s a step, 1.6 img/s; after step 21 one step is left in this epoch, and 2 more epochs of 23 steps
    assert '1.6 img/s, epoch left 0:00:10, run left ~0:07:50' in lines[7][0]


# ---------------------------------------------------------------- compilation

def test_compile_warm_up_leaves_statistics_random_generators_and_mode_untouched(monkeypatch):
    monkeypatch.setattr(torch, 'compile', lambda model, **options: model)  # the warm-up runs the model itself
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5))
    net.train()  # as train.py builds it
    before = {name: b.clone() for name, b in net.named_buffers()}
    example = torch.randn(8, 3, 4, 4) + 5
    python_rng, torch_rng = random.getstate(), torch.get_rng_state()
    assert training_step.maybe_compile(net, example, print) is net
    assert net.training
    assert all(torch.equal(before[name], b) for name, b in net.named_buffers())  # BatchNorm saw the batch
    assert random.getstate() == python_rng and torch.equal(torch.get_rng_state(), torch_rng)  # dropout drew


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(model, **options):
        raise RuntimeError('no compiler here')
    monkeypatch.setattr(torch, 'compile', broken_compile)
    messages = []
    model = torch.nn.Linear(2, 2)
    assert training_step.maybe_compile(model, torch.zeros(1, 2), messages.append) is model
    assert 'running eagerly' in messages[0]


def test_flops_of_a_convolution():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert utils.count_flops(conv, 8) == 2 * 8 * 8 * 8 * 3 * 3 * 3


def test_more_threads_than_free_cores_are_said_once_at_start(monkeypatch):
    threads = torch.get_num_threads()
    lines = []
    try:
        monkeypatch.setattr(utils, 'busy_cores', lambda: float(os.cpu_count()))  # other programs keep every core busy
        utils.set_threads(2, torch.device('cpu'), lines.append)
        assert torch.get_num_threads() == 2 and len(lines) == 1
        assert '2 CPU threads' in lines[0] and 'give --threads 1' in lines[0]
        monkeypatch.setattr(utils, 'busy_cores', lambda: 0.0)  # a quiet machine: nothing to say
        utils.set_threads(1, torch.device('cpu'), lines.append)
        assert len(lines) == 1
    finally:
        torch.set_num_threads(threads)
    monkeypatch.undo()
    assert 0 <= utils.busy_cores(0.05) <= os.cpu_count()
