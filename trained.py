"""A network trained by train.py, rebuilt from its run folder or checkpoint (create_model, the factory train.py used,
with the run's arguments, genotype, class names and input record), and run as the run's evaluation runs it: the
probabilities of its classes and where it looks for them (class activation maps). predict.py, faces.py and report.py
reach trained networks through this module only."""
import argparse
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

import cli
import data_loader
import genotypes
import noise
import run_folder
import utils
from baselines import create_model, model_options, uses_genotype
from errors import UserError


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
    # with the heads a --noise_method adds (SCN, RUL), which the weights hold too
    model = noise.network_with_heads(create_model(args.model, len(class_names), **model_options(
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
    import train  # only where a network is rebuilt: importing this module loads no training code
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
    genotype = recorded('genotype', folder, checkpoint)
    if genotype is not None:
        return genotype
    import train  # the genotype its flags name, read as train.py reads it
    return genotypes.format_genotype(train.read_genotype(args)[0])


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


def network_on(trained, device):
    """The run's network on `device`, in the memory format its evaluation used."""
    model = trained.model.to(device)
    return model.to(memory_format=torch.channels_last) if trained.args.channels_last else model


def predict_probabilities(model, images, args, device, batch_size, amp_dtype, progress=lambda images: None):
    """Class probabilities of uint8 source images (N x 3 x S x S) as the evaluation of a run with arguments `args`
    computes its logits, `batch_size` images per forward."""
    if images is None:
        return None
    loader = data_loader.evaluation_loader(images, torch.zeros(len(images), dtype=torch.int64), args, device,
                                           batch_size=batch_size)
    probabilities = []
    with torch.no_grad(), utils.autocast(device, amp_dtype):
        for x, _ in loader:
            probabilities.append(F.softmax(utils.main_logits(model(x)).float(), dim=1))
            progress(len(x))
    return torch.cat(probabilities)


# ---------------------------------------------------------------- where the network looks (docs/faces.md)

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
