"""Data pipeline (paper Sec. 4.1): images decoded once and cached, datasets and their splits (official ones, or
subject-independent folds), and the loader that batches, resizes and normalises them on the training device.
The label formats are in formats.py, the training augmentation in augment.py, the dataset commands in
dataset_tools.py (run as python dataset_tools.py make-synthetic | make-noise | make-dynamic-images | align-faces)."""
import contextlib
import hashlib
import math
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

import cli
import formats
import run_folder
import utils
from augment import RELEASED_AUGMENTATION, epoch_seed, sampling_weights, source_augment
from errors import UserError

SOURCE_SIZE = 100  # RAF-DB's aligned images are 100x100
SOURCE_SIZES = {'fer2013': formats.FER2013_SIZE}  # FER2013's 48x48 rows are cached as they are, never upscaled
GRAYSCALE_DATASETS = ('fer2013', 'ckplus')  # decoded to gray, replicated to 3 channels (a colour CK+ frame too)
IMAGE_SIZE = 48  # network input, the paper's 48x48
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CACHE_VERSION = 2  # bump when the cached tensor's meaning changes (2: EXIF-turned, 16-bit scaled)
GPU_RESIDENT_FRACTION = 0.25  # keep the uint8 set on the GPU only if it takes less than this share of free memory
SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I')  # how pillow opens a 16-bit gray PNG or TIFF


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, N x 3 x S x S
    labels: torch.Tensor  # int64, N
    class_names: list
    root: str
    clean_labels: Optional[torch.Tensor] = None  # a noisy set's clean labels, where known (RAF-DB with a noise file)
    label_file_sha256: Optional[str] = None  # the noisy-label file's digest: a resumed run checks it is unchanged


@dataclass
class Splits:
    """A dataset's parts: training and test sets, and the layout's own validation set if it has one."""
    train: ImageSet
    test: ImageSet
    val: Optional[ImageSet] = None


# ---------------------------------------------------------------- images and cache

def decode_image(path, size=None, grayscale=False):
    """Decode any image file to a size x size x 3 uint8 array (RGB, bilinear with antialias; size None keeps the
    file's size), as an image viewer shows it: turned by its EXIF orientation, and 16-bit gray scaled to 8 bits.
    grayscale converts to gray first and replicates it to the 3 channels."""
    # Truncated JPEGs must fail, not decode half-grey; another library may have flipped this global.
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(path) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)  # cameras store a portrait photo sideways, plus a tag
            if image.mode in SIXTEEN_BIT_MODES:
                image = _eight_bit(image)
            image = image.convert('L').convert('RGB') if grayscale else image.convert('RGB')
            if size is not None and image.size != (size, size):
                # Pillow's bilinear filter widens its support when shrinking, i.e. it antialiases.
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.array(image, dtype=np.uint8)  # a writable copy, so torch.from_numpy accepts it
    except FileNotFoundError:
        raise UserError(f"image {path} is listed but missing; restore it or remove it from the label list.") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"image {path} is too large to decode safely ({e}); "
                        f"downscale it (a face crop of a few hundred pixels is plenty) or remove it.") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise UserError(f"image {path} is corrupt or truncated ({e}); replace it with a readable image.") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok


def _eight_bit(image):
    """A 16-bit gray image as 8-bit gray, 0..65535 scaled to 0..255 (an 8-bit image saved as 16 bits, i.e. times 257,
    comes back exactly); pillow's convert('L') would clip every value above 255 to white instead."""
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.rint(values / 257).clip(0, 255).astype(np.uint8))


def _decode_job(job):
    """(image, None), or (None, the reason) for a file that cannot be decoded: the caller decides whether one bad
    file stops the whole set (a dataset) or is listed and skipped (predict.py)."""
    try:
        return decode_image(*job), None
    except UserError as e:
        return None, str(e)


def _decode_pool(workers):
    if 'fork' not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context('spawn').Pool(workers)
    # fork, like torch's DataLoader: spawn would need an importable __main__ (it hangs under stdin or a notebook)
    # and re-runs unguarded scripts. The children only run pillow and numpy, so the threads that fork leaves
    # behind (torch's pool, which Python 3.12+ warns about) are never touched.
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*multi-threaded.*fork', category=DeprecationWarning)
        return multiprocessing.get_context('fork').Pool(workers)


def _cache_dir(root, cache_dir):
    if cache_dir is not None:
        candidates = [Path(cache_dir)]
    else:
        candidates = [Path(root) / '.cache', Path.home() / '.cache/gla_fernet']
    for directory in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(directory, os.W_OK):
            return directory
    return None


def _read_cache(cache_file, key, log, shape=None):
    """The tensors a cache file holds, or None if it is missing, out of date (another key, or images of another
    shape) or unreadable."""
    if cache_file is None or not cache_file.is_file():
        return None
    try:
        cached = torch.load(cache_file, weights_only=True)
        if cached['key'] == key and (shape is None or cached['images'].shape == shape):
            log(f"loaded {len(cached['images'])} images from cache {cache_file}")
            return cached
        log(f"cache {cache_file} is out of date; decoding again")
    except Exception as e:  # noqa: BLE001 -- whatever is in the file, the images can be decoded again
        log(f"warning: ignoring unreadable cache {cache_file} ({type(e).__name__}); decoding again")
    return None


def _write_cache(cache_file, content, log):
    """Save the decoded images for the next run; a cache that cannot be written only costs that run the decoding."""
    if cache_file is None:
        return
    try:
        run_folder.atomic_write(cache_file, lambda tmp: torch.save(content, tmp),
                                advice='and the next run caches the images; this run goes on without the cache.')
    except UserError as e:
        log(f"warning: {e}")


def decode_images(paths, size, workers=0, grayscale=False, window=4096, log=None):
    """Yield (path, size x size x 3 uint8 array or None, None or why it cannot be decoded) for each path, in order,
    decoded by `workers` processes (0: in this one). Paths are decoded a window at a time, the next window while the
    caller works on this one, so a large folder neither waits for nor holds all its images at once. With `log`, a
    long decode says how far it is at least every utils.Progress.REPORT_SECONDS."""
    jobs = [(str(p), size, grayscale) for p in paths]
    pool = _decode_pool(workers) if workers > 0 else None
    decode = ((lambda part: pool.imap(_decode_job, part, chunksize=64)) if pool else
              (lambda part: map(_decode_job, part)))
    progress = utils.CountProgress(len(jobs), 'decoding', log) if log is not None else lambda: None
    try:
        pending = decode(jobs[:window])
        for first in range(0, len(jobs), window):
            current, pending = pending, decode(jobs[first + window:first + 2 * window])
            for path, (array, error) in zip(paths[first:first + window], current):
                yield path, array, error
                progress()
    finally:
        if pool:
            pool.terminate()


def load_images(paths, source_size=SOURCE_SIZE, workers=0, cache_dir=None, root='.', log=print, grayscale=False):
    """Decode paths once into an N x 3 x S x S uint8 tensor, reusing a cache file while no file changed."""
    stats = []
    for path in paths:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise UserError(f"image {path} is listed but missing; "
                            f"restore it or remove it from the label list.") from None
        stats.append(f'{path}\0{stat.st_size}\0{stat.st_mtime_ns}')
    # The name identifies the file list; the stored key also covers sizes and mtimes, so a changed
    # file replaces the cache instead of leaving a stale one beside it.
    header = f'{CACHE_VERSION}\0{source_size}\0' + ('gray\0' if grayscale else '')
    name_hash = hashlib.sha256((header + '\0'.join(map(str, paths))).encode()).hexdigest()[:16]
    key = hashlib.sha256((header + '\n'.join(stats)).encode()).hexdigest()
    directory = _cache_dir(root, cache_dir)
    cache_file = directory / f'images-{len(paths)}-{source_size}-{name_hash}.pt' if directory else None
    cached = _read_cache(cache_file, key, log, (len(paths), 3, source_size, source_size))
    if cached is not None:
        return cached['images']

    images = torch.empty((len(paths), 3, source_size, source_size), dtype=torch.uint8)
    start = time.perf_counter()
    log(f"decoding {len(paths):,} images under {root} with {max(workers, 1)} process(es)")
    decoded = decode_images(paths, source_size, workers, grayscale, log=log)
    with contextlib.closing(decoded):  # closing stops the workers
        for i, (_, array, error) in enumerate(decoded):
            if error:
                raise UserError(error)  # a listed image the set cannot do without
            images[i] = torch.from_numpy(array).permute(2, 0, 1)
    log(f"decoded {len(paths):,} images in {time.perf_counter() - start:.1f}s")
    _write_cache(cache_file, {'key': key, 'images': images}, log)
    return images


# ---------------------------------------------------------------- datasets

ROOT_HINTS = {
    'rafdb': f'the folder that holds {formats.RAFDB_LABEL_FILE} and {formats.RAFDB_IMAGE_DIR}/',
    'affectnet': 'the folder that holds train_class/ and val_class/',
    'fer2013': "FER2013's fer2013.csv, or the folder that holds it",
    'ckplus': f'the folder that holds {formats.CKPLUS_IMAGE_DIR}/ and {formats.CKPLUS_LABEL_DIR}/',
    'folder': 'the folder that holds train/<class>/ and test/<class>/ (or <class>/ with --folds)',
}


def check_root(name, root):
    """Refuse a dataset path that does not exist (a synthetic one is generated there on first use)."""
    if name != 'synthetic' and not Path(root).exists():
        raise UserError(f"dataset root {root} does not exist; pass {ROOT_HINTS.get(name, 'an existing folder')}.")


def load_dataset(name, root, noise=0, noise_file=None, affectnet_classes=8, ferplus_labels=None, ckplus_classes=7,
                 ckplus_neutral=False, folds=None, fold=None, fold_seed=0, class_names=None,
                 subject_regex=cli.DEFAULT_SUBJECT_REGEX, source_size=None, workers=0, cache_dir=None, log=print):
    """The Splits of dataset `name`: rafdb | affectnet | fer2013 | ckplus | folder | synthetic (a generated RAF-DB
    layout). CK+, and a class folder with `folds`, are split into subject-independent folds, `fold` being the test
    set. source_size None is the dataset's own (SOURCE_SIZES)."""
    root = Path(root)
    if name == 'synthetic' and not (root / formats.RAFDB_LABEL_FILE).is_file():
        log(f"no dataset at {root}; generating a synthetic RAF-DB layout there")
        import synthetic  # only here: the generator is not needed to read data
        synthetic.make_synthetic(str(root), layout='rafdb', seed=0, log=log)
    check_root(name, root)
    source_size = SOURCE_SIZES.get(name, SOURCE_SIZE) if source_size is None else source_size
    grayscale = name in GRAYSCALE_DATASETS
    load = lambda paths: load_images(paths, source_size, workers, cache_dir, root, log, grayscale)

    if name in ('rafdb', 'synthetic'):
        train_names, train_labels, test_names, test_labels = formats.read_rafdb_list(root / formats.RAFDB_LABEL_FILE)
        noise_path = formats.noise_file_path(root, noise, noise_file)
        if noise_path is not None:
            clean = train_labels
            train_labels = formats.read_noise_labels(noise_path, train_names)
            inside = noise_path.resolve().is_relative_to(root.resolve())
            shown = os.path.relpath(noise_path, root) if inside else noise_path
            differ = sum(a != b for a, b in zip(clean, train_labels))
            log(f"noise file {shown}: {differ} of {len(clean)} training labels differ from the clean list "
                f"({100 * differ / max(len(clean), 1):.1f}%)")
        sets = [(train_names, train_labels), (test_names, test_labels)]
        splits = Splits(*(ImageSet(load([formats.rafdb_image_path(root, n) for n in names]),
                                   torch.tensor(labels, dtype=torch.int64), list(formats.RAFDB_CLASSES), str(root))
                          for names, labels in sets))
        if noise_path is not None:  # the clean list is at hand: what the noise-robust methods are measured against
            splits.train.clean_labels = torch.tensor(clean, dtype=torch.int64)
            splits.train.label_file_sha256 = hashlib.sha256(noise_path.read_bytes()).hexdigest()
        return splits

    if name == 'affectnet':
        class_names = formats.AFFECTNET_CLASSES[:affectnet_classes]
        return Splits(*(ImageSet(load(paths), torch.tensor(labels, dtype=torch.int64), list(class_names), str(root))
                        for paths, labels in formats.list_affectnet(root, affectnet_classes)))

    if name == 'fer2013':
        return load_fer2013(root, ferplus_labels, source_size, cache_dir, log)

    if name == 'ckplus':
        listing = formats.list_ckplus(root, ckplus_classes, ckplus_neutral)
        return fold_splits(listing, load, root, cli.CKPLUS_FOLDS if folds is None else folds, fold or 0, fold_seed, log)

    if name == 'folder':
        if folds is not None:
            listing = formats.list_folder_pool(root, subject_regex)
            listing.class_names = folder_class_names(root, listing.class_names, class_names)
            return fold_splits(listing, load, root, folds, fold or 0, fold_seed, log)
        classes, splits = formats.list_folder_splits(root)
        classes = folder_class_names(root, classes, class_names)
        sets = {split: ImageSet(load(paths), torch.tensor(labels, dtype=torch.int64), classes, str(root))
                for split, (paths, labels) in splits.items()}
        log(f"{root}: " + ', '.join(f'{len(s.labels)} {split}' for split, s in sets.items()) + " images of "
            f"{len(classes)} classes ({', '.join(classes)})")
        return Splits(sets['train'], sets['test'], sets.get('val'))
    raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(cli.DATASETS)}.")


def folder_class_names(root, folders, names):
    """The class names of a class-folder dataset: its folder names, or --class_names, one per folder."""
    if names is None:
        return list(folders)
    if len(names) != len(folders):
        raise UserError(f"--class_names gives {len(names)} names ({', '.join(names)}) but {root} has {len(folders)} "
                        f"class folders ({', '.join(folders)}); name each folder, in this order.")
    return list(names)


def fold_splits(listing, load, root, folds, fold, seed, log):
    """Train on every fold of a formats.Listing but `fold`, test on `fold`; no subject is in both."""
    assignment = formats.assign_folds(listing.all_subjects, folds, seed)
    if not 0 <= fold < folds:
        raise UserError(f"fold {fold} is not one of the folds 0..{folds - 1}.")
    test_subjects = sorted(subject for subject, f in assignment.items() if f == fold)
    in_test = torch.tensor([assignment[subject] == fold for subject in listing.subjects], dtype=torch.bool)
    if not in_test.any() or in_test.all():
        raise UserError(f"fold {fold} of {folds} leaves {'no test' if not in_test.any() else 'no training'} images "
                        f"(its test subjects: {', '.join(test_subjects)}); choose fewer --folds or another "
                        f"--fold_seed.")
    images, labels = load(listing.paths), torch.tensor(listing.labels, dtype=torch.int64)
    log(f"{root}: {listing.summary}; fold {fold} of {folds} (--fold_seed {seed}) tests subjects "
        f"{', '.join(test_subjects)}: {int((~in_test).sum())} training and {int(in_test.sum())} test images")
    return Splits(*(ImageSet(images[part], labels[part], list(listing.class_names), str(root))
                    for part in (~in_test, in_test)))


def load_fer2013(path, ferplus_labels=None, source_size=formats.FER2013_SIZE, cache_dir=None, log=print):
    """FER2013's CSV as Splits: Training rows train, PrivateTest rows test, PublicTest rows validate. With
    ferplus_labels (FERPlus's fer2013new.csv) the labels are FERPlus's majority votes over 8 classes and the images
    without a majority expression are left out. The parsed rows are cached like decoded images."""
    path = Path(path)
    if path.is_dir():
        path = path / 'fer2013.csv'
    if not path.is_file():
        raise UserError(f"FER2013 file {path} not found; pass --data PATH/fer2013.csv (columns emotion, pixels, "
                        f"Usage).")
    stat = path.stat()
    header = f'{CACHE_VERSION}\0fer2013\0{path.resolve()}\0'
    key = hashlib.sha256(f'{header}{stat.st_size}\0{stat.st_mtime_ns}'.encode()).hexdigest()
    directory = _cache_dir(path.parent, cache_dir)
    name_hash = hashlib.sha256(header.encode()).hexdigest()[:16]
    cache_file = directory / f'fer2013-{name_hash}.pt' if directory else None
    cached = _read_cache(cache_file, key, log)
    if cached is None:
        start = time.perf_counter()
        pixels, labels, usage = formats.read_fer2013(path)
        cached = {'key': key, 'images': torch.from_numpy(pixels).unsqueeze(1), 'labels': torch.from_numpy(labels),
                  'usage': torch.from_numpy(usage)}
        log(f"read {len(labels)} images from {path} in {time.perf_counter() - start:.1f}s")
        _write_cache(cache_file, cached, log)
    images, labels, usage = cached['images'], cached['labels'], cached['usage']
    rows = torch.bincount(usage, minlength=len(formats.FER2013_USAGE)).tolist()
    missing = [use for use, n in zip(formats.FER2013_USAGE, rows) if n == 0]
    if missing:  # an empty part would train, validate or test on nothing and report it as a result
        raise UserError(f"{path} has no rows with Usage {' or '.join(missing)}; the protocol trains on Training, "
                        f"validates on PublicTest and tests on PrivateTest rows (Kaggle's fer2013.csv has 28,709, "
                        f"3,589 and 3,589), so pass a file holding all three.")
    class_names = formats.FER2013_CLASSES
    if ferplus_labels is not None:
        ferplus_path = formats.find_file(ferplus_labels, path.parent, 'FERPlus label file')
        votes, dropped = formats.read_ferplus(ferplus_path, usage.numpy())
        labels, class_names = torch.from_numpy(votes), formats.FERPLUS_CLASSES
        log(f"FERPlus majority labels from {ferplus_path}: {int((labels >= 0).sum())} of {len(labels)} images kept; "
            f"dropped " + ', '.join(f'{n} ({reason})' for n, reason in zip(dropped.tolist(), formats.FERPLUS_DROPPED)))
    if source_size != formats.FER2013_SIZE:
        images = resize(images, source_size).to(torch.uint8)
    images = images.expand(-1, 3, -1, -1)  # gray replicated to 3 channels; indexing below makes the copies
    splits = Splits(*(ImageSet(images[part], labels[part], list(class_names), str(path))
                      for part in ((usage == formats.FER2013_USAGE.index(use)) & (labels >= 0)
                                   for use in ('Training', 'PrivateTest', 'PublicTest'))))
    if ferplus_labels is not None:  # FERPlus leaves rows out, perhaps a whole part
        for use, n, part in zip(formats.FER2013_USAGE, rows, (splits.train, splits.val, splits.test)):
            if len(part.labels) == 0:
                raise UserError(f"the FERPlus labels {ferplus_path} keep none of the {n} {use} rows of {path} (none "
                                f"has a majority expression and an image name); pass the fer2013new.csv of this file.")
    log(f"{path}: {len(splits.train.labels)} Training, {len(splits.val.labels)} PublicTest (validation) and "
        f"{len(splits.test.labels)} PrivateTest (test) images of {len(class_names)} classes")
    return splits


def source_size(args):
    """The size (S x S) at which a run's images are decoded and cached, before the network's input resize: what
    predict.py decodes new images to, so that they go through the evaluation path exactly."""
    return SOURCE_SIZES.get(args.dataset, SOURCE_SIZE)


def grayscale_source(args):
    """Whether a run's images are decoded to gray (replicated to 3 channels): new images must be decoded so too."""
    return args.dataset in GRAYSCALE_DATASETS


def load_from_args(args, log):
    """The Splits of the dataset that the flags of cli.add_data_arguments name."""
    return load_dataset(args.dataset, args.data, noise=args.noise, noise_file=args.noise_file,
                        affectnet_classes=args.affectnet_classes, ferplus_labels=args.ferplus_labels,
                        ckplus_classes=args.ckplus_classes, ckplus_neutral=args.ckplus_neutral, folds=args.folds,
                        fold=args.fold, fold_seed=args.fold_seed, class_names=args.class_names,
                        subject_regex=args.subject_regex, source_size=source_size(args), workers=args.workers,
                        log=log)


# ---------------------------------------------------------------- splits

def stratified_split(labels, train_portion=0.5, seed=0):
    """Split indices into two disjoint sorted LongTensors holding train_portion / the rest of every class.

    Each class with at least two samples keeps at least one on each side.
    """
    if not 0 < train_portion < 1:
        raise UserError(f"train_portion {train_portion} must lie strictly between 0 and 1.")
    labels = torch.as_tensor(labels).cpu()
    generator = torch.Generator().manual_seed(seed)
    first, second = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        n = round(train_portion * len(idx))
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        first.append(idx[:n])
        second.append(idx[n:])
    return torch.cat(first).sort().values, torch.cat(second).sort().values


# ---------------------------------------------------------------- batch transforms (the augmentation: augment.py)

def resize(x, size):
    """uint8 images -> float images holding uint8 values, bilinear with antialias (like the released PIL Resize)."""
    if x.shape[-2:] == (size, size):
        return x.float()
    if x.device.type == 'cpu':
        # The uint8 kernel is several times faster than the float one on the host.
        return F.interpolate(x, size=(size, size), mode='bilinear', antialias=True, align_corners=False).float()
    # CUDA has no uint8 antialiased kernel; rounding the float result gives the CPU path's values.
    return F.interpolate(x.float(), size=(size, size), mode='bilinear', antialias=True, align_corners=False).round_()


def normaliser(device):
    """(scale, shift) with x * scale + shift == (x / 255 - mean) / std, ImageNet statistics."""
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (1.0 / (255.0 * std)).to(device), (-mean / std).to(device)


def prepare_batch(images, image_size=IMAGE_SIZE, augment=False, generator=None, normalise=None):
    """uint8 N x 3 x S x S -> normalised float N x 3 x image_size x image_size, augmented if asked.

    As in the released loader, flip / noise act on the source image, erasing on the normalised one.
    augment: False, True (the released augmentation) or an augment.Augmentation.
    normalise: normaliser(device), made once by the caller so that no per-batch host-to-device copy is needed.
    """
    augment = RELEASED_AUGMENTATION if augment is True else augment
    scale, shift = normalise if normalise is not None else normaliser(images.device)
    x = source_augment(images, generator) if augment and augment.flip_or_pixel_noise else images
    x = torch.addcmul(shift, resize(x, image_size), scale)
    return augment.erase(x, generator, (scale, shift)) if augment else x


# ---------------------------------------------------------------- loader

class DeviceLoader:
    """Batches of a uint8 image tensor, gathered, augmented and normalised on the training device."""

    def __init__(self, images, labels, batch_size, device, image_size=IMAGE_SIZE, augment=False, shuffle=False,
                 drop_last=False, seed=0, rank=0, world_size=1, channels_last=False, sampler='uniform', stream=0):
        """augment: False, True (the released augmentation) or an augment.Augmentation. sampler: 'uniform' (all images,
        shuffled if `shuffle`) or a class sampler of sampling_weights, drawing as many images with replacement.
        stream: loaders of one run with different streams draw independently from the same seed.
        While iterating, batch_index holds the dataset indices of the batch last yielded (SCN relabels by them)."""
        assert len(images) == len(labels) and 0 <= rank < world_size
        self.device = torch.device(device)
        self.batch_size, self.image_size, self.augment = batch_size, image_size, augment
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.epoch, self.stream = 0, stream
        self.batch_index = None
        self.weights = sampling_weights(labels, sampler)
        self.normalise = normaliser(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.resident = self.device.type == 'cpu'  # whether batches are gathered where the images live
        if self.device.type == 'cuda':
            free, _ = torch.cuda.mem_get_info(self.device)
            self.resident = images.numel() < GPU_RESIDENT_FRACTION * free
        # Host-kept images are gathered per batch into pinned buffers (below): pinning the gathered batch,
        # not the whole set, is what makes its copy asynchronous.
        self.images = images.to(self.device) if self.resident else images.cpu()

    def set_epoch(self, epoch):
        self.epoch = epoch

    def _shard_size(self):
        n = len(self.labels)
        if self.drop_last:
            return n // self.world_size  # equal shards, so every rank runs the same number of steps
        return (n - self.rank + self.world_size - 1) // self.world_size  # perm[rank::world_size] exactly

    def __len__(self):
        if self.drop_last:
            return self._shard_size() // self.batch_size
        return math.ceil(self._shard_size() / self.batch_size)

    def _order(self):
        n = len(self.labels)
        # No rank: every process draws the same order, and takes its own shard of it.
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 2 * self.stream))
        if self.weights is not None:
            order = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # same on every rank
        elif self.shuffle:
            order = torch.randperm(n, generator=generator)  # identical on every rank
        else:
            order = torch.arange(n)
        if self.drop_last:
            order = order[:self._shard_size() * self.world_size]
        return order[self.rank::self.world_size]

    def __iter__(self):
        order = self._order()
        # Once per epoch; pinned so that even this copy does not wait for the device.
        order_device = order.pin_memory().to(self.device, non_blocking=True) if self.device.type == 'cuda' else order
        generator = None
        if self.augment:
            # With the rank: each process augments its own way (rank 0 as a single process does).
            generator = torch.Generator(device=self.device).manual_seed(
                epoch_seed(self.seed, self.epoch, 2 * self.stream + 1, self.rank))
        for b in range(len(self)):
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            if self.resident:
                x = self.images.index_select(0, order_device[batch])
            else:
                idx = order[batch]
                # A fresh pinned buffer per batch comes from the host caching allocator, which keeps it
                # alive until the asynchronous copy has finished.
                buffer = torch.empty((len(idx),) + self.images.shape[1:], dtype=torch.uint8, pin_memory=True)
                x = torch.index_select(self.images, 0, idx, out=buffer).to(self.device, non_blocking=True)
            x = prepare_batch(x, self.image_size, self.augment, generator, self.normalise)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            self.batch_index = order_device[batch]
            yield x, self.labels.index_select(0, self.batch_index)


def evaluation_loader(images, labels, args, device, batch_size=None, rank=0, world_size=1):
    """The batches a run with arguments `args` evaluates on: its uint8 source images resized to --image_size and
    normalised, unaugmented, in order. train.py's test loader and predict.py both use it, so that a new image is
    seen exactly as the test images were."""
    return DeviceLoader(images, labels, batch_size or args.batch_size, device, image_size=args.image_size,
                        seed=args.seed, rank=rank, world_size=world_size, channels_last=args.channels_last)


def check_batches(loader, what, fix):
    """Stop a run at its start if `loader` would yield no batch: an epoch of no steps reports an untrained network,
    and a loader cycled for batches would wait for one forever."""
    if len(loader) == 0:
        shard = f' ({loader._shard_size()} per process)' if loader.world_size > 1 else ''
        raise UserError(f'{what} has {len(loader.labels)} images{shard}, fewer than one batch of --batch_size '
                        f'{loader.batch_size}; {fix}')


def measure_throughput(loader, epochs=1):
    """Images per second delivered by loader over whole epochs (waits for the device at the end)."""
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for x, _ in loader:
            count += x.shape[0]
    if loader.device.type == 'cuda':
        torch.cuda.synchronize(loader.device)
    return count / (time.perf_counter() - start)


if __name__ == '__main__':
    # The dataset commands have one entry point, which imports this module once (run from here, it would be twice).
    import shlex
    import sys
    sys.exit(f'error: data_loader.py is a module, not a command; the dataset commands are run as python '
             f'dataset_tools.py {shlex.join(sys.argv[1:]) or "COMMAND"}')
