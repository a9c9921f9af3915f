"""Metrics, checkpoints and model statistics in utils.py."""
import os

import pytest
import torch

import utils


def test_confusion_matrix_metrics_match_hand_computation():
    matrix = utils.ConfusionMatrix(3, 'cpu')
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 1, 1, 2, 2])
    matrix.update(torch.nn.functional.one_hot(predictions, 3).float(), targets)
    metrics = matrix.compute()
    assert metrics['confusion_matrix'] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert metrics['accuracy'] == pytest.approx(100 * 4 / 6)
    precision = [1.0, 0.5, 0.5]
    recall = [2 / 3, 0.5, 1.0]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert metrics['precision'] == pytest.approx(100 * sum(precision) / 3)
    assert metrics['recall'] == pytest.approx(100 * sum(recall) / 3)
    assert metrics['f1'] == pytest.approx(100 * sum(f1) / 3)
    assert metrics['per_class_accuracy'] == pytest.approx([100 * r for r in recall])


def test_class_never_predicted_counts_zero_precision():
    matrix = utils.ConfusionMatrix(2, 'cpu')
    matrix.update(torch.tensor([[1., 0.], [1., 0.]]), torch.tensor([0, 1]))
    metrics = matrix.compute()
    assert metrics['precision'] == pytest.approx(25.0) and metrics['f1'] == pytest.approx(100 / 3)


def test_nonfinite_loss_is_reported():
    meter = utils.LossMeter('cpu')
    meter.update(torch.tensor(1.0), 4)
    utils.check_finite(meter, 'epoch 0')
    meter.update(torch.tensor(float('nan')), 4)
    with pytest.raises(utils.UserError, match='non-finite during epoch 1'):
        utils.check_finite(meter, 'epoch 1')


def test_checkpoint_is_written_atomically_and_bad_resume_paths_are_explained(tmp_path):
    path = tmp_path / 'checkpoint.pt'
    utils.save_checkpoint({'epoch': 3, 'weights': torch.ones(2)}, str(path))
    assert os.listdir(tmp_path) == ['checkpoint.pt']
    state, folder = utils.load_checkpoint(str(tmp_path))
    assert state['epoch'] == 3 and folder == str(tmp_path)
    with pytest.raises(utils.UserError, match='does not exist'):
        utils.load_checkpoint(str(tmp_path / 'missing'))
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(utils.UserError, match='not a readable checkpoint'):
        utils.load_checkpoint(str(path))


def test_flops_of_a_convolution():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert utils.count_flops(conv, 8) == 2 * 8 * 8 * 8 * 3 * 3 * 3


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(model):
        raise RuntimeError('no compiler here')
    monkeypatch.setattr(torch, 'compile', broken_compile)
    messages = []
    model = torch.nn.Linear(2, 2)
    assert utils.maybe_compile(model, torch.zeros(1, 2), messages.append) is model
    assert 'running eagerly' in messages[0]
