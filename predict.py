"""Classify face images with a network trained by train.py, through the evaluation's own preprocessing, and export the
network (torch.export or ONNX) checked against eager PyTorch."""
import argparse
import importlib.util

import cli

EXPORT_FORMATS = ('.pt2', '.onnx')
ONNX_PACKAGES = ('onnx', 'onnxscript', 'onnxruntime')  # the exporter's two, and the runtime that checks the file

parser = argparse.ArgumentParser('predict', description=__doc__)
parser.add_argument('run', help='an eval run folder of train.py (its best.pt and args.json), or a .pt file of one: '
                                'checkpoint.pt, best.pt or weights.pt')
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
                         'packages onnx, onnxscript, onnxruntime), and check it against eager PyTorch')


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


if __name__ == '__main__':
    # Parsed before torch is imported (seconds on a busy machine): --help and a bad flag answer at once.
    ARGS = parser.parse_args()
    check_args(parser, ARGS)

import contextlib  # noqa: E402
import csv  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
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
from cli import UserError  # noqa: E402

BATCHES_PER_CHUNK = 16  # images are decoded and classified this many batches at a time
EXPORT_TOLERANCE = 1e-4  # largest difference allowed between the exported network's logits and eager PyTorch's


def main(args, log):
    paths = find_images(args.inputs)
    trained = load_network(args.run, args.weights)
    device, _, _ = utils.init_distributed(args.device)
    log(f'{trained.weights_file}: {trained.description}; {len(trained.class_names)} classes '
        f'({", ".join(trained.class_names)}); input {trained.args.image_size}x{trained.args.image_size}')
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
    genotype: str  # text, as metrics.json holds it
    weights_file: Optional[str]

    @property
    def description(self):
        if not uses_genotype(self.args.model):
            return self.args.model
        name = genotypes.genotype_name(genotypes.parse_genotype(self.genotype))
        return f'{self.args.model}, genotype {name or self.genotype}'


def load_network(path, weights='best'):
    """The network a train.py run trained, rebuilt from the run's arguments, genotype and class names (create_model,
    the factory train.py used) with the weights of `path`: a run folder (best.pt or weights.pt, as `weights` says),
    or a checkpoint.pt, best.pt or weights.pt file."""
    weights_file, folder = weights_path(path, weights)
    try:
        loaded = torch.load(weights_file, map_location='cpu', weights_only=True)
    except Exception as e:  # noqa: BLE001 -- whatever is in the file, it is no network we can rebuild
        raise UserError(f'{weights_file} is not a checkpoint or weights file of train.py ({type(e).__name__}: '
                        f'{str(e).splitlines()[0][:200]})') from None
    checkpoint = loaded if isinstance(loaded, dict) and 'args' in loaded and 'model' in loaded else None
    state = checkpoint['model'] if checkpoint else loaded
    if not (isinstance(state, dict) and state and all(isinstance(t, torch.Tensor) for t in state.values())):
        raise UserError(f'{weights_file} holds no network weights (a state dict); give a run folder of train.py or its '
                        f'checkpoint.pt, best.pt or weights.pt')
    trained = build_network(folder, checkpoint, weights_file)
    try:
        trained.model.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f'the weights in {weights_file} do not fit the network its run describes '
                        f'({trained.args.model}, {len(trained.class_names)} classes): {str(e).splitlines()[0][:300]}. '
                        f'Was the file moved from another run folder?') from None
    return trained


def build_network(folder, checkpoint=None, weights_file=None):
    """The network of the train.py run in `folder`, freshly initialised (create_model with the run's arguments,
    genotype and class names), in eval mode."""
    args = run_args(folder, checkpoint, weights_file)
    genotype = run_genotype(folder, checkpoint, args)
    class_names = run_class_names(folder, args)
    model = create_model(args.model, len(class_names), **model_options(args, genotypes.parse_genotype(genotype)))
    return TrainedNetwork(model.eval(), args, class_names, genotype, weights_file)


def weights_path(path, weights):
    """(the weights file to load, the run folder holding the run's other files)."""
    if os.path.isfile(path):
        return path, os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path):
        raise UserError(f'{path} does not exist; give an eval run folder of train.py, or its checkpoint.pt, best.pt '
                        f'or weights.pt')
    check_not_a_search(path)
    name = 'best.pt' if weights == 'best' else 'weights.pt'
    if os.path.isfile(os.path.join(path, name)):
        return os.path.join(path, name), path
    failed = os.path.join(path, utils.FAILED_MARKER)
    if os.path.isfile(failed):
        with open(failed) as f:
            why = f'the run failed before it saved one ({f.read().strip()[:300]})'
    elif os.path.isfile(os.path.join(path, 'args.json')):
        why = 'the run has not finished its first epoch (or it was killed during it)'
    else:
        why = 'this is not a run folder of train.py (no args.json)'
    raise UserError(f'{path} holds no {name}: {why}; give an eval run folder that has finished an epoch')


def check_not_a_search(folder, args=None, kind=None):
    """Refuse a train_search.py run (by its checkpoint's kind, its arguments or its files): its supernet is not the
    network a genotype describes."""
    if (kind == 'search' or 'warmup_epochs' in (args or {}) or os.path.isfile(os.path.join(folder, 'genotype.txt'))
            or os.path.basename(os.path.normpath(folder)).startswith('search-')):
        raise UserError(f'{folder} is a train_search.py run: its supernet is no trained classifier. Train the genotype '
                        f'it found with python train.py --genotype_file {folder} and give predict.py that run')


def run_args(folder, checkpoint=None, what=None):
    """A train.py run's arguments (args.json, else the checkpoint's), with train.py's defaults for the flags that
    were added after the run (a run of an earlier version has no --model: it is gla_fernet)."""
    saved = checkpoint['args'] if checkpoint else None
    path = os.path.join(folder, 'args.json')
    if saved is None and os.path.isfile(path):
        with open(path) as f:
            saved = json.load(f)
    if saved is None:
        raise UserError(f'{what or folder}: its run folder {folder} holds no args.json, which says how the network was '
                        f'built; give the run folder of train.py, or its checkpoint.pt')
    check_not_a_search(folder, saved, checkpoint.get('kind') if checkpoint else None)
    return cli.resumed_args(train.parser, saved, argv=[])


def run_genotype(folder, checkpoint, args):
    """The genotype text of a run: metrics.json's or the checkpoint's, else the one its flags name."""
    metrics = read_json(os.path.join(folder, 'metrics.json'))
    if metrics.get('genotype'):
        return metrics['genotype']
    for source in (checkpoint, load_checkpoint_quietly(os.path.join(folder, 'checkpoint.pt'))):
        if source and source.get('genotype'):
            return source['genotype']
    return genotypes.format_genotype(train.read_genotype(args)[0])


def run_class_names(folder, args):
    """metrics.json's class names, else the dataset's."""
    names = read_json(os.path.join(folder, 'metrics.json')).get('class_names')
    if names:
        return names
    if args.dataset == 'affectnet':
        return formats.AFFECTNET_CLASSES[:args.affectnet_classes]
    return list(formats.RAFDB_CLASSES)


def read_json(path):
    """A JSON file's content, {} if it does not exist."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load_checkpoint_quietly(path):
    try:
        return torch.load(path, map_location='cpu', weights_only=True) if os.path.isfile(path) else None
    except Exception:  # noqa: BLE001 -- only a fallback source of the genotype
        return None


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


def classify(trained, paths, device, batch_size, topk, workers, log):
    """Yield, in the order of `paths`, {'path', 'top': [(class name, probability), ...] likeliest first} for each
    image, or {'path', 'error'} for one that cannot be decoded (also logged): it is skipped, the others go on.

    Images go through the evaluation's preprocessing (decoded to the run's source size, then
    data_loader.evaluation_loader), a chunk of whole batches at a time while the next chunk is decoded, so that a
    run's test images, given in the test set's order, form the batches its evaluation formed."""
    model = trained.model.to(device)
    if trained.args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype, _ = utils.amp_settings(device, trained.args.amp)
    topk = min(topk, len(trained.class_names))
    chunk, entries = [], []  # decoded images, and (path, index into chunk or error) in input order

    def flush():
        images = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in chunk]) if chunk else None
        probabilities = predict_probabilities(model, images, trained.args, device, batch_size, amp_dtype)
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

    decoded = data_loader.decode_images(paths, data_loader.source_size(trained.args), workers,
                                        data_loader.grayscale_source(trained.args))
    with contextlib.closing(decoded):
        for path, array, error in decoded:
            if error:
                log(f'skipped: {error}')
                entries.append((path, error))
                continue
            entries.append((path, len(chunk)))
            chunk.append(array)
            if len(chunk) == BATCHES_PER_CHUNK * batch_size:
                yield from flush()
    yield from flush()


def predict_probabilities(model, images, run_args, device, batch_size, amp_dtype):
    """Class probabilities of uint8 source images (N x 3 x S x S) as the run's evaluation computes its logits."""
    if images is None:
        return None
    loader = data_loader.evaluation_loader(images, torch.zeros(len(images), dtype=torch.int64), run_args, device,
                                           batch_size=batch_size)
    with torch.no_grad(), utils.autocast(device, amp_dtype):
        return torch.cat([F.softmax(utils.main_logits(model(x)).float(), dim=1) for x, _ in loader])


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
        utils.write_json(out, data)
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
    utils.atomic_write(out, write)


# ---------------------------------------------------------------- export

def save_program(program, path):
    with open(path, 'wb') as f:  # a file object: torch.export.save warns about a name not ending in .pt2
        torch.export.save(program, f)


class Deployable(torch.nn.Module):
    """A trained network as it is shipped: takes RGB pixel values 0..255 as float32, N x 3 x S x S (S = the run's
    --image_size, the face already resized to it), normalises them as training did, and returns the class logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        scale, shift = data_loader.normaliser('cpu')
        self.register_buffer('scale', scale)
        self.register_buffer('shift', shift)

    def forward(self, pixels):
        return utils.main_logits(self.model(torch.addcmul(self.shift, pixels, self.scale)))


def export(trained, path, log):
    """Write the network to `path` (.pt2: torch.export; .onnx: ONNX, opset of torch's exporter), with a dynamic batch
    size, then load the written file and check that it computes the eager network's logits within EXPORT_TOLERANCE on
    a batch of another size than the one it was traced with; a file that fails the check is removed. A description
    of its input and output goes beside it (PATH.json)."""
    module = Deployable(trained.model).cpu().float().eval()
    size = trained.args.image_size
    generator = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, size, size), generator=generator).float()
    check = torch.randint(0, 256, (3, 3, size, size), generator=generator).float()
    dynamic = ({0: torch.export.Dim('batch', min=1, max=65536)},)
    with torch.no_grad():
        expected = module(check)
        if path.endswith('.pt2'):
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
            utils.atomic_write(path, lambda tmp: save_program(program, tmp))
            got = torch.export.load(path).module()(check)
        else:
            import onnxruntime
            program = torch.onnx.export(module, (example,), dynamo=True, dynamic_shapes=dynamic,
                                        input_names=['pixels'], output_names=['logits'], verbose=False)
            utils.atomic_write(path, lambda tmp: program.save(tmp))
            session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
            got = torch.from_numpy(session.run(None, {'pixels': check.numpy()})[0])
    difference = (got - expected).abs().max().item()
    if not difference <= EXPORT_TOLERANCE:
        os.remove(path)
        raise UserError(f'the exported network differs from eager PyTorch by {difference:.3g} (more than '
                        f'{EXPORT_TOLERANCE:g}) on a batch of {len(check)}; {path} was removed. Please report this '
                        f'with the run\'s args.json')
    utils.write_json(f'{path}.json', {
        'input': f'float32 RGB pixel values 0..255, N x 3 x {size} x {size}: an aligned face crop resized to '
                 f'{size}x{size} (bilinear, antialiased); the normalisation is inside the network',
        'output': 'N x classes logits; softmax gives probabilities', 'class_names': trained.class_names,
        'image_size': size, 'model': trained.args.model, 'genotype': trained.genotype,
        'weights': trained.weights_file, 'max_difference_from_eager': difference})
    log(f'exported {path} (and {path}.json describing its input): reloaded, it computes the logits of eager PyTorch '
        f'within {difference:.2e} on a batch of {len(check)} (tolerance {EXPORT_TOLERANCE:g})')


if __name__ == '__main__':
    utils.run_main(main, ARGS)
