"""The FER datasets' on-disk formats, without torch (SPEC.md "Data"): class names, RAF-DB's label list and its
noisy-label files (read and written), AffectNet's class folders. data_loader.py reads images through these;
synthetic.py writes datasets in these layouts."""
import os
import re
from pathlib import Path

import numpy as np

from cli import NOISE_LEVELS, UserError

RAFDB_CLASSES = ['Surprise', 'Fear', 'Disgust', 'Happiness', 'Sadness', 'Anger', 'Neutral']
AFFECTNET_CLASSES = ['Neutral', 'Happiness', 'Sadness', 'Surprise', 'Fear', 'Disgust', 'Anger', 'Contempt']
RAFDB_LABEL_FILE = 'EmoLabel/list_patition_label.txt'  # (sic) the name RAF-DB ships with
RAFDB_IMAGE_DIR = 'Image/aligned'
AFFECTNET_SPLITS = ('train_class', 'val_class')  # AffectNet's validation set serves as the test set
AFFECTNET_CLASS_FOLDER = re.compile(r'class(\d{3})')  # class001 .. class008, in AffectNet's class order
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')


# ---------------------------------------------------------------- RAF-DB label list and noisy-label files

def _read_pairs(path):
    """Yield (line number, name, integer label) for each non-blank line of a two-column list file."""
    with open(path, encoding='utf-8') as f:
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


def noise_file_path(root, noise, noise_file):
    """The noisy-label file that --noise / --noise_file name (None for clean labels)."""
    if noise_file is not None:
        # EmoLabel/noise01.txt is naturally given relative to the dataset root.
        for candidate in (Path(noise_file), Path(root) / noise_file):
            if candidate.is_file():
                return candidate
        raise UserError(f"noise file {noise_file} not found (also looked under {root}); pass an existing label file.")
    if noise not in NOISE_LEVELS:
        raise UserError(f"noise level {noise} is not one of {NOISE_LEVELS}; use one of them or pass noise_file.")
    if noise == 0:
        return None
    path = Path(root) / f'EmoLabel/new_{noise}_noise.txt'
    if not path.is_file():
        raise UserError(f"noise file {path} not found; create it with "
                        f"'python data_loader.py make-noise --data {root} --rate {noise / 100}' or pass noise_file.")
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
    tmp = out.with_name(out.name + f'.tmp{os.getpid()}')
    tmp.write_text(''.join(lines), encoding='utf-8')
    os.replace(tmp, out)
    return out, len(flipped), len(train_names)


# ---------------------------------------------------------------- AffectNet class folders

def _image_files(folder):
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
    out = []
    for folder, _ in splits:
        paths, labels = [], []
        for label, name in enumerate(wanted):
            files = _image_files(folder / name)
            if not files:
                raise UserError(f"class folder {folder / name} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                f"add images or remove the folder.")
            paths += files
            labels += [label] * len(files)
        out.append((paths, labels))
    return out
