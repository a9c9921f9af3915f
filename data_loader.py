"""Data pipeline (paper Sec. 4.1; SPEC.md "Data"): images decoded once and cached, datasets and their splits,
augmentation on the training device, and the loader that batches them. The label formats are in formats.py."""
import argparse
import contextlib
import hashlib
import math
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, UnidentifiedImageError

import formats
from cli import UserError

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


@dataclass
class Splits:
    """A dataset's parts: training and test sets, and the layout's own validation set if it has one."""
    train: ImageSet
    test: ImageSet
    val: Optional[ImageSet] = None


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
    except Image.DecompressionBombError as e:
        raise UserError(f"image {path} is too large to decode safely ({e}); "
                        f"downscale it (a face crop of a few hundred pixels is plenty) or remove it.") from None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise UserError(f"image {path} is corrupt or truncated ({e}); replace it with a readable image.") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok


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


def decode_images(paths, size, workers=0, window=4096):
    """Yield (path, size x size x 3 uint8 array or None, None or why it cannot be decoded) for each path, in order,
    decoded by `workers` processes (0: in this one). Paths are decoded a window at a time, the next window while the
    caller works on this one, so a large folder neither waits for nor holds all its images at once."""
    jobs = [(str(p), size) for p in paths]
    pool = _decode_pool(workers) if workers > 0 else None
    decode = (lambda part: pool.imap(_decode_job, part, chunksize=64)) if pool else (lambda part: map(_decode_job, part))
    try:
        pending = decode(jobs[:window])
        for start in range(0, len(jobs), window):
            current, pending = pending, decode(jobs[start + window:start + 2 * window])
            for path, (array, error) in zip(paths[start:start + window], current):
                yield path, array, error
    finally:
        if pool:
            pool.terminate()


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
            log(f"cache {cache_file} is out of date; decoding again")
        except Exception as e:  # noqa: BLE001 -- whatever is in the file, the images can be decoded again
            log(f"warning: ignoring unreadable cache {cache_file} ({type(e).__name__}); decoding again")

    images = torch.empty((len(paths), 3, source_size, source_size), dtype=torch.uint8)
    start, report_every = time.time(), max(1000, len(paths) // 10)
    log(f"decoding {len(paths)} images under {root} with {max(workers, 1)} process(es)")
    with contextlib.closing(decode_images(paths, source_size, workers)) as decoded:  # closing stops the workers
        for i, (_, array, error) in enumerate(decoded):
            if error:
                raise UserError(error)  # a listed image the set cannot do without
            images[i] = torch.from_numpy(array).permute(2, 0, 1)
            if (i + 1) % report_every == 0 and i + 1 < len(paths):
                log(f"  decoded {i + 1}/{len(paths)}")
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

def check_root(name, root):
    """Refuse a dataset folder that does not exist (a synthetic one is generated there on first use)."""
    if name != 'synthetic' and not Path(root).is_dir():
        raise UserError(f"dataset root {root} does not exist; pass the folder that holds "
                        f"{formats.RAFDB_LABEL_FILE} (RAF-DB) or train_class/ and val_class/ (AffectNet).")


def load_dataset(name, root, noise=0, noise_file=None, affectnet_classes=8, source_size=SOURCE_SIZE,
                 workers=0, cache_dir=None, log=print):
    """The Splits of dataset `name`: rafdb | affectnet | synthetic (a generated RAF-DB layout)."""
    root = Path(root)
    if name == 'synthetic' and not (root / formats.RAFDB_LABEL_FILE).is_file():
        log(f"no dataset at {root}; generating a synthetic RAF-DB layout there")
        import synthetic  # only here: the generator is not needed to read data
        synthetic.make_synthetic(str(root), layout='rafdb', seed=0, log=log)
    check_root(name, root)
    load = lambda paths: load_images(paths, source_size, workers, cache_dir, root, log)

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
        return Splits(*(ImageSet(load([formats.rafdb_image_path(root, n) for n in names]),
                                 torch.tensor(labels, dtype=torch.int64), list(formats.RAFDB_CLASSES), str(root))
                        for names, labels in sets))

    if name == 'affectnet':
        class_names = formats.AFFECTNET_CLASSES[:affectnet_classes]
        return Splits(*(ImageSet(load(paths), torch.tensor(labels, dtype=torch.int64), list(class_names), str(root))
                        for paths, labels in formats.list_affectnet(root, affectnet_classes)))
    raise UserError(f"unknown dataset {name!r}; choose rafdb, affectnet or synthetic.")


def source_size(args):
    """The size (S x S) at which a run's images are decoded and cached, before the network's input resize: what
    predict.py decodes new images to, so that they go through the evaluation path exactly."""
    return SOURCE_SIZE


def load_from_args(args, log):
    """The Splits of the dataset that the flags of cli.add_data_arguments name."""
    return load_dataset(args.dataset, args.data, noise=args.noise, noise_file=args.noise_file,
                        affectnet_classes=args.affectnet_classes, source_size=source_size(args), workers=args.workers,
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
    noise.add_argument('--overwrite', action='store_true', help='replace an existing noise file of that rate')
    args = parser.parse_args(argv)
    try:
        if args.command == 'make-synthetic':
            import synthetic  # only here: the generator is not needed to read data
            sizes = {k: v for k, v in (('n_train', args.train), ('n_test', args.test)) if v is not None}
            synthetic.make_synthetic(args.out, layout=args.layout, seed=args.seed, **sizes)  # reports what it wrote
        else:
            path, flipped, total = formats.make_noise(args.data, args.rate, args.seed, overwrite=args.overwrite)
            print(f"wrote {path}: {flipped} of {total} training labels flipped to another class "
                  f"({100 * flipped / total:.1f}%), seed {args.seed}")
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == '__main__':
    main()
