"""Training under label noise (noise.py): each method's loss and gradients equal the official code's (re-expressed
in tests/noise_reference.py), every parameter learns, SCN's relabelling resumes exactly, each method trains through
train.py on the networks it applies to and is refused elsewhere; ResNet-18; the AUROC and the last-5 mean."""
import argparse
import json
import os
import shutil
import sys

import pytest
import torch

import baselines
import cli
import formats
import model
import noise
import recipes
import train
import utils
from conftest import TINY_DARTS, make_run
from errors import UserError
from selection import Selection

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

class FeaturesAsInput(torch.nn.Module):
    """A network whose last feature map is its input, with a linear head after pooling (weights given): a method's
    training forward and loss on it are functions of leaves the test holds, comparable with the official code's."""

    def __init__(self, fc_weight=None, fc_bias=None, head=True):
        super().__init__()
        self.head = head
        if fc_weight is not None:
            self.fc = torch.nn.Linear(fc_weight.shape[1], fc_weight.shape[0])
            with torch.no_grad():
                self.fc.weight.copy_(fc_weight)
                self.fc.bias.copy_(fc_bias)

    def forward_features(self, x):
        return x

    def forward_head(self, features):
        return self.fc(features.mean((2, 3))) if self.head else features

    def class_activation_maps(self, features, detach_weights=False, mirrored=False):
        return model.linear_class_maps(self.fc, features, detach_weights)

    def forward(self, x):
        return self.forward_head(x)


def training_loss(name, network, inputs, targets, epoch=0, **flags):
    """The loss training computes: the method's training forward, then its loss (noise.METHODS)."""
    method = noise.method_class(name)(method_args(name, **flags), LABELS.clone(), None, train.Augmentation())
    method.set_epoch(epoch)
    return method.loss(method.forward(network.train(), *inputs), *targets(method))


def assert_same_gradients(ours, ours_wrt, theirs, theirs_wrt):
    assert torch.allclose(ours, theirs, atol=ATOL), (ours, theirs)
    for a, b in zip(torch.autograd.grad(ours, ours_wrt), torch.autograd.grad(theirs, theirs_wrt)):
        assert torch.allclose(a.reshape(b.shape), b, atol=ATOL)


@needs_reference
@pytest.mark.parametrize('beta, margin_1', [(0.7, 0.15), (0.7, 3.0), (0.5, 0.07)])  # 3.0: the rank term is active
def test_scn_training_loss_and_relabelling_equal_the_official(beta, margin_1):
    features, attention_weight, attention_bias, fc_weight, fc_bias = leaves((10, 512), (1, 512), (1,), (7, 512), (7,))
    network = noise.SCNNetwork(FeaturesAsInput(fc_weight, fc_bias), 512)
    with torch.no_grad():
        network.attention.weight.copy_(attention_weight)
        network.attention.bias.copy_(attention_bias)
    x = features.detach().view(10, 512, 1, 1).requires_grad_()
    loss, scaled, score = training_loss('scn', network, (x,), lambda m: (LABELS,), scn_beta=beta,
                                        scn_margin_1=margin_1)
    theirs, scaled_ref, attention_ref = reference.scn(features, attention_weight, attention_bias, fc_weight, fc_bias,
                                                      LABELS, beta, margin_1)
    assert torch.allclose(scaled, scaled_ref, atol=ATOL) and torch.allclose(-score, attention_ref[:, 0], atol=ATOL)
    assert_same_gradients(loss, [x, network.attention.weight, network.attention.bias, network.network.fc.weight,
                                 network.network.fc.bias], theirs,
                          [features, attention_weight, attention_bias, fc_weight, fc_bias])
    # the relabelling training does after the step (SCN.after_step), on the step's scaled logits
    args = method_args('scn', scn_relabel_epoch=0)
    method = noise.SCN(args, LABELS.clone(), None, train.Augmentation())
    method.set_epoch(0)
    logits = 3 * torch.randn(10, 7, generator=torch.Generator().manual_seed(1))
    method.after_step(logits, LABELS, torch.zeros(10), torch.arange(10))
    assert torch.equal(method.labels, reference.scn_relabel(logits, LABELS, 0.2))


class Constant(torch.nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, features):
        return self.value


@needs_reference
def test_rul_training_loss_equals_the_official():
    mu, logvar, fc_weight, fc_bias = leaves((10, 64), (10, 64), (7, 64), (7,))
    network = noise.RULNetwork(FeaturesAsInput(head=False), (64, 1, 1), 7, dim=64)
    network.mu, network.logvar = torch.nn.Identity(), Constant(logvar)  # the heads' outputs are the leaves
    with torch.no_grad():
        network.fc.weight.copy_(fc_weight)
        network.fc.bias.copy_(fc_bias)
    x = mu.detach().clone().requires_grad_()
    permutation = torch.randperm(10, generator=torch.Generator().manual_seed(2))
    loss, _, _ = training_loss('rul', network, (x, permutation), lambda m: (LABELS, permutation))
    theirs = reference.rul(mu, logvar, fc_weight, fc_bias, LABELS, permutation)
    assert_same_gradients(loss, [x, logvar, network.fc.weight, network.fc.bias], theirs, [mu, logvar, fc_weight, fc_bias])


@needs_reference
@pytest.mark.parametrize('size', [7, 3])
def test_eac_training_loss_equals_the_official(size):
    features, flipped, fc_weight, fc_bias = leaves((10, 16, size, size), (10, 16, size, size), (7, 16), (7,))
    network = FeaturesAsInput(fc_weight, fc_bias)
    x, x_flipped = (t.detach().clone().requires_grad_() for t in (features, flipped))
    loss, _, _ = training_loss('eac', network, (x, x_flipped), lambda m: (LABELS,))
    ours_wrt = [x, x_flipped, network.fc.weight, network.fc.bias]
    assert_same_gradients(loss, ours_wrt, reference.eac(features, flipped, fc_weight, fc_bias, LABELS, lam=5.0),
                          [features, flipped, fc_weight, fc_bias])
    # its grid_sample flip-back (built for 7x7 maps) is our flip at that size
    literal = reference.eac(features, flipped, fc_weight, fc_bias, LABELS, lam=5.0, literal=True, grid_size=(size, size))
    loss, _, _ = training_loss('eac', network, (x, x_flipped), lambda m: (LABELS,))
    assert_same_gradients(loss, ours_wrt, literal, [features, flipped, fc_weight, fc_bias])


@needs_reference
@pytest.mark.parametrize('literal', [False, True])
@pytest.mark.parametrize('epoch', [0, 7])
def test_nla_training_loss_and_weights_equal_the_official(literal, epoch):
    z1, z2 = leaves((10, 7), (10, 7))
    with torch.no_grad():
        z1[:5] *= 4  # confident samples, some with the arg max on the label
    flags = {'epochs': 10, **({'noise_literal': ''} if literal else {})}
    loss, _, score = training_loss('nla', FeaturesAsInput(head=False), (z1, z2), lambda m: (LABELS, m.eps),
                                   epoch=epoch, **flags)
    theirs, weights_ref = reference.nla(z1, z2, LABELS, epoch, 10, literal=literal)
    assert torch.allclose(-score, weights_ref, atol=ATOL)
    assert_same_gradients(loss, [z1, z2], theirs, [z1, z2])


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
    """train.py's arguments for `method`; a flag given '' is a switch."""
    flags = {'image_size': 32, 'epochs': 4, **flags}
    return cli.parse(train.parser, train.check_args, argv=['--noise_method', method, *sum(
        ([f'--{k}', str(v)] if v != '' else [f'--{k}'] for k, v in flags.items()), [])])


@pytest.mark.parametrize('method', ['scn', 'rul', 'eac', 'nla'])
@pytest.mark.parametrize('name', list(NETWORKS))
def test_every_parameter_of_network_and_heads_learns_under_each_method(name, method):
    torch.manual_seed(0)
    args = method_args(method, **({'scn_relabel_epoch': 0} if method == 'scn' else {}))
    network = baselines.create_model(name, 7, **NETWORKS[name])
    model = noise.network_with_heads(network, args)
    labels = torch.arange(4) % 7
    state = noise.method_class(method)(args, labels.clone(), labels.clone(), train.Augmentation())
    state.set_epoch(1)
    forward = noise.TrainingForward(model, state).train()
    x = torch.randn(4, 3, 32, 32)
    inputs, targets = state.batch(x, labels)
    loss, logits, score = state.loss(forward(*inputs), *targets)
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
    selection = Selection(has_validation=False, log=lambda *a: None)
    accuracies = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]
    for epoch, accuracy in enumerate(accuracies):
        if epoch == 4:  # a resume restores the record from the checkpoint
            best = json.loads(json.dumps(selection.best))
            selection = Selection(has_validation=False, log=lambda *a: None)
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
    unused = noise.method_class(method).unused_parameters(trained.model, trained.args.image_size)
    assert method != 'rul' or sum(p.numel() for p in unused) == 512 * 7 + 7  # ResNet-18's fc, which RUL never uses
    assert sum(p.numel() for p in trained.model.parameters()) - sum(p.numel() for p in unused) == metrics['params']


def test_scn_relabelling_resumes_exactly(noisy_dataset, tmp_path, monkeypatch):
    import predict
    argv = ['--data', noisy_dataset, '--noise', '20', '--model', 'fgw_fer', '--noise_method', 'scn',
            '--scn_relabel_epoch', '0', '--scn_margin_2', '0.05', '--epochs', '2', '--save', 'scn']
    (tmp_path / 'full').mkdir()
    (tmp_path / 'resumed').mkdir()
    # what each step trained on, and the labels after each epoch, in the uninterrupted run
    steps, after_epoch = [], []
    after_step, end_epoch = noise.SCN.after_step, noise.SCN.end_epoch
    monkeypatch.setattr(noise.SCN, 'after_step', lambda self, logits, y, score, index: (
        steps.append((self.epoch, index.clone(), y.clone())), after_step(self, logits, y, score, index))[1])
    monkeypatch.setattr(noise.SCN, 'end_epoch', lambda self: (
        end_epoch(self), after_epoch.append(self.labels.clone()))[0])
    full = make_run(train, argv, tmp_path / 'full')
    monkeypatch.undo()
    noisy_labels = torch.empty_like(after_epoch[0])
    for epoch, index, y in steps:
        if epoch == 0:
            noisy_labels[index] = y  # the labels as epoch 0 drew them (each sample once, before its relabelling)
    changed = after_epoch[0] != noisy_labels
    assert changed.any(), 'SCN relabelled nothing in epoch 0: the test would not see its labels resume'
    for epoch, index, y in steps:
        if epoch == 1:  # the next epoch's batches carry the relabelled labels
            assert torch.equal(y, after_epoch[0][index])
    assert any(changed[index].any() for epoch, index, _ in steps if epoch == 1)
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
    (['--noise_method', 'scn', '--auxiliary', *TINY_DARTS], "which --auxiliary True would change; give no --auxiliary"),
    (['--model', 'fgw_fer', '--noise_method', 'rul', '--mixup_alpha', '0.2'], "rul: its loss is defined on each image's"
                                                                              " own hard label"),
    (['--model', 'fgw_fer', '--noise_method', 'eac', '--label_smoothing', '0.1'], 'give --label_smoothing 0'),
    # every conflicting flag at once, each said to come from the model's recipe
    (['--model', 'cores_se', '--noise_method', 'scn'], "--mixup_alpha 0.2 (the cores_se recipe's), --cutmix_alpha 0.2 "
                                                       "(the cores_se recipe's), --label_smoothing 0.1 (the cores_se "
                                                       "recipe's) would change; give --mixup_alpha 0 --cutmix_alpha 0 "
                                                       "--label_smoothing 0"),
    (['--noise', '10', '--noise_file', 'EmoLabel/x.txt'], '--noise_file: give it or --noise 10, not both'),
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
    network = noise.network_with_heads(baselines.create_model('fgw_fer', 7), args).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(network.forward_head(network.forward_features(x)), network(x), atol=1e-6)


def test_the_methods_are_a_registry_that_refuses_an_unknown_name():
    assert list(noise.METHODS) == list(recipes.NOISE_METHODS)  # train.py's choices and flags, parsed without torch
    assert all(noise.METHODS[name].name == name for name in noise.METHODS)
    with pytest.raises(UserError, match="--noise_method 'coteaching' is not one of none, scn, rul, eac, nla"):
        noise.method_class('coteaching')
    with pytest.raises(UserError, match='coteaching'):
        noise.network_with_heads(baselines.create_model('fgw_fer', 7), argparse.Namespace(noise_method='coteaching'))


def test_eac_consistency_is_exact_for_fgw_fers_convolutional_head():
    """FGW-FER's class maps come from a 3x3 convolution: the mirror image's maps use the mirrored kernel, so that a
    network whose features mirror with the image has a consistency of 0 (with the kernel itself: not)."""
    torch.manual_seed(0)
    network = baselines.create_model('fgw_fer', 7).eval()
    features = torch.randn(2, network.head[1].in_channels, 5, 5)
    maps = network.class_activation_maps(features)
    mirrored = network.class_activation_maps(features.flip(-1), mirrored=True)
    assert noise.attention_consistency(maps, mirrored) < 1e-12
    assert noise.attention_consistency(maps, network.class_activation_maps(features.flip(-1))) > 1e-3
    method = noise.EAC(method_args('eac', model='fgw_fer'), LABELS.clone(), None, train.Augmentation())
    _, cams, flipped_cams = method.forward(FlippedFeatures(network), features, features.flip(-1))
    assert noise.attention_consistency(cams, flipped_cams) < 1e-12


class FlippedFeatures(torch.nn.Module):
    """FGW-FER's head on given features (its features are its input)."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward_features(self, x):
        return x

    def forward_head(self, features):
        return self.network.forward_head(features)

    def class_activation_maps(self, features, **options):
        return self.network.class_activation_maps(features, **options)


def test_ruls_parameter_count_leaves_out_the_classifier_it_never_uses():
    args = method_args('rul', model='fgw_fer')
    network = baselines.create_model('fgw_fer', 7)
    model_with_heads = noise.network_with_heads(network, args)
    unused = noise.RUL.unused_parameters(model_with_heads, 32)
    head = {id(p) for p in network.head.parameters()}
    assert unused and {id(p) for p in unused} == head  # FGW-FER's convolutional head, and nothing else
    stats = train.network_statistics(model_with_heads, 32, 'cpu', unused)
    assert stats['params'] == utils.count_parameters(model_with_heads) - sum(p.numel() for p in unused)


# ---------------------------------------------------------------- the noisy-label file of a resumed run

def resume(folder, monkeypatch, *flags):
    argv = ['--resume', folder, *flags]
    monkeypatch.setattr(sys, 'argv', ['train.py', *argv])  # the resume rule reads the command line
    train.main(parse(argv), utils.Log())
    return json.load(open(os.path.join(folder, 'metrics.json')))


def test_a_resumed_run_refuses_a_noise_file_that_changed(noisy_dataset, tmp_path, monkeypatch):
    data = tmp_path / 'data'
    shutil.copytree(noisy_dataset, data)
    (tmp_path / 'runs').mkdir()
    stopped = make_run(train, ['--data', str(data), '--noise', '20', '--model', 'fgw_fer', '--epochs', '2'],
                       tmp_path / 'runs', interrupt_after=0)
    noise_file = data / 'EmoLabel/new_20_noise.txt'
    lines = noise_file.read_text().splitlines()
    name, label = lines[0].split()
    noise_file.write_text('\n'.join([f'{name} {int(label) % 7 + 1}', *lines[1:]]) + '\n')  # regenerated: one differs
    with pytest.raises(UserError, match=r'the --noise 20 file under .* is not the file this run started with'):
        resume(stopped, monkeypatch)
    noise_file.write_text('\n'.join(lines) + '\n')  # the original back: the run goes on
    assert resume(stopped, monkeypatch)['complete']


def test_a_noise_file_inside_the_dataset_moves_with_it_and_one_outside_may_be_given_anew(noisy_dataset, tmp_path,
                                                                                         monkeypatch):
    (tmp_path / 'runs').mkdir()
    shutil.copytree(noisy_dataset, tmp_path / 'before')
    noise_file = tmp_path / 'before/EmoLabel/new_20_noise.txt'
    stopped = make_run(train, ['--data', str(tmp_path / 'before'), '--noise_file', str(noise_file), '--model',
                               'fgw_fer', '--epochs', '2'], tmp_path / 'runs', interrupt_after=0)
    assert json.load(open(os.path.join(stopped, 'args.json')))['noise_file'] == 'EmoLabel/new_20_noise.txt'
    (tmp_path / 'before').rename(tmp_path / 'moved')
    assert resume(stopped, monkeypatch, '--data', str(tmp_path / 'moved'))['complete']

    outside = tmp_path / 'labels.txt'
    shutil.copy(tmp_path / 'moved/EmoLabel/new_20_noise.txt', outside)
    stopped = make_run(train, ['--data', str(tmp_path / 'moved'), '--noise_file', str(outside), '--model',
                               'fgw_fer', '--epochs', '2'], tmp_path / 'runs', interrupt_after=0)
    outside.rename(tmp_path / 'labels-moved.txt')
    assert resume(stopped, monkeypatch, '--noise_file', str(tmp_path / 'labels-moved.txt'))['complete']
