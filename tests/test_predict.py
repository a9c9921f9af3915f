"""predict.py: predictions equal the evaluation's (also of networks with a noise method's heads), unreadable images
are skipped, exports match eager PyTorch in a fresh process and hold their own description, a checkpoint alone says
its classes and (grey) input, an interrupted export never leaves a description of another network, long work says how
far it is, bad input stops with one message, and report.py reaches trained networks without predict.py."""
import csv
import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import baselines
import data_loader
import formats
import predict
import run_folder
import trained
import train
import utils
from errors import UserError
from conftest import MODEL_RUNS, make_run


def predict_main(argv, cwd, monkeypatch):
    """predict.py's main() in this process, with the flags parsed and checked as on the command line."""
    monkeypatch.chdir(cwd)
    predict.main(predict.parse(argv), utils.Log())


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


def test_exported_programs_reload_in_a_fresh_process_and_match_eager(runs, tmp_path, monkeypatch):
    checks = {}
    for model in MODEL_RUNS:
        run, path = runs[model], tmp_path / f'{model}.pt2'
        predict_main([run, '--export', str(path)], tmp_path, monkeypatch)
        described = json.load(open(f'{path}.json'))
        assert described['image_size'] == 16 and len(described['class_names']) == 7
        assert described['max_difference_from_eager'] <= predict.EXPORT_TOLERANCE
        assert described['trained_on'] == 'RGB' and described['grayscale'] is False
        # A baseline has no genotype: its description says null, as its metrics.json does.
        assert described['genotype'] == json.load(open(os.path.join(run, 'metrics.json')))['genotype']
        assert (described['genotype'] is None) == (not baselines.uses_genotype(model))
        assert described['sha256'] == predict.sha256(path)
        # the file holds its own description; the .json beside it is a copy, with the file's name and digest
        own = predict.read_description(str(path))
        assert own == {k: v for k, v in described.items() if k not in ('file', 'sha256')}
        network = trained.load_network(run)
        pixels = torch.randint(0, 256, (5, 3, 16, 16), generator=torch.Generator().manual_seed(1)).float()
        with torch.no_grad():
            checks[path.name] = {'pixels': pixels,
                                 'expected': predict.Deployable(network.model, grayscale=False)(pixels)}
    torch.save(checks, tmp_path / 'check.pt')
    # A fresh interpreter that can import torch and nothing of this repository.
    script = ("import torch; checks = torch.load('check.pt')\n"
              "for name, data in checks.items():\n"
              "    net = torch.export.load(name).module()\n"
              "    worst = max((net(data['pixels'][:n]) - data['expected'][:n]).abs().max().item() for n in (1, 5))\n"
              "    print(name, 'max difference', worst)")
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == len(MODEL_RUNS) and all(float(line.split()[-1]) <= 1e-4 for line in lines)


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in predict.ONNX_PACKAGES),
                    reason='ONNX export is an optional extra: onnx, onnxscript and onnxruntime are not installed')
def test_onnx_export_matches_eager(runs, tmp_path, monkeypatch):
    predict_main([runs['gla_seed0'], '--export', 'net.onnx'], tmp_path, monkeypatch)
    import onnxruntime
    network = trained.load_network(runs['gla_seed0'])
    pixels = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(2)).float()
    with torch.no_grad():
        expected = predict.Deployable(network.model, grayscale=False)(pixels)
    session = onnxruntime.InferenceSession(str(tmp_path / 'net.onnx'), providers=['CPUExecutionProvider'])
    got = torch.from_numpy(session.run(None, {'pixels': pixels.numpy()})[0])
    assert (got - expected).abs().max().item() <= 1e-4
    assert predict.read_description(str(tmp_path / 'net.onnx'))['class_names'] == network.class_names


def test_an_onnx_file_holds_its_description_in_its_metadata(tmp_path):
    """What export does to an ONNX file, on a one-node model: torch's ONNX exporter (onnxscript) is an optional
    extra, the onnx package is enough here."""
    onnx = pytest.importorskip('onnx')
    from onnx import TensorProto, helper
    value = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node('Identity', ['pixels'], ['logits'])], 'net', [value('pixels')],
                              [value('logits')])

    class Program:  # as torch.onnx.export's ONNXProgram saves itself
        def save(self, path):
            onnx.save(helper.make_model(graph), path)
    description = {'class_names': ['Surprise', 'Fear'], 'image_size': 16}
    predict.save_program(Program(), str(tmp_path / 'net.onnx.tmp'), description)  # as atomic_write names it
    os.replace(tmp_path / 'net.onnx.tmp', tmp_path / 'net.onnx')
    assert predict.read_description(str(tmp_path / 'net.onnx')) == description


def test_onnx_export_without_its_packages_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(SystemExit):
        predict.parse(['run', '--export', 'net.onnx'])
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
    (failed / run_folder.FAILED).write_text('the loss became non-finite during training epoch 0\n')
    (tmp_path / 'notes.pt').write_text('not a checkpoint')
    shutil.copy(os.path.join(runs['gla_seed0'], run_folder.BEST), tmp_path / 'best.pt')  # the weights alone
    old = torch.load(os.path.join(runs['gla_seed0'], run_folder.CHECKPOINT), weights_only=True)
    old.pop('class_names', None)  # a checkpoint of a train.py that did not record them, out of its run folder
    old.pop('input', None)
    torch.save(old, tmp_path / 'old.pt')
    for argv, message in [
        ([runs['gla_seed0'], str(empty)], f'{empty} holds no images (.jpg'),
        ([runs['gla_seed0'], str(tmp_path / 'missing*.jpg')], 'is no file or folder, and no file matches it'),
        ([str(killed), face], 'holds no best.pt: the run has not finished its first epoch'),
        ([str(failed), face], 'holds no best.pt: the run failed before it saved one (the loss became non-finite'),
        ([runs['search'], face], 'is a train_search.py run: its supernet is no trained classifier'),
        ([os.path.join(runs['search'], 'checkpoint.pt'), face], 'is a train_search.py run'),
        ([str(tmp_path / 'notes.pt'), face], 'is not a readable checkpoint or weights file'),
        ([str(tmp_path / 'nowhere'), face], 'does not exist; give an eval run folder of train.py'),
        ([str(tmp_path / 'best.pt'), face], f'{tmp_path / "best.pt"} holds the weights alone, and its folder '
                                            f'{tmp_path} is no run folder of train.py (no args.json) to say which '
                                            f'network, classes and input they are; give the run folder, or its '
                                            f'checkpoint.pt'),
        ([str(tmp_path / 'old.pt'), face], 'old.pt does not say which classes its network predicts'),
    ]:
        with pytest.raises(UserError) as error:
            predict_main(argv, tmp_path, monkeypatch)
        assert message in str(error.value), (argv, str(error.value))
    assert sorted(os.listdir(tmp_path)) == ['best.pt', 'empty', 'eval-failed', 'eval-killed', 'notes.pt',
                                            'old.pt']  # nothing written


@pytest.fixture(scope='module')
def grey_checkpoint(runs, tmp_path_factory):
    """The GLA-FERNet run's checkpoint.pt copied out of its folder, recording FER2013's class names and grey input as
    train.py records a FER2013 run's: only the checkpoint can say so."""
    checkpoint = torch.load(os.path.join(runs['gla_seed0'], run_folder.CHECKPOINT), weights_only=True)
    checkpoint['class_names'] = list(formats.FER2013_CLASSES)
    checkpoint['input'] = {'image_size': 16, 'grayscale': True, 'source_size': data_loader.SOURCE_SIZE}
    path = tmp_path_factory.mktemp('copied') / 'checkpoint.pt'
    torch.save(checkpoint, path)
    return str(path)


def test_a_copied_checkpoint_classifies_with_its_own_class_names_and_grey_input(runs, dataset, grey_checkpoint,
                                                                                 tmp_path, monkeypatch):
    face = formats.rafdb_image_path(dataset, 'test_0001.jpg')
    Image.open(face).convert('L').save(tmp_path / 'grey.png')
    predict_main([grey_checkpoint, str(face), '--out', 'copied.json', '--topk', '7'], tmp_path, monkeypatch)
    # The same network (checkpoint.pt holds the last epoch's) given the grey face, as a grey run's evaluation sees it.
    predict_main([runs['gla_seed0'], 'grey.png', '--weights', 'last', '--out', 'run.json', '--topk', '7'], tmp_path,
                 monkeypatch)
    copied = json.load(open(tmp_path / 'copied.json'))
    assert copied['class_names'] == formats.FER2013_CLASSES
    run_names = json.load(open(tmp_path / 'run.json'))['class_names']
    as_fer = [{'class': formats.FER2013_CLASSES[run_names.index(p['class'])], 'probability': p['probability']}
              for p in json.load(open(tmp_path / 'run.json'))['predictions'][0]['top_k']]
    assert copied['predictions'][0]['top_k'] == as_fer


def test_the_export_of_a_grey_run_says_grey_and_turns_colour_faces_grey(grey_checkpoint, tmp_path, monkeypatch):
    predict_main([grey_checkpoint, '--export', 'grey.pt2'], tmp_path, monkeypatch)
    described = json.load(open(tmp_path / 'grey.pt2.json'))
    assert described['grayscale'] is True and 'luminance replicated to 3 channels' in described['input']
    assert described['trained_on'] == 'grey (luminance replicated to 3 channels)'
    assert described['class_names'] == formats.FER2013_CLASSES
    colour = torch.randint(0, 256, (16, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    grey = np.stack([np.array(Image.fromarray(face).convert('L').convert('RGB')) for face in colour.numpy()])
    pixels = lambda faces: torch.as_tensor(faces).permute(0, 3, 1, 2).float().contiguous()
    network = trained.load_network(grey_checkpoint)
    exported = torch.export.load(tmp_path / 'grey.pt2').module()
    with torch.no_grad():
        expected = predict.Deployable(network.model, grayscale=False)(pixels(grey))  # the grey faces, as trained
        # PIL's luma exactly, so a colour face gets the logits of its grey version; a grey face passes unchanged
        assert torch.equal(predict.Deployable(network.model, grayscale=True)(pixels(colour)), expected)
        assert (exported(pixels(colour)) - expected).abs().max() <= predict.EXPORT_TOLERANCE
        assert (exported(pixels(grey)) - expected).abs().max() <= predict.EXPORT_TOLERANCE


def test_an_interrupted_export_never_leaves_a_description_of_another_network(runs, tmp_path, monkeypatch):
    predict_main([runs['gla_seed0'], '--export', 'net.pt2'], tmp_path, monkeypatch)
    first = (tmp_path / 'net.pt2').read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a kill: nothing after it runs, no clean-up
    for where, network_replaced in [((predict, 'save_program'), False), ((run_folder, 'write_json'), True)]:
        with monkeypatch.context() as patch:
            patch.setattr(*where, killed)
            with pytest.raises(KeyboardInterrupt):
                predict_main([runs['gla_seed1'], '--export', 'net.pt2'], tmp_path, monkeypatch)
        assert ((tmp_path / 'net.pt2').read_bytes() != first) == network_replaced
        assert not (tmp_path / 'net.pt2.json').exists()  # the earlier copy of the description went first
        described = predict.read_description(str(tmp_path / 'net.pt2'))  # the file's own, whichever file it is
        assert described['weights'] == os.path.join(runs['gla_seed1' if network_replaced else 'gla_seed0'], 'best.pt')
        assert [p.name for p in tmp_path.iterdir()] == ['net.pt2']  # no temporary file left


def test_a_failed_run_is_refused_unless_its_weights_file_is_given(runs, dataset, tmp_path, monkeypatch, capsys):
    failed = tmp_path / 'eval-failed'
    shutil.copytree(runs['gla_seed0'], failed, ignore=shutil.ignore_patterns('tensorboard'))
    (failed / run_folder.FAILED).write_text('the loss became non-finite during training epoch 1\n')
    face = str(formats.rafdb_image_path(dataset, 'test_0001.jpg'))
    with pytest.raises(UserError) as error:
        predict_main([str(failed), face], tmp_path, monkeypatch)
    assert str(error.value) == (f'{failed} is a run that failed (the loss became non-finite during training epoch 1); '
                                f'to classify with its best.pt anyway, give the file itself: {failed / "best.pt"}')
    capsys.readouterr()
    predict_main([str(failed / 'best.pt'), face], tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert 'failed (the loss became non-finite during training epoch 1); classifying with this file' in out
    assert f'{face}\t' in out  # and classified
    assert 'FAILED' in predict.parser.format_help()


def test_options_may_come_between_the_run_and_the_images():
    args = predict.parse(['RUN', '--topk', '2', 'a.jpg', '--out', 'p.csv', 'b.jpg'])
    assert (args.run, args.inputs, args.topk, args.out) == ('RUN', ['a.jpg', 'b.jpg'], 2, 'p.csv')


def test_an_output_in_a_missing_folder_is_refused_before_any_work(tmp_path, capsys):
    for flag, name in [('--out', 'p.csv'), ('--export', 'net.pt2')]:
        with pytest.raises(SystemExit):
            predict.parse(['RUN', 'face.jpg', flag, str(tmp_path / 'missing' / name)])
        assert (f'argument {flag}: cannot write {tmp_path / "missing" / name}: the folder {tmp_path / "missing"} does '
                f'not exist') in capsys.readouterr().err


def test_a_full_disk_says_to_run_predict_again_not_to_resume(runs, dataset, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(csv, 'writer', full)
    face = str(formats.rafdb_image_path(dataset, 'test_0001.jpg'))
    with pytest.raises(UserError) as error:
        predict_main([runs['gla_seed0'], face, '--out', 'p.csv'], tmp_path, monkeypatch)
    assert 'No space left on device' in str(error.value) and '--resume' not in str(error.value)
    assert os.listdir(tmp_path) == []


def test_long_work_says_what_it_does_and_how_far_it_is(runs, dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(utils.Progress, 'REPORT_SECONDS', 0)  # a line at every batch, not every 30 seconds
    _, _, test_names, _ = formats.read_rafdb_list(os.path.join(dataset, formats.RAFDB_LABEL_FILE))
    paths = [str(formats.rafdb_image_path(dataset, name)) for name in test_names]
    predict_main([runs['gla_seed0'], *paths, '--batch_size', '7', '--export', 'net.pt2'], tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert out.index('exporting gla_fernet') < out.index('exported')
    assert f'classified 7 of {len(paths)} images, ' in out and f'classified 21 of {len(paths)} images, ' in out
    assert ' images/s, 0:00:0' in out  # and the time left


def test_cam_without_faces_draws_the_map_of_each_images_predicted_class(runs, dataset, tmp_path, monkeypatch):
    """--cam works on whole images too (no detector needed): one figure per classified image, named after it."""
    sources = [formats.rafdb_image_path(dataset, f'test_{i:04d}.jpg') for i in (1, 2)]
    predict_main([runs['gla_seed0'], *map(str, sources), '--cam', 'maps', '--out', 'out.json'], tmp_path, monkeypatch)
    names = [f'{os.path.splitext(os.path.basename(path))[0]}.png' for path in sources]
    assert sorted(os.listdir(tmp_path / 'maps')) == sorted(names)
    assert Image.open(tmp_path / 'maps' / names[0]).format == 'PNG'


def test_a_video_without_faces_is_refused_with_one_message(runs, tmp_path, monkeypatch):
    (tmp_path / 'clip.mp4').write_bytes(b'')
    with pytest.raises(UserError, match='clip.mp4 is a video; classify its faces with --faces'):
        predict_main([runs['gla_seed0'], str(tmp_path / 'clip.mp4')], tmp_path, monkeypatch)


# ---------------------------------------------------------------- networks with a noise method's heads

@pytest.fixture(scope='module')
def noise_runs(dataset, tmp_path_factory):
    """FGW-FER trained an epoch with SCN's attention head and with RUL's mean and variance heads."""
    folder = tmp_path_factory.mktemp('noise_runs')
    return {method: make_run(train, ['--data', dataset, '--epochs', '1', '--model', 'fgw_fer', '--noise_method',
                                     method, '--save', method], folder) for method in ('scn', 'rul')}


@pytest.mark.parametrize('method', ['scn', 'rul'])
def test_a_noise_methods_network_predicts_and_exports_its_own_evaluations_probabilities(method, noise_runs, dataset,
                                                                                        tmp_path, monkeypatch):
    folder = noise_runs[method]
    _, _, test_names, test_labels = formats.read_rafdb_list(os.path.join(dataset, formats.RAFDB_LABEL_FILE))
    paths = [str(formats.rafdb_image_path(dataset, name)) for name in test_names]
    predict_main([folder, *paths, '--weights', 'last', '--topk', '7', '--out', 'p.json', '--export', 'net.pt2'],
                 tmp_path, monkeypatch)
    result = json.load(open(tmp_path / 'p.json'))
    names = result['class_names']
    predicted = torch.tensor([[{t['class']: t['probability'] for t in p['top_k']}[name] for name in names]
                              for p in result['predictions']])
    # The run's own test evaluation (utils.evaluate on train.py's test loader), its logits caught on the way.
    network = trained.load_network(folder, 'last')
    images = data_loader.load_images(paths, network.input['source_size'], root=str(tmp_path), log=lambda *a: None)
    loader = data_loader.evaluation_loader(images, torch.tensor(test_labels), network.args, torch.device('cpu'))
    logits = []
    hook = network.model.register_forward_hook(lambda module, x, output: logits.append(utils.main_logits(output)))
    _, matrix = utils.evaluate(network.model, loader, len(names))
    hook.remove()
    evaluated = torch.softmax(torch.cat(logits).float(), dim=1)
    torch.testing.assert_close(predicted, evaluated, rtol=0, atol=1e-6)
    metrics = json.load(open(os.path.join(folder, 'metrics.json')))
    assert matrix.compute()['confusion_matrix'] == metrics['last']['confusion_matrix']  # what the run recorded
    exported = torch.export.load(tmp_path / 'net.pt2').module()  # pixels 0..255 at the run's size, as documented
    with torch.no_grad():
        exported_probabilities = torch.softmax(exported(data_loader.resize(images, network.args.image_size)), dim=1)
    torch.testing.assert_close(exported_probabilities, evaluated, rtol=0, atol=1e-5)


def test_report_reaches_trained_networks_without_predict_and_trained_loads_no_training_code():
    script = ('import sys, trained; assert "train" not in sys.modules, "trained imports train"\n'
              'import report; assert "predict" not in sys.modules, "report imports predict"')
    result = subprocess.run([sys.executable, '-c', script], cwd=os.path.dirname(os.path.dirname(__file__)),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
