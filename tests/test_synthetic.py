"""Tests for the synthetic data generator: on-disk layouts, class proportions, determinism, refusal, noise files."""

import hashlib
import os
import re

import numpy as np
import pytest
from PIL import Image

import synthetic
from errors import UserError

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


def test_creates_missing_parent_folders(tmp_path):
    out = synthetic.make_synthetic(str(tmp_path / 'data' / 'syn'), 'affectnet', N_TRAIN, N_TEST, **SILENT)
    assert sorted(os.listdir(out)) == ['train_class', 'val_class'] and os.listdir(tmp_path / 'data') == ['syn']


def test_a_failed_generation_leaves_nothing(tmp_path):
    with pytest.raises(UserError, match='5 images cannot give each of 7 classes 3'):
        synthetic.make_synthetic(str(tmp_path / 'out'), 'rafdb', 5, 5, **SILENT)
    assert os.listdir(tmp_path) == []  # neither the output folder nor a half-built one beside it


@pytest.mark.parametrize('rate', synthetic.NOISE_RATES)
def test_noise_files_flip_exact_count_of_training_labels(rafdb, rate):
    clean = read_labels(os.path.join(rafdb, 'EmoLabel', 'list_patition_label.txt'))
    noisy = read_labels(os.path.join(rafdb, 'EmoLabel', f'new_{round(100 * rate)}_noise.txt'))
    assert [name for name, _ in noisy] == [name for name, _ in clean]
    flipped = [name for (name, a), (_, b) in zip(clean, noisy) if a != b]
    assert len(flipped) == round(rate * N_TRAIN)
    assert all(name.startswith('train') for name in flipped)


# ---------------------------------------------------------------- FER2013, CK+ and clip layouts

SMALL = {'fer2013': dict(n_train=35, n_test=21), 'ckplus': dict(n_train=21, subjects=8, frames=4),
         'clips': dict(n_train=9, subjects=3, frames=5), 'folder': dict(n_train=21, n_test=21)}


@pytest.fixture(scope='module')
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp('layouts')
    return {layout: synthetic.make_synthetic(str(root / layout), layout, **sizes, **SILENT)
            for layout, sizes in SMALL.items()}


def test_fer2013_layout_has_gray_rows_in_three_parts_and_ferplus_votes(layouts):
    with open(os.path.join(layouts['fer2013'], 'fer2013.csv')) as f:
        rows = [line.rstrip('\n').split(',') for line in f]
    assert rows[0] == ['emotion', 'pixels', 'Usage']
    assert [row[2] for row in rows[1:]] == ['Training'] * 35 + ['PublicTest'] * 21 + ['PrivateTest'] * 21
    assert all(len(row[1].split()) == 48 * 48 and 0 <= int(row[0]) < 7 for row in rows[1:])
    with open(os.path.join(layouts['fer2013'], 'fer2013new.csv')) as f:
        votes = [line.rstrip('\n').split(',') for line in f]
    assert votes[0][:2] == ['Usage', 'Image name'] and len(votes) == len(rows)
    assert [row[0] for row in votes[1:]] == [row[2] for row in rows[1:]]
    assert all(sum(map(int, row[2:])) == 10 for row in votes[1:])  # ten annotators


def test_ckplus_layout_has_subjects_sequences_and_emotion_files(layouts):
    root = layouts['ckplus']
    sequences = sorted(os.path.relpath(folder, os.path.join(root, 'cohn-kanade-images'))
                       for folder, dirs, files in os.walk(os.path.join(root, 'cohn-kanade-images')) if files)
    labelled = sorted(os.path.relpath(folder, os.path.join(root, 'Emotion'))
                      for folder, dirs, files in os.walk(os.path.join(root, 'Emotion')) if files)
    assert len(labelled) == 21 and len({s.split(os.sep)[0] for s in labelled}) == 8
    assert len(sequences) == 21 + 2  # every 4th subject also has an unlabelled sequence
    for sequence in labelled:
        subject, number = sequence.split(os.sep)
        frames = sorted(os.listdir(os.path.join(root, 'cohn-kanade-images', sequence)))
        assert frames == [f'{subject}_{number}_{k:08d}.png' for k in range(1, 5)]
        text = open(os.path.join(root, 'Emotion', sequence, f'{subject}_{number}_00000004_emotion.txt')).read()
        assert re.fullmatch(r'   [1-7]\.0000000e\+00\n', text)
    with Image.open(os.path.join(root, 'cohn-kanade-images', sequences[0], os.listdir(
            os.path.join(root, 'cohn-kanade-images', sequences[0]))[0])) as image:
        assert image.format == 'PNG' and image.mode == 'L'


def test_clips_layout_lists_each_clip_with_onset_and_offset(layouts):
    root = layouts['clips']
    with open(os.path.join(root, 'labels.csv')) as f:
        rows = [line.rstrip('\n').split(',') for line in f]
    assert rows[0] == ['subject', 'clip', 'label', 'onset', 'offset'] and len(rows) == 10
    for subject, clip, label, onset, offset in rows[1:]:
        numbers = sorted(int(name[3:-4]) for name in os.listdir(os.path.join(root, 'clips', subject, clip)))
        assert len(numbers) == 5 and numbers == list(range(numbers[0], numbers[0] + 5))
        assert numbers[0] < int(onset) < int(offset) < numbers[-1] and label in synthetic.CLIP_CLASSES
    assert {row[0] for row in rows[1:]} == {'sub01', 'sub02', 'sub03'}


@pytest.mark.parametrize('layout', ['fer2013', 'ckplus', 'clips', 'folder'])
def test_new_layouts_are_deterministic(layouts, layout, tmp_path):
    again = synthetic.make_synthetic(str(tmp_path / 'again'), layout, **SMALL[layout], workers=1, **SILENT)
    assert digest(again) == digest(layouts[layout])


def test_sequence_layouts_have_no_test_split(tmp_path):
    with pytest.raises(UserError, match='the ckplus layout has no test split'):
        synthetic.make_synthetic(str(tmp_path / 'ck'), 'ckplus', 21, 10, **SILENT)
