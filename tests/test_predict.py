"""predict.py: predictions equal the evaluation's, unreadable images are skipped, exports match eager PyTorch in a
fresh process, and bad input stops with one message."""
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import formats
import predict
import utils
from cli import UserError
from conftest import MODEL_RUNS


def predict_main(argv, cwd, monkeypatch):
    """predict.py's main() in this process, with the flags checked as on the command line."""
    monkeypatch.chdir(cwd)
    args = predict.parser.parse_args(argv)
    predict.check_args(predict.parser, args)
    predict.main(args, utils.Log())


def test_predictions_on_the_test_images_are_the_evaluations(runs, dataset, tmp_path, monkeypatch):
    _, _, test_names, test_labels = formats.read_rafdb_list(os.path.join(dataset, formats.RAFDB_LABEL_FILE))
    paths = [str(formats.rafdb_image_path(dataset, name)) for name in test_names]
    predict_main([runs['gla_seed0'], *paths, '--out', 'predictions.csv', '--topk', '3'], tmp_path, monkeypatch)
    with open(tmp_path / 'predictions.csv') as f:
        rows = list(csv.DictReader(f))
    assert [row['path'] for row in rows] == paths
    assert list(rows[0]) == ['path', 'prediction', 'probability', 'class_2', 'probability_2', 'class_3',
                             'probability_3', 'error']
    metrics = json.load(open(os.path.join(runs['gla_seed0'], 'metrics.json')))
    names = metrics['class_names']
    matrix = [[0] * len(names) for _ in names]
    for row, label in zip(rows, test_labels):
        matrix[label][names.index(row['prediction'])] += 1
        assert float(row['probability']) >= float(row['probability_2']) >= float(row['probability_3'])
    best = metrics['test_selected']  # best.pt holds the network of this epoch
    assert matrix == best['confusion_matrix']
    accuracy = 100 * sum(matrix[i][i] for i in range(len(names))) / len(rows)
    assert accuracy == pytest.approx(best['accuracy'], abs=1e-9)


def test_a_corrupt_image_is_listed_and_skipped_and_the_others_are_classified(runs, dataset, tmp_path, monkeypatch):
    images = tmp_path / 'faces' / 'nested'
    images.mkdir(parents=True)
    sources = sorted((formats.rafdb_image_path(dataset, f'test_{i:04d}.jpg') for i in (1, 2, 3)))
    for i, source in enumerate(sources):
        shutil.copy(source, images / f'face{i}.jpg')
    (images / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
    (images / 'notes.txt').write_text('not an image')
    shutil.copy(sources[0], images / '.hidden.jpg')
    predict_main([runs['gla_seed0'], str(tmp_path / 'faces'), '--out', 'out.json', '--workers', '2'], tmp_path,
                 monkeypatch)
    result = json.load(open(tmp_path / 'out.json'))
    assert [p['path'] for p in result['predictions']] == [str(images / f'face{i}.jpg') for i in range(3)]
    assert len(result['skipped']) == 1 and result['skipped'][0]['path'] == str(images / 'broken.jpg')
    assert 'is corrupt or truncated' in result['skipped'][0]['error']
    # each image is classified as it is alone: a bad neighbour changes nothing
    predict_main([runs['gla_seed0'], *map(str, sources), '--out', 'alone.json'], tmp_path, monkeypatch)
    alone = json.load(open(tmp_path / 'alone.json'))['predictions']
    assert [p['top_k'] for p in alone] == [p['top_k'] for p in result['predictions']]


@pytest.mark.parametrize('model', MODEL_RUNS)
def test_exported_program_reloads_in_a_fresh_process_and_matches_eager(runs, tmp_path, monkeypatch, model):
    run = runs[model]
    predict_main([run, '--export', 'net.pt2'], tmp_path, monkeypatch)
    described = json.load(open(tmp_path / 'net.pt2.json'))
    assert described['image_size'] == 16 and len(described['class_names']) == 7
    assert described['max_difference_from_eager'] <= predict.EXPORT_TOLERANCE
    trained = predict.load_network(run)
    pixels = torch.randint(0, 256, (5, 3, 16, 16), generator=torch.Generator().manual_seed(1)).float()
    with torch.no_grad():
        expected = predict.Deployable(trained.model)(pixels)
    torch.save({'pixels': pixels, 'expected': expected}, tmp_path / 'check.pt')
    # A fresh interpreter that can import torch and nothing of this repository.
    script = ("import torch; data = torch.load('check.pt'); net = torch.export.load('net.pt2').module(); "
              "worst = max((net(data['pixels'][:n]) - data['expected'][:n]).abs().max().item() for n in (1, 5)); "
              "print('max difference', worst)")
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) <= 1e-4


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in predict.ONNX_PACKAGES),
                    reason='ONNX export is an optional extra: onnx, onnxscript and onnxruntime are not installed')
def test_onnx_export_matches_eager(runs, tmp_path, monkeypatch):
    predict_main([runs['gla_seed0'], '--export', 'net.onnx'], tmp_path, monkeypatch)
    import onnxruntime
    trained = predict.load_network(runs['gla_seed0'])
    pixels = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(2)).float()
    with torch.no_grad():
        expected = predict.Deployable(trained.model)(pixels)
    session = onnxruntime.InferenceSession(str(tmp_path / 'net.onnx'), providers=['CPUExecutionProvider'])
    got = torch.from_numpy(session.run(None, {'pixels': pixels.numpy()})[0])
    assert (got - expected).abs().max().item() <= 1e-4


def test_onnx_export_without_its_packages_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(SystemExit):
        predict.check_args(predict.parser, predict.parser.parse_args(['run', '--export', 'net.onnx']))
    assert 'pip install onnx onnxscript onnxruntime; or export to .pt2, which needs torch alone' in capsys.readouterr().err


def test_bad_input_stops_with_one_message(runs, dataset, tmp_path, monkeypatch):
    face = str(formats.rafdb_image_path(dataset, 'test_0001.jpg'))
    empty = tmp_path / 'empty'
    (empty / 'sub').mkdir(parents=True)
    (empty / 'sub' / 'readme.txt').write_text('no faces here')
    killed = tmp_path / 'eval-killed'  # stopped during its first epoch: arguments, no weights yet
    killed.mkdir()
    shutil.copy(os.path.join(runs['gla_seed0'], 'args.json'), killed)
    failed = tmp_path / 'eval-failed'
    failed.mkdir()
    (failed / utils.FAILED_MARKER).write_text('the loss became non-finite during training epoch 0\n')
    (tmp_path / 'notes.pt').write_text('not a checkpoint')
    for argv, message in [
        ([runs['gla_seed0'], str(empty)], f'{empty} holds no images (.jpg'),
        ([runs['gla_seed0'], str(tmp_path / 'missing*.jpg')], 'is no file or folder, and no file matches it'),
        ([str(killed), face], 'holds no best.pt: the run has not finished its first epoch'),
        ([str(failed), face], 'holds no best.pt: the run failed before it saved one (the loss became non-finite'),
        ([runs['search'], face], 'is a train_search.py run: its supernet is no trained classifier'),
        ([os.path.join(runs['search'], 'checkpoint.pt'), face], 'is a train_search.py run'),
        ([str(tmp_path / 'notes.pt'), face], 'is not a checkpoint or weights file of train.py'),
        ([str(tmp_path / 'nowhere'), face], 'does not exist; give an eval run folder of train.py'),
    ]:
        with pytest.raises(UserError) as error:
            predict_main(argv, tmp_path, monkeypatch)
        assert message in str(error.value), (argv, str(error.value))
    assert sorted(os.listdir(tmp_path)) == ['empty', 'eval-failed', 'eval-killed', 'notes.pt']  # nothing written
