"""Shared helpers: errors, devices, seeding, metrics, checkpoints, experiment folders, logging, model statistics."""
import argparse
import json
import logging
import os
import platform
import random
import subprocess
import sys
import time

import torch
import torch.distributed as dist
# Imported here, before any process group exists: torch.distributed.nn binds the default group as argument defaults
# when first imported (DistributedDataParallel imports it through torch._dynamo). Imported after init_process_group,
# it would keep the group, and so Gloo's worker threads, alive until interpreter shutdown (see run_main).
import torch.distributed.nn  # noqa: F401


class UserError(ValueError):
    """A problem the user can fix (bad path, malformed file, bad flag); scripts print it without a traceback."""


def run_main(main):
    """Run a script's main(), turning a UserError into one line on stderr and exit status 2.

    After a successful run under torchrun, free the process group before Python shuts down: its destructor joins
    Gloo's worker threads. A worker still releasing an all-reduced tensor during interpreter shutdown aborts the
    process (SIGABRT), and torchrun fails the whole run. Only on success: after an error the other processes may
    still be inside a collective.
    """
    try:
        main()
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------
# What both scripts do before their own work

def add_optimizer_arguments(parser):
    """The SGD flags that train_search.py and train.py share, with the paper's (and released code's) defaults."""
    parser.add_argument('--batch_size', type=int, default=64, help='batch size (per process under torchrun)')
    parser.add_argument('--learning_rate', type=float, default=0.1, help='init learning rate')
    parser.add_argument('--learning_rate_min', type=float, default=0.0, help='min learning rate of the cosine schedule')
    parser.add_argument('--momentum', type=float, default=0.9, help='momentum')
    parser.add_argument('--weight_decay', type=float, default=3e-4, help='weight decay')
    parser.add_argument('--grad_clip', type=float, default=5, help='gradient clipping')
    parser.add_argument('--report_freq', type=int, default=50, help='report frequency (steps)')


def add_runtime_arguments(parser, channels_last):
    """Device, precision and resume flags shared by train_search.py and train.py.

    channels_last: the script's default memory format. The discrete network is faster channels-last on CPU and
    GPU; the supernet's channel slicing and shuffling make it slower there, so search defaults to NCHW."""
    parser.add_argument('--gpu', type=int, default=None, help='CUDA device id for single-process runs (default: current)')
    parser.add_argument('--device', choices=['auto', 'cpu', 'cuda'], default='auto', help='where to run')
    parser.add_argument('--deterministic', action='store_true', help='repeatable CUDA runs (slower: no cuDNN autotuning)')
    parser.add_argument('--amp', action='store_true', help='mixed precision (bf16 where supported, else fp16)')
    parser.add_argument('--compile', action='store_true', help='torch.compile the network (falls back to eager)')
    parser.add_argument('--channels_last', action=argparse.BooleanOptionalAction, default=channels_last,
                        help='channels-last memory format')
    parser.add_argument('--resume', default=None, help='checkpoint.pt or run folder to continue')


def start_run(args, prefix):
    """Resume or create the run folder, pick the device, open the log, record what produced the run, seed.

    On --resume every flag comes from the checkpoint except where to run and how to report.
    Returns (args, checkpoint or None, run folder, log function, device, rank, world size)."""
    checkpoint = save_dir = None
    if args.resume:
        checkpoint, save_dir = load_checkpoint(args.resume)
        keep = {name: getattr(args, name) for name in ('resume', 'device', 'gpu', 'workers', 'report_freq')}
        args = type(args)(**{**checkpoint['args'], **keep})
    if args.gpu is not None and torch.cuda.is_available():
        torch.cuda.set_device(args.gpu)
    device, rank, world_size = init_distributed(args.device)
    if checkpoint is None and rank == 0:
        save_dir = create_exp_dir(prefix, args.save, args.dataset)
    log = get_logger(save_dir, rank == 0)
    for line in environment_lines(device):
        log(line)
    log(f'args = {vars(args)}' + (f' (resumed from {args.resume})' if args.resume else ''))
    if rank == 0:
        write_json(os.path.join(save_dir, 'args.json'), vars(args))
    set_seed(args.seed, args.deterministic)
    return args, checkpoint, save_dir, log, device, rank, world_size


# ----------------------------------------------------------------------------------------------------------
# Devices, distributed processes, seeds

def init_distributed(device_name):
    """Pick the device; under torchrun (RANK set) join the process group. Returns (device, rank, world_size)."""
    if device_name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu')
    use_cuda = device_name == 'cuda' or (device_name == 'auto' and torch.cuda.is_available())
    if 'RANK' not in os.environ:
        return torch.device('cuda' if use_cuda else 'cpu'), 0, 1
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device('cuda', local_rank)
    else:
        device = torch.device('cpu')
    dist.init_process_group(backend='nccl' if use_cuda else 'gloo', device_id=device if use_cuda else None)
    return device, dist.get_rank(), dist.get_world_size()


def all_reduce_(tensors, average=True):
    """Sum (or average) tensors across processes in place, as one flat buffer; a no-op in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    tensors = [t for t in tensors if t is not None]
    # float64 keeps counts exact (up to 2^53) and sums of float64 meters unrounded; gradients travel as float32.
    exact = any(not t.is_floating_point() or t.dtype == torch.float64 for t in tensors)
    flat = torch.cat([t.reshape(-1).to(torch.float64 if exact else torch.float32) for t in tensors])
    dist.all_reduce(flat)
    if average:
        flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def set_seed(seed, deterministic=False):
    """Seed every generator; `deterministic` also makes CUDA kernels repeatable (slower: no cuDNN autotuning)."""
    random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_states():
    return {'python': random.getstate(), 'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(states):
    random.setstate(states['python'])
    torch.set_rng_state(states['torch'])
    if states['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


def autocast_settings(device, enabled):
    """(dtype, needs_grad_scaler) for --amp: bf16 where the device supports it, else fp16 with a scaler."""
    if not enabled:
        return None, False
    if device.type == 'cpu' or torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def maybe_compile(model, example, log):
    """torch.compile the model, falling back to eager with a warning if compilation fails on `example`."""
    try:
        compiled = torch.compile(model)
        compiled(example)
        return compiled
    except Exception as e:  # compilers fail in many ways; eager always works
        log(f'warning: torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); running eagerly')
        return model


# ----------------------------------------------------------------------------------------------------------
# Metrics: a confusion matrix accumulated on the device, read once at the report line

class ConfusionMatrix:
    def __init__(self, num_classes, device):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)

    def update(self, logits, targets):
        predictions = logits.argmax(dim=1)
        # scatter_add_ rather than bincount: bincount on CUDA reads the maximum back to the host every step.
        cells = targets * self.num_classes + predictions
        self.matrix.view(-1).scatter_add_(0, cells, torch.ones_like(cells))

    def all_reduce(self):
        all_reduce_([self.matrix], average=False)

    def compute(self):
        """Accuracy and macro precision/recall/F1 in percent; rows are true classes, columns predictions."""
        m = self.matrix.double().cpu()
        true_positives = m.diag()
        support, predicted = m.sum(1), m.sum(0)
        precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), torch.zeros(()))
        recall = torch.where(support > 0, true_positives / support.clamp(min=1), torch.zeros(()))
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                         torch.zeros(()))
        total = m.sum().clamp(min=1)
        return {'accuracy': 100 * (true_positives.sum() / total).item(),
                'precision': 100 * precision.mean().item(),
                'recall': 100 * recall.mean().item(),
                'f1': 100 * f1.mean().item(),
                'per_class_accuracy': (100 * recall).tolist(),
                'confusion_matrix': self.matrix.cpu().tolist()}


class LossMeter:
    """Sum of per-sample losses on the device; also remembers whether any loss was not finite."""

    def __init__(self, device):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def update(self, loss, n):
        loss = loss.detach()
        self.total += loss.double() * n
        self.count += n
        self.nonfinite |= ~torch.isfinite(loss)

    def all_reduce(self):
        totals = torch.stack([self.total, self.count, self.nonfinite.double()])
        all_reduce_([totals], average=False)
        self.total, self.count, self.nonfinite = totals[0], totals[1], totals[2] > 0

    def average(self):
        return (self.total / self.count.clamp(min=1)).item()


def check_finite(meter, where):
    """Stop the run (the last checkpoint stays valid) if a loss was NaN or infinite."""
    if meter.nonfinite.item():
        raise UserError(f'the loss became non-finite during {where}; the last checkpoint is kept. '
                        f'Try a lower --learning_rate, a smaller --grad_clip, or run without --amp')


class Progress:
    """Progress line every `report_freq` steps: loss, accuracy, images/s and ETA (the only host syncs)."""

    def __init__(self, log, prefix, total_steps, batch_size, report_freq):
        self.log, self.prefix, self.total_steps = log, prefix, total_steps
        self.batch_size, self.report_freq = batch_size, report_freq
        self.start = time.perf_counter()

    def step(self, step, loss_meter, matrix):
        if step % self.report_freq and step != self.total_steps - 1:
            return
        elapsed = time.perf_counter() - self.start
        images_per_second = (step + 1) * self.batch_size / max(elapsed, 1e-9)
        eta = elapsed / (step + 1) * (self.total_steps - step - 1)
        m = matrix.matrix
        accuracy = 100 * (m.diag().sum() / m.sum().clamp(min=1)).item()
        self.log(f'{self.prefix} {step:03d}/{self.total_steps} loss {loss_meter.average():.4e} acc {accuracy:.2f} '
                 f'{images_per_second:.1f} img/s eta {eta:.0f}s')


# ----------------------------------------------------------------------------------------------------------
# Experiment folders, logs, checkpoints

def create_exp_dir(prefix, save, dataset):
    path = f'{prefix}-{save}-{dataset}-{time.strftime("%Y%m%d-%H%M%S")}'
    os.makedirs(path, exist_ok=True)
    return path


def get_logger(path, enabled=True):
    """Log lines to stdout and path/log.txt (appending on resume), released format; silent if not enabled."""
    logger = logging.getLogger(f'gla_fernet.{path}')
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.CRITICAL)
    if enabled:
        formatter = logging.Formatter('%(asctime)s %(message)s', datefmt='%m/%d %I:%M:%S %p')
        for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(os.path.join(path, 'log.txt'))):
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    return logger.info


def environment_lines(device):
    lines = [f'python {platform.python_version()}, torch {torch.__version__}, '
             f'torchvision {_version("torchvision")}, CUDA {torch.version.cuda}',
             f'device {device}' + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else
                                   f' ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)')]
    commit = git_commit()
    lines.append(f'git commit {commit}' if commit else 'git commit: not a git checkout')
    return lines


def _version(package):
    try:
        return __import__(package).__version__
    except ImportError:
        return 'not installed'


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode:
        return None
    return commit.stdout.strip() + (' (with uncommitted changes)' if dirty.stdout.strip() else '')


def write_json(path, data):
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def save_checkpoint(state, path):
    """torch.save to a temporary file, then rename: a run killed mid-write never corrupts the last checkpoint."""
    tmp = f'{path}.tmp'
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path):
    """Load a checkpoint file, or the checkpoint.pt inside a run folder."""
    if os.path.isdir(path):
        path = os.path.join(path, 'checkpoint.pt')
    if not os.path.isfile(path):
        raise UserError(f'cannot resume: {path} does not exist (give a checkpoint.pt or the run folder holding it)')
    try:
        return torch.load(path, map_location='cpu', weights_only=True), os.path.dirname(os.path.abspath(path))
    except Exception as e:
        raise UserError(f'cannot resume: {path} is not a readable checkpoint ({type(e).__name__}: {e})') from None


def unwrap(model):
    """The plain module under DistributedDataParallel and torch.compile wrappers, for saving."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)


# ----------------------------------------------------------------------------------------------------------
# Model statistics

def drop_path(x, drop_prob):
    """Zero whole samples of a branch with probability drop_prob and rescale the rest (DARTS drop-path)."""
    keep_prob = 1. - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)


def count_parameters(model, exclude=()):
    """Number of parameters, leaving out the given ones (e.g. architecture parameters)."""
    excluded = {id(p) for p in exclude}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


def count_flops(model, image_size, device='cpu'):
    """Floating-point operations of one 3 x image_size x image_size forward pass (a multiply-add counts 2),
    measured by PyTorch's own FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops()


def model_size_mb(model, exclude=()):
    """Size of the float32 parameters in MB (2^20 bytes)."""
    return count_parameters(model, exclude) * 4 / 2 ** 20


def evaluate(model, loader, num_classes, device, autocast_dtype=None):
    """Loss and confusion matrix over a loader (all processes together under torchrun), in eval mode."""
    model.eval()
    loss_meter, matrix = LossMeter(device), ConfusionMatrix(num_classes, device)
    with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        for x, y in loader:
            logits = model(x)
            if isinstance(logits, tuple):  # the discrete network returns (logits, logits_aux)
                logits = logits[0]
            loss_meter.update(torch.nn.functional.cross_entropy(logits.float(), y), len(y))
            matrix.update(logits, y)
    loss_meter.all_reduce()
    matrix.all_reduce()
    return loss_meter, matrix


def tensorboard_writer(path, enabled):
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(path)


def log_scalars(writer, step, **scalars):
    if writer is not None:
        for name, value in scalars.items():
            writer.add_scalar(name, value, step)
