"""train.py's models, recipes and training options: samplers, upper-half masking, Mixup/CutMix, schedules, SWA,
validation selection; every model trains through train.py and resumes bit-exactly."""
import json
import os
import sys

import pytest
import torch

import augment
import cli
import data_loader
import train
import utils

pytestmark = pytest.mark.usefixtures('one_thread')

TINY = ['--epochs', '1', '--batch_size', '16', '--image_size', '16', '--workers', '0', '--device', 'cpu',
        '--report_freq', '2']
RAFDB_TRAIN = (1290, 281, 717, 4772, 1982, 705, 2524)  # RAF-DB's training images per class


def parse(argv):
    return cli.parse(train.parser, train.check_args, recipe=train.recipe, argv=argv)


# ---------------------------------------------------------------- recipes and flags

def test_a_models_recipe_gives_the_defaults_and_every_item_is_overridable():
    args = parse(['--model', 'cores_se', '--epochs', '5', '--swa_start', 'none'])
    assert args.recipe == 'cores_se'
    assert (args.optimizer, args.learning_rate, args.weight_decay, args.lr_warmup_epochs, args.image_size) == \
        ('adamw', 3e-4, 0.05, 3, 224)
    assert (args.mixup_alpha, args.cutmix_alpha, args.label_smoothing, args.pretrained) == (0.2, 0.2, 0.1, 'imagenet')
    assert (args.epochs, args.swa_start) == (5, None)  # given on the command line: the recipe does not apply
    assert parse(['--model', 'fgw_fer', '--dataset', 'rafdb']).image_size == 100  # RAF-DB's aligned size
    assert parse(['--model', 'fgw_fer']).image_size == 48
    rlr = parse(['--model', 'rlr_cnet'])
    assert (rlr.optimizer, rlr.scheduler, rlr.lr_step_size, rlr.lr_gamma, rlr.batch_size, rlr.erasing) == \
        ('sgd', 'step', 50, 0.5, 16, 'upper')
    released = parse([])
    assert released.recipe == 'gla_fernet' and (released.optimizer, released.scheduler) == ('sgd', 'cosine')


@pytest.mark.parametrize('argv, message', [
    (['--model', 'fgw_fer', '--layers', '5'], '--layers: applies to --model gla_fernet, not to --model fgw_fer'),
    (['--model', 'rlr_cnet', '--mixup_alpha', '0.2'], "do not combine with rlr_cnet's two-branch training"),
    (['--model', 'fgw_fer', '--pretrained', 'imagenet'], '--pretrained: applies to --model shufflenet_v2 or cores_se'),
    (['--model', 'cores_se', '--pretrained', '/no/such/folder'], '/no/such/folder is no folder'),
    (['--model', 'cores_se', '--image_size', '16'], '--image_size: cores_se needs at least 32 pixels, got 16'),
    (['--scheduler', 'plateau', '--lr_warmup_epochs', '2'], '--lr_warmup_epochs: applies to --scheduler cosine'),
    (['--epochs', '3', '--lr_warmup_epochs', '3'], '--lr_warmup_epochs: a warm-up of 3 epochs leaves none of the '
                                                   '--epochs 3 at the full learning rate'),
    (['--model', 'cores_se', '--epochs', '1'], "a warm-up of 3 epochs (the cores_se recipe's) leaves none"),
    (['--momentum', '1.5'], 'argument --momentum: must lie in [0, 1), got 1.5'),
])
def test_flags_that_do_not_fit_the_model_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        parse(argv)
    assert message in capsys.readouterr().err


def learning_rates(args):
    """The learning rate of each epoch of a run with these arguments, as train.py's optimizer and schedule give them."""
    optimizer = train.make_optimizer([torch.nn.Parameter(torch.zeros(1))], args)
    scheduler = train.make_scheduler(optimizer, args)
    lrs = []
    for _ in range(args.epochs):
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warm_up_never_trains_at_lr_zero_and_the_cosine_goes_on_from_epoch_zero():
    lrs = learning_rates(parse(['--model', 'cores_se']))  # 50 epochs, 3 warm-up epochs, 3e-4 to 1e-6
    assert lrs[:4] == pytest.approx([1e-4, 2e-4, 3e-4, 2.9735e-4], rel=1e-4)  # the notebook: 0, 0, 1e-4, 2e-4, ...
    assert lrs[-1] == pytest.approx(1e-6 + (3e-4 - 1e-6) * (1 + torch.cos(torch.tensor(torch.pi * 49 / 50))) / 2)


def test_adam_and_the_exponential_schedule_of_the_noisy_label_papers():
    args = parse(['--model', 'resnet18', '--epochs', '4'])
    optimizer = train.make_optimizer([torch.nn.Parameter(torch.zeros(1))], args)
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults['weight_decay'] == 1e-4
    assert learning_rates(args) == pytest.approx([1e-4 * 0.9 ** t for t in range(4)])
    warm = parse(['--model', 'resnet18', '--epochs', '4', '--lr_warmup_epochs', '2'])
    # then as if it had started at epoch 0
    assert learning_rates(warm) == pytest.approx([0.5e-4, 1e-4, 1e-4 * 0.81, 1e-4 * 0.729])


# ---------------------------------------------------------------- samplers, masking, mixing

def class_counts_of(loader, epochs):
    counts = torch.zeros(7)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for _, y in loader:
            counts += torch.bincount(y, minlength=7)
    return counts


@pytest.mark.parametrize('sampler', ['reversed', 'balanced'])
def test_class_samplers_draw_classes_as_bbn_and_are_seeded_by_epoch(sampler):
    labels = torch.repeat_interleave(torch.arange(7), torch.tensor(RAFDB_TRAIN) // 4)  # 3,062 images
    loader = data_loader.DeviceLoader(torch.zeros(len(labels), 3, 1, 1, dtype=torch.uint8), labels, 512, 'cpu',
                                      image_size=1, sampler=sampler)
    frequencies = class_counts_of(loader, epochs=10) / (10 * len(labels))
    inverse = 1 / torch.tensor(RAFDB_TRAIN, dtype=torch.float)
    expected = inverse / inverse.sum() if sampler == 'reversed' else torch.full((7,), 1 / 7)
    assert torch.allclose(frequencies, expected, rtol=0.1)  # 4 standard deviations for the rarest class
    again = class_counts_of(loader, epochs=10)  # (seed, epoch) alone decide the batches: resume needs no state
    assert torch.equal(again, frequencies * (10 * len(labels)))


def test_upper_half_masking_keeps_the_area_in_range_and_the_top_edge_in_the_upper_half():
    size, n = 48, 2000
    x = torch.full((n, 3, size, size), 7.0)
    generator = torch.Generator().manual_seed(0)
    augmentation = augment.Augmentation(flip_or_pixel_noise=False, erasing='upper', fill='black')
    masked = augmentation.erase(x, generator, data_loader.normaliser('cpu')) != 7.0
    applied = masked.flatten(1).any(1)
    assert abs(applied.float().mean() - 0.5) < 0.05  # with p = 0.5
    rows, cols = masked[applied, 0].any(2), masked[applied, 0].any(1)
    top = rows.float().argmax(1)
    height, width = rows.sum(1), cols.sum(1)
    assert torch.equal(masked[applied, 0].sum((1, 2)), height * width)  # one rectangle per image
    assert (top < size // 2).all() and top.max() == size // 2 - 1
    area = height * width / size ** 2
    assert area.min() > 0.03 and area.max() < 0.32  # U(0.04, 0.3), up to the rounding of both sides


@pytest.mark.parametrize('mixup_alpha, cutmix_alpha', [(0.2, 0.0), (0.0, 0.2), (0.2, 0.2)])
def test_mixup_and_cutmix_targets_sum_to_one_and_match_the_mixed_images(mixup_alpha, cutmix_alpha):
    classes, smoothing = 8, 0.1
    labels = torch.arange(classes)  # the mirrored partner always has another class
    x = labels.float().view(-1, 1, 1, 1).expand(-1, 3, 16, 16)
    mixer = augment.BatchMixer(classes, mixup_alpha, cutmix_alpha, 0.5, smoothing, seed=1)
    for epoch in range(5):
        mixer.set_epoch(epoch)
        mixed, targets = mixer(x, labels)
        assert torch.allclose(targets.sum(1), torch.ones(classes)) and targets.min() >= smoothing / classes - 1e-7
        lam = (targets[labels, labels] - smoothing / classes) / (1 - smoothing)  # the image's own share
        own = (mixed == x).float().mean((1, 2, 3))
        if mixed.eq(x).logical_or(mixed.eq(x.flip(0))).all() and cutmix_alpha:  # CutMix: a box of the partner
            assert torch.allclose(own, lam, atol=1e-6)
        else:  # Mixup: a blend
            assert torch.allclose(mixed, lam.view(-1, 1, 1, 1) * x + (1 - lam.view(-1, 1, 1, 1)) * x.flip(0), atol=1e-5)
        mixer.set_epoch(epoch)
        assert torch.equal(mixer(x, labels)[1], targets)  # (seed, epoch) alone decide the mixing


def test_the_layouts_own_validation_set_wins_over_val_portion():
    images, labels = torch.zeros(40, 3, 2, 2, dtype=torch.uint8), torch.arange(40) % 4
    part = data_loader.ImageSet(images, labels, list('abcd'), 'root')
    messages = []
    _, val, source = train.validation_split(data_loader.Splits(part, part, val=part), 0.2, 0, messages.append)
    assert val is part and source == "the dataset's own" and '--val_portion 0.2 is not' in messages[0]
    trained, val, _ = train.validation_split(data_loader.Splits(part, part), 0.2, 0, messages.append)
    assert len(val.labels) == 8 and torch.equal(torch.bincount(val.labels), torch.full((4,), 2))
    assert len(trained.labels) == 32
    assert train.validation_split(data_loader.Splits(part, part), 0.0, 0, messages.append)[1] is None


# ---------------------------------------------------------------- through train.py

def run_train(argv, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    train.main(parse(argv), utils.Log())
    folders = [f for f in os.listdir(cwd) if f.startswith('eval-')]
    assert len(folders) == 1
    return cwd / folders[0]


@pytest.mark.parametrize('model, extra, params', [
    ('fgw_fer', [], 64_176),
    ('shufflenet_v2', [], 1_260_779),
    ('rlr_cnet', [], 1_027_457),
    ('cores_se', ['--image_size', '32', '--pretrained', 'none', '--swa_start', 'none', '--batch_size', '32',
                  '--lr_warmup_epochs', '0'],
     53_763_751),
])
def test_every_model_trains_an_epoch_and_writes_the_usual_outputs(dataset, tmp_path, monkeypatch, model, extra, params):
    folder = run_train(['--data', dataset, '--model', model, *TINY, *extra], tmp_path, monkeypatch)
    for name in ['log.txt', 'metrics.json', 'confusion_matrix.png', 'best.pt', 'weights.pt', 'checkpoint.pt',
                 'args.json']:
        assert (folder / name).is_file(), name
    metrics = json.load(open(folder / 'metrics.json'))
    assert metrics['complete'] and metrics['model'] == model and metrics['params'] == params
    assert metrics['recipe']['name'] == model and metrics['macs'] * 2 == metrics['flops'] and metrics['weights'] > 0
    assert sum(map(sum, metrics['last']['confusion_matrix'])) == 28
    assert 'balanced_accuracy' in metrics['last'] and metrics['test_selected']['epoch'] == 0
    log = (folder / 'log.txt').read_text()
    assert f'recipe {model}: ' in log and 'train_balanced_acc' in log and 'test_balanced_acc' in log
    if model == 'fgw_fer':  # its recipe holds out a validation split, and selects on it
        assert metrics['best_pt'] == 'val_selected' and metrics['val_selected']['epoch'] == 0
        assert 'valid_balanced_acc' in log and 'validation-selected' in log
    else:
        assert metrics['best_pt'] == 'test_selected' and 'val_selected' not in metrics
        assert 'TEST accuracy (no validation set' in log


def resume_after_interruption(argv, cwd, monkeypatch, stop_after_epoch):
    """Run train.py in this process, stop it (Ctrl-C) once the checkpoint of `stop_after_epoch` is written, then
    resume it as `train.py --resume FOLDER` would. Returns the run folder."""
    real_save = utils.Run.save

    def save_then_stop(run, epoch, *args, **kwargs):
        real_save(run, epoch, *args, **kwargs)
        if epoch == stop_after_epoch:
            raise KeyboardInterrupt
    monkeypatch.setattr(utils.Run, 'save', save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_train(argv, cwd, monkeypatch)
    monkeypatch.setattr(utils.Run, 'save', real_save)
    folder = next(cwd.glob('eval-*'))
    resume = ['--resume', str(folder)]
    monkeypatch.setattr(sys, 'argv', ['train.py', *resume])  # the resume rule reads the command line
    train.main(parse(resume), utils.Log())
    return folder


def saved(path):
    return torch.load(path, weights_only=True)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize('model, extra, files', [
    # Two-branch cumulative learning: a uniform and a reversed sampler, upper-half masking, step schedule.
    ('rlr_cnet', ['--epochs', '3', '--lr_step_size', '1'], ['weights.pt', 'best.pt']),
    # SWA from epoch 1, Mixup/CutMix with label smoothing, the plateau scheduler on a validation split.
    ('fgw_fer', ['--epochs', '3', '--swa_start', '0.34', '--mixup_alpha', '0.2', '--cutmix_alpha', '0.2',
                 '--label_smoothing', '0.1', '--plateau_patience', '0'], ['weights.pt', 'best.pt', 'swa.pt']),
])
def test_resumed_run_ends_with_the_same_weights(dataset, tmp_path, monkeypatch, model, extra, files):
    argv = ['--data', dataset, '--model', model, *TINY, *extra]
    snapshots = []
    real_save = utils.Run.save

    def save(run, epoch, best, stateful, **kwargs):  # the weights after each epoch
        snapshots.append({k: v.clone() for k, v in stateful['model'].state_dict().items()})
        real_save(run, epoch, best, stateful, **kwargs)
    monkeypatch.setattr(utils.Run, 'save', save)
    (tmp_path / 'full').mkdir()
    full = run_train(argv, tmp_path / 'full', monkeypatch)
    monkeypatch.setattr(utils.Run, 'save', real_save)
    (tmp_path / 'resumed').mkdir()
    resumed = resume_after_interruption(argv, tmp_path / 'resumed', monkeypatch, stop_after_epoch=1)
    for name in files:
        assert_same_state(saved(full / name), saved(resumed / name))
    metrics = json.load(open(full / 'metrics.json'))
    assert metrics == json.load(open(resumed / 'metrics.json'))
    selected = metrics[metrics['best_pt']]['epoch']
    assert_same_state(saved(full / 'best.pt'), snapshots[selected])
    if 'swa.pt' in files:  # the equal average of the weights after epochs 1 and 2, before the BatchNorm update
        swa = saved(full / 'swa.pt')
        for key, value in swa.items():
            if key.endswith(('running_mean', 'running_var', 'num_batches_tracked')):
                continue
            assert torch.allclose(value, (snapshots[1][key] + snapshots[2][key]) / 2, atol=1e-6), key
        assert swa['stem.1.running_mean'].abs().sum() > 0  # recomputed: the copy SWA made at the start held zeros
        assert metrics['swa']['accuracy'] >= 0 and 'val_accuracy' in metrics['swa']
