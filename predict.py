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
                         'packages onnx, onnxscript, onnxruntime), and check it against eager PyTorch. The file holds '
                         'its own description (input, class names, origin); PATH.json beside it is a copy, with the '
                         "file's sha256")
# The defaults are faces.py's MIN_FACE, FACE_THRESHOLD and DEFAULT_FPS, written out: flags are parsed before torch.
face_flags = parser.add_argument_group('faces in photos and videos (docs/faces.md)')
face_flags.add_argument('--faces', action='store_true',
                        help='find the faces of each image or video (MTCNN, an optional extra: pip install requests '
                             'tqdm && pip install --no-deps facenet-pytorch), align each onto the 100x100 geometry of '
                             'RAF-DB\'s aligned images and classify it: one row per face; an image without a face gets '
                             'a row saying so. Videos (.mp4, .avi, ...) need PyAV: pip install av')
face_flags.add_argument('--min_face', type=cli.positive_int, default=20, help='smallest face to find, in pixels')
face_flags.add_argument('--face_threshold', type=cli.probability_threshold, default=0.9,
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
        try:  # now: a folder that cannot be written would stop the run after its work
            if folder:
                run_folder.check_output_directory(folder)
        except UserError as e:
            parser.error(f'argument {flag}: {e}')


if __name__ == '__main__':
    # Parsed before torch is imported (seconds on a busy machine): --help and a bad flag answer at once.
    ARGS = parse()

import contextlib  # noqa: E402
import csv  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import data_loader  # noqa: E402
import faces  # noqa: E402
import formats  # noqa: E402
import utils  # noqa: E402
from trained import load_network, network_on, predict_probabilities  # noqa: E402

BATCHES_PER_CHUNK = 16  # images are decoded and classified this many batches at a time
EXPORT_TOLERANCE = 1e-4  # largest difference allowed between the exported network's logits and eager PyTorch's
# ITU-R 601-2 luma in PIL's fixed point (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16): Image.convert('L'), which
# decodes the faces of a grey dataset. Exact in float32 for pixel values 0..255 (every sum stays below 2^24).
LUMA_WEIGHTS = (19595, 38470, 7471)
LUMA_SHIFT = 16
GREY_INPUT = 'grey (luminance replicated to 3 channels)'
DESCRIPTION = 'description.json'  # an export's description inside its file: a .pt2's extra file, an .onnx's metadata


def main(args, log):
    if args.faces and faces.detector_missing():
        raise UserError(faces.detector_missing())  # before any work
    paths = find_images(args.inputs, faces.VIDEO_EXTENSIONS if args.faces else (), args.frames)
    check_inputs(paths, args)
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
    for flag, folder in (('--annotate', args.annotate), ('--cam', args.cam)):
        try:
            if folder:
                os.makedirs(folder, exist_ok=True)
        except OSError as e:  # checked when the flags were parsed; changed since
            raise UserError(f'{flag}: cannot create {folder} ({e.strerror}); fix its permissions or give another '
                            f'folder') from None
    if args.faces:
        detector = faces.Detector(args.min_face, args.face_threshold, device)
        rows = list(faces.classify_faces(trained, paths, detector, device, args, log))
        write_rows(rows, args.out, trained, by_face=True)
        return
    start = time.perf_counter()
    rows = list(classify(trained, paths, device, trained.args.batch_size if args.batch_size is None else
                         args.batch_size, args.topk, args.workers, log))
    seconds = time.perf_counter() - start
    write_rows(rows, args.out, trained)
    if args.cam:
        faces.write_image_maps(trained, [row for row in rows if 'error' not in row], device, args.cam)
    skipped = sum('error' in row for row in rows)
    log(f'{len(rows) - skipped} images classified in {seconds:.1f}s ({(len(rows) - skipped) / seconds:.1f} images/s, '
        f'decoding included) on {device}' + (f'; {skipped} unreadable, skipped (listed above)' if skipped else '') +
        (f'; predictions in {args.out}' if args.out else ''))


def check_inputs(paths, args):
    """Refuse, before any work, inputs the flags cannot apply to: a video without --faces, --smooth without a video
    or frame folder, a frame folder without frames or of frames of mixed sizes."""
    videos = [path for path in paths if faces.is_video(path)]
    if videos and not args.faces:
        raise UserError(f'{videos[0]} is a video; classify its faces with --faces')
    sequences = videos + [path for path in paths if os.path.isdir(path)]  # frame folders, with --frames only
    if args.smooth and not sequences:
        raise UserError(f'--smooth {args.smooth} averages each face\'s probabilities over the frames of a video, and '
                        f'the inputs hold no video: drop --smooth, or give videos (or folders of frames with --frames)')
    for folder in sequences:
        if os.path.isdir(folder):
            faces.frame_folder(folder)


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
    header = (['path'] + faces.FACE_COLUMNS * by_face + ['prediction', 'probability'] +
              [f'{field}_{rank}' for rank in range(2, k + 1) for field in ('class', 'probability')] + ['error'])

    def write(tmp):
        with open(tmp, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for row in rows:
                face = faces.face_cells(row) if by_face else []
                cells = [c for pair in row.get('top', []) for c in pair]
                writer.writerow([row['path'], *face, *cells, *[''] * (len(header) - 2 - len(face) - len(cells)),
                                 row.get('error', '')])
    run_folder.atomic_write(out, write)


# ---------------------------------------------------------------- export

def save_program(program, path, description=None):
    """Write an exported network (torch.export's program, or torch.onnx's) to `path`, with `description` inside: a
    .pt2's extra file, an ONNX model's metadata_props (DESCRIPTION)."""
    if not isinstance(program, torch.export.ExportedProgram):  # torch.onnx's ONNXProgram
        program.save(path)
        if description is not None:
            import onnx
            model = onnx.load(path)
            entry = model.metadata_props.add()
            entry.key, entry.value = DESCRIPTION, json.dumps(description)
            onnx.save(model, path)
        return
    with open(path, 'wb') as f:  # a file object: torch.export.save warns about a name not ending in .pt2
        torch.export.save(program, f, extra_files=None if description is None else
                          {DESCRIPTION: json.dumps(description)})


def read_description(path):
    """The description an exported file holds (its input, class names, origin, the check against eager PyTorch)."""
    if path.endswith('.onnx'):
        import onnx
        found = {entry.key: entry.value for entry in onnx.load(path, load_external_data=False).metadata_props}
    else:
        found = {DESCRIPTION: ''}
        torch.export.load(path, extra_files=found)
    if not found.get(DESCRIPTION):
        raise UserError(f'{path} holds no description: it was not exported by this version of predict.py')
    return json.loads(found[DESCRIPTION])


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
    size, after checking that the written file, loaded again, computes the eager network's logits within
    EXPORT_TOLERANCE on a batch of another size than the one it was traced with.

    The file holds its own description (its input and output, class names, origin and the check's result;
    read_description), so the whole export is one atomic write: a kill at any point leaves the earlier file or the
    new one, each with its own description. PATH.json beside it is a copy, with the sha256 of the file, written last
    (the earlier copy is removed first)."""
    size, grey = trained.input['image_size'], trained.input['grayscale']
    module = Deployable(trained.model, grey).cpu().float().eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, size, size), generator=generator).float()
    check = torch.randint(0, 256, (3, 3, size, size), generator=generator).float()
    dynamic = ({0: torch.export.Dim('batch', min=1, max=65536)},)
    copy = f'{path}.json'
    log(f'exporting {trained.description} to {path} with {"torch.export" if path.endswith(".pt2") else "ONNX"} '
        f'(tracing a large network takes minutes), then checking it against eager PyTorch')
    with contextlib.suppress(FileNotFoundError):
        os.remove(copy)
    with torch.no_grad():
        expected = module(check)
        if path.endswith('.pt2'):
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
        else:
            program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=dynamic,
                                        input_names=['pixels'], output_names=['logits'], verbose=False)
    description = describe(trained)

    def write(tmp):
        save_program(program, tmp)
        difference = (run_exported(tmp, path, check) - expected).abs().max().item()
        if not difference <= EXPORT_TOLERANCE:
            raise UserError(f'the exported network differs from eager PyTorch by {difference:.3g} (more than '
                            f'{EXPORT_TOLERANCE:g}) on a batch of {len(check)}; {path} was not written. Please report '
                            f'this with the run\'s {run_folder.ARGS}')
        description['max_difference_from_eager'] = difference
        save_program(program, tmp, description)
    run_folder.atomic_write(path, write)
    run_folder.write_json(copy, {'file': os.path.basename(path), 'sha256': sha256(path), **description})
    log(f'exported {path} (its description inside, and a copy in {copy}): reloaded, it computes the logits of eager '
        f'PyTorch within {description["max_difference_from_eager"]:.2e} on a batch of {len(check)} (tolerance '
        f'{EXPORT_TOLERANCE:g})')


def run_exported(file, path, pixels):
    """The logits of the exported network in `file` (written for `path`, whose suffix says its format) on `pixels`."""
    if path.endswith('.pt2'):
        with open(file, 'rb') as f, torch.no_grad():  # a file object: torch.export.load warns about another suffix
            return torch.export.load(f).module()(pixels)
    import onnxruntime
    session = onnxruntime.InferenceSession(file, providers=['CPUExecutionProvider'])
    return torch.from_numpy(session.run(None, {'pixels': pixels.numpy()})[0])


def describe(trained):
    """What an exported network takes and returns, and where it came from (read_description gives it back)."""
    size, grey = trained.input['image_size'], trained.input['grayscale']
    colour = (f'{GREY_INPUT} or RGB, which the network turns grey itself (ITU-R 601-2 luma as PIL\'s convert("L"), '
              f'rounded): it was trained on grey faces, so a colour face gets the probabilities of its grey version'
              if grey else 'RGB')
    return {'input': f'float32 pixel values 0..255, N x 3 x {size} x {size}: an aligned face crop resized to '
                     f'{size}x{size} (bilinear, antialiased), {colour}; the normalisation is inside the network',
            'trained_on': GREY_INPUT if grey else 'RGB', 'grayscale': grey,
            'output': 'N x classes logits; softmax gives probabilities', 'class_names': trained.class_names,
            'image_size': size, 'model': trained.args.model, 'genotype': trained.genotype,
            'weights': trained.weights_file}


def sha256(path):
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


if __name__ == '__main__':
    utils.run_main(main, ARGS)
