"""Loading RAF-DB and AffectNet (data_loader.py): decoding, label noise, the cache, splits, the training augmentation
(augment.py) and the device loader; and bad input to each."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import data_loader
import utils
from augment import random_erasing, source_augment
from data_loader import DeviceLoader, decode_image, load_dataset, measure_throughput, prepare_batch, stratified_split
from formats import AFFECTNET_CLASSES, RAFDB_CLASSES, make_noise
from errors import UserError

SIZE = 16  # tiny source size keeps decoding instant
TRAIN_LABELS = [1, 2, 3, 4, 5, 6, 7, 4, 4, 7]  # 1-based, as in list_patition_label.txt
TEST_LABELS = [4, 1, 7, 2]


def write_image(path, rng, size=24):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=95)


def make_rafdb(root, train=TRAIN_LABELS, test=TEST_LABELS, seed=0):
    rng = np.random.default_rng(seed)
    lines = [f"train_{i + 1:05d}.jpg {label}" for i, label in enumerate(train)]
    lines += [f"test_{i + 1:04d}.jpg {label}" for i, label in enumerate(test)]
    for line in lines:
        write_image(root / 'Image/aligned' / line.split()[0].replace('.jpg', '_aligned.jpg'), rng)
    (root / 'EmoLabel').mkdir(parents=True, exist_ok=True)
    (root / 'EmoLabel/list_patition_label.txt').write_text('\n'.join(lines) + '\n')
    return root


def make_affectnet(root, per_class=2, seed=0):
    rng = np.random.default_rng(seed)
    for split in ('train_class', 'val_class'):
        for c in range(1, 9):
            for i in range(per_class):
                write_image(root / split / f'class{c:03d}' / f'{i}.jpg', rng, size=20 + c)
    return root


def load(root, **kwargs):
    kwargs.setdefault('source_size', SIZE)
    kwargs.setdefault('log', lambda message: None)
    splits = load_dataset(kwargs.pop('name', 'rafdb'), root, **kwargs)
    assert splits.val is None  # neither layout has a validation set of its own
    return splits.train, splits.test


@pytest.fixture
def rafdb(tmp_path):
    return make_rafdb(tmp_path / 'raf')


# ---------------------------------------------------------------- layouts

def test_rafdb_layout_is_read_with_zero_based_labels(rafdb):
    train, test = load(rafdb)
    assert train.images.shape == (10, 3, SIZE, SIZE) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [label - 1 for label in TRAIN_LABELS]
    assert test.labels.tolist() == [label - 1 for label in TEST_LABELS]
    assert train.class_names == RAFDB_CLASSES and train.labels.dtype == torch.int64
    # The cached pixels are the decoded file, resized.
    expected = np.array(Image.open(rafdb / 'Image/aligned/test_0002_aligned.jpg').convert('RGB')
                          .resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    assert torch.equal(test.images[1], torch.from_numpy(expected).permute(2, 0, 1))


@pytest.mark.parametrize('classes', [8, 7])
def test_affectnet_layout_and_seven_class_protocol(tmp_path, classes):
    train, test = load(make_affectnet(tmp_path / 'aff'), name='affectnet', affectnet_classes=classes)
    assert train.labels.tolist() == sorted(list(range(classes)) * 2)
    assert len(test.labels) == 2 * classes and train.class_names == AFFECTNET_CLASSES[:classes]
    assert ('Contempt' in train.class_names) == (classes == 8)


def test_decoding_with_worker_processes_matches_in_process(rafdb, tmp_path):
    serial, _ = load(rafdb, cache_dir=tmp_path / 'c1')
    pooled, _ = load(rafdb, cache_dir=tmp_path / 'c2', workers=2)
    assert torch.equal(serial.images, pooled.images)


# ---------------------------------------------------------------- label noise

NOISY_TRAIN = [2, 2, 3, 4, 5, 6, 7, 4, 1, 7]  # 1-based; two labels differ from TRAIN_LABELS


@pytest.mark.parametrize('fmt', ['released', 'eac', 'scn_name', 'scn_path'])
def test_noise_file_formats_give_noisy_train_and_clean_test_labels(rafdb, fmt):
    names = [f"train_{i + 1:05d}" for i in range(len(NOISY_TRAIN))]
    if fmt == 'released':  # RAF list format, with test lines whose labels must be ignored
        lines = [f"{n}.jpg {label}" for n, label in zip(names, NOISY_TRAIN)]
        lines += [f"test_{i + 1:04d}.jpg 1" for i in range(len(TEST_LABELS))]
        path, text = 'EmoLabel/new_20_noise.txt', '\n'.join(lines) + '\n'
    elif fmt == 'eac':  # RAF list format, training lines only, no final newline
        path, text = 'EmoLabel/noise02.txt', '\n'.join(f"{n}.jpg {label}" for n, label in zip(names, NOISY_TRAIN))
    else:  # Self-Cure-Network: aligned image path and a 0-based label
        prefix = 'datasets/raf-basic/Image/aligned/' if fmt == 'scn_path' else ''
        path = '0.1noise_train.txt'
        text = '\n'.join(f"{prefix}{n}_aligned.jpg {label - 1}" for n, label in zip(names, NOISY_TRAIN)) + '\n'
    (rafdb / path).write_text(text)
    kwargs = {'noise': 20} if fmt == 'released' else {'noise_file': path}  # relative to the root
    train, test = load(rafdb, **kwargs)
    assert train.labels.tolist() == [label - 1 for label in NOISY_TRAIN]
    assert test.labels.tolist() == [label - 1 for label in TEST_LABELS]


def test_flip_rate_is_reported(rafdb):
    make_noise(rafdb, 0.1)
    messages = []
    load(rafdb, noise=10, log=messages.append)
    assert ('noise file EmoLabel/new_10_noise.txt: 1 of 10 training labels differ from the clean list (10.0%)'
            in messages)


def test_make_noise_flips_exact_count_and_keeps_test_lines(tmp_path):
    root = make_rafdb(tmp_path / 'raf', train=[1 + i % 7 for i in range(40)])
    path, flipped, total = make_noise(root, 0.3, seed=1)
    assert path == root / 'EmoLabel/new_30_noise.txt' and (flipped, total) == (12, 40)
    clean = (root / 'EmoLabel/list_patition_label.txt').read_text().splitlines()
    noisy = path.read_text().splitlines()
    assert [line.split()[0] for line in noisy] == [line.split()[0] for line in clean]
    changed = [a for a, b in zip(clean, noisy) if a != b]
    assert len(changed) == round(0.3 * 40) and all(line.startswith('train_') for line in changed)
    assert all(1 <= int(line.split()[1]) <= 7 for line in noisy)
    with pytest.raises(UserError, match='new_30_noise.txt already exists'):  # never silently replaced
        make_noise(root, 0.3, seed=2)
    assert path.read_text() == '\n'.join(noisy) + '\n'
    assert make_noise(root, 0.3, seed=1, overwrite=True)[0].read_text() == '\n'.join(noisy) + '\n'  # seeded


def test_noise_file_missing_a_training_image_is_an_error(rafdb):
    (rafdb / 'noise01.txt').write_text('train_00001.jpg 2\n')
    with pytest.raises(UserError, match='noise01.txt has no label for training image train_00002.jpg'):
        load(rafdb, noise_file=rafdb / 'noise01.txt')


# ---------------------------------------------------------------- cache

def test_cache_is_reused_and_invalidated_by_a_changed_file(rafdb, monkeypatch):
    first, _ = load(rafdb)
    assert list((rafdb / '.cache').glob('*.pt'))
    decoded = []
    real_decode = data_loader._decode_job
    monkeypatch.setattr(data_loader, '_decode_job', lambda job: decoded.append(job) or real_decode(job))
    messages = []
    second, _ = load(rafdb, log=messages.append)
    assert decoded == [] and torch.equal(first.images, second.images)
    assert any('from cache' in m for m in messages)

    changed = rafdb / 'Image/aligned/train_00003_aligned.jpg'
    Image.new('RGB', (24, 24), (255, 0, 0)).save(changed)
    stat = changed.stat()  # move mtime on explicitly: the filesystem clock may be coarser than the test
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third, _ = load(rafdb)
    assert len(decoded) == 10  # the training list was decoded again
    assert third.images[2, 0].float().mean() > 200 and third.images[2, 2].float().mean() < 50
    assert torch.equal(third.images[3:], first.images[3:])
    assert len(list((rafdb / '.cache').glob('*.pt'))) == 2  # replaced, not accumulated (train + test)


@pytest.mark.parametrize('content', [b'', b'not a pickle', bytes(range(256)) * 40])
def test_unreadable_cache_is_named_and_rebuilt(rafdb, content):
    first, _ = load(rafdb)
    for cache in (rafdb / '.cache').glob('*.pt'):
        cache.write_bytes(content)
    messages = []
    second, _ = load(rafdb, log=messages.append)
    assert torch.equal(first.images, second.images)
    assert any(m.startswith('warning: ignoring unreadable cache ') and str(rafdb / '.cache') in m for m in messages)
    third, _ = load(rafdb, log=messages.append)  # rebuilt: read from the cache again
    assert torch.equal(first.images, third.images) and 'from cache' in messages[-1]


def test_unwritable_cache_only_warns(rafdb, monkeypatch):
    def full_disk(content, path):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full_disk)
    messages = []
    train, _ = load(rafdb, log=messages.append)
    assert train.images.shape == (10, 3, SIZE, SIZE)
    assert any(m.startswith(f'warning: could not write {rafdb / ".cache"}') and 'No space left on device' in m
               for m in messages)
    assert not list((rafdb / '.cache').iterdir())  # no partial file left


# ---------------------------------------------------------------- decoding

def test_decoding_turns_a_photo_by_its_exif_orientation(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: shown turned 90 degrees clockwise, as a phone stores a portrait photo
    Image.fromarray(pixels).save(tmp_path / 'portrait.png', exif=exif)
    assert np.array_equal(decode_image(tmp_path / 'portrait.png'), np.rot90(pixels, k=-1))


@pytest.mark.parametrize('grayscale', [False, True])
def test_16_bit_png_decodes_like_its_8_bit_twin(tmp_path, grayscale):
    gray = np.random.default_rng(0).integers(0, 256, (24, 24), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / '8.png')
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / '16.png')  # 0..255 -> 0..65535
    with Image.open(tmp_path / '16.png') as image:
        assert image.mode in data_loader.SIXTEEN_BIT_MODES
    for size in (None, SIZE):
        assert np.array_equal(decode_image(tmp_path / '16.png', size, grayscale),
                              decode_image(tmp_path / '8.png', size, grayscale))


def test_a_long_decode_reports_its_progress(rafdb, monkeypatch):
    readings = iter(range(0, 10**6, 20))  # every reading of the clock 20 s after the last
    monkeypatch.setattr(utils, 'time', SimpleNamespace(perf_counter=lambda: next(readings)))
    paths = sorted((rafdb / 'Image/aligned').glob('train_*'))
    messages = []
    data_loader.load_images(paths, SIZE, cache_dir=rafdb / 'c', log=lambda m, to_file=True: messages.append(m))
    # A line once 30 s have passed since the last (each image takes 20 s here), none after the last image.
    assert [m for m in messages if m.endswith(' left')] == [
        'decoding 2 of 10 images, 0.1 images/s, 0:02:40 left', 'decoding 4 of 10 images, 0.1 images/s, 0:02:00 left',
        'decoding 6 of 10 images, 0.1 images/s, 0:01:20 left', 'decoding 8 of 10 images, 0.1 images/s, 0:00:40 left']


# ---------------------------------------------------------------- split

def test_stratified_split_is_disjoint_stratified_and_seeded():
    labels = torch.tensor([0] * 40 + [1] * 20 + [2] * 2 + [3] * 9)
    first, second = stratified_split(labels, 0.5, seed=3)
    assert set(first.tolist()).isdisjoint(second.tolist())
    assert sorted(first.tolist() + second.tolist()) == list(range(len(labels)))
    for c, n in [(0, 40), (1, 20), (2, 2), (3, 9)]:
        in_first = int((labels[first] == c).sum())
        assert abs(in_first - 0.5 * n) <= 1 and 1 <= in_first <= n - 1
    again, _ = stratified_split(labels, 0.5, seed=3)
    other, _ = stratified_split(labels, 0.5, seed=4)
    assert torch.equal(first, again) and not torch.equal(first, other)
    small, _ = stratified_split(labels, 0.25, seed=3)
    assert int((labels[small] == 0).sum()) == 10


# ---------------------------------------------------------------- augmentation

def test_augmentation_keeps_shape_and_dtype():
    images = torch.randint(0, 256, (8, 3, 20, 20), dtype=torch.uint8)
    x = prepare_batch(images, 12, augment=True, generator=torch.Generator().manual_seed(0))
    assert x.shape == (8, 3, 12, 12) and x.dtype == torch.float32 and torch.isfinite(x).all()


def test_evaluation_is_deterministic_and_equals_resize_then_normalise():
    images = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    x = prepare_batch(images, 12)
    assert torch.equal(x, prepare_batch(images, 12))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    # Resized in uint8 like the released PIL pipeline (the CPU kernel is fixed-point, like PIL's) ...
    resized = F.interpolate(images, size=(12, 12), mode='bilinear', antialias=True, align_corners=False).float()
    assert torch.allclose(x, (resized / 255 - mean) / std, atol=1e-5)
    # ... so at most one grey level away from a float resize.
    resized = F.interpolate(images.float(), size=(12, 12), mode='bilinear', antialias=True, align_corners=False)
    assert torch.allclose(x, (resized / 255 - mean) / std, atol=1.01 / 255 / 0.224)


def test_source_augment_flips_or_adds_noise_half_the_time():
    images = torch.randint(60, 200, (4000, 3, 4, 4), dtype=torch.uint8)  # far from the clipping bounds
    out = source_augment(images, torch.Generator().manual_seed(0))
    same = (out == images).flatten(1).all(1)
    flipped = (out == images.flip(-1)).flatten(1).all(1) & ~same
    noise = (out.float() - images.float())[~same & ~flipped]
    # Truncation to uint8 (as the released code does) shifts the mean by -0.5 and adds 1/12 to the variance.
    assert noise.mean() == pytest.approx(-0.5, abs=0.1) and noise.var() == pytest.approx(30 + 1 / 12, rel=0.05)
    assert 0.45 < same.float().mean() < 0.55 and 0.2 < flipped.float().mean() < 0.3


def test_random_erasing_zeroes_one_box_of_allowed_area():
    x = torch.ones(200, 3, 48, 48)
    out = random_erasing(x, torch.Generator().manual_seed(0), p=1.0)
    erased = (out == 0).all(1)  # same box in every channel
    area = erased.flatten(1).float().mean(1)
    assert (area >= 0.015).all() and (area <= 0.26).all()
    rows, cols = erased.any(2), erased.any(1)
    assert torch.equal(erased.flatten(1).sum(1), rows.sum(1) * cols.sum(1))  # a rectangle


# ---------------------------------------------------------------- loader

def test_same_seed_and_epoch_give_the_same_batches():
    images = torch.randint(0, 256, (50, 3, 20, 20), dtype=torch.uint8)
    labels = torch.arange(50)

    def epoch(e, seed=0):
        loader = DeviceLoader(images, labels, 8, 'cpu', image_size=12, augment=True, shuffle=True, seed=seed)
        loader.set_epoch(e)
        return list(loader)

    a, b, c = epoch(3), epoch(3), epoch(4)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][1], c[0][1])
    assert not torch.equal(epoch(3, seed=1)[0][1], a[0][1])


def test_evaluation_shards_cover_the_set_exactly_once():
    images = torch.zeros(23, 3, 4, 4, dtype=torch.uint8)
    labels = torch.arange(23)
    seen = []
    for rank in range(3):
        loader = DeviceLoader(images, labels, 4, 'cpu', image_size=4, shuffle=True, rank=rank, world_size=3)
        batches = list(loader)
        assert len(batches) == len(loader)
        seen += [y for _, y in batches]
    assert sorted(torch.cat(seen).tolist()) == list(range(23))


def test_training_shards_are_equal_and_disjoint():
    images = torch.zeros(23, 3, 4, 4, dtype=torch.uint8)
    labels = torch.arange(23)
    loaders = [DeviceLoader(images, labels, 3, 'cpu', image_size=4, shuffle=True, drop_last=True,
                            rank=r, world_size=3) for r in range(3)]
    assert {len(loader) for loader in loaders} == {2}
    seen = torch.cat([y for loader in loaders for _, y in loader])
    assert len(seen) == 18 and len(set(seen.tolist())) == 18
    x, _ = next(iter(DeviceLoader(images, labels, 3, 'cpu', image_size=4, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_measure_throughput_counts_every_image_of_every_epoch(monkeypatch):
    loader = DeviceLoader(torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.zeros(10, dtype=torch.long), 4, 'cpu',
                          image_size=4, augment=True)
    clock = iter([100.0, 102.0])  # start, end: 2 seconds
    monkeypatch.setattr(data_loader.time, 'perf_counter', lambda: next(clock))
    assert measure_throughput(loader, epochs=2) == 2 * 10 / 2  # batches of 4, 4 and 2, twice


def test_check_batches_refuses_a_loader_without_a_batch():
    images, labels = torch.zeros(10, 3, 8, 8, dtype=torch.uint8), torch.zeros(10, dtype=torch.long)
    data_loader.check_batches(DeviceLoader(images, labels, 10, 'cpu', drop_last=True), 'the set', 'fix it')
    with pytest.raises(UserError, match=r'the set has 10 images \(5 per process\), fewer than one batch of '
                                        r'--batch_size 8; fix it'):
        data_loader.check_batches(DeviceLoader(images, labels, 8, 'cpu', drop_last=True, world_size=2), 'the set',
                                  'fix it')


# ---------------------------------------------------------------- bad input

def test_missing_root(tmp_path):
    with pytest.raises(UserError, match='nowhere does not exist'):
        load(tmp_path / 'nowhere')


def test_missing_label_file(rafdb):
    (rafdb / 'EmoLabel/list_patition_label.txt').unlink()
    with pytest.raises(UserError, match='list_patition_label.txt not found'):
        load(rafdb)


@pytest.mark.parametrize('line, message', [('train_00011.jpg five', 'line 15: expected'),
                                            ('train_00011.jpg', 'line 15: expected'),
                                            ('train_00011.jpg 8', r'line 15: .*label in 1\.\.7'),
                                            ('train_00011.jpg 0', r'line 15: .*label in 1\.\.7')])
def test_bad_label_line(rafdb, line, message):
    with open(rafdb / 'EmoLabel/list_patition_label.txt', 'a') as f:
        f.write(line + '\n')
    with pytest.raises(UserError, match=f'list_patition_label.txt {message}'):
        load(rafdb)


def test_listed_image_missing(rafdb):
    (rafdb / 'Image/aligned/train_00004_aligned.jpg').unlink()
    with pytest.raises(UserError, match='train_00004_aligned.jpg is listed but missing'):
        load(rafdb)


@pytest.mark.parametrize('damage', ['truncated', 'garbage'])
def test_corrupt_image(rafdb, damage):
    path = rafdb / 'Image/aligned/test_0003_aligned.jpg'
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2] if damage == 'truncated' else b'not a jpeg')
    with pytest.raises(UserError, match='test_0003_aligned.jpg is corrupt or truncated'):
        load(rafdb)


def test_empty_affectnet_class_folder(tmp_path):
    root = make_affectnet(tmp_path / 'aff', per_class=1)
    for image in (root / 'val_class/class003').iterdir():
        image.unlink()
    with pytest.raises(UserError, match='class003 holds no images'):
        load(root, name='affectnet')


def test_affectnet_ignores_stray_folders_and_hidden_files(tmp_path):
    root = make_affectnet(tmp_path / 'aff', per_class=1)
    write_image(root / 'train_class' / '__MACOSX' / 'class001' / '._0.jpg', np.random.default_rng(0))
    (root / 'train_class' / 'class002' / '._0.jpg').write_bytes(b'AppleDouble metadata, not an image')
    train, test = load(root, name='affectnet')
    assert train.labels.tolist() == list(range(8)) and test.labels.tolist() == list(range(8))


@pytest.mark.parametrize('damage, message', [
    ('extra_val_class', 'train_class has class folders class001, .*, class008 but .*val_class has class001, .*, '
                        'class009'),
    ('missing_both', 'train_class lacks class folder\\(s\\) class003'),
])
def test_affectnet_splits_must_hold_the_same_classes(tmp_path, damage, message):
    root = make_affectnet(tmp_path / 'aff', per_class=1)
    if damage == 'extra_val_class':
        write_image(root / 'val_class' / 'class009' / '0.jpg', np.random.default_rng(0))
    else:
        for split in ('train_class', 'val_class'):
            for image in (root / split / 'class003').iterdir():
                image.unlink()
            (root / split / 'class003').rmdir()
    with pytest.raises(UserError, match=message):
        load(root, name='affectnet')


def test_decompression_bomb_is_named(rafdb, monkeypatch):
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)  # a 24x24 test image stands in for a 182-megapixel JPEG
    with pytest.raises(UserError, match='train_00001_aligned.jpg is too large to decode safely'):
        load(rafdb)


def test_missing_affectnet_split(tmp_path):
    (tmp_path / 'aff/train_class').mkdir(parents=True)
    with pytest.raises(UserError, match='val_class not found'):
        load(tmp_path / 'aff', name='affectnet', affectnet_classes=7)


def test_make_noise_command_reports_the_flips_and_never_overwrites(rafdb):
    command = [sys.executable, 'dataset_tools.py', 'make-noise', '--data', str(rafdb), '--rate', '0.2']
    here = Path(data_loader.__file__).parent
    result = subprocess.run(command, cwd=here, capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout == (f'wrote {rafdb}/EmoLabel/new_20_noise.txt: 2 of 10 training labels flipped to another '
                             f'class (20.0%), seed 0\n')
    written = (rafdb / 'EmoLabel/new_20_noise.txt').read_text()
    again = subprocess.run(command + ['--seed', '1'], cwd=here, capture_output=True, text=True)
    assert again.returncode != 0 and 'new_20_noise.txt already exists' in again.stderr
    assert 'Traceback' not in again.stderr and (rafdb / 'EmoLabel/new_20_noise.txt').read_text() == written


def test_synthetic_dataset_is_generated_then_read(tmp_path, monkeypatch):
    import synthetic
    real = synthetic.make_synthetic
    monkeypatch.setattr(synthetic, 'make_synthetic',  # demo size would be slow here
                        lambda out, layout, seed, log: real(out, layout=layout, n_train=28, n_test=21, seed=seed,
                                                            log=log))
    messages = []
    train, test = load(tmp_path / 'syn', name='synthetic', noise=10, log=messages.append)
    assert any('generating a synthetic' in m for m in messages)
    assert len(train.labels) == 28 and len(test.labels) == 21
    assert int(train.labels.max()) < len(RAFDB_CLASSES)
