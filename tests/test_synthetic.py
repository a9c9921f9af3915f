"""Tests for the synthetic data generator: on-disk layouts, class proportions, determinism, refusal, noise files."""

import hashlib
import os

import numpy as np
import pytest
from PIL import Image

import synthetic
from cli import UserError

N_TRAIN, N_TEST = 40, 24      # 24: AffectNet's 8 classes x MIN_PER_CLASS
SILENT = dict(log=lambda message: None)


def digest(root):
    """Hash of every file's relative path and bytes."""
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(folder, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, 'rb') as f:
                h.update(f.read())
    return h.hexdigest()


def read_labels(path):
    with open(path) as f:
        return [line.split() for line in f]


@pytest.fixture(scope='module')
def rafdb(tmp_path_factory):
    return synthetic.make_synthetic(str(tmp_path_factory.mktemp('syn') / 'rafdb'), 'rafdb', N_TRAIN, N_TEST, **SILENT)


@pytest.fixture(scope='module')
def affectnet(tmp_path_factory):
    return synthetic.make_synthetic(str(tmp_path_factory.mktemp('syn') / 'affectnet'), 'affectnet', N_TRAIN, N_TEST,
                                    **SILENT)


def test_rafdb_layout(rafdb):
    lines = read_labels(os.path.join(rafdb, 'EmoLabel', 'list_patition_label.txt'))
    names = [name for name, _ in lines]
    train = [f'train_{i:05d}.jpg' for i in range(1, N_TRAIN + 1)]
    assert names == train + [f'test_{i:04d}.jpg' for i in range(1, N_TEST + 1)]
    images = sorted(os.listdir(os.path.join(rafdb, 'Image', 'aligned')))
    assert images == sorted(name[:-4] + '_aligned.jpg' for name in names)
    assert not os.path.exists(rafdb + '.tmp')


@pytest.mark.parametrize('split, n', [('train', N_TRAIN), ('test', N_TEST)])
def test_rafdb_labels_follow_real_class_proportions(rafdb, split, n):
    lines = read_labels(os.path.join(rafdb, 'EmoLabel', 'list_patition_label.txt'))
    labels = [int(label) for name, label in lines if name.startswith(split)]
    counts = np.bincount(labels, minlength=8)[1:]
    assert counts.sum() == n and counts.min() >= synthetic.MIN_PER_CLASS
    np.testing.assert_array_equal(counts, synthetic.class_counts(synthetic.RAFDB_COUNTS[split], n))


def test_class_counts_are_exact_and_proportional():
    counts = synthetic.class_counts(synthetic.RAFDB_COUNTS['train'], 3000)
    assert counts.sum() == 3000
    real = np.asarray(synthetic.RAFDB_COUNTS['train'])
    expected = synthetic.MIN_PER_CLASS + (3000 - 7 * synthetic.MIN_PER_CLASS) * real / real.sum()
    assert np.abs(counts - expected).max() < 1


def test_affectnet_layout(affectnet):
    for split, n in (('train', N_TRAIN), ('val', N_TEST)):
        root = os.path.join(affectnet, f'{split}_class')
        assert sorted(os.listdir(root)) == [f'class{k:03d}' for k in range(1, 9)]
        counts = [len(os.listdir(os.path.join(root, folder))) for folder in sorted(os.listdir(root))]
        np.testing.assert_array_equal(counts, synthetic.class_counts(synthetic.AFFECTNET_COUNTS[split], n))
        names = [name for folder in os.listdir(root) for name in os.listdir(os.path.join(root, folder))]
        assert all(name.startswith('image') and name.endswith('.jpg') for name in names)


@pytest.mark.parametrize('layout', ['rafdb', 'affectnet'])
def test_images_are_100x100_rgb(layout, rafdb, affectnet):
    root = rafdb if layout == 'rafdb' else affectnet
    paths = [os.path.join(folder, name) for folder, _, files in os.walk(root) for name in files
             if name.endswith('.jpg')]
    assert len(paths) == N_TRAIN + N_TEST
    for path in paths:
        with Image.open(path) as image:
            assert image.format == 'JPEG' and image.mode == 'RGB' and image.size == (100, 100)


def test_same_seed_same_bytes_different_seed_differs(rafdb, tmp_path):
    # One worker against the fixture's pool of two: the bytes must not depend on how the work was split.
    again = synthetic.make_synthetic(str(tmp_path / 'again'), 'rafdb', N_TRAIN, N_TEST, workers=1, **SILENT)
    other = synthetic.make_synthetic(str(tmp_path / 'other'), 'rafdb', N_TRAIN, N_TEST, seed=1, **SILENT)
    assert digest(again) == digest(rafdb)
    assert digest(other) != digest(rafdb)


def test_refuses_non_empty_output(tmp_path):
    (tmp_path / 'keep.txt').write_text('user data')
    with pytest.raises(UserError, match='not empty'):
        synthetic.make_synthetic(str(tmp_path), 'rafdb', N_TRAIN, N_TEST, **SILENT)
    assert os.listdir(tmp_path) == ['keep.txt']


def test_fills_an_existing_empty_folder(tmp_path):
    out = synthetic.make_synthetic(str(tmp_path), 'affectnet', N_TRAIN, N_TEST, **SILENT)
    assert sorted(os.listdir(out)) == ['train_class', 'val_class']


@pytest.mark.parametrize('rate', synthetic.NOISE_RATES)
def test_noise_files_flip_exact_count_of_training_labels(rafdb, rate):
    clean = read_labels(os.path.join(rafdb, 'EmoLabel', 'list_patition_label.txt'))
    noisy = read_labels(os.path.join(rafdb, 'EmoLabel', f'new_{round(100 * rate)}_noise.txt'))
    assert [name for name, _ in noisy] == [name for name, _ in clean]
    flipped = [name for (name, a), (_, b) in zip(clean, noisy) if a != b]
    assert len(flipped) == round(rate * N_TRAIN)
    assert all(name.startswith('train') for name in flipped)
