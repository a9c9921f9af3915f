"""The layouts beyond RAF-DB and AffectNet: FER2013 (+ FERPlus), CK+ in subject-independent folds, class folders,
dynamic images of micro-expression clips (dataset_tools.py); each read from a synthetic copy, trained on, and refused
when malformed."""
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import cli
import data_loader
import dataset_tools
import formats
import synthetic
import train
import train_search
import utils
from errors import UserError
from data_loader import load_dataset
from dataset_tools import rank_pooling_coefficients

SILENT = dict(log=lambda message: None)


def tiny(batch_size=8):
    return ['--epochs', '1', '--init_channels', '8', '--layers', '3', '--batch_size', str(batch_size),
            '--image_size', '16', '--report_freq', '50', '--workers', '0', '--device', 'cpu']


def run_in_process(script, argv, cwd, monkeypatch):
    """main() of a training script in this process, with the flags checked as on the command line."""
    monkeypatch.chdir(cwd)
    args = cli.parse(script.parser, script.check_args, argv=argv)
    script.main(args, utils.Log())


def trained(cwd, prefix):
    """The metrics of the one finished run in cwd whose folder starts with prefix."""
    import json
    folder, = [d for d in os.listdir(cwd) if d.startswith(prefix)]
    return json.load(open(os.path.join(cwd, folder, 'metrics.json')))


# ---------------------------------------------------------------- FER2013 and FERPlus

@pytest.fixture(scope='module')
def fer2013(tmp_path_factory):
    return synthetic.make_synthetic(str(tmp_path_factory.mktemp('syn') / 'fer2013'), 'fer2013', 35, 21, **SILENT)


def test_fer2013_splits_classes_and_gray_rows(fer2013):
    messages = []
    data = load_dataset('fer2013', os.path.join(fer2013, 'fer2013.csv'), log=messages.append)
    assert (len(data.train.labels), len(data.val.labels), len(data.test.labels)) == (35, 21, 21)
    expected = {split: synthetic.class_counts(synthetic.FER2013_COUNTS[split], n)
                for split, n in (('Training', 35), ('PublicTest', 21), ('PrivateTest', 21))}
    for part, split in ((data.train, 'Training'), (data.val, 'PublicTest'), (data.test, 'PrivateTest')):
        assert part.labels.bincount(minlength=7).tolist() == expected[split].tolist()
        assert part.class_names == ['Angry', 'Disgust', 'Fear', 'Happy', 'Sad', 'Surprise', 'Neutral']
    # 48x48 as in the file, gray in all three channels, the pixels of the CSV row.
    assert data.train.images.shape == (35, 3, 48, 48) and data.train.images.dtype == torch.uint8
    assert torch.equal(data.train.images[:, 0], data.train.images[:, 2])
    with open(os.path.join(fer2013, 'fer2013.csv')) as f:
        first = next(line for i, line in enumerate(f) if i == 1).split(',')
    assert data.train.images[0, 0].flatten().tolist() == list(map(int, first[1].split()))
    assert data.train.labels[0] == int(first[0])
    # The folder works too, and the second read comes from the cache.
    again = load_dataset('fer2013', fer2013, log=messages.append)
    assert any('from cache' in m for m in messages) and torch.equal(again.test.images, data.test.images)


def test_ferplus_relabels_by_majority_and_drops_the_rest(fer2013):
    messages = []
    data = load_dataset('fer2013', fer2013, ferplus_labels='fer2013new.csv', log=messages.append)
    with open(os.path.join(fer2013, 'fer2013new.csv')) as f:
        rows = [line.rstrip('\n').split(',') for line in f][1:]
    labels, _ = formats.ferplus_majority(np.array([list(map(float, row[2:])) for row in rows]))
    labels[[not row[1] for row in rows]] = -1
    usage = [row[0] for row in rows]
    for part, split in ((data.train, 'Training'), (data.val, 'PublicTest'), (data.test, 'PrivateTest')):
        assert part.labels.tolist() == [int(x) for x, u in zip(labels, usage) if u == split and x >= 0]
        assert part.class_names == formats.FERPLUS_CLASSES
    kept = int((labels >= 0).sum())
    assert kept < len(rows) and any(f'{kept} of {len(rows)} images kept' in m for m in messages)


@pytest.mark.parametrize('votes, label, reason', [
    ([0, 10, 0, 0, 0, 0, 0, 0, 0, 0], 1, None),          # unanimous happiness
    ([6, 0, 4, 0, 0, 0, 0, 0, 0, 0], 0, None),           # 6 of 10
    ([5, 1, 1, 1, 1, 1, 0, 0, 0, 0], 0, None),           # single votes are outliers: 5 of the 5 left
    ([0, 0, 0, 0, 0, 0, 0, 3, 0, 0], 7, None),           # contempt
    ([5, 5, 0, 0, 0, 0, 0, 0, 0, 0], -1, 'no majority'),  # a tie
    ([4, 0, 4, 0, 2, 0, 0, 0, 0, 0], -1, 'no majority'),  # 4 of 10 is no majority
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], -1, 'no majority'),  # nothing but outliers
    ([2, 0, 0, 0, 0, 0, 0, 0, 7, 1], -1, 'unknown'),
    ([0, 2, 0, 0, 0, 0, 0, 0, 0, 8], -1, 'not a face (NF)'),
])
def test_ferplus_majority_vote(votes, label, reason):
    labels, reasons = formats.ferplus_majority(np.array([votes]))
    assert labels[0] == label
    assert (reasons[0] == -1) if reason is None else formats.FERPLUS_DROPPED[reasons[0]] == reason


FER_HEADER = 'emotion,pixels,Usage\n'
PIXELS = ' '.join(['7'] * 2304)


@pytest.mark.parametrize('row, message', [
    (f'3,{" ".join(["7"] * 2303)},Training', 'line 3: pixels must be 2304 integers 0..255 .* found 2303 values'),
    (f'3,{PIXELS[:-1]}300,Training', 'line 3: .*found values outside 0..255'),
    (f'3,{PIXELS[:-1]}x,Training', 'line 3: .*found text that is not a whole number'),
    (f'3,{PIXELS},Validation', "line 3: Usage 'Validation' is not one of Training, PublicTest, PrivateTest"),
    (f'7,{PIXELS},Training', "line 3: emotion '7' is not a label 0..6"),
    (f'-1,{PIXELS},Training', "line 3: emotion '-1' is not a label 0..6"),
    (f'3,{PIXELS}', 'line 3: 2 fields, expected 3'),
])
def test_malformed_fer2013_row_is_named(tmp_path, row, message):
    path = tmp_path / 'fer2013.csv'
    path.write_text(f'{FER_HEADER}0,{PIXELS},Training\n{row}\n')
    with pytest.raises(UserError, match=f'{re.escape(str(path))} {message}'):
        load_dataset('fer2013', path, **SILENT)


def test_fer2013_without_usage_column_and_ferplus_of_another_file(tmp_path):
    (tmp_path / 'train.csv').write_text(f'emotion,pixels\n0,{PIXELS}\n')
    with pytest.raises(UserError, match='train.csv line 1: the header emotion,pixels lacks column.* Usage'):
        load_dataset('fer2013', tmp_path / 'train.csv', **SILENT)
    (tmp_path / 'fer2013.csv').write_text(f'{FER_HEADER}0,{PIXELS},Training\n1,{PIXELS},PrivateTest\n'
                                          f'2,{PIXELS},PublicTest\n')
    header = 'Usage,Image name,' + ','.join(formats.FERPLUS_VOTES) + '\n'
    (tmp_path / 'short.csv').write_text(header + 'Training,fer0.png,10,0,0,0,0,0,0,0,0,0\n')
    with pytest.raises(UserError, match='short.csv has 1 rows but the FER2013 file has 3'):
        load_dataset('fer2013', tmp_path, ferplus_labels='short.csv', **SILENT)
    (tmp_path / 'order.csv').write_text(header + 'Training,a.png,10,0,0,0,0,0,0,0,0,0\n'
                                                 'PublicTest,b.png,10,0,0,0,0,0,0,0,0,0\n')
    with pytest.raises(UserError, match="order.csv line 3: Usage 'PublicTest', but row 2 of the FER2013 file is "
                                        "PrivateTest"):
        load_dataset('fer2013', tmp_path, ferplus_labels='order.csv', **SILENT)


def test_fer2013_csv_of_many_rows_is_parsed_and_cached(tmp_path):
    # Kaggle's file in miniature (its 35,887 rows take the same path): distinct rows repeated, as the parser cannot
    # tell, in Kaggle's order of the Usage parts.
    rng = np.random.default_rng(0)
    rows = [' '.join(map(str, rng.integers(0, 256, 2304))) for _ in range(16)]
    usage = ['Training'] * 1600 + ['PublicTest'] * 200 + ['PrivateTest'] * 200
    path = tmp_path / 'fer2013.csv'
    with open(path, 'w') as f:
        f.write(FER_HEADER)
        f.writelines(f'{i % 7},{rows[i % 16]},{use}\n' for i, use in enumerate(usage))
    data = load_dataset('fer2013', path, **SILENT)
    assert (len(data.train.labels), len(data.val.labels), len(data.test.labels)) == (1600, 200, 200)
    assert data.test.labels.tolist() == [i % 7 for i in range(1800, 2000)]
    assert data.test.images[5, 0].flatten().tolist() == list(map(int, rows[1805 % 16].split()))
    assert list((tmp_path / '.cache').glob('fer2013-*.pt'))


def fer2013_rows(usages):
    return FER_HEADER + ''.join(f'{i % 7},{PIXELS},{use}\n' for i, use in enumerate(usages))


@pytest.mark.parametrize('missing', formats.FER2013_USAGE)
def test_fer2013_without_a_part_is_refused(tmp_path, missing):
    # Without PrivateTest rows a run would "test" on nothing and report 0.00%.
    path = tmp_path / 'fer2013.csv'
    path.write_text(fer2013_rows([use for use in formats.FER2013_USAGE if use != missing] * 2))
    with pytest.raises(UserError, match=f'{re.escape(str(path))} has no rows with Usage {missing}; the protocol'):
        load_dataset('fer2013', path, **SILENT)


def test_ferplus_that_drops_a_whole_part_is_refused(tmp_path):
    (tmp_path / 'fer2013.csv').write_text(fer2013_rows(formats.FER2013_USAGE))
    header = 'Usage,Image name,' + ','.join(formats.FERPLUS_VOTES) + '\n'
    (tmp_path / 'new.csv').write_text(header + 'Training,a.png,10,0,0,0,0,0,0,0,0,0\n'
                                               'PublicTest,b.png,0,0,0,0,0,0,0,0,0,10\n'  # not a face
                                               'PrivateTest,c.png,10,0,0,0,0,0,0,0,0,0\n')
    with pytest.raises(UserError, match='new.csv keep none of the 1 PublicTest rows of .*fer2013.csv'):
        load_dataset('fer2013', tmp_path, ferplus_labels='new.csv', **SILENT)


def test_fer2013_saved_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / 'fer2013.csv'
    path.write_text(fer2013_rows(formats.FER2013_USAGE), encoding='utf-8-sig')  # as Excel saves "CSV UTF-8"
    assert path.read_bytes().startswith(b'\xef\xbb\xbf')
    data = load_dataset('fer2013', path, **SILENT)
    assert [len(part.labels) for part in (data.train, data.val, data.test)] == [1, 1, 1]


@pytest.mark.parametrize('damage', ['unclosed_quote', 'long_field'])
def test_fer2013_row_too_long_for_the_csv_reader_is_named(tmp_path, damage):
    path = tmp_path / 'fer2013.csv'
    if damage == 'unclosed_quote':  # the rest of the file becomes one field
        rows = f'1,"{PIXELS},PublicTest\n' + f'2,{PIXELS},PrivateTest\n' * 60
    else:
        rows = f'1,{" ".join(["7"] * 70000)},PublicTest\n'
    path.write_text(f'{FER_HEADER}0,{PIXELS},Training\n{rows}')
    with pytest.raises(UserError, match=f'{re.escape(str(path))} line 3: not a CSV row the reader can split '
                                        r'\(field larger than field limit .*a quote that is never closed'):
        load_dataset('fer2013', path, **SILENT)


# ---------------------------------------------------------------- CK+

@pytest.fixture(scope='module')
def ckplus(tmp_path_factory):
    """A copy shaped like CK+: 327 labelled sequences of 118 subjects, and some unlabelled ones."""
    return synthetic.make_synthetic(str(tmp_path_factory.mktemp('syn') / 'ckplus'), 'ckplus', frames=4, **SILENT)


@pytest.mark.parametrize('classes, neutral, images', [(7, False, 981), (6, False, 927), (7, True, 1308)])
def test_ckplus_protocol_counts(ckplus, classes, neutral, images):
    listing = formats.list_ckplus(ckplus, classes, neutral)
    assert len(listing.paths) == images and len(listing.all_subjects) == 118
    counts = np.bincount(listing.labels)
    peak = [3 * n for c, n in zip(formats.CKPLUS_CLASSES, synthetic.CKPLUS_COUNTS) if classes == 7 or c != 'Contempt']
    assert counts.tolist() == [images - sum(peak)] * neutral + peak
    assert listing.class_names == ['Neutral'] * neutral + [c for c in formats.CKPLUS_CLASSES
                                                           if classes == 7 or c != 'Contempt']
    # The last three frames of each sequence (and with neutral its first), never the unlabelled sequences.
    frames = {os.path.basename(p)[-12:] for p in listing.paths}
    assert frames == {'00000002.png', '00000003.png', '00000004.png'} | ({'00000001.png'} if neutral else set())


def test_ckplus_folds_hold_every_subject_once_and_are_seeded(ckplus):
    listing = formats.list_ckplus(ckplus)
    folds = formats.assign_folds(listing.all_subjects, 10, seed=0)
    assert sorted(folds) == listing.all_subjects and sorted(set(folds.values())) == list(range(10))
    sizes = np.bincount(list(folds.values()))
    assert sizes.max() - sizes.min() <= 1  # 118 subjects: 11 or 12 per fold
    assert formats.assign_folds(listing.all_subjects, 10, seed=0) == folds
    assert formats.assign_folds(listing.all_subjects, 10, seed=1) != folds
    # The six-class protocol keeps the folds of the seven-class one.
    assert formats.assign_folds(formats.list_ckplus(ckplus, 6).all_subjects, 10) == folds
    # A fold tests the images of its subjects and trains on all others.
    tested = []
    for fold in (0, 9):
        data = load_dataset('ckplus', ckplus, fold=fold, source_size=8, **SILENT)
        assert len(data.train.labels) + len(data.test.labels) == 981
        tested.append(len(data.test.labels))
    test_images = [sum(folds[s] == fold for s in listing.subjects) for fold in (0, 9)]
    assert tested == test_images


def test_ckplus_trains_one_epoch_on_a_fold(tmp_path, monkeypatch):
    root = synthetic.make_synthetic(str(tmp_path / 'ckplus'), 'ckplus', 21, subjects=8, frames=4, **SILENT)
    run_in_process(train, ['--dataset', 'ckplus', '--data', root, '--folds', '4', '--fold', '3', '--save', 'CK',
                           *tiny()], tmp_path, monkeypatch)
    metrics = trained(tmp_path, 'eval-CK-ckplus-')
    assert metrics['complete'] and metrics['class_names'] == formats.CKPLUS_CLASSES
    listing = formats.list_ckplus(root)
    folds = formats.assign_folds(listing.all_subjects, 4)
    assert sum(map(sum, metrics['last']['confusion_matrix'])) == sum(folds[s] == 3 for s in listing.subjects)


def ckplus_copy(root, sequences=(('S005', 3, 5), ('S010', 5, 5))):
    """A tiny CK+ tree: one labelled sequence of each (subject, emotion code, frames)."""
    rng = np.random.default_rng(0)
    for subject, code, frames in sequences:
        for k in range(1, frames + 1):
            path = root / 'cohn-kanade-images' / subject / '001' / f'{subject}_001_{k:08d}.png'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (49, 64), dtype=np.uint8)).save(path)
        label = root / 'Emotion' / subject / '001' / f'{subject}_001_{frames:08d}_emotion.txt'
        label.parent.mkdir(parents=True)
        label.write_text(f'   {code:.7e}\n')
    return root


@pytest.mark.parametrize('neutral', [False, True])
def test_short_ckplus_sequences_never_label_their_neutral_first_frame(tmp_path, neutral):
    root = ckplus_copy(tmp_path / 'ck', (('S005', 3, 3), ('S010', 5, 2), ('S020', 1, 1)))
    listing = formats.list_ckplus(root, neutral=neutral)
    chosen = {os.path.basename(path): label for path, label in zip(listing.paths, listing.labels)}
    disgust, happy = neutral + 2, neutral + 4  # codes 3 and 5
    expected = {'S005_001_00000002.png': disgust, 'S005_001_00000003.png': disgust,  # 3 frames: the last 2
                'S010_001_00000002.png': happy}  # 2 frames: the last; the 1-frame sequence: none
    if neutral:
        expected.update({'S005_001_00000001.png': 0, 'S010_001_00000001.png': 0})
    assert chosen == expected
    assert '1 single-frame sequence(s) skipped' in listing.summary


@pytest.mark.parametrize('damage, message', [
    ('no_emotion_folder', r'folder .*Emotion not found; a CK\+ root holds'),
    ('no_emotion_file', r'Emotion holds no emotion files'),
    ('bad_code', r'S010_001_00000005_emotion.txt line 1: expected one emotion code 1..7 .* got \'9.0\''),
    ('missing_frames', r'S010_001_00000005_emotion.txt labels sequence S010/001, but .*S010/001 holds no frames'),
])
def test_malformed_ckplus_is_named(tmp_path, damage, message):
    root = ckplus_copy(tmp_path / 'ck')
    label = root / 'Emotion/S010/001/S010_001_00000005_emotion.txt'
    if damage == 'no_emotion_folder':
        shutil.rmtree(root / 'Emotion')
    elif damage == 'no_emotion_file':
        for path in (root / 'Emotion').rglob('*.txt'):
            path.unlink()
    elif damage == 'bad_code':
        label.write_text('9.0\n')
    else:
        shutil.rmtree(root / 'cohn-kanade-images/S010/001')
    with pytest.raises(UserError, match=message):
        load_dataset('ckplus', root, folds=2, **SILENT)


def test_ckplus_frames_are_gray_and_whole(tmp_path):
    root = ckplus_copy(tmp_path / 'ck')
    frame = root / 'cohn-kanade-images/S005/001/S005_001_00000005.png'
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (49, 64, 3), dtype=np.uint8)).save(frame)  # colour
    data = load_dataset('ckplus', root, folds=2, fold=0, source_size=16, **SILENT)
    images = torch.cat([data.train.images, data.test.images])
    assert images.shape == (6, 3, 16, 16) and torch.equal(images[:, 0], images[:, 1])
    expected = np.array(Image.open(frame).convert('L').convert('RGB').resize((16, 16), Image.Resampling.BILINEAR))
    assert any(torch.equal(image, torch.from_numpy(expected).permute(2, 0, 1)) for image in images)


# ---------------------------------------------------------------- class folders

def write_image(path, seed=0, size=20):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def folder_copy(root, classes=('1', '2', '10'), splits=('train', 'val', 'test')):
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            for i in range(2 if split == 'train' else 1):
                write_image(root / split / name / f'S{i}{c}_{split}{i}.png', seed=100 * s + 10 * c + i)
    return root


def test_class_folders_in_numeric_order_with_their_splits_and_names(tmp_path):
    root = folder_copy(tmp_path / 'f')
    (root / 'train' / '.hidden').mkdir()
    data = load_dataset('folder', root, source_size=8, **SILENT)
    assert data.train.class_names == ['1', '2', '10']  # numeric names in numeric order, not '1', '10', '2'
    assert data.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.val.labels.tolist() == [0, 1, 2] and data.test.labels.tolist() == [0, 1, 2]
    named = load_dataset('folder', root, class_names=['Surprise', 'Fear', 'Anger'], source_size=8, **SILENT)
    assert named.test.class_names == ['Surprise', 'Fear', 'Anger']
    shutil.rmtree(root / 'val')
    assert load_dataset('folder', root, source_size=8, **SILENT).val is None


@pytest.mark.parametrize('damage, message', [
    ('empty_class', r'class folder .*test/2 holds no images'),
    ('unknown_class', r'test has class folder\(s\) 7 that .*train lacks'),
    ('no_test', r'folder .*f/test not found; a class-folder dataset holds train/<class>/\*'),
    ('names', r'--class_names gives 2 names \(A, B\) but .* has 3 class folders \(1, 2, 10\)'),
])
def test_malformed_class_folders_are_named(tmp_path, damage, message):
    root = folder_copy(tmp_path / 'f')
    names = None
    if damage == 'empty_class':
        for path in (root / 'test' / '2').iterdir():
            path.unlink()
    elif damage == 'unknown_class':
        write_image(root / 'test' / '7' / 'x.png')
    elif damage == 'no_test':
        shutil.rmtree(root / 'test')
    else:
        names = ['A', 'B']
    with pytest.raises(UserError, match=message):
        load_dataset('folder', root, class_names=names, **SILENT)


def test_class_folders_in_subject_folds(tmp_path):
    root = tmp_path / 'pool'
    for subject in range(4):
        for c, name in enumerate(('happy', 'sad')):
            write_image(root / name / f'P{subject}_{c}.png', seed=10 * subject + c)
    subjects = {}
    for fold in range(4):
        data = load_dataset('folder', root, folds=4, fold=fold, source_size=8, **SILENT)
        assert (len(data.train.labels), len(data.test.labels)) == (6, 2)  # leave one subject (two images) out
        assert data.test.class_names == ['happy', 'sad'] and sorted(data.test.labels.tolist()) == [0, 1]
        subjects[fold] = data.test.images
    assert not any(torch.equal(subjects[0], subjects[k]) for k in (1, 2, 3))
    write_image(root / 'sad' / 'nounderscore.png')
    with pytest.raises(UserError, match=r"file name .*nounderscore.png holds no subject for --subject_regex "
                                        r"'\^\(\[\^_\]\+\)_'"):
        load_dataset('folder', root, folds=4, **SILENT)
    data = load_dataset('folder', root, folds=2, subject_regex=r'P(\d)|nounderscore', source_size=8, **SILENT)
    assert len(data.train.labels) + len(data.test.labels) == 9
    with pytest.raises(UserError, match='--folds 6: the dataset has 5 subjects'):
        load_dataset('folder', root, folds=6, subject_regex=r'P(\d)|nounderscore', **SILENT)


def test_folder_layout_trains_one_epoch(tmp_path, monkeypatch):
    root = synthetic.make_synthetic(str(tmp_path / 'raf-copy'), 'folder', 28, 21, **SILENT)
    assert sorted(os.listdir(os.path.join(root, 'train'))) == [str(k) for k in range(1, 8)]
    names = 'Surprise,Fear,Disgust,Happiness,Sadness,Anger,Neutral'
    run_in_process(train, ['--dataset', 'folder', '--data', root, '--class_names', names, '--save', 'F', *tiny()],
                   tmp_path, monkeypatch)
    metrics = trained(tmp_path, 'eval-F-folder-')
    assert metrics['class_names'] == formats.RAFDB_CLASSES
    assert sum(map(sum, metrics['last']['confusion_matrix'])) == 21


# ---------------------------------------------------------------- FER2013 training and search

def test_fer2013_trains_and_searches_one_epoch(fer2013, tmp_path, monkeypatch):
    data = os.path.join(fer2013, 'fer2013.csv')
    run_in_process(train, ['--dataset', 'fer2013', '--data', data, '--save', 'FER', *tiny()], tmp_path, monkeypatch)
    metrics = trained(tmp_path, 'eval-FER-fer2013-')
    assert sum(map(sum, metrics['last']['confusion_matrix'])) == 21  # the PrivateTest rows
    run_in_process(train_search, ['--dataset', 'fer2013', '--data', data, '--ferplus_labels', 'fer2013new.csv',
                                  '--warmup_epochs', '0', '--save', 'FER', *tiny()], tmp_path, monkeypatch)
    log = open(os.path.join([d for d in os.listdir(tmp_path) if d.startswith('search-FER-')][0], 'log.txt')).read()
    assert 'FERPlus majority labels' in log and 'genotype = Genotype(' in log
    assert f'--dataset fer2013 --data {data} --image_size 16 --ferplus_labels fer2013new.csv' in log


# ---------------------------------------------------------------- dynamic images

@pytest.mark.parametrize('length, expected', [(2, [-0.5, 0.5]), (3, [-4 / 3, 2 / 3, 2 / 3]),
                                              (5, [-3.7, 0.3, 1.3, 1.3, 0.8])])
def test_rank_pooling_coefficients_equal_the_closed_forms(length, expected):
    beta = rank_pooling_coefficients(length)
    np.testing.assert_allclose(beta, expected, atol=1e-12)
    # beta_p = sum_{l=p..T} (2l - T - 1) / l, and the coefficients sum to zero.
    np.testing.assert_allclose(beta, [sum((2 * l - length - 1) / l for l in range(p, length + 1))
                                      for p in range(1, length + 1)], atol=1e-12)
    assert abs(beta.sum()) < 1e-12


def test_dynamic_image_of_constant_and_reversed_clips():
    rng = np.random.default_rng(0)
    still = rng.uniform(0, 255, (6, 5, 3))
    assert not dataset_tools.dynamic_image([still] * 7).any()  # exactly zero, not rounding noise
    assert np.unique(dataset_tools.scale_to_uint8(dataset_tools.dynamic_image([still] * 7))).size == 1
    # Reversing the frames negates the image for T = 2 (any frames), and for any T when the frames change linearly
    # in time (the coefficients are not antisymmetric beyond T = 2).
    a, b = rng.uniform(0, 255, (2, 6, 5, 3))
    clips = [[a, b]] + [[a + t * b for t in range(length)] for length in (3, 5)]
    for frames in clips:
        forward, backward = dataset_tools.dynamic_image(frames), dataset_tools.dynamic_image(frames[::-1])
        np.testing.assert_allclose(backward, -forward, atol=1e-9)
        assert np.abs(forward).max() > 1
    scaled = dataset_tools.scale_to_uint8(dataset_tools.dynamic_image(clips[2]))
    assert scaled.dtype == np.uint8 and scaled.min() == 0 and scaled.max() == 255


def clip_frames(folder, numbers, seed=0):
    for k, number in enumerate(numbers):
        write_image(folder / f'img{number}.jpg', seed=seed + k, size=12)


def test_dynamic_images_follow_the_clip_list_and_train_leave_one_subject_out(tmp_path, monkeypatch):
    clips = tmp_path / 'clips'
    synthetic.make_synthetic(str(clips), 'clips', 12, subjects=3, frames=6, **SILENT)
    out = tmp_path / 'dynamic'
    assert dataset_tools.make_dynamic_images(clips / 'clips', clips / 'labels.csv', out, **SILENT) == (
        12, 3, ['negative', 'positive', 'surprise'])
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob('*.png'))
    assert len(files) == 12 and all(re.fullmatch(r'(negative|positive|surprise)/sub0[123]_EP\d\d_\d+\.png', f)
                                    for f in files)
    # The image of a clip is that of its frames onset..offset in frame-number order (img99 before img100).
    entry = formats.read_clip_list(clips / 'labels.csv')[0]
    folder = clips / 'clips' / entry.subject / entry.clip
    frames = [folder / f'img{k}.jpg' for k in range(entry.onset, entry.offset + 1)]
    expected = dataset_tools.scale_to_uint8(dataset_tools.dynamic_image([data_loader.decode_image(f) for f in frames]))
    written = np.array(Image.open(out / entry.label / f'{entry.subject}_{entry.clip}.png'))
    assert np.array_equal(written, expected)
    run_in_process(train, ['--dataset', 'folder', '--data', str(out), '--folds', '3', '--fold', '1', '--save', 'DI',
                           *tiny()], tmp_path, monkeypatch)
    metrics = trained(tmp_path, 'eval-DI-folder-')
    assert metrics['class_names'] == ['negative', 'positive', 'surprise']
    assert sum(map(sum, metrics['last']['confusion_matrix'])) == 4  # one subject's four clips


@pytest.mark.parametrize('rows, message', [
    ('s1,c1,happy\n', r'labels.csv line 2: clip .*c1 has 1 frame\(s\); a dynamic image needs at least 2'),
    ('s1,c2,happy,10,10\n', r'labels.csv line 2: clip .*c2 has 1 frame\(s\) numbered 10..10'),
    ('s1,c2,happy,9,10\ns1,c2,sad,,\n', r'labels.csv line 3: clip s1/c2 is listed twice \(also line 2\)'),
    ('s1,c2,happy,10,9\n', r"labels.csv line 2: onset and offset must be frame numbers with onset <= offset"),
    ('s1,c3,happy\n', r'labels.csv line 2: no frame folder .*s1/c3'),
])
def test_malformed_clips_are_named(tmp_path, rows, message):
    clip_frames(tmp_path / 'clips' / 's1' / 'c1', [1])
    clip_frames(tmp_path / 'clips' / 's1' / 'c2', [9, 10, 11])
    header = 'subject,clip,label' + (',onset,offset' if rows.count(',') > 2 else '') + '\n'
    (tmp_path / 'labels.csv').write_text(header + rows)
    with pytest.raises(UserError, match=message):
        dataset_tools.make_dynamic_images(tmp_path / 'clips', tmp_path / 'labels.csv', tmp_path / 'out', **SILENT)
    assert not (tmp_path / 'out').exists()


def test_dynamic_images_refuse_a_non_empty_output_folder(tmp_path):
    clip_frames(tmp_path / 'clips' / 's1' / 'c2', [9, 10, 11])
    (tmp_path / 'labels.csv').write_text('subject,clip,label\ns1,c2,happy\n')
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'keep.txt').write_text('user data')
    with pytest.raises(UserError, match='out already exists and is not empty'):
        dataset_tools.make_dynamic_images(tmp_path / 'clips', tmp_path / 'labels.csv', tmp_path / 'out', **SILENT)
    assert os.listdir(tmp_path / 'out') == ['keep.txt']
    assert sorted(os.listdir(tmp_path)) == ['clips', 'labels.csv', 'out']  # nothing half-built beside it
