"""Data pipeline (paper Sec. 4.1; SPEC.md "Data"): RAF-DB / AffectNet readers, label noise, cache, device loader."""
import argparse
import hashlib
import math
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, UnidentifiedImageError

from utils import UserError

RAFDB_CLASSES = ['Surprise', 'Fear', 'Disgust', 'Happiness', 'Sadness', 'Anger', 'Neutral']
AFFECTNET_CLASSES = ['Neutral', 'Happiness', 'Sadness', 'Surprise', 'Fear', 'Disgust', 'Anger', 'Contempt']
RAFDB_LABEL_FILE = 'EmoLabel/list_patition_label.txt'  # (sic) the name RAF-DB ships with
RAFDB_IMAGE_DIR = 'Image/aligned'
NOISE_LEVELS = (0, 10, 20, 30)  # percent; EmoLabel/new_{N}_noise.txt (Self-Cure-Network's protocol)
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.webp')

SOURCE_SIZE = 100  # RAF-DB's aligned images are 100x100
IMAGE_SIZE = 48  # network input (SPEC "Preprocessing")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENT_P = 0.5  # released loader: with p=0.5 apply one of {flip, Gaussian noise}
NOISE_STD = math.sqrt(30.0)  # released add_gaussian_noise: variance 30 on the 0..255 scale
ERASE_P, ERASE_SCALE, ERASE_RATIO, ERASE_ATTEMPTS = 0.5, (0.02, 0.25), (0.3, 3.3), 10  # torchvision RandomErasing
CACHE_VERSION = 1  # bump when the cached tensor's meaning changes
GPU_RESIDENT_FRACTION = 0.25  # keep the uint8 set on the GPU only if it takes less than this share of free memory


@dataclass
class ImageSet:
    images: torch.Tensor  # uint8, N x 3 x S x S
    labels: torch.Tensor  # int64, N
    class_names: list
    root: str


# ---------------------------------------------------------------- label files

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
    return split['train'][0], split['train'][1], split['test'][0], split['test'][1]


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


def _resolve_noise_file(root, noise, noise_file):
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


def make_noise(data, rate, seed=0):
    """Write EmoLabel/new_{100*rate}_noise.txt, exactly round(rate * n_train) training labels flipped; return its path.

    Each flipped label moves uniformly to one of the six other classes; test lines and line order are unchanged.
    """
    if not 0 < rate < 1:
        raise UserError(f"noise rate {rate} must lie strictly between 0 and 1, e.g. 0.1.")
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
    out = Path(data) / f'EmoLabel/new_{round(100 * rate)}_noise.txt'
    tmp = out.with_name(out.name + f'.tmp{os.getpid()}')
    tmp.write_text(''.join(lines), encoding='utf-8')
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- images and cache

def decode_image(path, size):
    """Decode any image file to a size x size x 3 uint8 array (RGB, bilinear with antialias)."""
    # Truncated JPEGs must fail, not decode half-grey; another library may have flipped this global.
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(path) as image:
            image.load()
            image = image.convert('RGB')
            if image.size != (size, size):
                # Pillow's bilinear filter widens its support when shrinking, i.e. it antialiases.
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            return np.array(image, dtype=np.uint8)  # a writable copy, so torch.from_numpy accepts it
    except FileNotFoundError:
        raise UserError(f"image {path} is listed but missing; restore it or remove it from the label list.") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise UserError(f"image {path} is corrupt or truncated ({e}); replace it with a readable image.") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok


def _decode_job(job):
    return decode_image(*job)


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


def load_images(paths, source_size=SOURCE_SIZE, workers=0, cache_dir=None, root='.', log=print):
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
    header = f'{CACHE_VERSION}\0{source_size}\0'
    name_hash = hashlib.sha256((header + '\0'.join(map(str, paths))).encode()).hexdigest()[:16]
    key = hashlib.sha256((header + '\n'.join(stats)).encode()).hexdigest()
    directory = _cache_dir(root, cache_dir)
    cache_file = directory / f'images-{len(paths)}-{source_size}-{name_hash}.pt' if directory else None
    if cache_file is not None and cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            if cached['key'] == key and cached['images'].shape == (len(paths), 3, source_size, source_size):
                log(f"loaded {len(paths)} images from cache {cache_file}")
                return cached['images']
        except (OSError, RuntimeError, KeyError, EOFError, TypeError) as e:
            log(f"ignoring unreadable cache {cache_file} ({e})")
        log(f"cache {cache_file} is out of date; decoding again")

    images = torch.empty((len(paths), 3, source_size, source_size), dtype=torch.uint8)
    start, report_every = time.time(), max(1000, len(paths) // 10)
    jobs = [(str(p), source_size) for p in paths]
    log(f"decoding {len(paths)} images under {root} with {max(workers, 1)} process(es)")
    pool = _decode_pool(workers) if workers > 0 else None
    try:
        results = pool.imap(_decode_job, jobs, chunksize=64) if pool else map(_decode_job, jobs)
        for i, array in enumerate(results):
            images[i] = torch.from_numpy(array).permute(2, 0, 1)
            if (i + 1) % report_every == 0 and i + 1 < len(paths):
                log(f"  decoded {i + 1}/{len(paths)}")
    finally:
        if pool:
            pool.terminate()
    log(f"decoded {len(paths)} images in {time.time() - start:.1f}s")

    if cache_file is not None:
        tmp = cache_file.with_name(cache_file.name + f'.tmp{os.getpid()}')
        try:
            torch.save({'key': key, 'images': images}, tmp)
            os.replace(tmp, cache_file)  # atomic: a crash never leaves a half-written cache
        except OSError as e:
            tmp.unlink(missing_ok=True)
            log(f"could not write cache {cache_file} ({e}); continuing without it")
    return images


# ---------------------------------------------------------------- datasets

def _list_class_folder(folder, count):
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith('.'))
    if not count <= len(classes) <= len(AFFECTNET_CLASSES):
        raise UserError(f"folder {folder} has {len(classes)} class folders, expected {len(AFFECTNET_CLASSES)} "
                        f"(class001..class008; 7 without Contempt also do for the 7-class protocol).")
    paths, labels = [], []
    for label, class_dir in enumerate(classes[:count]):  # 7-class protocol drops the last folder, Contempt
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise UserError(f"class folder {class_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                            f"add images or remove the folder.")
        paths += files
        labels += [label] * len(files)
    return paths, labels


def check_root(name, root):
    """Refuse a dataset folder that does not exist (a synthetic one is generated there on first use)."""
    if name != 'synthetic' and not Path(root).is_dir():
        raise UserError(f"dataset root {root} does not exist; pass the folder that holds "
                        f"{RAFDB_LABEL_FILE} (RAF-DB) or train_class/ and val_class/ (AffectNet).")


def load_dataset(name, root, noise=0, noise_file=None, affectnet_classes=8, source_size=SOURCE_SIZE,
                 workers=0, cache_dir=None, log=print):
    """Return (train, test) ImageSets for name in rafdb | affectnet | synthetic (a generated RAF-DB layout)."""
    root = Path(root)
    if name == 'synthetic' and not (root / RAFDB_LABEL_FILE).is_file():
        import synthetic  # lazy: synthetic imports make_noise from this module
        log(f"no dataset at {root}; generating a synthetic RAF-DB layout there")
        synthetic.make_synthetic(str(root), layout='rafdb', seed=0)
    check_root(name, root)
    load = lambda paths: load_images(paths, source_size, workers, cache_dir, root, log)

    if name in ('rafdb', 'synthetic'):
        label_path = root / RAFDB_LABEL_FILE
        train_names, train_labels, test_names, test_labels = read_rafdb_list(label_path)
        noise_path = _resolve_noise_file(root, noise, noise_file)
        if noise_path is not None:
            clean = train_labels
            train_labels = read_noise_labels(noise_path, train_names)
            inside = noise_path.resolve().is_relative_to(root.resolve())
            shown = os.path.relpath(noise_path, root) if inside else noise_path
            differ = sum(a != b for a, b in zip(clean, train_labels))
            log(f"noise file {shown}: {differ} of {len(clean)} training labels differ from the clean list "
                f"({100 * differ / max(len(clean), 1):.1f}%)")
        image_path = lambda n: root / RAFDB_IMAGE_DIR / (n[:-len('.jpg')] + '_aligned.jpg')
        sets = [(train_names, train_labels), (test_names, test_labels)]
        return tuple(ImageSet(load([image_path(n) for n in names]), torch.tensor(labels, dtype=torch.int64),
                              list(RAFDB_CLASSES), str(root)) for names, labels in sets)

    if name == 'affectnet':
        if affectnet_classes not in (7, 8):
            raise UserError(f"affectnet_classes must be 7 (without Contempt) or 8, got {affectnet_classes}.")
        for split in ('train_class', 'val_class'):
            if not (root / split).is_dir():
                raise UserError(f"folder {root / split} not found; an AffectNet root must hold "
                                f"train_class/class001..class008 and val_class/class001..class008.")
        out = []
        for split in ('train_class', 'val_class'):  # AffectNet's validation set serves as the test set
            paths, labels = _list_class_folder(root / split, affectnet_classes)
            out.append(ImageSet(load(paths), torch.tensor(labels, dtype=torch.int64),
                                AFFECTNET_CLASSES[:affectnet_classes], str(root)))
        return tuple(out)
    raise UserError(f"unknown dataset {name!r}; choose rafdb, affectnet or synthetic.")


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


# ---------------------------------------------------------------- batch transforms

def _add_noise(x, generator):
    z = torch.randn(x.shape, generator=generator, device=x.device)
    return z.mul_(NOISE_STD).add_(x).clamp_(0, 255).to(torch.uint8)  # truncates, like the released astype(uint8)


def source_augment(x, generator):
    """Released augmentation of uint8 images: with p=0.5, a horizontal flip or N(0, 30) noise, chosen uniformly."""
    u = torch.rand(x.shape[0], 2, generator=generator, device=x.device)
    chosen = u[:, 0] < AUGMENT_P
    flip, noise = chosen & (u[:, 1] < 0.5), chosen & (u[:, 1] >= 0.5)
    if x.device.type == 'cpu':
        # On the host, indexing costs no device sync, and noise is drawn for a quarter of the batch only.
        x = x.clone()
        flip, noise = flip.nonzero().flatten(), noise.nonzero().flatten()
        x[flip] = x[flip].flip(-1)
        x[noise] = _add_noise(x[noise], generator)
        return x
    # On an accelerator, masks keep the step free of host syncs, and noise for the whole batch is cheap.
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return torch.where(noise.view(-1, 1, 1, 1), _add_noise(x, generator), x)


def resize(x, size):
    """uint8 images -> float images holding uint8 values, bilinear with antialias (like the released PIL Resize)."""
    if x.shape[-2:] == (size, size):
        return x.float()
    if x.device.type == 'cpu':
        # The uint8 kernel is several times faster than the float one on the host.
        return F.interpolate(x, size=(size, size), mode='bilinear', antialias=True, align_corners=False).float()
    # CUDA has no uint8 antialiased kernel; rounding the float result gives the CPU path's values.
    return F.interpolate(x.float(), size=(size, size), mode='bilinear', antialias=True, align_corners=False).round_()


def random_erasing(x, generator, p=ERASE_P, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=0.0):
    """torchvision's RandomErasing (up to 10 box attempts, first that fits wins) for every sample at once."""
    b, _, height, width = x.shape
    area = height * width
    uniform = lambda lo, hi: torch.empty(b, ERASE_ATTEMPTS, device=x.device).uniform_(lo, hi, generator=generator)
    target = area * uniform(*scale)
    aspect = uniform(math.log(ratio[0]), math.log(ratio[1])).exp()
    h = (target * aspect).sqrt().round()
    w = (target / aspect).sqrt().round()
    fits = (h < height) & (w < width)
    first = fits.int().argmax(1, keepdim=True)  # index of the first attempt that fits
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    u = torch.rand(b, 3, generator=generator, device=x.device)
    apply = (u[:, 0] < p) & fits.any(1)
    top = (u[:, 1] * (height - h + 1)).floor()
    left = (u[:, 2] * (width - w + 1)).floor()
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]
    return x.masked_fill(mask[:, None], value)


def normaliser(device):
    """(scale, shift) with x * scale + shift == (x / 255 - mean) / std, ImageNet statistics."""
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    return (1.0 / (255.0 * std)).to(device), (-mean / std).to(device)


def prepare_batch(images, image_size=IMAGE_SIZE, augment=False, generator=None, normalise=None):
    """uint8 N x 3 x S x S -> normalised float N x 3 x image_size x image_size, augmented if asked.

    As in the released loader, flip / noise act on the source image, erasing on the normalised one.
    normalise: normaliser(device), made once by the caller so that no per-batch host-to-device copy is needed.
    """
    scale, shift = normalise if normalise is not None else normaliser(images.device)
    x = source_augment(images, generator) if augment else images
    x = torch.addcmul(shift, resize(x, image_size), scale)
    return random_erasing(x, generator) if augment else x


# ---------------------------------------------------------------- loader

def _epoch_seed(seed, epoch, stream):
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0] >> 1)


class DeviceLoader:
    """Batches of a uint8 image tensor, gathered, augmented and normalised on the training device."""

    def __init__(self, images, labels, batch_size, device, image_size=IMAGE_SIZE, augment=False, shuffle=False,
                 drop_last=False, seed=0, rank=0, world_size=1, channels_last=False):
        assert len(images) == len(labels) and 0 <= rank < world_size
        self.device = torch.device(device)
        self.batch_size, self.image_size, self.augment = batch_size, image_size, augment
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.epoch = 0
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
        if self.shuffle:
            generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch, 0))
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
            generator = torch.Generator(device=self.device).manual_seed(_epoch_seed(self.seed, self.epoch, 1))
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
            yield x, self.labels.index_select(0, order_device[batch])


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


# ---------------------------------------------------------------- command line

def main(argv=None):
    parser = argparse.ArgumentParser(description='Dataset utilities for GLA-FERNet.')
    commands = parser.add_subparsers(dest='command', required=True)
    synth = commands.add_parser('make-synthetic', help='generate a small procedural face dataset')
    synth.add_argument('--out', required=True, help='folder to write the dataset into')
    synth.add_argument('--layout', choices=['rafdb', 'affectnet'], default='rafdb', help='folder layout to imitate')
    synth.add_argument('--train', type=int, default=None, help="training images (default: synthetic.py's)")
    synth.add_argument('--test', type=int, default=None, help="test images (default: synthetic.py's)")
    synth.add_argument('--seed', type=int, default=0, help='random seed')
    noise = commands.add_parser('make-noise', help='write EmoLabel/new_N_noise.txt for a RAF-DB folder')
    noise.add_argument('--data', required=True, help='RAF-DB root holding EmoLabel/list_patition_label.txt')
    noise.add_argument('--rate', type=float, required=True, help='fraction of training labels to flip, e.g. 0.1')
    noise.add_argument('--seed', type=int, default=0, help='random seed')
    args = parser.parse_args(argv)
    try:
        if args.command == 'make-synthetic':
            import synthetic  # lazy: synthetic imports make_noise from this module
            sizes = {k: v for k, v in (('n_train', args.train), ('n_test', args.test)) if v is not None}
            synthetic.make_synthetic(args.out, layout=args.layout, seed=args.seed, **sizes)  # reports what it wrote
        else:
            print(f"wrote {make_noise(args.data, args.rate, args.seed)}")
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == '__main__':
    main()


DEFAULT_ROOTS = {'synthetic': 'data/synthetic-rafdb', 'rafdb': 'data/raf-basic', 'affectnet': 'data/AffectNet'}


def default_root(dataset):
    """Where the scripts look for a dataset when --data is not given."""
    return DEFAULT_ROOTS[dataset]


def image_size_argument(text):
    from operations import check_image_size
    try:
        check_image_size(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return int(text)


def add_data_arguments(parser):
    """The dataset flags shared by train_search.py and train.py."""
    parser.add_argument('--dataset', choices=['synthetic', 'rafdb', 'affectnet'], default='synthetic',
                        help='synthetic is generated into --data on first use')
    parser.add_argument('--data', default=None,
                        help='dataset root (default: data/synthetic-rafdb, data/raf-basic or data/AffectNet)')
    parser.add_argument('--noise', type=int, choices=NOISE_LEVELS, default=0,
                        help='RAF-DB training-label noise in percent: reads EmoLabel/new_{N}_noise.txt')
    parser.add_argument('--noise_file', default=None,
                        help='explicit noisy training-label file (any of the three known formats)')
    parser.add_argument('--affectnet_classes', type=int, choices=[7, 8], default=8, help='7 drops Contempt')
    parser.add_argument('--image_size', type=image_size_argument, default=IMAGE_SIZE,
                        help='network input size (a multiple of 4)')
    parser.add_argument('--workers', type=int, default=2, help='processes decoding JPEGs on the first run (cached after)')


def check_root_from_args(args):
    """check_root for the dataset flags of add_data_arguments: run before a run folder is created."""
    check_root(args.dataset, args.data or default_root(args.dataset))


def load_from_args(args, log):
    """(train, test) ImageSets for the dataset flags of add_data_arguments."""
    return load_dataset(args.dataset, args.data or default_root(args.dataset), noise=args.noise,
                        noise_file=args.noise_file, affectnet_classes=args.affectnet_classes, workers=args.workers,
                        log=log)
