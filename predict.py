"""Classify face images with a network trained by train.py, through the evaluation's own preprocessing, and export the
network (torch.export or ONNX) checked against eager PyTorch."""
import argparse
import importlib.util
import os

import cli
import run_folder
from errors import UserError

EXPORT_FORMATS = ('.pt2', '.onnx')
ONNX_PACKAGES = ('onnx', 'onnxscript', 'onnxruntime')  # the exporter's two, and the runtime that checks the file

parser = argparse.ArgumentParser('predict', description=__doc__)
parser.add_argument('run', help='an eval run folder of train.py (its best.pt, args.json and metrics.json), or its '
                                'checkpoint.pt anywhere (it records the network, class names and input); a best.pt or '
                                'weights.pt file only inside its run folder. A run that failed (its FAILED file) is '
                                'refused; give its best.pt or weights.pt file itself to classify with it anyway')
parser.add_argument('inputs', nargs='*', help='images, folders (searched recursively) or quoted glob patterns')
parser.add_argument('--weights', choices=['best', 'last'], default='best',
                    help="for a run folder: best.pt (the selected epoch: best validation accuracy, or best test "
                         "accuracy in a run without a validation set; metrics.json's best_pt says which) or weights.pt "
                         "(the last epoch)")
parser.add_argument('--topk', type=cli.positive_int, default=3, help='how many of the likeliest classes to give')
parser.add_argument('--out', default=None, help='write the predictions to this .csv or .json file (default: print them)')
parser.add_argument('--batch_size', type=cli.positive_int, default=None,
                    help="images per forward pass (default: the run's --batch_size, as its evaluation used)")
parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto', help='where to run the network')
parser.add_argument('--workers', type=cli.non_negative_int, default=2, help='processes decoding images')
parser.add_argument('--export', default=None,
                    help='also write the network to this .pt2 (torch.export) or .onnx file (needs the optional '
                         'packages onnx, onnxscript, onnxruntime), and check it against eager PyTorch. PATH.json '
                         'describes its input and records the sha256 of the file it describes; it is written last, so '
                         'an interrupted export leaves no description, never one of another network')
# The defaults are faces.py's MIN_FACE, FACE_THRESHOLD and DEFAULT_FPS, written out: flags are parsed before torch.
face_flags = parser.add_argument_group('faces in photos and videos (docs/faces.md)')
face_flags.add_argument('--faces', action='store_true',
                        help='find the faces of each image or video (MTCNN, an optional extra: pip install requests '
                             'tqdm && pip install --no-deps facenet-pytorch), align each onto the 100x100 geometry of '
                             'RAF-DB\'s aligned images and classify it: one row per face; an image without a face gets '
                             'a row saying so. Videos (.mp4, .avi, ...) need PyAV: pip install av')
face_flags.add_argument('--min_face', type=cli.positive_int, default=20, help='smallest face to find, in pixels')
face_flags.add_argument('--face_threshold', type=cli.fraction, default=0.9,
                        help="the detector's face probability a face needs")
face_flags.add_argument('--frames', action='store_true',
                        help='each folder given is the frames of one video (natural name order, one size), not a set '
                             'of photos')
face_flags.add_argument('--fps', type=cli.positive_float, default=25,
                        help="frame rate of frame folders (their rows' times and annotated videos)")
face_flags.add_argument('--smooth', type=cli.non_negative_int, default=0,
                        help="videos: average each tracked face's probabilities over about N frames (exponential "
                             'moving average, the newest frame weighted 2/(N+1)); 0: each frame alone')
face_flags.add_argument('--annotate', default=None,
                        help="write each image with its faces' boxes and predictions drawn into this folder (a video: "
                             'an annotated .mp4; a frame folder: a folder of annotated frames)')
face_flags.add_argument('--cam', default=None,
                        help='write into this folder, for each classified face (or image without --faces), where the '
                             'network looks: the class activation map of its predicted class over the crop (CAM; '
                             'Grad-CAM for a network whose head is no linear map after pooling)')

def parse(argv=None):
    """The checked arguments. Options may come between the positionals (predict.py RUN --topk 2 IMAGE)."""
    args = parser.parse_intermixed_args(argv)
    check_args(parser, args)
    return args


def check_args(parser, args):
    if not args.inputs and not args.export:
        parser.error('give images to classify, or --export PATH, or both')
    if args.out and not args.out.endswith(('.csv', '.json')):
        parser.error(f'argument --out: {args.out} must end in .csv or .json')
    if args.export and not args.export.endswith(EXPORT_FORMATS):
        parser.error(f'argument --export: {args.export} must end in .pt2 (torch.export) or .onnx')
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if args.export and args.export.endswith('.onnx') and missing:
        parser.error(f'argument --export: ONNX export needs the optional packages {", ".join(ONNX_PACKAGES)} '
                     f'({", ".join(missing)} missing): pip install {" ".join(ONNX_PACKAGES)}; or export to .pt2, '
                     f'which needs torch alone')
    for flag, path in (('--out', args.out), ('--export', args.export)):
        try:  # now, not after the classification or export it would lose
            if path:
                run_folder.check_output_folder(path)
        except UserError as e:
            parser.error(f'argument {flag}: {e}')
    needs_faces = [flag for flag, given in (('--frames', args.frames), ('--smooth', args.smooth),
                                            ('--annotate', args.annotate)) if given]
    if needs_faces and not args.faces:
        parser.error(f'argument {needs_faces[0]}: works on detected faces; add --faces')
    for flag, folder in (('--annotate', args.annotate), ('--cam', args.cam)):
        if folder and os.path.exists(folder) and not os.path.isdir(folder):
            parser.error(f'argument {flag}: {folder} is a file, not a folder; give a folder (it is created if '
                         f'missing)')
        try:
            if folder:
                run_folder.check_output_folder(folder)
        except UserError as e:
            parser.error(f'argument {flag}: {e}')


if __name__ == '__main__':
    # Parsed before torch is imported (seconds on a busy machine): --help and a bad flag answer at once.
    ARGS = parse()

import contextlib  # noqa: E402
import csv  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

import data_loader  # noqa: E402
import faces  # noqa: E402
import formats  # noqa: E402
import genotypes  # noqa: E402
import train  # noqa: E402
import utils  # noqa: E402
import visualize  # noqa: E402
from baselines import create_model, model_options, uses_genotype  # noqa: E402

BATCHES_PER_CHUNK = 16  # images are decoded and classified this many batches at a time
EXPORT_TOLERANCE = 1e-4  # largest difference allowed between the exported network's logits and eager PyTorch's
# ITU-R 601-2 luma in PIL's fixed point (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16): Image.convert('L'), which
# decodes the faces of a grey dataset. Exact in float32 for pixel values 0..255 (every sum stays below 2^24).
LUMA_WEIGHTS = (19595, 38470, 7471)
LUMA_SHIFT = 16
GREY_INPUT = 'grey (luminance replicated to 3 channels)'
ANNOTATED_JPEG_QUALITY = 90  # annotated photos and frames: JPEG, as photos are; a class map is a PNG figure


def main(args, log):
    if args.faces and faces.detector_missing():
        raise UserError(faces.detector_missing())  # before any work
    paths = find_images(args.inputs, faces.VIDEO_EXTENSIONS if args.faces else (), args.frames)
    videos = [path for path in paths if faces.is_video(path)]
    if videos and not args.faces:
        raise UserError(f'{videos[0]} is a video; classify its faces with --faces')
    trained = load_network(args.run, args.weights)
    if trained.failure:
        log(f'warning: the run of {trained.weights_file} failed ({trained.failure}); classifying with this file as '
            f'you asked')
    device, _, _ = utils.init_distributed(args.device)
    size = trained.input['image_size']
    log(f'{trained.weights_file}: {trained.description}; {len(trained.class_names)} classes '
        f'({", ".join(trained.class_names)}); input {size}x{size} '
        f'{GREY_INPUT if trained.input["grayscale"] else "RGB"}')
    if args.export:
        export(trained, args.export, log)
    if not paths:
        return
    if args.cam and not all(hasattr(trained.model, f) for f in ('forward_features', 'forward_head')):
        raise UserError(f'--cam needs a network split into forward_features and forward_head (timm\'s convention); '
                        f'{type(trained.model).__name__} of {trained.weights_file} is not; classify without --cam')
    for folder in (args.annotate, args.cam):
        if folder:
            os.makedirs(folder, exist_ok=True)
    if args.faces:
        detector = faces.Detector(args.min_face, args.face_threshold, device)
        rows = list(classify_faces(trained, paths, detector, device, args, log))
        write_rows(rows, args.out, trained, by_face=True)
        return
    start = time.perf_counter()
    rows = list(classify(trained, paths, device, args.batch_size or trained.args.batch_size, args.topk,
                         args.workers, log))
    seconds = time.perf_counter() - start
    write_rows(rows, args.out, trained)
    if args.cam:
        write_image_maps(trained, [row for row in rows if 'error' not in row], device, args.cam)
    skipped = sum('error' in row for row in rows)
    log(f'{len(rows) - skipped} images classified in {seconds:.1f}s ({(len(rows) - skipped) / seconds:.1f} images/s, '
        f'decoding included) on {device}' + (f'; {skipped} unreadable, skipped (listed above)' if skipped else '') +
        (f'; predictions in {args.out}' if args.out else ''))


# ---------------------------------------------------------------- the network of a run

@dataclass
class TrainedNetwork:
    model: torch.nn.Module  # in eval mode, on the CPU
    args: argparse.Namespace  # the run's arguments, with train.py's defaults for flags it predates
    class_names: list
    genotype: Optional[str]  # text, as metrics.json holds it; None for a network not built from a genotype
    input: dict  # as the checkpoint records it: image_size, grayscale, source_size
    weights_file: Optional[str]
    failure: Optional[str] = None  # the error of a failed run whose weights file was given explicitly

    @property
    def description(self):
        if self.genotype is None:
            return self.args.model
        name = genotypes.genotype_name(genotypes.parse_genotype(self.genotype))
        return f'{self.args.model}, genotype {name or self.genotype}'


def load_network(path, weights='best'):
    """The network a train.py run trained, rebuilt from the run's record (create_model, the factory train.py used)
    with the weights of `path`: a run folder (best.pt or weights.pt, as `weights` says), a checkpoint.pt (which
    records everything needed, wherever it is), or a best.pt or weights.pt inside its run folder."""
    weights_file, folder = weights_path(path, weights)
    loaded = run_folder.load_file(weights_file)
    if isinstance(loaded, dict) and loaded.get('kind') == 'search':
        refuse_search(weights_file, folder)
    checkpoint = loaded if isinstance(loaded, dict) and 'args' in loaded and 'model' in loaded else None
    state = checkpoint['model'] if checkpoint else loaded
    if not (isinstance(state, dict) and state and all(isinstance(t, torch.Tensor) for t in state.values())):
        raise UserError(f'{weights_file} holds no network weights (a state dict); give a run folder of train.py or its '
                        f'{run_folder.CHECKPOINT}')
    trained = build_network(folder, checkpoint, weights_file)
    try:
        trained.model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f'the weights in {weights_file} do not fit the network its run describes '
                        f'({trained.args.model}, {len(trained.class_names)} classes): {str(e).splitlines()[0][:300]}. '
                        f'Was the file moved from another run folder?') from None
    trained.failure = run_folder.failure(folder)
    return trained


def build_network(folder, checkpoint=None, weights_file=None):
    """The network of the train.py run in `folder` (or of `checkpoint`, read from `weights_file`), freshly
    initialised (create_model with the run's arguments, genotype and class names), in eval mode."""
    what = weights_file or folder
    args = run_args(folder, checkpoint, weights_file)
    genotype = run_genotype(folder, checkpoint, args)
    class_names = recorded('class_names', folder, checkpoint)
    if not (isinstance(class_names, list) and class_names and all(isinstance(n, str) for n in class_names)):
        raise UserError(f'{what} does not say which classes its network predicts (neither its checkpoint nor '
                        f'{os.path.join(folder, run_folder.METRICS)} lists them; a run of an earlier train.py?); give '
                        f'its run folder with its {run_folder.METRICS}, or a {run_folder.CHECKPOINT} of the current '
                        f'train.py')
    import noise  # the heads a --noise_method adds (SCN, RUL), which the weights hold too
    model = noise.inference_network(create_model(args.model, len(class_names), **model_options(
        args, genotypes.parse_genotype(genotype) if genotype else None)), args)
    return TrainedNetwork(model.eval(), args, class_names, genotype, run_input(checkpoint, args, what), weights_file)


def weights_path(path, weights):
    """(the weights file to load, the folder holding the run's other files)."""
    if os.path.isfile(path):
        return path, os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path):
        raise UserError(f'{path} does not exist; give an eval run folder of train.py, or its {run_folder.CHECKPOINT}')
    if run_folder.run_kind(path) == 'search':
        refuse_search(path, path)
    name = run_folder.BEST if weights == 'best' else run_folder.WEIGHTS
    file = os.path.join(path, name)
    failed = run_folder.failure(path)
    if failed and os.path.isfile(file):
        # Its weights may be fine (the last good epoch), but a user reading predictions should know the run failed.
        raise UserError(f'{path} is a run that failed ({failed}); to classify with its {name} anyway, give the file '
                        f'itself: {file}')
    if os.path.isfile(file):
        return file, path
    if failed:
        why = f'the run failed before it saved one ({failed})'
    elif os.path.isfile(os.path.join(path, run_folder.ARGS)):
        why = 'the run has not finished its first epoch (or it was killed during it)'
    else:
        why = f'this is not a run folder of train.py (no {run_folder.ARGS})'
    raise UserError(f'{path} holds no {name}: {why}; give an eval run folder that has finished an epoch')


def refuse_search(what, folder):
    raise UserError(f'{what} is a train_search.py run: its supernet is no trained classifier. Train the genotype it '
                    f'found with python train.py --genotype_file {folder} and give predict.py that run')


def run_args(folder, checkpoint=None, weights_file=None):
    """A train.py run's arguments (the checkpoint's, else args.json), with train.py's defaults for the flags that
    were added after the run (a run of an earlier version has no --model: it is gla_fernet)."""
    if checkpoint:
        saved = checkpoint['args']
    else:
        path = os.path.join(folder, run_folder.ARGS)
        if not os.path.isfile(path):
            raise UserError((f'{weights_file} holds the weights alone, and its folder {folder}' if weights_file else
                             folder) + f' is no run folder of train.py (no {run_folder.ARGS}) to say which network, '
                                       f'classes and input they are; give the run folder, or its '
                                       f'{run_folder.CHECKPOINT}')
        saved = run_folder.read_json(path, 'arguments file')
    if run_folder.run_kind(folder, saved) == 'search':
        refuse_search(weights_file or folder, folder)
    return cli.resumed_args(train.parser, saved, argv=[])


def recorded(key, folder, checkpoint=None):
    """What a run records under `key`: its checkpoint's (train.py writes the class names, the input and the genotype
    there), else its folder's metrics.json's (a best.pt or weights.pt; a checkpoint of an earlier train.py)."""
    if checkpoint and checkpoint.get(key) is not None:
        return checkpoint[key]
    metrics, problem = run_folder.read_optional_json(os.path.join(folder, run_folder.METRICS))
    if problem:
        raise UserError(problem)
    return (metrics or {}).get(key)


def run_genotype(folder, checkpoint, args):
    """The genotype text of a network built from one (recorded, else the one its flags name); None for the others,
    as metrics.json says."""
    if not uses_genotype(args.model):
        return None
    return recorded('genotype', folder, checkpoint) or genotypes.format_genotype(train.read_genotype(args)[0])


def run_input(checkpoint, args, what):
    """The input the network was trained on: {'image_size', 'grayscale', 'source_size'}, as the checkpoint records
    it; for a run of an earlier train.py, as its arguments imply (data_loader decoded its dataset so)."""
    derived = {'image_size': args.image_size, 'grayscale': data_loader.grayscale_source(args),
               'source_size': data_loader.source_size(args)}
    given = checkpoint.get('input') if checkpoint else None
    if given is None:
        return derived
    if not (isinstance(given, dict) and derived.keys() <= given.keys() and given['image_size'] == args.image_size
            and isinstance(given['grayscale'], bool) and isinstance(given['source_size'], int)):
        raise UserError(f'{what}: its input record {given!r} is not what train.py writes (or disagrees with its '
                        f'--image_size {args.image_size}); the file is damaged: give the run folder instead')
    return {key: given[key] for key in derived}


# ---------------------------------------------------------------- images in, classes out

def find_images(inputs, videos=(), frame_folders=False):
    """The image files `inputs` name: files as given; folders searched recursively for image files (and files with
    the extensions `videos`; hidden files and folders skipped), or with `frame_folders` kept as folders (each the
    frames of one video); glob patterns expanded. In order, each folder sorted, without repeats."""
    extensions = formats.IMAGE_EXTENSIONS + tuple(videos)
    paths = []
    for given in inputs:
        matches = [given] if os.path.exists(given) else sorted(glob.glob(given, recursive=True))
        if not matches:
            raise UserError(f'{given} is no file or folder, and no file matches it as a pattern')
        found = []
        for match in matches:
            if os.path.isdir(match) and not frame_folders:
                found.extend(str(p) for p in sorted(Path(match).rglob('*')) if p.is_file() and
                             p.suffix.lower() in extensions and
                             not any(part.startswith('.') for part in p.relative_to(match).parts))
            else:
                found.append(match)
        if not found:
            raise UserError(f'{given} holds no images ({", ".join(extensions)}, searched recursively)')
        paths.extend(found)
    return list(dict.fromkeys(paths))


def classify(trained, paths, device, batch_size, topk, workers, log):
    """Yield, in the order of `paths`, {'path', 'top': [(class name, probability), ...] likeliest first} for each
    image, or {'path', 'error'} for one that cannot be decoded (also logged): it is skipped, the others go on.

    Images go through the evaluation's preprocessing (decoded as the run's input record says, then
    data_loader.evaluation_loader), a chunk of whole batches at a time while the next chunk is decoded, so that a
    run's test images, given in the test set's order, form the batches its evaluation formed."""
    model = network_on(trained, device)
    amp_dtype, _ = utils.amp_settings(device, trained.args.amp)
    topk = min(topk, len(trained.class_names))
    progress = utils.CountProgress(len(paths), 'classified', log)
    chunk, entries = [], []  # decoded images, and (path, index into chunk or error) in input order

    def flush():
        images = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in chunk]) if chunk else None
        probabilities = predict_probabilities(model, images, trained.args, device, batch_size, amp_dtype, progress)
        if probabilities is not None:
            values, indices = probabilities.topk(topk, dim=1)
            values, indices = values.cpu().tolist(), indices.cpu().tolist()
        for path, item in entries:
            if isinstance(item, str):
                yield {'path': path, 'error': item}
            else:
                yield {'path': path, 'top': [(trained.class_names[c], p) for c, p in zip(indices[item], values[item])]}
        chunk.clear()
        entries.clear()

    decoded = data_loader.decode_images(paths, trained.input['source_size'], workers, trained.input['grayscale'])
    with contextlib.closing(decoded):
        for path, array, error in decoded:
            progress(0)  # a time check: decoding a chunk can take long too
            if error:
                log(f'skipped: {error}')
                entries.append((path, error))
                progress(1)
                continue
            entries.append((path, len(chunk)))
            chunk.append(array)
            if len(chunk) == BATCHES_PER_CHUNK * batch_size:
                yield from flush()
    yield from flush()


def network_on(trained, device):
    """The run's network on `device`, in the memory format its evaluation used."""
    model = trained.model.to(device)
    return model.to(memory_format=torch.channels_last) if trained.args.channels_last else model


def predict_probabilities(model, images, run_args, device, batch_size, amp_dtype, progress=lambda images: None):
    """Class probabilities of uint8 source images (N x 3 x S x S) as the run's evaluation computes its logits."""
    if images is None:
        return None
    loader = data_loader.evaluation_loader(images, torch.zeros(len(images), dtype=torch.int64), run_args, device,
                                           batch_size=batch_size)
    probabilities = []
    with torch.no_grad(), utils.autocast(device, amp_dtype):
        for x, _ in loader:
            probabilities.append(F.softmax(utils.main_logits(model(x)).float(), dim=1))
            progress(len(x))
    return torch.cat(probabilities)


# ---------------------------------------------------------------- faces in photos and videos (docs/faces.md)

def as_source(crop, run_input):
    """An aligned crop as the run's evaluation decodes an image: through data_loader.decode_image itself (grey for a
    grey run, resized to its source size), from the crop's lossless PNG, so that the two can never differ."""
    encoded = io.BytesIO()
    Image.fromarray(crop).save(encoded, format='PNG')
    return data_loader.decode_image(encoded, run_input['source_size'], run_input['grayscale'])


def face_frames(path, args):
    """(is a video, the frames of an image, video file or frame folder as (index, time, H x W x 3 uint8)); an image's
    one frame has index and time None."""
    if os.path.isdir(path):
        return True, faces.folder_frames(path, args.fps)
    if faces.is_video(path):
        return True, faces.video_frames(path)
    return False, [(None, None, data_loader.decode_image(path))]


class OutputNames:
    """File names in an output folder, one per input: the input's name, with -2, -3, ... for a repeated one."""

    def __init__(self):
        self.used = set()

    def __call__(self, path):
        stem = Path(path).stem or Path(path).name
        name, n = stem, 1
        while name in self.used:
            n += 1
            name = f'{stem}-{n}'
        self.used.add(name)
        return name


def classify_faces(trained, paths, detector, device, args, log):
    """Yield, in order, one row per face of each image, video frame or frame of a frame folder: {'path', 'frame',
    'time', 'face', 'track', 'box', 'score', 'top'}; a row {'path', 'frame', 'time', 'error'} for an image or frame
    without a face, or for an unreadable image (skipped; an unreadable video stops). Faces are numbered left to
    right; in a video, `track` follows a face across frames (faces.Tracker) and --smooth averages each track's
    probabilities over frames."""
    model = network_on(trained, device)
    topk = min(args.topk, len(trained.class_names))
    smoothing = 2 / (args.smooth + 1) if args.smooth else 1.0  # an exponential moving average over ~N frames
    seconds = dict.fromkeys(('detection', 'alignment', 'classification'), 0.0)
    counts = dict.fromkeys(('frames', 'faces', 'no face', 'unreadable'), 0)
    names = OutputNames()
    for path in paths:
        try:
            video, frames = face_frames(path, args)
        except UserError as e:  # an image that cannot be decoded; a video says so when its frames are read
            log(f'skipped: {e}')
            counts['unreadable'] += 1
            yield {'path': path, 'frame': None, 'time': None, 'error': str(e)}
            continue
        name = names(path)
        annotated = annotation_output(args.annotate, path, name, args.fps)
        tracker, averages = faces.Tracker(), {}
        with annotated if isinstance(annotated, faces.VideoWriter) else contextlib.nullcontext():
            for index, time_s, image in frames:
                found, sources, probabilities = classify_frame(trained, model, detector, image, device,
                                                               args.batch_size, seconds)
                tracks = tracker([face.box for face in found]) if video else [None] * len(found)
                rows = []
                for i, (face, track, p) in enumerate(zip(found, tracks, probabilities)):
                    if video:
                        previous = averages.get(track)
                        p = averages[track] = p if previous is None else smoothing * p + (1 - smoothing) * previous
                    values, indices = p.topk(topk)
                    rows.append({'path': path, 'frame': index, 'time': time_s, 'face': i, 'track': track,
                                 'box': [round(v, 1) for v in face.box], 'score': face.score,
                                 'top': [(trained.class_names[c], q)
                                         for c, q in zip(indices.tolist(), values.tolist())]})
                if not found:
                    rows.append({'path': path, 'frame': index, 'time': time_s, 'no_face': True,
                                 'error': f'no face found (none of at least {args.min_face} pixels with probability '
                                          f'{args.face_threshold:g} or more)'})
                counts['frames'] += 1
                counts['faces'] += len(found)
                counts['no face'] += not found
                if annotated is not None:
                    drawn = visualize.draw_faces(image, [(r['box'], face_label(r, video)) for r in rows if 'box' in r])
                    write_annotated(annotated, drawn, name if index is None else f'{index:06d}')
                if args.cam and found:
                    stem = name if index is None else f'{name}_frame{index:06d}'
                    write_class_maps(trained, sources, [r['top'][0][0] for r in rows], device,
                                     [os.path.join(args.cam, f'{stem}_face{i}.png') for i in range(len(found))])
                yield from rows
    per_face = lambda what: f'{1000 * seconds[what] / max(counts["faces"], 1):.1f} ms'
    log(f'{counts["faces"]} faces in {counts["frames"]} images or frames ({counts["no face"]} without a face'
        + (f', {counts["unreadable"]} unreadable, listed above' if counts['unreadable'] else '') + f') on {device}: '
        f'detection {1000 * seconds["detection"] / max(counts["frames"], 1):.1f} ms per image, alignment '
        f'{per_face("alignment")} and classification {per_face("classification")} per face'
        + (f'; predictions in {args.out}' if args.out else ''))


def classify_frame(trained, model, detector, image, device, batch_size, seconds):
    """(the faces of an image, the uint8 source images of their aligned crops as the evaluation holds its images,
    their class probabilities on the CPU), adding the time of each step to `seconds`."""
    start = time.perf_counter()
    found = detector(image)
    detected = time.perf_counter()
    crops = [faces.align(image, face.landmarks)[0] for face in found]
    aligned = time.perf_counter()
    sources = probabilities = None
    if found:
        sources = torch.stack([torch.from_numpy(as_source(crop, trained.input)).permute(2, 0, 1) for crop in crops])
        amp_dtype, _ = utils.amp_settings(device, trained.args.amp)
        probabilities = predict_probabilities(model, sources, trained.args, device,
                                              batch_size or trained.args.batch_size, amp_dtype).cpu()
    seconds['detection'] += detected - start
    seconds['alignment'] += aligned - detected
    seconds['classification'] += time.perf_counter() - aligned
    return found, sources, probabilities if found else []


def face_label(row, track=False):
    """The text drawn beside a face: its index (its track in a video) and its likeliest class."""
    (name, p), = row['top'][:1]
    return f'{"track" if track else "face"} {row["track"] if track else row["face"]}: {name} {100 * p:.0f}%'


def annotation_output(folder, path, name, fps):
    """Where the annotated frames of `path` go: None without --annotate; a faces.VideoWriter for a video file (at its
    own frame rate); a sub-folder of `folder` for a frame folder; `folder` itself for an image."""
    if folder is None:
        return None
    if faces.is_video(path):
        return faces.VideoWriter(os.path.join(folder, f'{name}.mp4'), faces.video_rate(path))
    if os.path.isdir(path):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        return os.path.join(folder, name)
    return folder


def write_annotated(output, image, name):
    if isinstance(output, faces.VideoWriter):
        output.write(np.asarray(image))
    else:
        run_folder.atomic_write(os.path.join(output, f'{name}.jpg'),
                                lambda tmp: image.save(tmp, format='JPEG', quality=ANNOTATED_JPEG_QUALITY))


def activation_maps(model, x, classes):
    """Where the network looks for class classes[i] in the (preprocessed) image x[i]: (N x h x w maps over the grid of
    forward_features, the method). 'CAM' (Zhou et al. 2016) for a network whose head is a linear map after global
    average pooling (its class_activation_maps: a map's spatial mean is the class logit less its bias); 'Grad-CAM'
    (Selvaraju et al. 2017) for the others: the feature channels weighted by the spatial mean of the class logit's
    gradient, summed, then ReLU (the evidence for the class, not against it)."""
    rows = torch.arange(len(x), device=x.device)
    if hasattr(model, 'class_activation_maps'):
        with torch.no_grad():
            return model.class_activation_maps(model.forward_features(x))[rows, classes].float(), 'CAM'
    with torch.no_grad():
        features = model.forward_features(x)
    with torch.enable_grad():
        features.requires_grad_()
        gradients, = torch.autograd.grad(model.forward_head(features)[rows, classes].sum(), features)
    return F.relu((gradients.mean((2, 3), keepdim=True) * features.detach()).sum(1)).float(), 'Grad-CAM'


def display_maps(maps, size):
    """Maps upsampled bilinearly to size x size and scaled to [0, 1] each (0: its lowest value, 1: its highest): what
    an overlay shows is where the network looks most, relative to the rest of the same image."""
    maps = F.interpolate(maps[:, None], size=(size, size), mode='bilinear', align_corners=False)[:, 0]
    low, high = maps.amin((1, 2), keepdim=True), maps.amax((1, 2), keepdim=True)
    return (maps - low) / (high - low).clamp_min(torch.finfo(maps.dtype).tiny)


def write_class_maps(trained, sources, predicted, device, paths):
    """For each uint8 source image (N x 3 x S x S, as the evaluation's cache holds it) the map of its predicted class
    (a class name), drawn over the image as the network saw it (grey for a grey run) into `paths`."""
    classes = torch.tensor([trained.class_names.index(name) for name in predicted], device=device)
    loader = data_loader.evaluation_loader(sources, torch.zeros(len(sources), dtype=torch.int64), trained.args, device,
                                           batch_size=len(sources))
    x, _ = next(iter(loader))
    maps, method = activation_maps(network_on(trained, device), x.float(), classes)
    for image, heat, name, path in zip(sources, display_maps(maps, sources.shape[-1]).cpu(), predicted, paths):
        visualize.plot_class_map(image.permute(1, 2, 0).numpy(), heat.numpy(), path, f'{name}: {method}' + (
            ' (1x1 feature map: uniform)' if maps.shape[-2:] == (1, 1) else ''))


def write_image_maps(trained, rows, device, folder):
    """The class maps of whole images (predict.py --cam without --faces), a batch at a time."""
    names = OutputNames()
    batch = trained.args.batch_size
    for first in range(0, len(rows), batch):
        part = rows[first:first + batch]
        sources = torch.stack([torch.from_numpy(data_loader.decode_image(
            row['path'], trained.input['source_size'], trained.input['grayscale'])).permute(2, 0, 1) for row in part])
        write_class_maps(trained, sources, [row['top'][0][0] for row in part], device,
                         [os.path.join(folder, f'{names(row["path"])}.png') for row in part])


FACE_COLUMNS = ['frame', 'time', 'face', 'track', 'x0', 'y0', 'x1', 'y1', 'score']  # after path, with --faces


def write_rows(rows, out, trained, by_face=False):
    """Print the predictions, or write them to a .csv (one row per image, or with by_face per face; an unreadable
    image, or one without a face, has only its error) or a .json file."""
    if out is None:
        for row in rows:
            frame = row.get('frame')
            where = row['path'] + (f' frame {frame} ({row["time"]:.3f}s)' if frame is not None else '')
            if 'error' in row:
                if row.get('no_face'):
                    print(f'{where}\t{row["error"]}')
                continue
            (name, p), rest = row['top'][0], row['top'][1:]
            track = f' (track {row["track"]})' if row.get('track') is not None else ''
            face = (f'\tface {row["face"]}{track} [{", ".join(f"{v:.0f}" for v in row["box"])}] '
                    f'p={row["score"]:.3f}' if by_face else '')
            print(f'{where}{face}\t{name} {100 * p:.1f}%' +
                  (' (' + ', '.join(f'{n} {100 * q:.1f}%' for n, q in rest) + ')' if rest else ''))
        return
    if out.endswith('.json'):
        where = lambda r: {key: r[key] for key in ('path', 'frame', 'time', 'face', 'track', 'box', 'score')
                           if key in r and (by_face or key == 'path')}
        data = {'weights': trained.weights_file, 'class_names': trained.class_names,
                'predictions': [{**where(r), 'prediction': r['top'][0][0], 'probability': r['top'][0][1],
                                 'top_k': [{'class': n, 'probability': p} for n, p in r['top']]}
                                for r in rows if 'error' not in r],
                'skipped': [r for r in rows if 'error' in r and not r.get('no_face')]}
        if by_face:
            data['no_face'] = [{**where(r), 'error': r['error']} for r in rows if r.get('no_face')]
        run_folder.write_json(out, data)
        return
    k = max((len(r['top']) for r in rows if 'error' not in r), default=1)
    header = (['path'] + FACE_COLUMNS * by_face + ['prediction', 'probability'] +
              [f'{field}_{rank}' for rank in range(2, k + 1) for field in ('class', 'probability')] + ['error'])

    def write(tmp):
        with open(tmp, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for row in rows:
                face = [row.get('frame'), row.get('time'), row.get('face'), row.get('track'),
                        *row.get('box', [None] * 4), row.get('score')] if by_face else []
                face = ['' if v is None else v for v in face]
                cells = [c for pair in row.get('top', []) for c in pair]
                writer.writerow([row['path'], *face, *cells, *[''] * (len(header) - 2 - len(face) - len(cells)),
                                 row.get('error', '')])
    run_folder.atomic_write(out, write)


# ---------------------------------------------------------------- export

def save_program(program, path):
    with open(path, 'wb') as f:  # a file object: torch.export.save warns about a name not ending in .pt2
        torch.export.save(program, f)


class Deployable(torch.nn.Module):
    """A trained network as it is shipped: takes pixel values 0..255 as float32, N x 3 x S x S (S = the run's
    --image_size, the face already resized to it), normalises them as training did, and returns the class logits.

    A network trained on grey faces (grayscale) first turns its input grey as the evaluation's decoding did (PIL's
    luma, rounded), so that a colour face gets the probabilities of its grey version; a grey face (the same value in
    the 3 channels) passes unchanged."""

    def __init__(self, model, grayscale):
        super().__init__()
        self.model, self.grayscale = model, grayscale
        scale, shift = data_loader.normaliser('cpu')
        self.register_buffer('scale', scale)
        self.register_buffer('shift', shift)
        self.register_buffer('luma', torch.tensor(LUMA_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels):
        if self.grayscale:
            rounding = 2 ** (LUMA_SHIFT - 1)
            grey = torch.floor(((pixels * self.luma).sum(1, keepdim=True) + rounding) / 2 ** LUMA_SHIFT)
            pixels = grey.repeat(1, 3, 1, 1)
        return utils.main_logits(self.model(torch.addcmul(self.shift, pixels, self.scale)))


def export(trained, path, log):
    """Write the network to `path` (.pt2: torch.export; .onnx: ONNX, opset of torch's exporter), with a dynamic batch
    size, then load the written file and check that it computes the eager network's logits within EXPORT_TOLERANCE on
    a batch of another size than the one it was traced with; a file that fails the check is removed.

    A description of its input and output goes beside it (PATH.json), recording the sha256 of the file it describes.
    The earlier description is removed first and the new one written last (both files atomically), so that a kill at
    any point leaves the earlier pair, or a network without a description, never a description of another network."""
    size, grey = trained.input['image_size'], trained.input['grayscale']
    module = Deployable(trained.model, grey).cpu().float().eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, size, size), generator=generator).float()
    check = torch.randint(0, 256, (3, 3, size, size), generator=generator).float()
    dynamic = ({0: torch.export.Dim('batch', min=1, max=65536)},)
    description = f'{path}.json'
    log(f'exporting {trained.description} to {path} with {"torch.export" if path.endswith(".pt2") else "ONNX"} '
        f'(tracing a large network takes minutes), then checking it against eager PyTorch')
    with contextlib.suppress(FileNotFoundError):
        os.remove(description)
    with torch.no_grad():
        expected = module(check)
        if path.endswith('.pt2'):
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
            run_folder.atomic_write(path, lambda tmp: save_program(program, tmp))
            got = torch.export.load(path).module()(check)
        else:
            import onnxruntime
            program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=dynamic,
                                        input_names=['pixels'], output_names=['logits'], verbose=False)
            run_folder.atomic_write(path, lambda tmp: program.save(tmp))
            session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
            got = torch.from_numpy(session.run(None, {'pixels': check.numpy()})[0])
    difference = (got - expected).abs().max().item()
    if not difference <= EXPORT_TOLERANCE:
        os.remove(path)
        raise UserError(f'the exported network differs from eager PyTorch by {difference:.3g} (more than '
                        f'{EXPORT_TOLERANCE:g}) on a batch of {len(check)}; {path} was removed. Please report this '
                        f'with the run\'s {run_folder.ARGS}')
    colour = (f'{GREY_INPUT} or RGB, which the network turns grey itself (ITU-R 601-2 luma as PIL\'s convert("L"), '
              f'rounded): it was trained on grey faces, so a colour face gets the probabilities of its grey version'
              if grey else 'RGB')
    run_folder.write_json(description, {
        'file': os.path.basename(path), 'sha256': sha256(path),
        'input': f'float32 pixel values 0..255, N x 3 x {size} x {size}: an aligned face crop resized to {size}x{size} '
                 f'(bilinear, antialiased), {colour}; the normalisation is inside the network',
        'trained_on': GREY_INPUT if grey else 'RGB', 'grayscale': grey,
        'output': 'N x classes logits; softmax gives probabilities', 'class_names': trained.class_names,
        'image_size': size, 'model': trained.args.model, 'genotype': trained.genotype,
        'weights': trained.weights_file, 'max_difference_from_eager': difference})
    log(f'exported {path} (and {description} describing its input): reloaded, it computes the logits of eager PyTorch '
        f'within {difference:.2e} on a batch of {len(check)} (tolerance {EXPORT_TOLERANCE:g})')


def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


if __name__ == '__main__':
    utils.run_main(main, ARGS)
