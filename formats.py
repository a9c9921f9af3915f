"""The FER datasets' on-disk formats, without torch: class names, RAF-DB's label list and its
noisy-label files (read and written), AffectNet's class folders, FER2013's CSV and FERPlus's votes, CK+'s sequences,
class-folder datasets, subject-independent folds and micro-expression clip lists. data_loader.py reads images
through these; synthetic.py writes datasets in these layouts."""
import csv
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

import run_folder
from cli import NOISE_LEVELS
from errors import UserError

RAFDB_CLASSES = ['Surprise', 'Fear', 'Disgust', 'Happiness', 'Sadness', 'Anger', 'Neutral']
AFFECTNET_CLASSES = ['Neutral', 'Happiness', 'Sadness', 'Surprise', 'Fear', 'Disgust', 'Anger', 'Contempt']
RAFDB_LABEL_FILE = 'EmoLabel/list_patition_label.txt'  # (sic) the name RAF-DB ships with
RAFDB_IMAGE_DIR = 'Image/aligned'
AFFECTNET_SPLITS = ('train_class', 'val_class')  # AffectNet's validation set serves as the test set
AFFECTNET_CLASS_FOLDER = re.compile(r'class(\d{3})')  # class001 .. class008, in AffectNet's class order
TEXT_ENCODING = 'utf-8-sig'  # UTF-8, with or without the byte-order mark that Excel and Notepad write first
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif', '.pgm', '.ppm')


# ---------------------------------------------------------------- RAF-DB label list and noisy-label files

def _read_pairs(path):
    """Yield (line number, name, integer label) for each non-blank line of a two-column list file."""
    with open(path, encoding=TEXT_ENCODING) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip('-').isdigit():
                raise UserError(f"{path} line {number}: expected '<image> <label>' such as 'train_00001.jpg 5', "
                                f"got {line.strip()!r}.")
            yield number, fields[0], int(fields[1])


def read_rafdb_list(path):
    """Read list_patition_label.txt -> (train names, train labels 0-based, test names, test labels 0-based)."""
    if not os.path.isfile(path):
        raise UserError(f"label file {path} not found; a RAF-DB root must hold {RAFDB_LABEL_FILE} "
                        f"and {RAFDB_IMAGE_DIR}/.")
    split = {'train': ([], []), 'test': ([], [])}
    for number, name, label in _read_pairs(path):
        kind = name.split('_')[0]
        if kind not in split or not 1 <= label <= len(RAFDB_CLASSES):
            raise UserError(f"{path} line {number}: expected 'train_NNNNN.jpg' or 'test_NNNN.jpg' "
                            f"with a label in 1..7, got {name} {label}.")
        split[kind][0].append(name)
        split[kind][1].append(label - 1)
    for kind, (names, _) in split.items():
        if not names:
            raise UserError(f"{path} lists no {kind} images; RAF-DB's list holds 'train_NNNNN.jpg' and "
                            f"'test_NNNN.jpg' lines.")
    return split['train'][0], split['train'][1], split['test'][0], split['test'][1]


def rafdb_image_path(root, name):
    """'train_00001.jpg' -> root/Image/aligned/train_00001_aligned.jpg."""
    return Path(root) / RAFDB_IMAGE_DIR / (name[:-len('.jpg')] + '_aligned.jpg')


def _rafdb_name(path_text):
    """'datasets/raf-basic/Image/aligned/train_00001_aligned.jpg' or 'train_00001.jpg' -> 'train_00001.jpg'."""
    name = os.path.basename(path_text)
    return name[:-len('_aligned.jpg')] + '.jpg' if name.endswith('_aligned.jpg') else name


def read_noise_labels(path, train_names):
    """Return 0-based noisy training labels, aligned with train_names, from any of the three public formats.

    Formats: the released EmoLabel/new_N_noise.txt and Erasing-Attention-Consistency's noise01..03.txt
    ('train_00001.jpg 5', 1-based, like list_patition_label.txt) and Self-Cure-Network's 0.1noise_train.txt
    ('train_00001_aligned.jpg 4' or a longer path to it, 0-based). Rule: the file is read as 0-based when any
    image name ends with '_aligned.jpg' or any label is 0, otherwise as 1-based. Lines naming test images or
    images absent from the clean training list are ignored; every clean training image must appear once.
    """
    entries = list(_read_pairs(path))
    zero_based = any(name.endswith('_aligned.jpg') or label == 0 for _, name, label in entries)
    low = 0 if zero_based else 1
    wanted = set(train_names)
    noisy = {}
    for number, name, label in entries:
        name = _rafdb_name(name)
        if name not in wanted:
            continue
        if not low <= label < low + len(RAFDB_CLASSES):
            raise UserError(f"{path} line {number}: label {label} is outside {low}..{low + 6} "
                            f"(file read as {'0' if zero_based else '1'}-based by its format).")
        if name in noisy:
            raise UserError(f"{path} line {number}: {name} is listed twice; keep one label per training image.")
        noisy[name] = label - low
    for name in train_names:
        if name not in noisy:
            raise UserError(f"noise file {path} has no label for training image {name}; "
                            f"it must list every training image of {RAFDB_LABEL_FILE}.")
    return [noisy[name] for name in train_names]


def find_file(given, root, what):
    """A label file named on the command line: as given, or relative to the dataset root (EmoLabel/noise01.txt is
    naturally given so)."""
    for candidate in (Path(given), Path(root) / given):
        if candidate.is_file():
            return candidate
    raise UserError(f"{what} {given} not found (also looked under {root}); pass an existing label file.")


def noise_file_path(root, noise, noise_file):
    """The noisy-label file that --noise / --noise_file name (None for clean labels)."""
    if noise_file is not None:
        return find_file(noise_file, root, 'noise file')
    if noise not in NOISE_LEVELS:
        raise UserError(f"noise level {noise} is not one of {NOISE_LEVELS}; use one of them or pass noise_file.")
    if noise == 0:
        return None
    path = Path(root) / f'EmoLabel/new_{noise}_noise.txt'
    if not path.is_file():
        raise UserError(f"noise file {path} not found; create it with "
                        f"'python dataset_tools.py make-noise --data {root} --rate {noise / 100}' or pass noise_file.")
    return path


def make_noise(data, rate, seed=0, overwrite=False):
    """Write EmoLabel/new_{100*rate}_noise.txt with exactly round(rate * n_train) training labels flipped.

    Each flipped label moves uniformly to one of the six other classes; test lines and line order are unchanged.
    An existing file is kept unless overwrite. Returns (path, number of labels flipped, number of training labels).
    """
    if not 0 < rate < 1:
        raise UserError(f"noise rate {rate} must lie strictly between 0 and 1, e.g. 0.1.")
    out = Path(data) / f'EmoLabel/new_{round(100 * rate)}_noise.txt'
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; runs with --noise {round(100 * rate)} read it. Keep it, or pass "
                        f"--overwrite to replace it (runs made with the old file then no longer match it).")
    label_path = Path(data) / RAFDB_LABEL_FILE
    train_names, train_labels, _, _ = read_rafdb_list(label_path)
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(train_names), size=round(rate * len(train_names)), replace=False)
    # An offset of 1..6 classes makes the new label uniform over the other six.
    offsets = rng.integers(1, len(RAFDB_CLASSES), size=len(flipped))
    noisy = {train_names[i]: (train_labels[i] + off) % len(RAFDB_CLASSES) for i, off in zip(flipped, offsets)}
    lines = []
    for _, name, label in _read_pairs(label_path):  # same order and format as the clean list
        lines.append(f"{name} {noisy[name] + 1 if name in noisy else label}\n")
    run_folder.write_text(out, ''.join(lines))
    return out, len(flipped), len(train_names)


# ---------------------------------------------------------------- AffectNet class folders

def image_files(folder):
    """Image files of a folder in name order; hidden files (such as macOS's '._name.jpg') are not images."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith('.'))


def list_affectnet(root, num_classes):
    """(paths, 0-based labels) of both AffectNet splits: [(train paths, labels), (val paths, labels)].

    Only folders named class001 .. class008 are classes, in AffectNet's class order (anything else, such as a stray
    __MACOSX, is ignored); the 7-class protocol leaves out class008 (Contempt). Both splits must hold the same
    classes, so that a label means the same in each."""
    if num_classes not in (7, 8):
        raise UserError(f"affectnet_classes must be 7 (without Contempt) or 8, got {num_classes}.")
    wanted = [f'class{c:03d}' for c in range(1, num_classes + 1)]
    splits = []
    for split in AFFECTNET_SPLITS:
        folder = Path(root) / split
        if not folder.is_dir():
            raise UserError(f"folder {folder} not found; an AffectNet root must hold "
                            f"{AFFECTNET_SPLITS[0]}/class001..class008 and {AFFECTNET_SPLITS[1]}/class001..class008.")
        present = sorted(d.name for d in folder.iterdir() if d.is_dir() and AFFECTNET_CLASS_FOLDER.fullmatch(d.name))
        splits.append((folder, present))
    (train_folder, train_classes), (val_folder, val_classes) = splits
    if train_classes != val_classes:
        raise UserError(f"{train_folder} has class folders {', '.join(train_classes) or 'none'} but {val_folder} has "
                        f"{', '.join(val_classes) or 'none'}; both splits need the same class folders, so that a "
                        f"label means the same class in each.")
    missing = [name for name in wanted if name not in train_classes]
    if missing:
        raise UserError(f"{train_folder} lacks class folder(s) {', '.join(missing)}; the {num_classes}-class protocol "
                        f"needs {wanted[0]}..{wanted[-1]} in both splits.")
    return [labelled_images(folder, wanted, wanted) for folder, _ in splits]


def labelled_images(folder, names, classes):
    """(paths, labels) of the images in folder/<name>/ for each class folder name, labelled by its index in
    classes; an empty class folder is refused."""
    paths, labels = [], []
    for name in names:
        files = image_files(folder / name)
        if not files:
            raise UserError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            f"add images or remove the folder.")
        paths += files
        labels += [classes.index(name)] * len(files)
    return paths, labels


def natural_key(path):
    """Sort key that orders 'img9.jpg' before 'img10.jpg' (frame numbers are rarely zero-padded)."""
    return [int(part) if part.isdigit() else part for part in re.split(r'(\d+)', Path(path).name)]


# ---------------------------------------------------------------- FER2013 and FERPlus

FER2013_CLASSES = ['Angry', 'Disgust', 'Fear', 'Happy', 'Sad', 'Surprise', 'Neutral']
FER2013_USAGE = ('Training', 'PublicTest', 'PrivateTest')  # training, validation and test rows
FER2013_SIZE = 48  # 48x48 grayscale rows of 2,304 values
FERPLUS_CLASSES = ['Neutral', 'Happiness', 'Surprise', 'Sadness', 'Anger', 'Disgust', 'Fear', 'Contempt']
FERPLUS_VOTES = ('neutral', 'happiness', 'surprise', 'sadness', 'anger', 'disgust', 'fear', 'contempt', 'unknown',
                 'NF')  # ten annotators' votes per image; the last two are not expressions
FERPLUS_DROPPED = ('no majority', 'unknown', 'not a face (NF)', 'no image name')


def _csv_columns(path, header, wanted, what):
    """The index of each wanted column in a CSV header (names compared without surrounding spaces)."""
    names = [name.strip() for name in header or []]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise UserError(f"{path} line 1: the header {','.join(names) or '(empty file)'} lacks column(s) "
                        f"{', '.join(missing)}; {what}")
    return [names.index(name) for name in wanted]


def _csv_rows(path, f):
    """Yield (line number, fields) of each non-blank row of an open CSV file, the header first. What the csv module
    cannot split (a field over its size limit, which an unclosed quote makes of the rest of the file; a NUL byte) or
    text that is not UTF-8 is one UserError naming the file and line."""
    reader = csv.reader(f)
    while True:
        line = reader.line_num + 1  # where the next row starts
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise UserError(f"{path} line {line}: not a CSV row the reader can split ({e}); a field longer than "
                            f"{csv.field_size_limit():,} characters usually means a quote that is never "
                            f"closed.") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path} near line {line}: the text is not UTF-8 ({e.reason}); save it as UTF-8 "
                            f"CSV.") from None
        if any(field.strip() for field in row):
            yield line, row


def read_fer2013(path):
    """Read FER2013's CSV (columns emotion, pixels, Usage in any order) -> (pixels N x 48 x 48 uint8, labels N,
    usage N as an index into FER2013_USAGE). Each row's 2,304 values are parsed by numpy, never value by value."""
    pixel_count = FER2013_SIZE * FER2013_SIZE
    images, labels, usage = [], [], []
    with open(path, newline='', encoding=TEXT_ENCODING) as f:
        rows = _csv_rows(path, f)
        _, header = next(rows, (1, None))
        emotion_at, pixels_at, usage_at = _csv_columns(
            path, header, ('emotion', 'pixels', 'Usage'),
            "FER2013's fer2013.csv (or icml_face_data.csv) has emotion, pixels and Usage; Usage decides the splits.")
        width = len(header)
        with warnings.catch_warnings():
            # Older numpy warns (instead of raising) when text is left over, and returns the values before it.
            warnings.simplefilter('error', DeprecationWarning)
            for line, row in rows:
                if len(row) != width:
                    raise UserError(f"{path} line {line}: {len(row)} fields, expected {width} ({','.join(header)}).")
                try:
                    values = np.fromstring(row[pixels_at], dtype=np.int32, sep=' ')
                    found = (f'{values.size} values' if values.size != pixel_count else
                             'values outside 0..255' if values.min() < 0 or values.max() > 255 else None)
                except (ValueError, DeprecationWarning):
                    found = 'text that is not a whole number'
                if found:
                    raise UserError(f"{path} line {line}: pixels must be {pixel_count} integers 0..255 separated by "
                                    f"spaces ({FER2013_SIZE}x{FER2013_SIZE}), found {found}.")
                emotion = row[emotion_at].strip()
                if not emotion.isdigit() or int(emotion) >= len(FER2013_CLASSES):
                    raise UserError(f"{path} line {line}: emotion {emotion!r} is not a label 0..6 "
                                    f"({', '.join(FER2013_CLASSES)}).")
                use = row[usage_at].strip()
                if use not in FER2013_USAGE:
                    raise UserError(f"{path} line {line}: Usage {use!r} is not one of {', '.join(FER2013_USAGE)}.")
                images.append(values.astype(np.uint8))
                labels.append(int(emotion))
                usage.append(FER2013_USAGE.index(use))
    if not images:
        raise UserError(f"{path} holds no image rows; FER2013's CSV has 35,887.")
    pixels = np.stack(images).reshape(-1, FER2013_SIZE, FER2013_SIZE)
    return pixels, np.array(labels, dtype=np.int64), np.array(usage, dtype=np.int64)


def ferplus_majority(votes):
    """FERPlus's majority protocol for N x 10 vote counts (FERPLUS_VOTES order) -> (labels N into FERPLUS_CLASSES,
    -1 where the image is dropped; reasons N into FERPLUS_DROPPED, -1 where kept).

    As FERPlus's own reader does: a class with a single vote is an annotator outlier and loses it; the class holding
    more than half of the remaining votes is the label; no such class (a tie, or all votes spread), or a majority for
    unknown or NF, drops the image."""
    votes = np.asarray(votes, dtype=np.float64)
    votes = np.where(votes > 1, votes, 0)
    top = votes.argmax(1)
    majority = votes.max(1) > votes.sum(1) / 2
    expression = top < len(FERPLUS_CLASSES)
    labels = np.where(majority & expression, top, -1)
    reasons = np.select([~majority, top == len(FERPLUS_CLASSES), ~expression], [0, 1, 2], -1)
    return labels, reasons


def read_ferplus(path, usage):
    """FERPlus's fer2013new.csv, row by row aligned with fer2013.csv (`usage` from read_fer2013) -> (labels N into
    FERPLUS_CLASSES with -1 for dropped images, number dropped per FERPLUS_DROPPED reason)."""
    with open(path, newline='', encoding=TEXT_ENCODING) as f:
        rows = _csv_rows(path, f)
        _, header = next(rows, (1, None))
        usage_at, name_at, *votes_at = _csv_columns(
            path, header, ('Usage', 'Image name') + FERPLUS_VOTES,
            "FERPlus's fer2013new.csv has Usage, Image name and ten vote columns.")
        named, votes = [], []
        for line, row in rows:
            index = len(votes)
            if len(row) != len(header):
                raise UserError(f"{path} line {line}: {len(row)} fields, expected {len(header)} ({','.join(header)}).")
            use = row[usage_at].strip()
            if index < len(usage) and use != FER2013_USAGE[usage[index]]:
                raise UserError(f"{path} line {line}: Usage {use!r}, but row {index + 1} of the FER2013 file is "
                                f"{FER2013_USAGE[usage[index]]}; fer2013new.csv must list the rows of the same "
                                f"fer2013.csv, in its order.")
            try:
                counts = [float(row[i]) for i in votes_at]
            except ValueError:
                counts = [-1.0]
            if not all(0 <= count < float('inf') for count in counts):
                raise UserError(f"{path} line {line}: the votes {', '.join(row[i] for i in votes_at)} must be counts "
                                f"of 0 or more.")
            named.append(bool(row[name_at].strip()))
            votes.append(counts)
    if len(votes) != len(usage):
        raise UserError(f"{path} has {len(votes)} rows but the FER2013 file has {len(usage)}; fer2013new.csv must "
                        f"list the rows of the same fer2013.csv, in its order.")
    labels, reasons = ferplus_majority(np.array(votes))
    # FERPlus leaves the image name empty for images it removed from the dataset.
    named = np.array(named)
    reasons[~named], labels[~named] = FERPLUS_DROPPED.index('no image name'), -1
    return labels, np.bincount(reasons[reasons >= 0], minlength=len(FERPLUS_DROPPED))


# ---------------------------------------------------------------- CK+

CKPLUS_CLASSES = ['Anger', 'Contempt', 'Disgust', 'Fear', 'Happy', 'Sadness', 'Surprise']  # emotion codes 1..7
CKPLUS_NEUTRAL = 'Neutral'  # emotion code 0; the protocol takes it from each sequence's first frame
CKPLUS_IMAGE_DIR, CKPLUS_LABEL_DIR = 'cohn-kanade-images', 'Emotion'
CKPLUS_PEAK_FRAMES = 3  # the common protocol: the last 3 frames of each labelled sequence (never its neutral first)


@dataclass
class Listing:
    """Images of a dataset without a split of its own: path, label and subject of each, and its classes."""
    paths: list
    labels: list
    subjects: list
    class_names: list
    all_subjects: list  # the subjects folds are drawn over (a class filter must not move the others' folds)
    summary: str  # what was read, for the log


def list_ckplus(root, num_classes=7, neutral=False):
    """The common CK+ protocol: the last 3 frames of every labelled sequence, labelled with its emotion; with
    `neutral` also its first frame, as Neutral (class 0). num_classes 6 leaves out Contempt.

    A sequence starts neutral, so its first frame never carries the emotion: a sequence of 2 or 3 frames gives its
    last 1 or 2 (min(3, frames - 1)), and a sequence of a single frame is skipped (counted in the summary)."""
    if num_classes not in (6, 7):
        raise UserError(f"ckplus_classes must be 6 (without Contempt) or 7, got {num_classes}.")
    image_dir, label_dir = Path(root) / CKPLUS_IMAGE_DIR, Path(root) / CKPLUS_LABEL_DIR
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            raise UserError(f"folder {folder} not found; a CK+ root holds {CKPLUS_IMAGE_DIR}/S005/001/*.png and "
                            f"{CKPLUS_LABEL_DIR}/S005/001/*_emotion.txt (from CK+'s Emotion_labels archive).")
    label_files = sorted(p for p in label_dir.glob('*/*/*_emotion.txt')
                         if not any(part.startswith('.') for part in p.relative_to(label_dir).parts))
    if not label_files:
        raise UserError(f"{label_dir} holds no emotion files (<subject>/<sequence>/<name>_emotion.txt); without them "
                        f"no sequence is labelled. Extract CK+'s Emotion_labels archive there.")
    codes = [c for c in range(1, 8) if num_classes == 7 or CKPLUS_CLASSES[c - 1] != 'Contempt']
    class_names = [CKPLUS_NEUTRAL] * neutral + [CKPLUS_CLASSES[c - 1] for c in codes]
    subjects = sorted({p.parent.parent.name for p in label_files})
    listing = Listing([], [], [], class_names, subjects, f'{len(label_files)} labelled sequences of {len(subjects)} '
                      f'subjects')
    seen, single = set(), 0
    for label_file in label_files:
        sequence = label_file.parent.relative_to(label_dir)
        if sequence in seen:
            raise UserError(f"{label_file.parent} holds more than one emotion file; keep the one CK+ ships.")
        seen.add(sequence)
        text = label_file.read_text(encoding=TEXT_ENCODING, errors='replace').split()
        try:
            code = float(text[0]) if len(text) == 1 else None
        except ValueError:
            code = None
        if code is None or code != int(code) or not 1 <= code <= 7:
            raise UserError(f"{label_file} line 1: expected one emotion code 1..7 such as '3.0000000e+00', got "
                            f"{' '.join(text)!r}.")
        if int(code) not in codes:
            continue
        frames = image_files(image_dir / sequence) if (image_dir / sequence).is_dir() else []
        if not frames:
            raise UserError(f"{label_file} labels sequence {sequence}, but {image_dir / sequence} holds no frames; "
                            f"restore its images or remove the emotion file.")
        if len(frames) == 1:
            single += 1
            continue
        frames.sort(key=natural_key)
        peak = frames[-min(CKPLUS_PEAK_FRAMES, len(frames) - 1):]  # never the neutral first frame
        chosen = [(frames[0], 0)] * neutral + [(frame, neutral + codes.index(int(code))) for frame in peak]
        for frame, label in chosen:
            listing.paths.append(frame)
            listing.labels.append(label)
            listing.subjects.append(sequence.parts[0])
    skipped = f'; {single} single-frame sequence(s) skipped (a first frame is neutral)' * bool(single)
    if not listing.paths:
        raise UserError(f"{label_dir}: no labelled sequence of more than one frame has one of the {num_classes} "
                        f"classes{skipped}.")
    listing.summary += (f'; {len(listing.paths)} images: the last {CKPLUS_PEAK_FRAMES} frames (fewer in a shorter '
                        f'sequence, never its first) of each sequence of the {num_classes} classes'
                        + ', and its first frame as Neutral' * neutral + skipped)
    return listing


# ---------------------------------------------------------------- class-folder datasets

FOLDER_SPLITS = ('train', 'val', 'test')  # val is optional


def _class_folders(folder):
    """Class folders of a split in class order: numeric names in numeric order (the shared RAF-DB copy's 1..7),
    others by name; hidden folders and macOS's __MACOSX are not classes."""
    names = [d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(('.', '__'))]
    return sorted(names, key=lambda n: (0, int(n), '') if n.isdigit() else (1, 0, n))


def list_folder_splits(root):
    """A class-folder dataset's splits: {split: (paths, labels)} for train, test and, if present, val, and the
    classes (the training split's folders; the other splits may lack a class but hold no other)."""
    root = Path(root)
    for split in ('train', 'test'):
        if not (root / split).is_dir():
            raise UserError(f"folder {root / split} not found; a class-folder dataset holds train/<class>/*, "
                            f"test/<class>/* and optionally val/<class>/* (or, with --folds, <class>/* directly).")
    classes = _class_folders(root / 'train')
    splits = {}
    for split in FOLDER_SPLITS:
        if not (root / split).is_dir():
            continue
        present = _class_folders(root / split)
        if not present:
            raise UserError(f"{root / split} holds no class folders; put its images in {split}/<class>/"
                            f"{' or remove it' if split == 'val' else ''}.")
        unknown = [name for name in present if name not in classes]
        if unknown:
            raise UserError(f"{root / split} has class folder(s) {', '.join(unknown)} that {root / 'train'} lacks; "
                            f"every class needs training images, so that a label means the same class in each split.")
        splits[split] = labelled_images(root / split, present, classes)
    return classes, splits


def list_folder_pool(root, subject_regex):
    """All images of a class-folder dataset, for folds: the class folders directly under root, or those of its
    train/, val/ and test/ folders pooled; each image's subject is taken from its file name by subject_regex."""
    root = Path(root)
    if (root / 'train').is_dir():
        classes, splits = list_folder_splits(root)
        paths = [p for split in splits.values() for p in split[0]]
        labels = [label for split in splits.values() for label in split[1]]
    else:
        classes = _class_folders(root)
        if not classes:
            raise UserError(f"{root} holds no class folders; with --folds a class-folder dataset holds <class>/* "
                            f"(or train/<class>/* and test/<class>/*).")
        paths, labels = labelled_images(root, classes, classes)
    pattern = re.compile(subject_regex)
    subjects = [subject_of(path, pattern) for path in paths]
    return Listing(paths, labels, subjects, classes, sorted(set(subjects)),
                   f'{len(paths)} images of {len(set(subjects))} subjects')


def subject_of(path, pattern):
    """The subject named in a file name: the first group of the pattern that matched, else its whole match."""
    match = pattern.search(Path(path).name)
    subject = match and next((group for group in match.groups() if group), match.group(0))
    if not subject:
        raise UserError(f"file name {path} holds no subject for --subject_regex {pattern.pattern!r}; name files "
                        f"<subject>_<rest> (the default takes what precedes the first '_') or give a pattern whose "
                        f"first group is the subject.")
    return subject


def assign_folds(subjects, folds, seed=0):
    """{subject: fold} for subject-independent k-fold evaluation: the subjects, sorted, then shuffled by `seed` and
    dealt to the folds in turn, so every subject is in exactly one fold and fold sizes differ by at most one subject.
    --folds equal to the number of subjects is leave-one-subject-out."""
    subjects = sorted(set(subjects))
    if not 2 <= folds <= len(subjects):
        raise UserError(f"--folds {folds}: the dataset has {len(subjects)} subjects, so between 2 and {len(subjects)} "
                        f"subject-independent folds are possible ({len(subjects)} is leave-one-subject-out).")
    order = np.random.default_rng(seed).permutation(len(subjects))
    return {subjects[i]: turn % folds for turn, i in enumerate(order)}


# ---------------------------------------------------------------- micro-expression clips

CLIP_COLUMNS = ('subject', 'clip', 'label')  # optional: onset, offset (frame numbers, inclusive)


@dataclass
class Clip:
    line: int
    subject: str
    clip: str
    label: str
    onset: Optional[int] = None
    offset: Optional[int] = None


def read_clip_list(path):
    """A clip list: a CSV with a header naming subject, clip, label and optionally onset and offset -> [Clip]."""
    if not os.path.isfile(path):
        raise UserError(f"clip list {path} not found; give a CSV with the header subject,clip,label[,onset,offset].")
    with open(path, newline='', encoding=TEXT_ENCODING) as f:
        rows = _csv_rows(path, f)
        _, header = next(rows, (1, None))
        columns = _csv_columns(path, header, CLIP_COLUMNS, "a clip list's header is subject,clip,label[,onset,offset].")
        names = [name.strip() for name in header]
        frames_at = [names.index(n) for n in ('onset', 'offset') if n in names]
        if len(frames_at) == 1:
            raise UserError(f"{path} line 1: give both onset and offset columns, or neither.")
        clips = []
        for line, row in rows:
            if len(row) != len(header):
                raise UserError(f"{path} line {line}: {len(row)} fields, expected {len(header)} ({','.join(names)}).")
            subject, clip, label = (row[i].strip() for i in columns)
            if not all((subject, clip, label)) or any(c in label for c in '/\\') or label.startswith(('.', '__')):
                raise UserError(f"{path} line {line}: subject, clip and label must be non-empty, and a label names a "
                                f"class folder (no '/', not starting with '.' or '__'), got {subject!r}, {clip!r}, "
                                f"{label!r}.")
            bounds = [row[i].strip() for i in frames_at]
            if any(bounds):
                if not all(b.isdigit() for b in bounds) or int(bounds[0]) > int(bounds[1]):
                    raise UserError(f"{path} line {line}: onset and offset must be frame numbers with onset <= "
                                    f"offset, got {bounds[0]!r} and {bounds[1]!r}.")
                clips.append(Clip(line, subject, clip, label, int(bounds[0]), int(bounds[1])))
            else:
                clips.append(Clip(line, subject, clip, label))
    if not clips:
        raise UserError(f"{path} lists no clips.")
    return clips


def frame_number(path):
    """The frame number in a frame's file name: its last run of digits ('reg_img46.jpg' -> 46)."""
    numbers = re.findall(r'\d+', Path(path).stem)
    return int(numbers[-1]) if numbers else None
