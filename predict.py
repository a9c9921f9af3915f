"""Classify face images with a network trained by train.py, through the evaluation's own preprocessing, and export the
network (torch.export or ONNX) checked against eager PyTorch."""
import argparse
import importlib.util

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


if __name__ == '__main__':
    # Parsed before torch is imported (seconds on a busy machine): --help and a bad flag answer at once.
    ARGS = parse()

import contextlib  # noqa: E402
import csv  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data_loader  # noqa: E402
import formats  # noqa: E402
import genotypes  # noqa: E402
import train  # noqa: E402
import utils  # noqa: E402
from baselines import create_model, model_options, uses_genotype  # noqa: E402

BATCHES_PER_CHUNK = 16  # images are decoded and classified this many batches at a time
EXPORT_TOLERANCE = 1e-4  # largest difference allowed between the exported network's logits and eager PyTorch's
# ITU-R 601-2 luma in PIL's fixed point (L = (19595 R + 38470 G + 7471 B + 2^15) >> 16): Image.convert('L'), which
# decodes the faces of a grey dataset. Exact in float32 for pixel values 0..255 (every sum stays below 2^24).
LUMA_WEIGHTS = (19595, 38470, 7471)
LUMA_SHIFT = 16
GREY_INPUT = 'grey (luminance replicated to 3 channels)'


def main(args, log):
    paths = find_images(args.inputs)
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
    start = time.perf_counter()
    rows = list(classify(trained, paths, device, args.batch_size or trained.args.batch_size, args.topk,
                         args.workers, log))
    seconds = time.perf_counter() - start
    write_rows(rows, args.out, trained)
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
    model = create_model(args.model, len(class_names),
                         **model_options(args, genotypes.parse_genotype(genotype) if genotype else None))
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

def find_images(inputs):
    """The image files `inputs` name: files as given; folders searched recursively for image files (hidden files and
    folders skipped); glob patterns expanded. In order, each folder sorted, without repeats."""
    paths = []
    for given in inputs:
        matches = [given] if os.path.exists(given) else sorted(glob.glob(given, recursive=True))
        if not matches:
            raise UserError(f'{given} is no file or folder, and no file matches it as a pattern')
        found = []
        for match in matches:
            if os.path.isdir(match):
                found.extend(str(p) for p in sorted(Path(match).rglob('*')) if p.is_file() and
                             p.suffix.lower() in formats.IMAGE_EXTENSIONS and
                             not any(part.startswith('.') for part in p.relative_to(match).parts))
            else:
                found.append(match)
        if not found:
            raise UserError(f'{given} holds no images ({", ".join(formats.IMAGE_EXTENSIONS)}, searched recursively)')
        paths.extend(found)
    return list(dict.fromkeys(paths))


class Progress:
    """A console line at least every utils.Progress.REPORT_SECONDS, as training gives one: images done of the total,
    images/s and the time left."""

    def __init__(self, total, log):
        self.total, self.log, self.done = total, log, 0
        self.start = self.last = time.perf_counter()

    def __call__(self, images=0):
        self.done += images
        now = time.perf_counter()
        if now - self.last < utils.Progress.REPORT_SECONDS or self.done >= self.total:
            return
        self.last = now
        rate = self.done / (now - self.start)
        left = f'{utils.duration((self.total - self.done) / rate)} left' if rate else 'time left not known yet'
        self.log(f'classified {self.done:,} of {self.total:,} images, {rate:.1f} images/s, {left}', to_file=False)


def classify(trained, paths, device, batch_size, topk, workers, log):
    """Yield, in the order of `paths`, {'path', 'top': [(class name, probability), ...] likeliest first} for each
    image, or {'path', 'error'} for one that cannot be decoded (also logged): it is skipped, the others go on.

    Images go through the evaluation's preprocessing (decoded as the run's input record says, then
    data_loader.evaluation_loader), a chunk of whole batches at a time while the next chunk is decoded, so that a
    run's test images, given in the test set's order, form the batches its evaluation formed."""
    model = trained.model.to(device)
    if trained.args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype, _ = utils.amp_settings(device, trained.args.amp)
    topk = min(topk, len(trained.class_names))
    progress = Progress(len(paths), log)
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
            progress()  # decoding a chunk can take long too
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


def write_rows(rows, out, trained):
    """Print the predictions, or write them to a .csv (one row per image; an unreadable one has only its error) or
    a .json file."""
    if out is None:
        for row in rows:
            if 'error' not in row:
                (name, p), rest = row['top'][0], row['top'][1:]
                print(f'{row["path"]}\t{name} {100 * p:.1f}%' +
                      (' (' + ', '.join(f'{n} {100 * q:.1f}%' for n, q in rest) + ')' if rest else ''))
        return
    if out.endswith('.json'):
        data = {'weights': trained.weights_file, 'class_names': trained.class_names,
                'predictions': [{'path': r['path'], 'prediction': r['top'][0][0], 'probability': r['top'][0][1],
                                 'top_k': [{'class': n, 'probability': p} for n, p in r['top']]}
                                for r in rows if 'error' not in r],
                'skipped': [r for r in rows if 'error' in r]}
        run_folder.write_json(out, data)
        return
    k = max((len(r['top']) for r in rows if 'error' not in r), default=1)
    header = ['path', 'prediction', 'probability'] + [f'{field}_{rank}' for rank in range(2, k + 1)
                                                      for field in ('class', 'probability')] + ['error']

    def write(tmp):
        with open(tmp, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(header)
            for row in rows:
                cells = [c for pair in row.get('top', []) for c in pair]
                writer.writerow([row['path'], *cells, *[''] * (len(header) - 2 - len(cells)), row.get('error', '')])
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
