"""The command line shared by the scripts: flags, their checks and the resume rule; imports no torch.

The scripts parse their flags before they import torch (seconds on a busy machine), so that --help and a bad flag
answer at once. A mistake the user can fix is a UserError: the scripts print it in one line, without a traceback.
"""
import argparse
import copy
import os
import re
import shlex
import sys

from errors import UserError


DATASETS = ('synthetic', 'rafdb', 'affectnet', 'fer2013', 'ckplus', 'folder')
DEFAULT_ROOTS = {'synthetic': 'data/synthetic-rafdb', 'rafdb': 'data/raf-basic', 'affectnet': 'data/AffectNet',
                 'fer2013': 'data/fer2013/fer2013.csv', 'ckplus': 'data/CK+'}  # a folder dataset has no default
NOISE_LEVELS = (0, 10, 20, 30)  # percent; RAF-DB's EmoLabel/new_{N}_noise.txt (Self-Cure-Network's protocol)
CKPLUS_FOLDS = 10  # CK+ has no official split: the common protocol is 10 subject-independent folds
DEFAULT_SUBJECT_REGEX = r'^([^_]+)_'  # the subject precedes the first '_' ('S005_001_00000011.png' -> S005)
# The datasets each dataset-specific flag applies to; giving one with another dataset is refused, not ignored.
DATASET_FLAGS = {'noise': ('rafdb', 'synthetic'), 'noise_file': ('rafdb', 'synthetic'),
                 'affectnet_classes': ('affectnet',), 'ferplus_labels': ('fer2013',), 'ckplus_classes': ('ckplus',),
                 'ckplus_neutral': ('ckplus',), 'folds': ('ckplus', 'folder'), 'fold': ('ckplus', 'folder'),
                 'fold_seed': ('ckplus', 'folder'), 'class_names': ('folder',), 'subject_regex': ('folder',)}

# Flags about where and how a run goes, not what it computes: --resume takes new values for these.
# A noise file may be given anew as --data may (a moved dataset); a resumed run checks that its content is the same.
RUN_FLAGS = ('resume', 'data', 'noise_file', 'device', 'gpu', 'threads', 'workers', 'report_freq')


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {text}')
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'must be 0 or more, got {text}')
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f'must be 0 or more, got {text}')
    return value


def positive_float(text):
    value = float(text)
    if not 0 < value < float('inf'):
        raise argparse.ArgumentTypeError(f'must be a positive number, got {text}')
    return value


SUFFIXES = {'k': 1e3, 'm': 1e6, 'g': 1e9}


def quantity(text):
    """A positive count, with an optional k, M or G suffix: 300k, 1.5M, 2e8."""
    factor = SUFFIXES.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if factor != 1 else text) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a positive number such as 300000, 300k, 1.5M or 2G, got {text}') from None
    if not 0 < value < float('inf'):
        raise argparse.ArgumentTypeError(f'must be a positive number, got {text}')
    return value


def budget(text):
    """A budget: a quantity (300k, 150M, 4.5), or a multiple of the released GLA-FERNet network's cost at the search's
    target, written with an x (0.25x), kept as text until the target is known (budget.SearchBudget)."""
    if text.lower().endswith('x'):
        try:
            multiple = float(text[:-1])
        except ValueError:
            multiple = 0.0
        if not 0 < multiple < float('inf'):
            raise argparse.ArgumentTypeError(f'must be a positive multiple such as 0.25x, got {text}')
        return f'{multiple:g}x'
    return quantity(text)


def fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f'must lie strictly between 0 and 1, got {text}')
    return value


def probability_threshold(text):
    """A probability a score must reach: in (0, 1] (0 would accept everything; 1 only certainty)."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f'must lie in (0, 1], got {text}')
    return value


def name_list(text):
    """--class_names: comma-separated names, none empty, none twice."""
    names = [name.strip() for name in text.split(',')]
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f'expected distinct comma-separated names such as Anger,Happy,Neutral, '
                                         f'got {text!r}')
    return names


def regex(text):
    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f'{text!r} is not a regular expression ({e})') from None
    return text


def training_parser(prog, description, seed, channels_last):
    """The parser of a training script, holding the flags both scripts have: data, optimisation, runtime, the run's
    name and seed (each script's released default)."""
    parser = argparse.ArgumentParser(prog, description=description)
    add_data_arguments(parser)
    add_optimizer_arguments(parser)
    add_runtime_arguments(parser, channels_last)
    parser.add_argument('--save', type=run_name, default='EXP', help='experiment name (part of the run folder name)')
    parser.add_argument('--seed', type=int, default=seed, help='random seed')
    return parser


def add_data_arguments(parser):
    """The dataset flags of both training scripts."""
    group = parser.add_argument_group('data')
    group.add_argument('--dataset', choices=DATASETS, default='synthetic',
                       help='synthetic is generated into --data on first use')
    group.add_argument('--data', default=None,
                       help='dataset root (default: ' + ', '.join(f'{root} for {name}' for name, root in DEFAULT_ROOTS.items()) + ')')
    group.add_argument('--noise', type=int, choices=NOISE_LEVELS, default=0,
                       help='RAF-DB training-label noise in percent: reads EmoLabel/new_{N}_noise.txt')
    group.add_argument('--noise_file', default=None, help='explicit noisy training-label file (any of the three known formats)')
    group.add_argument('--affectnet_classes', type=int, choices=[7, 8], default=8, help='7 drops Contempt')
    group.add_argument('--ferplus_labels', default=None,
                       help="FERPlus's fer2013new.csv: relabel FER2013 by majority vote into 8 classes")
    group.add_argument('--ckplus_classes', type=int, choices=[6, 7], default=7, help='CK+: 6 drops Contempt')
    group.add_argument('--ckplus_neutral', action='store_true',
                       help="CK+: add each labelled sequence's first frame as class Neutral")
    group.add_argument('--folds', type=positive_int, default=None,
                       help=f'subject-independent folds (ckplus: {CKPLUS_FOLDS}; folder: none, i.e. its train/ and '
                            f'test/; the number of subjects is leave-one-subject-out)')
    group.add_argument('--fold', type=non_negative_int, default=None, help='the fold that is the test set, 0..folds-1')
    group.add_argument('--fold_seed', type=int, default=0, help='seed of the assignment of subjects to folds')
    group.add_argument('--class_names', type=name_list, default=None,
                       help='folder: names of the class folders, in class order, comma-separated')
    group.add_argument('--subject_regex', type=regex, default=DEFAULT_SUBJECT_REGEX,
                       help="folder with --folds: the subject in a file name (the first group, or the whole match)")
    group.add_argument('--image_size', type=positive_int, default=48, help='network input size (DARTS-family networks: a multiple of 4)')
    group.add_argument('--workers', type=non_negative_int, default=2,
                       help='processes decoding images on the first run (cached after)')
    return parser


def add_optimizer_arguments(parser):
    """The SGD flags of both training scripts, with the paper's (and released code's) defaults."""
    group = parser.add_argument_group('optimisation')
    group.add_argument('--batch_size', type=positive_int, default=64, help='batch size (per process under torchrun)')
    group.add_argument('--learning_rate', type=positive_float, default=0.1, help='init learning rate')
    group.add_argument('--learning_rate_min', type=non_negative_float, default=0.0, help='min learning rate of the cosine schedule')
    group.add_argument('--momentum', type=portion, default=0.9, help='SGD momentum, in [0, 1)')
    group.add_argument('--weight_decay', type=non_negative_float, default=3e-4, help='weight decay')
    group.add_argument('--grad_clip', type=non_negative_float, default=5, help='gradient clipping (max norm); 0: none')
    group.add_argument('--report_freq', type=positive_int, default=50,
                       help='log a progress line every this many steps (the console also gets one every 30 s)')


def add_runtime_arguments(parser, channels_last):
    """Device, precision and resume flags of both training scripts.

    channels_last: the script's default memory format. The discrete network is faster channels-last on CPU and
    GPU; the supernet's channel slicing and shuffling make it slower there, so search defaults to NCHW."""
    group = parser.add_argument_group('runtime')
    group.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto', help='where to run')
    group.add_argument('--gpu', type=non_negative_int, default=None, help='CUDA device id for single-process runs (default: current)')
    group.add_argument('--threads', type=positive_int, default=None,
                       help="CPU threads of torch (default: torch's, one per core); on a shared machine give the free "
                            "cores, or 1: more threads than free cores can make each step many times slower")
    group.add_argument('--deterministic', action='store_true', help='repeatable CUDA runs (slower: no cuDNN autotuning)')
    group.add_argument('--amp', action='store_true', help='mixed precision (bf16 where supported, else fp16)')
    group.add_argument('--compile', action='store_true',
                       help='compile each training step whole into one graph (a CUDA graph on a GPU; the first '
                            'step takes minutes); falls back to eager with a warning (docs/performance.md)')
    group.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=channels_last,
                       help='channels-last memory format')
    group.add_argument('--resume', default=None,
                       help='continue the run in this folder (or checkpoint.pt); only ' +
                            ', '.join(f'--{f}' for f in RUN_FLAGS[1:]) + ' may be given anew')


def parse(parser, check=None, recipe=None, argv=None):
    """Parse the flags of a new run: apply its recipe, then check(parser, args) the flags that only make sense
    together, and resolve the default dataset root so that the run records the folder it read. A resumed run's flags
    come from its checkpoint (resumed_args) and were resolved and checked when it started.

    recipe(args) -> (name, {flag: value}): a model's or method's published settings, applied as defaults for the
    flags not given on the command line (apply_recipe); its name is recorded as args.recipe."""
    args = parser.parse_args(argv)
    if args.resume is None:
        if recipe is not None:
            args.recipe, settings = recipe(args)
            apply_recipe(parser, args, settings, argv)
        check_data_args(parser, args)
        if check is not None:
            check(parser, args)
    return args


def check_data_args(parser, args):
    """Refuse dataset flags that do not apply to --dataset or do not fit together; resolve the dataset's root and,
    for CK+, its folds, so that a run records what it read."""
    for name, datasets in DATASET_FLAGS.items():
        if args.dataset not in datasets and getattr(args, name) != parser.get_default(name):
            parser.error(f'argument --{name}: applies to --dataset {" or ".join(datasets)} only, not '
                         f'{args.dataset}')
    if args.noise and args.noise_file is not None:
        parser.error(f'argument --noise_file: give it or --noise {args.noise}, not both (--noise {args.noise} reads '
                     f'EmoLabel/new_{args.noise}_noise.txt of the dataset)')
    if args.data is None:
        if args.dataset not in DEFAULT_ROOTS:
            parser.error(f'--dataset {args.dataset} needs --data: the folder holding train/<class>/ and '
                         f'test/<class>/ (or <class>/ with --folds)')
        args.data = DEFAULT_ROOTS[args.dataset]
    if args.noise_file is not None:
        args.noise_file = path_in_dataset(args.noise_file, args.data)
    if args.dataset == 'ckplus' and args.folds is None:
        args.folds = CKPLUS_FOLDS
    if args.fold is not None and args.folds is None:
        parser.error('argument --fold: give --folds too (the number of subject-independent folds)')
    if args.folds is not None:
        if args.folds < 2:
            parser.error(f'argument --folds: {args.folds} fold leaves nothing to train or test on; give 2 or more')
        args.fold = 0 if args.fold is None else args.fold
        if args.fold >= args.folds:
            parser.error(f'argument --fold: {args.fold} is not one of the folds 0..{args.folds - 1} of --folds '
                         f'{args.folds}')


def path_in_dataset(path, root):
    """A file inside the dataset root as a path relative to it (the run records it so, and finds it again under a
    moved dataset's new --data); any other path as given."""
    absolute, root = os.path.abspath(path), os.path.abspath(root)
    if os.path.isfile(path) and os.path.commonpath([absolute, root]) == root:
        return os.path.relpath(absolute, root)
    return path


def apply_recipe(parser, args, settings, argv=None):
    """Set each flag of `settings` that was not given on the command line; returns the flags it set. A recipe is a
    set of defaults for flags that exist anyway, so every item of it can be overridden by giving the flag."""
    given = given_flags(parser, argv)
    applied = {}
    for name, value in settings.items():
        assert hasattr(args, name), f'a recipe sets --{name}, which is no flag of {parser.prog}'
        if name not in given:
            setattr(args, name, value)
            applied[name] = value
    return applied


def given_flags(parser, argv=None):
    """The flags given on the command line (not left at their defaults), with their parsed values."""
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
    return vars(quiet.parse_args(sys.argv[1:] if argv is None else argv))


def resumed_args(parser, saved, argv=None):
    """The arguments of a resumed run: the saved ones, with new values only for the flags of RUN_FLAGS.

    A flag that changes the experiment (epochs, batch size, learning rate, model, seed, ...) given with another
    value than the run's is refused: a resumed run continues the same experiment."""
    defaults = vars(parser.parse_args([]))
    args = {**defaults, **saved}  # flags added since the run started take their defaults
    for name, value in given_flags(parser, argv).items():
        if name in RUN_FLAGS:
            args[name] = value
        elif value != args[name]:
            raise UserError(f'--{name} {value} differs from the resumed run\'s --{name} {args[name]}: --resume continues '
                            f'the same experiment, so only {", ".join("--" + f for f in RUN_FLAGS[1:])} may change; '
                            f'start a new run for other settings')
    if args.get('data') is None and 'dataset' in args:  # runs of earlier versions recorded the default as None
        args['data'] = DEFAULT_ROOTS[args['dataset']]
    return argparse.Namespace(**args)


def data_flags(args):
    """The dataset flags of a run as command-line text, to repeat them in a suggested command."""
    flags = [f'--dataset {args.dataset}', f'--data {shlex.quote(str(args.data))}', f'--image_size {args.image_size}']
    defaults = vars(add_data_arguments(argparse.ArgumentParser()).parse_args([]))
    for name in DATASET_FLAGS:
        value = getattr(args, name, defaults[name])
        if value == defaults[name]:
            continue
        if value is True:
            flags.append(f'--{name}')
        else:
            text = ','.join(value) if isinstance(value, list) else str(value)
            flags.append(f'--{name} {shlex.quote(text)}')
    return ' '.join(flags)


def portion(text):
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f'must lie in [0, 1), got {text}')
    return value


def optional(value_type):
    """A flag type that also takes 'none' (None): for flags that a recipe sets and a user may switch off."""
    def parse_optional(text):
        return None if text == 'none' else value_type(text)
    parse_optional.__name__ = value_type.__name__  # argparse names the type in its error messages
    return parse_optional


def run_name(text):
    """--save: part of the run folder's name, so no path separator."""
    if not text or '/' in text or '\\' in text or text in ('.', '..'):
        raise argparse.ArgumentTypeError(f'{text!r} is a name, not a path: the run folder is made in the current '
                                         f'directory as <script>-<name>-<dataset>-<time>')
    return text
