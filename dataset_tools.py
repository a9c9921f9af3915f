"""The dataset commands (python dataset_tools.py make-synthetic | make-noise | make-dynamic-images | align-faces),
dynamic images, and datasets of whole photographs cropped to aligned faces."""
import argparse
import contextlib
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

import cli
import formats
import run_folder
from data_loader import decode_image
from errors import UserError


# ---------------------------------------------------------------- dynamic images (EmoNAS Sec. 3, Eqs. 1-5)

def rank_pooling_coefficients(length):
    """The frame weights beta_1..beta_T of approximate rank pooling (Bilen et al. 2016), which EmoNAS cites and whose
    formula it prints with a typo: beta_t = 2(T - t + 1) - (T + 1)(H_T - H_{t-1}), H_k the k-th
    harmonic number. They sum to zero, so what does not change over the clip cancels."""
    t = np.arange(1, length + 1)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / t)])
    return 2.0 * (length - t + 1) - (length + 1) * (harmonic[length] - harmonic[t - 1])


def dynamic_image(frames):
    """sum_t beta_t V_t of a clip's equally sized frames (first to last), un-scaled, in float64.

    Computed as sum_t beta_t (V_t - V_1), equal since the betas sum to zero: identical frames then give exactly
    zero, not rounding noise that min-max scaling would blow up into an image."""
    first = np.asarray(frames[0], dtype=np.float64)
    image = np.zeros_like(first)
    for beta, frame in zip(rank_pooling_coefficients(len(frames))[1:], frames[1:]):
        image += beta * (np.asarray(frame, dtype=np.float64) - first)
    return image


def scale_to_uint8(image):
    """Min-max over all pixels and channels to 0..255, as Bilen et al.'s released code (EmoNAS does not say); an
    image without any change (a clip without motion) is all zeros."""
    low, high = image.min(), image.max()
    if not high > low:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.rint((image - low) * (255.0 / (high - low))).astype(np.uint8)


def _file_name_part(text):
    return re.sub(r'[^A-Za-z0-9._-]+', '-', text)


def clip_frames(clips, entry, labels):
    """The frames of one clip of a clip list, decoded: those of clips/<subject>/<clip>/ (or clips/<clip>/) in name
    order, numbered onset..offset if the list gives them."""
    folder = Path(clips) / entry.subject / entry.clip
    if not folder.is_dir() and (Path(clips) / entry.clip).is_dir():
        folder = Path(clips) / entry.clip
    if not folder.is_dir():
        raise UserError(f"{labels} line {entry.line}: no frame folder {folder} (nor {Path(clips) / entry.clip}).")
    paths = sorted(formats.image_files(folder), key=formats.natural_key)
    span = ''
    if entry.onset is not None:
        numbers = [formats.frame_number(path) for path in paths]
        paths = [path for path, n in zip(paths, numbers) if n is not None and entry.onset <= n <= entry.offset]
        span = f' numbered {entry.onset}..{entry.offset}'
    if len(paths) < 2:
        raise UserError(f"{labels} line {entry.line}: clip {folder} has {len(paths)} frame(s){span}; a dynamic image "
                        f"needs at least 2.")
    frames = [decode_image(path) for path in paths]
    for path, frame in zip(paths, frames):
        if frame.shape != frames[0].shape:
            raise UserError(f"{labels} line {entry.line}: frame {path} is {frame.shape[1]}x{frame.shape[0]}, but "
                            f"{paths[0]} is {frames[0].shape[1]}x{frames[0].shape[0]}; a clip's frames must have one "
                            f"size.")
    return frames


def make_dynamic_images(clips, labels, out, log=print):
    """Write one dynamic image per clip of the clip list `labels` as out/<label>/<subject>_<clip>.png, a class-folder
    dataset for --dataset folder --folds (the subject precedes the first '_'). Returns (images written, subjects,
    classes)."""
    entries = formats.read_clip_list(labels)
    out = Path(out)
    subjects, written, plan = {}, {}, []
    for entry in entries:
        # The subject is what precedes the first '_' of the file name, so it must hold none.
        subject = _file_name_part(entry.subject).replace('_', '-')
        if subjects.setdefault(subject, entry.subject) != entry.subject:
            raise UserError(f"{labels} line {entry.line}: subjects {subjects[subject]!r} and {entry.subject!r} "
                            f"would have the same file-name form {subject!r}; rename one.")
        stem = f'{subject}_{_file_name_part(entry.clip)}'
        if stem in written:
            raise UserError(f"{labels} line {entry.line}: clip {entry.subject}/{entry.clip} is listed twice "
                            f"(also line {written[stem]}).")
        written[stem] = entry.line
        plan.append((entry, Path(_file_name_part(entry.label)) / f'{stem}.png'))
    with contextlib.suppress(OSError):  # as mkdir -p; a parent that cannot be made is named by atomic_folder
        out.parent.mkdir(parents=True, exist_ok=True)
    with run_folder.atomic_folder(out) as tmp:
        for entry, name in plan:
            frames = clip_frames(clips, entry, labels)
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(scale_to_uint8(dynamic_image(frames))).save(Path(tmp) / name)
    classes = sorted({name.parent.name for _, name in plan})
    log(f"wrote {len(written)} dynamic images of {len(subjects)} subjects in {len(classes)} classes "
        f"({', '.join(classes)}) to {out}; leave-one-subject-out: python train.py --dataset folder --data {out} "
        f"--folds {len(subjects)} --fold i, for i in 0..{len(subjects) - 1}")
    return len(written), len(subjects), classes


# ---------------------------------------------------------------- aligned faces of whole photographs (docs/faces.md)

ALIGN_REPORT_SECONDS = 30  # a long alignment says how far it is at least this often
NO_FACE_REPORT = 'no_face.txt'
UNREADABLE_REPORT = 'unreadable.txt'


def face_dataset_plan(data, layout, ckplus_classes=7, ckplus_neutral=False):
    """(source image, output path relative to the output folder) of every image of a dataset of whole photographs:
    CK+ (the frames list_ckplus labels, as <class>/<subject>_<sequence>_<frame>.png) or class folders (train/<class>/,
    test/<class>/ [val/<class>/] or <class>/, mirrored with .png names), and the layout read."""
    root = Path(data)
    if layout == 'auto':
        layout = 'ckplus' if (root / formats.CKPLUS_IMAGE_DIR).is_dir() else 'folder'
    if layout == 'ckplus':
        listing = formats.list_ckplus(root, ckplus_classes, ckplus_neutral)
        plan = []
        for path, label, subject in zip(listing.paths, listing.labels, listing.subjects):
            # --folds reads the subject from what precedes the first '_' (cli.DEFAULT_SUBJECT_REGEX)
            stem = path.stem if path.stem.startswith(f'{subject}_') else f'{subject}_{path.parent.name}_{path.stem}'
            plan.append((path, Path(_file_name_part(listing.class_names[label])) / f'{stem}.png'))
        return plan, (f'CK+, {ckplus_classes} classes: the last 3 frames of each labelled sequence'
                      + ', and its first as Neutral' * ckplus_neutral)
    if (root / 'train').is_dir():
        _, splits = formats.list_folder_splits(root)
        paths = [path for split_paths, _ in splits.values() for path in split_paths]
    else:
        classes = formats._class_folders(root) if root.is_dir() else []
        if not classes:
            raise UserError(f"{root} holds neither {formats.CKPLUS_IMAGE_DIR}/ (CK+) nor class folders "
                            f"(train/<class>/, test/<class>/ or <class>/); give the root of a CK+ copy or of a "
                            f"class-folder dataset.")
        paths, _ = formats.labelled_images(root, classes, classes)
    return [(path, path.relative_to(root).with_suffix('.png')) for path in paths], 'class folders'


def align_faces(data, out, layout='auto', min_face=None, threshold=None, ckplus_classes=7, ckplus_neutral=False,
                log=print):
    """Write the aligned 100x100 face of every image of a dataset of whole photographs (faces.align: the largest face
    each photo shows, by a similarity transform of its 5 landmarks onto the template) as a class-folder dataset in
    `out`, for --dataset folder (and --folds: file names keep the subject before the first '_'). Images without a
    face are listed in out/no_face.txt, images that cannot be decoded in out/unreadable.txt (each also logged); both
    are left out. min_face, threshold: the detector's (None: faces.MIN_FACE, faces.FACE_THRESHOLD). Returns (faces
    written, images without a face, unreadable images)."""
    import faces  # only here: the detector is an optional extra
    detector = faces.Detector(faces.MIN_FACE if min_face is None else min_face,
                              faces.FACE_THRESHOLD if threshold is None else threshold)
    plan, what = face_dataset_plan(data, layout, ckplus_classes, ckplus_neutral)
    names = {}
    for source, name in plan:
        if names.setdefault(name, source) != source:
            raise UserError(f"{names[name]} and {source} would both be written as {Path(out) / name}; rename one.")
    with contextlib.suppress(OSError):  # as mkdir -p; a parent that cannot be made is named by atomic_folder
        Path(out).parent.mkdir(parents=True, exist_ok=True)
    missed, unreadable, several = [], [], 0
    start = last = time.perf_counter()
    with run_folder.atomic_folder(out) as tmp:
        for done, (source, name) in enumerate(plan, 1):
            try:
                image = decode_image(source)
            except UserError as e:  # listed and skipped, as predict.py --faces does
                log(f"skipped: {e}")
                unreadable.append(str(source))
                continue
            found = detector(image)
            if not found:
                missed.append(str(source))
            else:
                several += len(found) > 1
                largest = max(found, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
                crop, _ = faces.align(image, largest.landmarks)
                grey = (crop == crop[..., :1]).all()  # a grey photo (CK+) stays a grey PNG, a third of the size
                (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(crop[..., 0] if grey else crop).save(Path(tmp) / name)
            now = time.perf_counter()
            if now - last >= ALIGN_REPORT_SECONDS and done < len(plan):
                last = now
                log(f"aligned {done:,} of {len(plan):,} images, {(now - start) / done * (len(plan) - done):.0f}s left")
        if missed:
            (Path(tmp) / NO_FACE_REPORT).write_text(
                f"# {len(missed)} images of {data} in which no face was found (none of at least "
                f"{detector.min_face} pixels with probability {detector.threshold:g} or more); they are not in this "
                f"dataset\n" + ''.join(f'{path}\n' for path in missed), encoding='utf-8')
        if unreadable:
            (Path(tmp) / UNREADABLE_REPORT).write_text(
                f"# {len(unreadable)} images of {data} that cannot be decoded (corrupt, truncated or not images); they "
                f"are not in this dataset\n" + ''.join(f'{path}\n' for path in unreadable), encoding='utf-8')
    written = len(plan) - len(missed) - len(unreadable)
    log(f"wrote {written} aligned 100x100 faces of {len(plan)} images ({what}) to {out}"
        + (f"; {several} images showed several faces (the largest was kept)" if several else '')
        + (f"; {len(missed)} images without a face are listed in {Path(out) / NO_FACE_REPORT}" if missed else
           "; a face was found in every readable image")
        + (f"; {len(unreadable)} unreadable images were skipped (listed above and in "
           f"{Path(out) / UNREADABLE_REPORT})" if unreadable else '')
        + f". Train on them: python train.py --dataset folder --data {out} (add --folds N for subject folds)")
    return written, len(missed), len(unreadable)


# ---------------------------------------------------------------- command line

def command_parser():
    parser = argparse.ArgumentParser('dataset_tools.py', description='Dataset utilities for GLA-FERNet.')
    commands = parser.add_subparsers(dest='command', required=True)
    synth = commands.add_parser('make-synthetic', help='generate a small procedural face dataset')
    synth.add_argument('--out', required=True, help='folder to write the dataset into')
    synth.add_argument('--layout', choices=['rafdb', 'affectnet', 'fer2013', 'ckplus', 'folder', 'clips'],
                       default='rafdb', help='layout to imitate')
    synth.add_argument('--train', type=int, default=None,
                       help="training images; ckplus: labelled sequences; clips: clips (default: synthetic.py's)")
    synth.add_argument('--test', type=int, default=None,
                       help="test images; fer2013: PublicTest and PrivateTest rows each (default: synthetic.py's)")
    synth.add_argument('--subjects', type=int, default=None,
                       help="ckplus and clips: people showing the sequences (default: synthetic.py's)")
    synth.add_argument('--seed', type=int, default=0, help='random seed')
    dynamic = commands.add_parser('make-dynamic-images',
                                  help='turn micro-expression clips into dynamic images, a class-folder dataset')
    dynamic.add_argument('--clips', required=True, help='folder holding <subject>/<clip>/ (or <clip>/) frame folders')
    dynamic.add_argument('--labels', required=True,
                         help='CSV with the header subject,clip,label[,onset,offset] (onset, offset: frame numbers)')
    dynamic.add_argument('--out', required=True, help='folder to write <label>/<subject>_<clip>.png into')
    noise = commands.add_parser('make-noise', help='write EmoLabel/new_N_noise.txt for a RAF-DB folder')
    noise.add_argument('--data', required=True, help='RAF-DB root holding EmoLabel/list_patition_label.txt')
    noise.add_argument('--rate', type=float, required=True, help='fraction of training labels to flip, e.g. 0.1')
    noise.add_argument('--seed', type=int, default=0, help='random seed')
    noise.add_argument('--overwrite', action='store_true', help='replace an existing noise file of that rate')
    align = commands.add_parser('align-faces', help='crop and align the faces of a dataset of whole photographs '
                                                     '(CK+ or class folders) into a class-folder dataset')
    align.add_argument('--data', required=True, help='CK+ root (cohn-kanade-images/, Emotion/) or class-folder root')
    align.add_argument('--out', required=True, help='folder to write <class>/<name>.png (and no_face.txt) into')
    align.add_argument('--layout', choices=['auto', 'ckplus', 'folder'], default='auto',
                       help='auto: ckplus if --data holds cohn-kanade-images/, else class folders')
    align.add_argument('--ckplus_classes', type=int, choices=[6, 7], default=7, help='CK+: 6 drops Contempt')
    align.add_argument('--ckplus_neutral', action='store_true',
                       help="CK+: also each labelled sequence's first frame, as Neutral")
    # faces.py's MIN_FACE and FACE_THRESHOLD, written out (as predict.py does): the detector loads only when it runs
    align.add_argument('--min_face', type=cli.positive_int, default=20, help='smallest face to find, in pixels')
    align.add_argument('--face_threshold', type=cli.probability_threshold, default=0.9,
                       help="the detector's face probability a face needs, strictly between 0 and 1")
    return parser


def main(argv=None):
    args = command_parser().parse_args(argv)
    try:
        if args.command == 'make-synthetic':
            import synthetic  # only here: the generator is not needed to read data
            sizes = {k: v for k, v in (('n_train', args.train), ('n_test', args.test), ('subjects', args.subjects))
                     if v is not None}
            synthetic.make_synthetic(args.out, layout=args.layout, seed=args.seed, **sizes)  # reports what it wrote
        elif args.command == 'make-dynamic-images':
            make_dynamic_images(args.clips, args.labels, args.out)  # reports what it wrote
        elif args.command == 'align-faces':
            align_faces(args.data, args.out, args.layout, args.min_face, args.face_threshold, args.ckplus_classes,
                        args.ckplus_neutral)  # reports what it wrote
        else:
            path, flipped, total = formats.make_noise(args.data, args.rate, args.seed, overwrite=args.overwrite)
            print(f"wrote {path}: {flipped} of {total} training labels flipped to another class "
                  f"({100 * flipped / total:.1f}%), seed {args.seed}")
    except UserError as e:
        sys.exit(f"error: {e}")


if __name__ == '__main__':
    main()
