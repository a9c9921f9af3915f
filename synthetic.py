"""Synthetic facial-expression data in the on-disk layouts of RAF-DB, AffectNet, FER2013 (with FERPlus votes), CK+,
class-folder copies and micro-expression clips, for demos and tests."""

import contextlib
import os
import time
from multiprocessing import Pool

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

import run_folder
from errors import UserError
from formats import (AFFECTNET_CLASSES, CKPLUS_CLASSES, CKPLUS_IMAGE_DIR, CKPLUS_LABEL_DIR, FER2013_CLASSES,
                     FER2013_SIZE, FER2013_USAGE, FERPLUS_CLASSES, FERPLUS_VOTES, RAFDB_CLASSES, RAFDB_LABEL_FILE,
                     make_noise, rafdb_image_path)

# (n_train, n_test) of the demo set: enough for the demo to pass 80% test accuracy, few enough to generate in seconds.
DEMO_SIZE = (3000, 1000)
IMAGE_SIZE = 100                  # RAF-DB's aligned images are 100x100
SUPERSAMPLE = 4                   # draw at 4x and downsample, for antialiased edges
MIN_PER_CLASS = 3                 # so that even a tiny set has every class in both splits
NOISE_RATES = (0.1, 0.2, 0.3)     # RAF-DB's new_10/20/30_noise.txt
WORKERS = 2                       # the demo machine's cores
CHUNK = 100                       # images per pool task: small enough to keep both workers busy to the end

RAFDB_COUNTS = {'train': (1290, 281, 717, 4772, 1982, 705, 2524), 'test': (329, 74, 160, 1185, 478, 162, 680)}
# AffectNet's manually annotated 8-class training set (287,651 images); its validation set is balanced, 500 per class.
AFFECTNET_COUNTS = {'train': (74874, 134415, 25459, 14090, 6378, 3803, 24882, 3750), 'val': (500,) * 8}
FER2013_COUNTS = {'Training': (3995, 436, 4097, 7215, 4830, 3171, 4965),
                  'PublicTest': (467, 56, 496, 895, 653, 415, 607), 'PrivateTest': (491, 55, 528, 879, 594, 416, 626)}
CONTEMPT_SHARE = 0.05             # of FER2013's Neutral faces drawn with contempt, FERPlus's eighth class
CKPLUS_COUNTS = (45, 18, 59, 25, 69, 28, 83)  # CK+'s 327 labelled sequences (of 118 subjects) per emotion code 1..7
CLIP_CLASSES = {'negative': 'Disgust', 'positive': 'Happiness', 'surprise': 'Surprise'}  # SMIC's three classes
CLIP_COUNTS = (70, 51, 43)        # SMIC's 164 clips
CLIP_PEAK = 0.6                   # micro-expressions are subtle: at most 60% of a posed expression's intensity
SYNONYMS = {'Angry': 'Anger', 'Happy': 'Happiness', 'Sad': 'Sadness', **CLIP_CLASSES}  # other names of EXPRESSIONS

# Each expression moves a face away from the relaxed one (all features 0) along these features; the renderer
# turns features into geometry and caps the cues that saturate (teeth, pressed lips, asymmetry, wrinkles).
# Intensity scales the move, so weak expressions look nearly neutral.
EXPRESSIONS = {
    'Neutral': {},
    'Surprise': dict(brow_raise=1.7, eye_open=1.35, mouth_open=1.7, mouth_width=-0.7),
    'Fear': dict(brow_raise=1.0, brow_inner=1.35, brow_pinch=1.2, eye_open=1.2, mouth_open=0.75, mouth_width=0.6,
                 mouth_curve=-0.5, teeth=1.0),
    'Disgust': dict(brow_raise=-0.7, brow_pinch=0.5, eye_open=-0.85, lip_raise=1.7, asym=1.0, nose_wrinkle=1.7,
                    mouth_curve=-0.7, teeth=1.35),
    'Happiness': dict(mouth_curve=1.7, mouth_width=0.5, mouth_open=0.6, teeth=1.7, eye_open=-0.4),
    'Sadness': dict(brow_raise=0.15, brow_inner=1.7, eye_open=-0.5, mouth_curve=-1.55, mouth_width=-0.15),
    'Anger': dict(brow_raise=-1.2, brow_inner=-1.7, brow_pinch=1.2, eye_open=0.15, lip_press=1.7, mouth_width=-0.35),
    'Contempt': dict(smirk=1.7, eye_open=-0.25, lip_press=0.7),
}
FEATURES = ('brow_raise', 'brow_inner', 'brow_pinch', 'eye_open', 'mouth_curve', 'mouth_open', 'mouth_width',
            'lip_raise', 'lip_press', 'asym', 'nose_wrinkle', 'teeth', 'smirk')
# How hard the task is: with these, a small plain CNN on the demo set at 48x48 is at 40-60% test accuracy after
# one epoch and above 90% within 5-10 (measured; the demo needs 80%). Weaker expressions or more identity
# noise make neutral and mild faces overlap, and learning much slower.
INTENSITY = (0.5, 1.0)
IDENTITY_SD = 0.05                # resting faces differ: some look a little sad or surprised

SKIN_LIGHT, SKIN_DARK = np.array([242, 208, 182]), np.array([92, 58, 42])
HAIR_COLOURS = np.array([[25, 20, 18], [70, 45, 30], [120, 80, 45], [200, 165, 105], [150, 70, 35], [160, 160, 160]])
LAYOUTS = {
    'rafdb': dict(classes=RAFDB_CLASSES, counts=RAFDB_COUNTS, splits=('train', 'test')),
    'affectnet': dict(classes=AFFECTNET_CLASSES, counts=AFFECTNET_COUNTS, splits=('train', 'val')),
    'fer2013': dict(classes=FER2013_CLASSES, counts=FER2013_COUNTS, splits=FER2013_USAGE),
    'folder': dict(classes=RAFDB_CLASSES, counts=RAFDB_COUNTS, splits=('train', 'test')),
    # size: (sequences or clips, subjects) by default; a CK+ sequence needs a neutral first frame and 3 peak frames.
    'ckplus': dict(classes=CKPLUS_CLASSES, counts=CKPLUS_COUNTS, size=(327, 118), frames=6, min_frames=4),
    'clips': dict(classes=list(CLIP_CLASSES), counts=CLIP_COUNTS, size=(48, 8), frames=10, min_frames=4),
}
SEQUENCE_LAYOUTS = ('ckplus', 'clips')


def class_counts(real_counts, n):
    """Split n images over classes in proportion to real_counts, at least MIN_PER_CLASS each; largest-remainder
    rounding makes the total exact. n equal to the real total gives the real counts."""
    k = len(real_counts)
    if n == sum(real_counts):
        return np.asarray(real_counts)
    if n < k * MIN_PER_CLASS:
        raise UserError(f'{n} images cannot give each of {k} classes {MIN_PER_CLASS}; '
                        f'ask for at least {k * MIN_PER_CLASS}.')
    real = np.asarray(real_counts, dtype=float)
    share = (n - k * MIN_PER_CLASS) * real / real.sum()
    counts = np.floor(share).astype(int)
    rest = n - k * MIN_PER_CLASS - counts.sum()
    counts[np.argsort(counts - share, kind='stable')[:rest]] += 1
    return counts + MIN_PER_CLASS


def make_synthetic(out, layout='rafdb', n_train=None, n_test=None, seed=0, log=print, workers=WORKERS, subjects=None,
                   frames=None):
    """Write a synthetic data set in the given layout to `out` and return `out`; the same seed gives the same bytes.

    ckplus and clips have subjects and no split: n_train is the number of labelled sequences or clips, `subjects`
    how many people show them, `frames` the frames of each."""
    if layout not in LAYOUTS:
        raise UserError(f'Unknown layout {layout!r}; use one of {", ".join(LAYOUTS)}.')
    if layout in SEQUENCE_LAYOUTS and n_test is not None:
        raise UserError(f'the {layout} layout has no test split (it is evaluated in subject folds); give the '
                        f'number of sequences or clips and of subjects instead.')
    start = time.time()
    with contextlib.suppress(OSError):  # as mkdir -p; a parent that cannot be made is named by atomic_folder
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # Built beside `out` and renamed at the end: an interrupted run never leaves a complete-looking data set.
    with run_folder.atomic_folder(out) as tmp:
        if layout in SEQUENCE_LAYOUTS:
            jobs, files, summary = sequence_jobs(tmp, layout, n_train, subjects, frames, seed)
        else:
            n_train = DEMO_SIZE[0] if n_train is None else n_train
            n_test = DEMO_SIZE[1] if n_test is None else n_test
            jobs, files, summary = image_jobs(tmp, layout, n_train, n_test, seed)
        for folder in sorted({os.path.dirname(job[0]) for job in jobs if job[0]} | {os.path.dirname(f) for f in files}):
            os.makedirs(folder, exist_ok=True)
        rendered = render(jobs, workers)
        for path, write in files.items():
            with open(path, 'w', newline='') as f:
                f.write(write(rendered))
        if layout == 'rafdb':
            for rate in NOISE_RATES:
                make_noise(tmp, rate, seed=seed)
    log(f'wrote {summary} to {out} in {time.time() - start:.1f}s')
    return out


def render(jobs, workers):
    """Render every job, in parallel if workers > 1; returns what each returned (a FER2013 row's pixels, or None)."""
    chunks = [jobs[i:i + CHUNK] for i in range(0, len(jobs), CHUNK)]
    if workers > 1:
        with Pool(workers) as pool:
            results = pool.map(render_chunk, chunks)
    else:
        results = [render_chunk(chunk) for chunk in chunks]
    return [result for chunk in results for result in chunk]


def image_jobs(tmp, layout, n_train, n_test, seed):
    """The faces of a layout with splits, and the label files that go with them ({path: rendered -> text})."""
    spec = LAYOUTS[layout]
    sizes = (n_train, n_test, n_test) if layout == 'fer2013' else (n_train, n_test)
    jobs, rows = [], []
    for split_id, (split, n) in enumerate(zip(spec['splits'], sizes)):
        counts = class_counts(spec['counts'][split], n)
        # Shuffle so that, as in the real sets, file order says nothing about the class.
        labels = np.random.default_rng([seed, split_id]).permutation(np.repeat(np.arange(len(counts)), counts))
        votes_rng = np.random.default_rng([seed, split_id, 1])
        for i, label in enumerate(labels, start=1):
            expression, kind = SYNONYMS.get(spec['classes'][label], spec['classes'][label]), 'jpeg'
            if layout in ('rafdb', 'folder'):
                name = f'{split}_{i:05d}' if split == 'train' else f'{split}_{i:04d}'
                if layout == 'rafdb':
                    path = str(rafdb_image_path(tmp, f'{name}.jpg'))
                    rows.append(f'{name}.jpg {label + 1}\n')
                else:  # the widely shared RAF-DB copy: train/1..7/train_00001_aligned.jpg
                    path = os.path.join(tmp, split, str(label + 1), f'{name}_aligned.jpg')
            elif layout == 'affectnet':
                # Numbered across both splits, so that every file name is unique as in AffectNet.
                number = i + (n_train if split_id else 0)
                path = os.path.join(tmp, f'{split}_class', f'class{label + 1:03d}', f'image{number:07d}.jpg')
            else:
                path, kind = None, 'row'
                if expression == 'Neutral' and votes_rng.uniform() < CONTEMPT_SHARE:
                    expression = 'Contempt'  # FER2013 has no Contempt; FERPlus's annotators see it
                rows.append((label, split, ferplus_votes(expression, votes_rng)))
            jobs.append((path, expression, (seed, split_id, i), 1.0, kind))
    files = {}
    if layout == 'rafdb':
        files[os.path.join(tmp, RAFDB_LABEL_FILE)] = lambda rendered: ''.join(rows)
    elif layout == 'fer2013':
        files[os.path.join(tmp, 'fer2013.csv')] = lambda rendered: 'emotion,pixels,Usage\n' + ''.join(
            f'{label},{pixels},{split}\n' for (label, split, _), pixels in zip(rows, rendered))
        files[os.path.join(tmp, 'fer2013new.csv')] = lambda rendered: (
            'Usage,Image name,' + ','.join(FERPLUS_VOTES) + '\n' + ''.join(
                # FERPlus leaves the name empty for the images it removed; here half of the non-faces.
                f'{split},{"" if votes[-1] > 5 and i % 2 else f"fer{i:07d}.png"},{",".join(map(str, votes))}\n'
                for i, (_, split, votes) in enumerate(rows)))
    parts = ', '.join(f'{n} {split}' for split, n in zip(spec['splits'], sizes))
    return jobs, files, f'{len(jobs)} synthetic {layout} images ({parts})'


def ferplus_votes(expression, rng):
    """Ten annotators' votes over FERPLUS_VOTES for a face showing `expression`: mostly a clear majority, sometimes
    a split vote, and a few faces called unknown or not a face."""
    votes = np.zeros(len(FERPLUS_VOTES), dtype=int)
    u = rng.uniform()
    main = len(FERPLUS_VOTES) - 1 if u < 0.02 else len(FERPLUS_VOTES) - 2 if u < 0.04 else \
        FERPLUS_CLASSES.index(expression)
    agreeing = int(rng.integers(4, 11))
    votes[main] += agreeing
    np.add.at(votes, rng.integers(0, len(FERPLUS_CLASSES), 10 - agreeing), 1)
    return votes


def sequence_jobs(tmp, layout, n, subjects, frames, seed):
    """The frames of CK+-like sequences (neutral to peak) or of micro-expression clips, and their label files.

    Each subject is one identity (face, pose, lighting), seeded by the subject, so that only the expression changes
    between their sequences and frames."""
    spec = LAYOUTS[layout]
    n = spec['size'][0] if n is None else n
    subjects = max(1, round(n * spec['size'][1] / spec['size'][0])) if subjects is None else subjects
    frames = spec['frames'] if frames is None else frames
    if not 1 <= subjects <= n or frames < spec['min_frames']:
        raise UserError(f'the {layout} layout needs 1 to {n} subjects for {n} sequences and at least '
                        f'{spec["min_frames"]} frames each, got {subjects} subjects and {frames} frames.')
    rng = np.random.default_rng([seed, 0])
    labels = rng.permutation(np.repeat(np.arange(len(spec['classes'])), class_counts(spec['counts'], n)))
    jobs, lines, files, taken = [], [], {}, [0] * subjects
    ckplus = layout == 'ckplus'
    # CK+ also has sequences without an emotion label: one more for every 4th subject, without an emotion file.
    extra = [(n + s, s, int(rng.integers(len(spec['classes'])))) for s in (range(0, subjects, 4) if ckplus else [])]
    for j, s, label in [(j, j % subjects, label) for j, label in enumerate(labels)] + extra:
        taken[s] += 1
        expression = SYNONYMS.get(spec['classes'][label], spec['classes'][label])
        if ckplus:
            subject, sequence = f'S{s + 1:03d}', f'{taken[s]:03d}'
            folder = os.path.join(tmp, CKPLUS_IMAGE_DIR, subject, sequence)
            paths = [os.path.join(folder, f'{subject}_{sequence}_{k:08d}.png') for k in range(1, frames + 1)]
            ramps = np.linspace(0, rng.uniform(0.7, 1), frames)  # how far a sequence goes differs
            if j < n:  # CK+'s emotion file is named after the sequence's last frame
                emotion = f'{subject}_{sequence}_{frames:08d}_emotion.txt'
                files[os.path.join(tmp, CKPLUS_LABEL_DIR, subject, sequence, emotion)] = \
                    lambda rendered, text=f'   {label + 1:.7e}\n': text
        else:
            subject, clip = f'sub{s + 1:02d}', f'EP{taken[s]:02d}_{j + 1}'
            first = int(rng.integers(1, 120))  # frame numbers are not zero-padded: 'img99.jpg', 'img100.jpg'
            onset, offset = first + 1, first + frames - 2
            apex = onset + round(2 / 3 * (offset - onset))
            numbers = np.arange(first, first + frames)
            # Rises from onset to apex, falls half-way back by offset; neutral outside the clip's onset..offset.
            peak = CLIP_PEAK * rng.uniform(0.5, 1)
            ramps = peak * np.interp(numbers, [onset, apex, offset], [0, 1, 0.5], left=0, right=0)
            paths = [os.path.join(tmp, 'clips', subject, clip, f'img{k}.jpg') for k in numbers]
            lines.append(f'{subject},{clip},{spec["classes"][label]},{onset},{offset}\n')
        jobs += [(path, expression, (seed, 1, s), float(ramp), 'png' if ckplus else 'jpeg')
                 for path, ramp in zip(paths, ramps)]
    if ckplus:
        summary = f'{n} labelled and {len(extra)} unlabelled synthetic CK+ sequences of {subjects} subjects'
    else:
        files[os.path.join(tmp, 'labels.csv')] = lambda rendered: 'subject,clip,label,onset,offset\n' + ''.join(lines)
        summary = f'{n} synthetic micro-expression clips of {subjects} subjects'
    return jobs, files, f'{summary}, {frames} frames each'


def render_chunk(jobs):
    return [render_job(*job) for job in jobs]


def render_job(path, expression, entropy, ramp, kind):
    """Draw one face and save it as a JPEG ('jpeg') or gray PNG ('png'), or return it as a FER2013 row ('row')."""
    # One generator per face, seeded by its entropy: the bytes do not depend on the chunking.
    image, quality = render_face(expression, np.random.default_rng(entropy), ramp)
    if kind == 'jpeg':
        image.save(path, 'JPEG', quality=quality)
    elif kind == 'png':
        image.convert('L').save(path, 'PNG')
    else:
        gray = image.convert('L').resize((FER2013_SIZE, FER2013_SIZE), Image.BILINEAR)
        return ' '.join(map(str, np.asarray(gray).ravel().tolist()))
    return None


def face_features(expression, rng, ramp=1.0):
    """Neutral + intensity * expression delta + identity noise, as a dict over FEATURES; ramp scales the drawn
    intensity (a sequence's frames on the way to its peak)."""
    intensity = rng.uniform(*INTENSITY) * ramp
    delta = EXPRESSIONS[expression]
    return {name: delta.get(name, 0.0) * intensity + rng.normal(0, IDENTITY_SD) for name in FEATURES}


def render_face(expression, rng, ramp=1.0):
    """Draw one face showing `expression`; return the 100x100 RGB image and the JPEG quality to save it with."""
    f = face_features(expression, rng, ramp)
    size = IMAGE_SIZE * SUPERSAMPLE
    image = background(rng, size)
    # Identity and pose, in supersampled pixels.
    a = size * 0.36 * rng.uniform(0.85, 1.08)              # face half-width
    b = a * rng.uniform(1.15, 1.4)                         # face half-height
    cx, cy = size * 0.5 + rng.normal(0, size * 0.035), size * 0.53 + rng.normal(0, size * 0.035)
    pen = Pen(image, (cx, cy), rng.uniform(-15, 15))
    skin = SKIN_LIGHT + rng.uniform() * (SKIN_DARK - SKIN_LIGHT) + rng.normal(0, 8, 3)
    hair = HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))] + rng.normal(0, 12, 3)
    side = rng.choice([-1, 1])                             # which side an asymmetric expression uses
    yaw = rng.uniform(-0.12, 0.12) * a                     # features slide sideways when the head turns

    draw_head(pen, rng, cx, cy, a, b, skin, hair)
    eye_y = cy - b * rng.uniform(0.04, 0.12)
    draw_eyes(pen, rng, f, cx + yaw, eye_y, a, skin)
    draw_nose(pen, f, cx + yaw * 1.3, cy + b * rng.uniform(0.2, 0.27), eye_y, a, skin)
    draw_mouth(pen, f, side, cx + yaw * 1.2, cy + b * rng.uniform(0.5, 0.58), a, skin)
    if rng.uniform() < 0.15:
        draw_glasses(pen, rng, cx + yaw, eye_y, a)
    occlude(pen, rng, cx, cy, a, b, skin)
    image = image.reduce(SUPERSAMPLE)
    if rng.uniform() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return Image.fromarray(photometric(np.asarray(image, dtype=np.float32), rng)), int(rng.integers(60, 96))


class Pen:
    """ImageDraw in a frame rotated about the face centre: turning the points is far cheaper than rotating an image."""

    def __init__(self, image, centre, degrees):
        self.draw = ImageDraw.Draw(image)
        self.centre = np.asarray(centre)
        angle = np.radians(degrees)
        self.rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def points(self, xs, ys):
        turned = (np.stack([xs, ys], axis=1) - self.centre) @ self.rotation.T + self.centre
        return [tuple(p) for p in turned]

    def polygon(self, xs, ys, fill):
        self.draw.polygon(self.points(xs, ys), fill=fill)

    def line(self, xs, ys, fill, width):
        self.draw.line(self.points(xs, ys), fill=fill, width=max(1, int(width)), joint='curve')

    def ellipse(self, x, y, rx, ry, fill=None, outline=None, width=0, start=0.0, end=2 * np.pi):
        theta = np.linspace(start, end, 48)
        xs, ys = x + rx * np.cos(theta), y + ry * np.sin(theta)
        if fill is not None:
            self.polygon(xs, ys, fill)
        if outline is not None:
            self.line(xs, ys, outline, width)


def colour(rgb):
    return tuple(int(c) for c in np.clip(rgb, 0, 255))


def mix(rgb, other, weight):
    """Blend towards `other`; drawing lines in a blended colour stands in for translucency, which ImageDraw lacks."""
    return colour(np.asarray(rgb) * (1 - weight) + np.asarray(other) * weight)


def background(rng, size):
    """Flat, gradient or cluttered background, as behind real in-the-wild faces."""
    base, other = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    kind = rng.integers(3)
    if kind == 1:
        # A smooth gradient loses nothing when computed small and enlarged.
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:16, 0:16] / 15
        t = np.clip(xs * np.cos(angle) + ys * np.sin(angle), 0, 1)[..., None]
        return Image.fromarray((base * (1 - t) + other * t).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    image = Image.new('RGB', (size, size), colour(base))
    if kind == 2:
        draw = ImageDraw.Draw(image)
        for _ in range(rng.integers(4, 12)):
            x0, y0 = rng.uniform(-0.2, 1, 2) * size
            w, h = rng.uniform(0.1, 0.5, 2) * size
            shape = draw.rectangle if rng.uniform() < 0.5 else draw.ellipse
            shape((x0, y0, x0 + w, y0 + h), fill=colour(rng.uniform(0, 255, 3)))
    return image


def draw_head(pen, rng, cx, cy, a, b, skin, hair):
    style = rng.integers(3)                                # 0 short, 1 long, 2 shaved
    pen.ellipse(cx, cy + b * 1.8, a * 2.2, b * 0.75, fill=colour(rng.uniform(0, 255, 3)))   # shoulders
    if style == 1:
        # Long hair behind the head: a squarish superellipse reaching the shoulders.
        theta = np.linspace(0, 2 * np.pi, 64)
        xs = cx + a * 1.3 * np.sign(np.cos(theta)) * np.abs(np.cos(theta)) ** 0.5
        ys = cy + b * 0.08 + b * 1.22 * np.sign(np.sin(theta)) * np.abs(np.sin(theta)) ** 0.5
        pen.polygon(xs, ys, colour(hair))
    neck_x, neck_y = a * np.array([-0.45, 0.45, 0.45, -0.45]), b * np.array([0.5, 0.5, 1.3, 1.3])
    pen.polygon(cx + neck_x, cy + neck_y, colour(skin * 0.85))
    for s in (-1, 1):
        pen.ellipse(cx + s * a * 0.98, cy + b * 0.05, a * 0.13, b * 0.2, fill=colour(skin * 0.92))
    pen.ellipse(cx, cy, a, b, fill=colour(skin))
    # Hair on top of the head: the part of a slightly larger head outline above the hairline.
    depth = np.arcsin(rng.uniform(0.6, 0.78) / 1.06)
    cap = colour(hair) if style < 2 else mix(skin, hair, 0.45)
    pen.ellipse(cx, cy, a * 1.04, b * 1.06, fill=cap, start=np.pi + depth, end=2 * np.pi - depth)


def draw_eyes(pen, rng, f, cx, eye_y, a, skin):
    spacing = a * rng.uniform(0.36, 0.46)
    half_w = a * rng.uniform(0.18, 0.23)
    open_h = half_w * 0.45 * max(0.12, 1 + 0.9 * f['eye_open'])
    brow_w = a * rng.uniform(0.045, 0.11)
    brow_colour = colour(rng.choice([skin * 0.35, np.array([30, 25, 20])]) + rng.normal(0, 10, 3))
    iris = colour(rng.choice([[60, 40, 25], [90, 60, 30], [60, 90, 120], [70, 100, 60]]) + rng.normal(0, 10, 3))
    gaze = rng.uniform(-0.3, 0.3) * half_w
    u = np.linspace(-1, 1, 21)
    theta = np.linspace(0, 2 * np.pi, 24)
    brow_y = eye_y - half_w * 0.45 - a * 0.14 - f['brow_raise'] * a * 0.25
    # Raised brows fold the forehead; the folds darken, rather than appear, as the brows rise.
    folds = np.clip(f['brow_raise'] - 0.2, 0, 0.8) * 0.8
    if folds > 0:
        for k in range(3):
            pen.ellipse(cx, brow_y - a * (0.1 + 0.07 * k), a * 0.4, a * 0.05, outline=mix(skin, (0, 0, 0), folds),
                        width=a * 0.02, start=np.radians(200), end=np.radians(340))
    for s in (-1, 1):
        ex = cx + s * spacing
        upper = eye_y - open_h * (1 - u ** 2) ** 0.8
        lower = eye_y + 0.7 * open_h * (1 - u ** 2) ** 0.8
        xs = ex + u * half_w
        pen.polygon(np.r_[xs, xs[::-1]], np.r_[upper, lower[::-1]], (238, 236, 230))
        # The iris is a circle clipped to the eye opening, so narrowed eyes hide most of it.
        for radius, fill in ((half_w * 0.5, iris), (half_w * 0.22, (15, 12, 12))):
            px = np.clip(ex + gaze + radius * np.cos(theta), xs[0], xs[-1])
            py = np.clip(eye_y + radius * np.sin(theta), np.interp(px, xs, upper), np.interp(px, xs, lower))
            pen.polygon(px, py, fill)
        pen.line(xs, upper, (30, 20, 20), max(2, a * 0.035))
        pen.line(xs, upper - open_h * 0.5 - a * 0.03, mix(skin, (0, 0, 0), 0.25), a * 0.015)
        # Brows: raise moves the whole brow, inner lifts (sad, fear) or drops (anger) the inner end, pinch pulls it
        # inwards; however low they are pulled, they stay above the eye.
        inner = f['brow_inner']
        brow = brow_y + a * np.array([-0.2 * inner, -0.05 - 0.03 * inner, 0.03 + 0.06 * inner])
        pen.line(ex + s * half_w * np.array([-(1.0 - 0.7 * f['brow_pinch']), 0.2, 1.25]),
                 np.minimum(brow, eye_y - open_h - brow_w * 0.6), brow_colour, brow_w)
    # Drawn-together brows crease the skin between them.
    crease = np.clip(f['brow_pinch'] - 0.2, 0, 0.8) * 0.8
    if crease > 0:
        for s in (-1, 1):
            pen.line(cx + s * a * np.array([0.05, 0.07]), eye_y - a * np.array([0.35, 0.15]),
                     mix(skin, (0, 0, 0), crease), a * 0.02)


def draw_nose(pen, f, cx, tip_y, eye_y, a, skin):
    pen.line(cx - a * np.array([0.05, 0.08]), np.array([eye_y + a * 0.05, tip_y - a * 0.05]),
             mix(skin, (0, 0, 0), 0.15), a * 0.02)
    pen.ellipse(cx, tip_y - a * 0.01, a * 0.17, a * 0.09, outline=mix(skin, (0, 0, 0), 0.3), width=a * 0.028,
                start=np.radians(20), end=np.radians(160))
    for s in (-1, 1):
        pen.ellipse(cx + s * a * 0.09, tip_y + a * 0.015, a * 0.04, a * 0.025, fill=mix(skin, (40, 20, 20), 0.55))
    # Wrinkles across the bridge; their darkness, not their presence, grows with the feature.
    wrinkle = np.clip(f['nose_wrinkle'] - 0.15, 0, 0.9) * 0.8
    if wrinkle > 0:
        for k in range(3):
            pen.ellipse(cx, eye_y + a * (0.1 + 0.07 * k), a * 0.14, a * 0.04, outline=mix(skin, (0, 0, 0), wrinkle),
                        width=a * 0.028, start=np.radians(200), end=np.radians(340))


def draw_mouth(pen, f, side, cx, mouth_y, a, skin):
    t = np.linspace(-1, 1, 31)
    bump = (1 - t ** 2) ** 0.6
    half_w = a * 0.36 * max(0.4, 1 + f['mouth_width'])
    xs = cx + t * half_w * (1 + 0.15 * f['smirk'] * np.clip(side * t, 0, 1))
    # Centre line: corners rise with curvature (smile) and, on one side, with a smirk.
    mid = mouth_y - f['mouth_curve'] * a * 0.2 * t ** 2 - f['smirk'] * a * 0.2 * np.clip(side * t, 0, 1) ** 2
    opening = max(0.0, f['mouth_open']) * a * 0.45
    raise_ = max(0.0, f['lip_raise']) * a * 0.16 * np.sqrt(1 - t ** 2) * (1 + np.clip(f['asym'], 0, 1) * side * t)
    upper_in = mid - 0.35 * opening * bump - raise_
    lower_in = mid + 0.65 * opening * bump
    press = 1 - 0.75 * np.clip(f['lip_press'], 0, 1)
    upper_out = upper_in - a * 0.06 * press * np.sqrt(1 - t ** 2)
    lower_out = lower_in + a * 0.085 * press * np.sqrt(1 - t ** 2)
    # Smiling and snarling deepen the folds from the nose wings to the mouth corners.
    folds = np.clip(f['mouth_curve'] + f['lip_raise'] - 0.3, 0, 0.7) * 0.9
    if folds > 0:
        for s in (-1, 1):
            pen.line(cx + s * np.array([a * 0.2, half_w * 0.95 + a * 0.1, half_w + a * 0.06]),
                     mouth_y + a * np.array([-0.32, -0.12, 0.06]), mix(skin, (0, 0, 0), folds), a * 0.025)
    lips = mix(skin, (170, 40, 50), 0.35)
    both = np.r_[xs, xs[::-1]]
    pen.polygon(both, np.r_[upper_out, lower_out[::-1]], lips)
    if (lower_in - upper_in).max() > SUPERSAMPLE:
        pen.polygon(both, np.r_[upper_in, lower_in[::-1]], (70, 22, 28))
        teeth = np.minimum(upper_in + np.clip(f['teeth'], 0, 1) * a * 0.09 * bump, lower_in)
        pen.polygon(both, np.r_[upper_in, teeth[::-1]], (240, 238, 225))
    pen.line(xs, (upper_in + lower_in) / 2 if opening < SUPERSAMPLE else upper_in, mix(lips, (0, 0, 0), 0.5), a * 0.02)


def draw_glasses(pen, rng, cx, eye_y, a):
    frame = colour(rng.uniform(0, 120, 3))
    sunglasses = rng.uniform() < 0.25
    for s in (-1, 1):
        pen.ellipse(cx + s * a * 0.41, eye_y, a * 0.24, a * 0.19, fill=(20, 20, 25) if sunglasses else None,
                    outline=frame, width=a * 0.04)
    pen.line(cx + a * np.array([-0.17, 0.17]), np.full(2, eye_y - a * 0.05), frame, a * 0.04)


def occlude(pen, rng, cx, cy, a, b, skin):
    """Sometimes a hand-like blob or a bar covers part of the face."""
    if rng.uniform() < 0.08:
        hx, hy = cx + rng.uniform(-0.8, 0.8) * a, cy + rng.uniform(-0.2, 1.0) * b
        hand = colour(skin * rng.uniform(0.85, 1.1))
        pen.ellipse(hx, hy + a * 0.06, a * 0.3, a * 0.28, fill=hand)
        for k in range(4):
            pen.ellipse(hx - a * 0.26 + k * a * 0.17, hy - a * 0.3, a * 0.07, a * 0.3, fill=hand)
    if rng.uniform() < 0.06:
        x0, y0 = cx - a * rng.uniform(0.4, 1.3), cy + rng.uniform(-1, 1) * b
        x1, y1 = x0 + a * rng.uniform(0.6, 1.4), y0 + rng.uniform(0.15, 0.35) * b
        pen.polygon(np.array([x0, x1, x1, x0]), np.array([y0, y0, y1, y1]), colour(rng.uniform(0, 255, 3)))


def photometric(pixels, rng):
    """Lighting gradient, contrast, colour cast, sensor noise and the odd grey-scale photo, as in RAF-DB."""
    size = pixels.shape[0]
    angle = rng.uniform(0, 2 * np.pi)
    centred = np.arange(size) / size - 0.5
    ramp = np.cos(angle) * centred[None, :] + np.sin(angle) * centred[:, None]
    light = rng.uniform(0.75, 1.2) * (1 + rng.uniform(0, 0.7) * ramp)
    pixels = pixels * light[..., None] * rng.uniform(0.92, 1.08, 3)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.7, 1.2) + mean + rng.normal(0, rng.uniform(0, 5), pixels.shape)
    if rng.uniform() < 0.05:
        pixels = np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2)
    return np.clip(pixels, 0, 255).astype(np.uint8)
