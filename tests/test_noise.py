"""Training under label noise (noise.py): each method's loss and gradients equal the official code's (re-expressed
in tests/noise_reference.py), every parameter learns, SCN's relabelling resumes exactly, each method trains through
train.py on the networks it applies to and is refused elsewhere; ResNet-18; the AUROC and the last-5 mean."""
import json
import os
import sys

import pytest
import torch

import baselines
import cli
import formats
import noise
import train
import utils
from conftest import TINY_DARTS, make_run

pytestmark = pytest.mark.usefixtures('one_thread')

try:
    import noise_reference as reference
except ImportError:  # written by another engineer; the comparisons wait for it
    reference = None
needs_reference = pytest.mark.skipif(reference is None, reason='tests/noise_reference.py (the literal re-expression '
                                                               'of the official losses) is not there yet')
ATOL = 1e-5


def leaves(*shapes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=generator).requires_grad_() for shape in shapes]


def assert_same_loss_and_gradients(ours, theirs, inputs):
    """Two scalar losses of the same leaves: equal values and equal gradients."""
    assert torch.allclose(ours, theirs, atol=ATOL), (ours, theirs)
    for a, b in zip(torch.autograd.grad(ours, inputs, allow_unused=True),
                    torch.autograd.grad(theirs, inputs, allow_unused=True)):
        assert (a is None) == (b is None) or torch.count_nonzero(a if a is not None else b) == 0
        if a is not None and b is not None:
            assert torch.allclose(a, b, atol=ATOL)


LABELS = torch.tensor([0, 3, 6, 2, 2, 5, 1, 4, 3, 0])


# ---------------------------------------------------------------- the losses equal the official code's

@needs_reference
@pytest.mark.parametrize('beta, margin_1', [(0.7, 0.15), (0.7, 3.0), (0.5, 0.07)])  # 3.0: the rank term is active
def test_scn_loss_and_relabelling_equal_the_official(beta, margin_1):
    inputs = leaves((10, 512), (1, 512), (1,), (7, 512), (7,))
    ours, scaled, attention = noise.scn(*inputs, LABELS, beta, margin_1)
    theirs, scaled_ref, attention_ref = reference.scn(*inputs, LABELS, beta, margin_1)
    assert torch.allclose(scaled, scaled_ref, atol=ATOL) and torch.allclose(attention, attention_ref, atol=ATOL)
    assert_same_loss_and_gradients(ours, theirs, inputs)
    logits = 3 * torch.randn(10, 7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(noise.scn_relabel(logits, LABELS, 0.2), reference.scn_relabel(logits, LABELS, 0.2))


@needs_reference
def test_rul_loss_equals_the_official():
    inputs = leaves((10, 64), (10, 64), (7, 64), (7,))
    permutation = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    assert_same_loss_and_gradients(noise.rul(*inputs, LABELS, permutation),
                                   reference.rul(*inputs, LABELS, permutation), inputs)


@needs_reference
@pytest.mark.parametrize('size', [7, 3])
def test_eac_loss_equals_the_official(size):
    inputs = leaves((10, 16, size, size), (10, 16, size, size), (7, 16), (7,))
    ours = noise.eac(*inputs, LABELS, lam=5.0)
    assert_same_loss_and_gradients(ours, reference.eac(*inputs, LABELS, lam=5.0), inputs)
    # its grid_sample flip-back (built for 7x7 maps) is our flip at that size
    literal = reference.eac(*inputs, LABELS, lam=5.0, literal=True, grid_size=(size, size))
    assert_same_loss_and_gradients(noise.eac(*inputs, LABELS, lam=5.0), literal, inputs)


@needs_reference
@pytest.mark.parametrize('literal', [False, True])
@pytest.mark.parametrize('epoch', [0, 7])
def test_nla_loss_and_weights_equal_the_official(literal, epoch):
    inputs = leaves((10, 7), (10, 7))
    with torch.no_grad():
        inputs[0][:5] *= 4  # confident samples, some with the arg max on the label
    ours, weights = noise.nla(*inputs, LABELS, epoch, 10, literal=literal)
    theirs, weights_ref = reference.nla(*inputs, LABELS, epoch, 10, literal=literal)
    assert torch.allclose(weights, weights_ref, atol=ATOL)
    assert_same_loss_and_gradients(ours, theirs, inputs)


def test_nla_consistency_is_the_jensen_shannon_divergence_of_the_probabilities():
    z1, z2 = torch.randn(6, 7), torch.randn(6, 7)
    p, q = z1.softmax(1), z2.softmax(1)
    m = (p + q) / 2
    expected = (0.5 * (p * (p / m).log()).sum(1) + 0.5 * (q * (q / m).log()).sum(1)).mean()
    assert torch.allclose(noise.nla_consistency(z1, z2), expected, atol=1e-6)
    assert noise.nla_consistency(z1, z1) == pytest.approx(0, abs=1e-7)


# ---------------------------------------------------------------- ResNet-18 and the networks with a method's heads

def test_resnet18_splits_into_features_and_head_and_has_the_papers_parameter_count():
    model = baselines.create_model('resnet18', 7).eval()
    assert utils.count_parameters(model) == 11_180_103  # 8 classes: 513 more
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 512, 2, 2)
        assert torch.allclose(model.forward_head(features), model(x), atol=1e-6)
        assert torch.allclose(model.class_activation_maps(features).mean((2, 3)) + model.fc.bias, model(x), atol=1e-5)


def test_resnet18_loads_a_face_recognition_checkpoint_and_names_what_does_not_load(tmp_path):
    import torchvision
    source = torchvision.models.resnet18(num_classes=8631)  # a face-identity classifier, replaced
    state = {'module.' + k: v for k, v in source.state_dict().items()}
    torch.save({'state_dict': {**state, 'module.feature.weight': torch.zeros(3)}, 'epoch': 9}, tmp_path / 'r.pth')
    model, lines = baselines.create_model('resnet18', 7), []
    baselines.load_pretrained(model, 'resnet18', str(tmp_path / 'r.pth'), lines.append)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.weight.shape == (7, 512)
    assert lines[0].endswith('its classifier is replaced; not loaded: feature.weight')
    torch.save({'state_dict': {'conv1.weight': torch.zeros(1)}}, tmp_path / 'other.pth')
    with pytest.raises(Exception, match='does not hold the weights of resnet18'):
        baselines.load_pretrained(model, 'resnet18', str(tmp_path / 'other.pth'))


NETWORKS = {'resnet18': {}, 'fgw_fer': {}, 'shufflenet_v2': {},
            'gla_fernet': {'genotype': __import__('genotypes').genotype_by_name('GLA_FERNet'), 'init_channels': 8,
                           'layers': 3, 'image_size': 32}}


def method_args(method, **flags):
    return cli.parse(train.parser, train.check_args, argv=['--noise_method', method, '--image_size', '32',
                                                           '--epochs', '4', *sum(([f'--{k}', str(v)] for k, v in
                                                                                  flags.items()), [])])


@pytest.mark.parametrize('method', ['scn', 'rul', 'eac', 'nla'])
@pytest.mark.parametrize('name', list(NETWORKS))
def test_every_parameter_of_network_and_heads_learns_under_each_method(name, method):
    torch.manual_seed(0)
    args = method_args(method, **({'scn_relabel_epoch': 0} if method == 'scn' else {}))
    network = baselines.create_model(name, 7, **NETWORKS[name])
    model = noise.inference_network(network, args)
    labels = torch.arange(4) % 7
    state = noise.Method(args, model, labels.clone(), labels.clone(), train.Augmentation())
    state.set_epoch(1)
    forward = noise.TrainingForward(model, method).train()
    x = torch.randn(4, 3, 32, 32)
    loss, logits, score = state.loss(forward(*state.inputs(x)), labels, torch.arange(4))
    loss.backward()
    unused = set()
    if method == 'rul':  # RUL classifies with its own fc: the network's head is not used
        features = network.forward_features(x)
        own = {id(p) for p in network.parameters()}
        grads = torch.autograd.grad(features.sum(), list(network.parameters()), allow_unused=True)
        unused = {id(p) for p, g in zip(network.parameters(), grads) if g is None} & own
    # connected to the loss (a gradient of zero is a dead ReLU of the network, as FGW-FER's 1-unit CBAM MLPs have)
    missing = [n for n, p in model.named_parameters() if id(p) not in unused and p.grad is None]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert not missing and torch.isfinite(loss) and logits.shape == (4, 7) and score.shape == (4,)
    model.eval()
    with torch.no_grad():  # inference: SCN's scaled logits, RUL's mean alone
        assert utils.main_logits(model(x)).shape == (4, 7)


def test_the_training_step_computes_the_pure_loss():
    """SCN, RUL and EAC through their networks and noise.Method equal the pure functions on the same features."""
    torch.manual_seed(0)
    labels, x = torch.arange(6) % 7, torch.randn(6, 3, 64, 64)
    scn_model = noise.inference_network(baselines.create_model('resnet18', 7), method_args('scn')).train()
    state = noise.Method(method_args('scn'), scn_model, labels.clone(), None, train.Augmentation())
    state.set_epoch(0)
    torch.manual_seed(1)
    loss = state.loss(noise.TrainingForward(scn_model, 'scn').train()(x), labels, torch.arange(6))[0]
    torch.manual_seed(1)
    pooled = scn_model.network.forward_features(x).mean((2, 3))
    expected = noise.scn(pooled, scn_model.attention.weight, scn_model.attention.bias, scn_model.network.fc.weight,
                         scn_model.network.fc.bias, labels)[0]
    assert torch.allclose(loss, expected, atol=1e-6)
    args = method_args('rul', rul_dropout=0, image_size=64)  # no dropout: the same mean and variance twice
    rul_model = noise.inference_network(baselines.create_model('resnet18', 7), args).train()
    state = noise.Method(args, rul_model, labels.clone(), None, train.Augmentation())
    state.set_epoch(0)
    loss = state.loss(noise.TrainingForward(rul_model, 'rul').train()(*state.inputs(x)), labels, torch.arange(6))[0]
    features = rul_model.network.forward_features(x)
    expected = noise.rul(rul_model.mu(features), rul_model.logvar(features), rul_model.fc.weight, rul_model.fc.bias,
                         labels, state.permutation)
    assert torch.allclose(loss, expected, atol=1e-6)
    network = baselines.create_model('resnet18', 7).train()
    state = noise.Method(method_args('eac'), network, labels.clone(), None, train.Augmentation())
    flipped = x.flip(-1)
    loss = state.loss(noise.TrainingForward(network, 'eac').train()(x, flipped), labels, torch.arange(6))[0]
    # in training mode BatchNorm normalises by the batch alone: the same features again
    features, flipped_features = network.forward_features(x), network.forward_features(flipped)
    expected = noise.eac(features, flipped_features, network.fc.weight, network.fc.bias, labels)
    assert torch.allclose(loss, expected, atol=1e-6)


# ---------------------------------------------------------------- AUROC and the last-5 mean

def test_auroc_is_exact_with_ties_counted_half():
    scores = torch.tensor([0.9, 0.8, 0.8, 0.3, 0.8, 0.1, 0.5])
    flipped = torch.tensor([True, True, False, True, False, False, False])
    # pairs (flipped, clean): 0.9 beats all 4; each 0.8 beats 0.5, 0.1 and ties two 0.8s; 0.3 beats 0.1 only
    expected = (4 + (2 + 0.5 * 2) + 1) / (3 * 4)
    assert noise.auroc(scores, flipped).item() == pytest.approx(expected, abs=1e-12)
    assert noise.auroc(torch.tensor([1.0, 2.0]), torch.tensor([False, True])).item() == 1.0
    assert torch.isnan(noise.auroc(torch.tensor([1.0, 2.0]), torch.tensor([False, False])))


def test_the_last_five_epochs_mean_is_exact_and_survives_a_resume():
    selection = train.Selection(has_validation=False, log=lambda *a: None)
    accuracies = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]
    for epoch, accuracy in enumerate(accuracies):
        if epoch == 4:  # a resume restores the record from the checkpoint
            best = json.loads(json.dumps(selection.best))
            selection = train.Selection(has_validation=False, log=lambda *a: None)
            selection.best = best
        selection.update(epoch, {'accuracy': accuracy, 'balanced_accuracy': accuracy / 2, 'f1': 1.0}, None)
    record = selection.records()['last5_mean']
    assert record == {'epoch': 6, 'epochs': 5, 'accuracy': 50.0, 'balanced_accuracy': 25.0, 'f1': 1.0}


# ---------------------------------------------------------------- through train.py

@pytest.fixture(scope='module')
def noisy_dataset(tmp_path_factory):
    """The tiny synthetic RAF-DB layout, with its noise files (EmoLabel/new_20_noise.txt: 20 % of its training labels
    flipped); a copy of its own, as its runs' caches and files must not meet the other tests'."""
    from synthetic import make_synthetic
    root = tmp_path_factory.mktemp('noisy') / 'synthetic'
    make_synthetic(str(root), n_train=64, n_test=28, seed=3, log=lambda *a: None)
    assert (root / 'EmoLabel/new_20_noise.txt').is_file()
    return str(root)


def parse(argv):
    return cli.parse(train.parser, train.check_args, recipe=train.recipe, argv=argv)


@pytest.mark.parametrize('method', ['none', 'rul', 'eac', 'nla'])  # scn: test_scn_relabelling_resumes_exactly
def test_each_method_trains_resnet18_an_epoch_and_predict_rebuilds_it(noisy_dataset, tmp_path, method):
    import predict
    folder = make_run(train, ['--data', noisy_dataset, '--noise', '20', '--model', 'resnet18', '--noise_method',
                              method, '--epochs', '1'], tmp_path)
    metrics = json.load(open(os.path.join(folder, 'metrics.json')))
    assert metrics['complete'] and metrics['label_noise']['method'] == method
    assert 0 <= metrics['label_noise']['auroc'] <= 1 and metrics['last5_mean']['epochs'] == 1
    assert metrics['last5_mean']['accuracy'] == metrics['last']['accuracy']
    log = open(os.path.join(folder, 'log.txt')).read()
    assert f'{method}: AUROC of its per-sample score for flipped training labels' in log and 'last-1 mean' in log
    trained = predict.load_network(folder, 'last')  # RUL's heads are rebuilt and loaded
    assert sum(p.numel() for p in trained.model.parameters()) == metrics['params']


def test_scn_relabelling_resumes_exactly(noisy_dataset, tmp_path, monkeypatch):
    import predict
    argv = ['--data', noisy_dataset, '--noise', '20', '--model', 'fgw_fer', '--noise_method', 'scn',
            '--scn_relabel_epoch', '0', '--epochs', '2', '--save', 'scn']
    (tmp_path / 'full').mkdir()
    (tmp_path / 'resumed').mkdir()
    full = make_run(train, argv, tmp_path / 'full')
    stopped = make_run(train, argv, tmp_path / 'resumed', interrupt_after=0)
    monkeypatch.setattr(sys, 'argv', ['train.py', '--resume', stopped])  # the resume rule reads the command line
    train.main(parse(['--resume', stopped]), utils.Log())
    a, b = (torch.load(os.path.join(f, 'checkpoint.pt'), weights_only=True) for f in (full, stopped))
    assert torch.equal(a['noise']['labels'], b['noise']['labels'])
    assert a['model'].keys() == b['model'].keys() and all(torch.equal(a['model'][k], b['model'][k]) for k in a['model'])
    assert json.load(open(os.path.join(full, 'metrics.json'))) == json.load(open(os.path.join(stopped, 'metrics.json')))
    clean = torch.tensor(formats.read_rafdb_list(os.path.join(noisy_dataset, formats.RAFDB_LABEL_FILE))[1])
    assert len(a['noise']['labels']) < len(clean)  # fgw_fer's recipe holds out a validation split
    metrics = json.load(open(os.path.join(full, 'metrics.json')))
    assert metrics['label_noise']['relabelled'] >= metrics['label_noise']['restored'] >= 0
    assert 'scn: AUROC of its per-sample score' in open(os.path.join(full, 'log.txt')).read()
    trained = predict.load_network(full, 'last')  # the attention head is rebuilt and loaded
    assert sum(p.numel() for p in trained.model.parameters()) == metrics['params']
    import csv
    import report
    report.main(report.parser.parse_args([full, '--out', str(tmp_path / 'report'), '--no-figures', '--no-latency']),
                utils.Log())
    row, = csv.DictReader(open(tmp_path / 'report' / 'runs.csv'))
    assert float(row['last5_mean_accuracy']) == metrics['last5_mean']['accuracy'] and row['noise_method'] == 'scn'
    assert float(row['auroc']) == metrics['label_noise']['auroc']
    assert '| scn | ' in open(tmp_path / 'report' / 'report.md').read()


@pytest.mark.parametrize('argv, message', [
    (['--model', 'cores_se', '--noise_method', 'eac'], 'eac needs class activation maps'),
    (['--model', 'rlr_cnet', '--noise_method', 'nla'], "rlr_cnet's two-branch training is a loss of its own"),
    (['--noise_method', 'scn', '--auxiliary', *TINY_DARTS], "--auxiliary: scn's loss uses the network's features"),
    (['--model', 'fgw_fer', '--noise_method', 'rul', '--mixup_alpha', '0.2'], "rul's loss needs each image's own"),
    (['--model', 'fgw_fer', '--noise_method', 'eac', '--label_smoothing', '0.1'], '--label_smoothing: eac'),
    (['--model', 'fgw_fer', '--noise_method', 'nla', '--compile'], "--compile compiles the network's forward"),
    (['--model', 'fgw_fer', '--noise_method', 'eac', '--scn_beta', '0.5'], '--scn_beta: applies to --noise_method scn'),
    (['--model', 'fgw_fer', '--pretrained', '/no/such.pth'], '--pretrained: applies to --model'),
    (['--model', 'resnet18', '--pretrained', '/no/such.pth'], '/no/such.pth is no folder or file'),
])
def test_a_method_is_refused_where_it_does_not_apply(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


def test_each_method_takes_its_papers_recipe_on_resnet18():
    settings = {m: parse(['--model', 'resnet18', '--noise_method', m]) for m in ('none', 'scn', 'rul', 'eac', 'nla')}
    assert {(a.learning_rate, a.batch_size, a.epochs) for a in settings.values()} == {
        (1e-4, 32, 60), (1e-3, 64, 70), (2e-4, 64, 60), (2e-4, 32, 60)}
    assert (settings['scn'].learning_rate, settings['scn'].batch_size, settings['scn'].epochs) == (1e-3, 64, 70)
    for args in settings.values():
        assert (args.optimizer, args.weight_decay, args.scheduler, args.lr_gamma, args.image_size) == \
            ('adam', 1e-4, 'exponential', 0.9, 224)
    # cores_se keeps its own recipe, whose Mixup/CutMix and label smoothing a method's loss does not take
    args = parse(['--model', 'cores_se', '--noise_method', 'nla', '--mixup_alpha', '0', '--cutmix_alpha', '0',
                  '--label_smoothing', '0'])
    assert args.noise_method == 'nla' and args.optimizer == 'adamw'


@pytest.mark.parametrize('method', ['scn', 'rul'])
def test_a_methods_network_has_features_and_head_so_grad_cam_runs(method):
    """predict.py --cam computes Grad-CAM from forward_features / forward_head: a method's network keeps them."""
    torch.manual_seed(0)
    args = cli.parse(train.parser, train.check_args, train.recipe,
                     ['--model', 'fgw_fer', '--noise_method', method, '--image_size', '32'])
    network = noise.inference_network(baselines.create_model('fgw_fer', 7), args).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(network.forward_head(network.forward_features(x)), network(x), atol=1e-6)
