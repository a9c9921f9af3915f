"""What train_search.py and train.py share: the runtime (device, processes, seeds, precision), the run folder (log,
arguments, checkpoints, resume), one epoch with its progress and metrics, and model statistics."""
import contextlib
import importlib.metadata
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
import torch.nn.functional as F

import cli
import run_folder
from errors import UserError

RESUME_ADVICE = 'then continue with --resume'  # what to do once a failed write of a run's file is fixed


# ==========================================================================================================
# Runtime: device, distributed processes, seeds, precision, compilation

def init_distributed(device_name, gpu=None):
    """Pick the device; under torchrun (RANK set) join the process group. Returns (device, rank, world_size)."""
    if device_name == 'cuda' and not torch.cuda.is_available():
        raise UserError('--device cuda was asked for, but PyTorch sees no CUDA device; use --device cpu')
    use_cuda = device_name == 'cuda' or (device_name == 'auto' and torch.cuda.is_available())
    if 'RANK' not in os.environ:
        if use_cuda and gpu is not None:
            if gpu >= torch.cuda.device_count():
                raise UserError(f'--gpu {gpu}: PyTorch sees {torch.cuda.device_count()} CUDA device(s), 0..'
                                f'{torch.cuda.device_count() - 1}')
            torch.cuda.set_device(gpu)
        return torch.device('cuda', torch.cuda.current_device()) if use_cuda else torch.device('cpu'), 0, 1
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device('cuda', local_rank)
    else:
        device = torch.device('cpu')
    dist.init_process_group(backend='nccl' if use_cuda else 'gloo', device_id=device if use_cuda else None)
    return device, dist.get_rank(), dist.get_world_size()


def process_rank():
    """This process's rank under torchrun (its process group joined), 0 in a single process."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


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


def set_threads(threads, device, log, world_size=1):
    """Use `threads` CPU threads (None: torch's default), and say once when the processes use more threads than the
    machine has free cores: oversubscribed cores made a 2-core machine's search epoch 20 times slower."""
    if threads:
        torch.set_num_threads(threads)
    used = torch.get_num_threads() * world_size
    if device.type != 'cpu' or used == 1:  # one thread never oversubscribes: no need to measure (it takes 0.25 s)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    busy = busy_cores()
    if busy is None:
        return
    free = max(1, cores - round(busy))
    if used > free:
        log(f'warning: {used} CPU threads for {cores} cores, of which about {free} {"is" if free == 1 else "are"} '
            f'free ({busy:.1f} busy with other programs): each step can be many times slower than on a quiet machine; '
            f'give --threads {max(1, free // world_size)} (or set OMP_NUM_THREADS), or wait for the machine to be quiet')


def busy_cores(seconds=0.25):
    """How many cores other programs keep busy now, from two readings of /proc/stat (Linux); None elsewhere. The load
    average would still count a run that just ended for a minute."""
    def read():
        with open('/proc/stat') as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # all jiffies, idle + iowait
    try:
        total_before, idle_before = read()
        time.sleep(seconds)
        total, idle = read()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total - total_before
    return 0.0 if elapsed <= 0 else (os.cpu_count() or 1) * (1 - (idle - idle_before) / elapsed)


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


def amp_settings(device, enabled):
    """(autocast dtype or None, whether a gradient scaler is needed) for --amp: bf16 where the device supports it,
    else fp16 with loss scaling."""
    if not enabled:
        return None, False
    if device.type == 'cpu' or torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def autocast(device, dtype):
    """Mixed precision in `dtype` on `device`; full precision when dtype is None."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def unwrap(model):
    """The plain module under DistributedDataParallel and torch.compile wrappers, for saving."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)


# ==========================================================================================================
# The run folder: log, arguments, checkpoints, resume

class Log:
    """Log lines to stdout and to the run folder's log.txt, in the released format; only process 0 logs.

    Lines logged before the folder exists (data loading, model size) are written into log.txt when it is attached,
    so a run that stops on bad input before its folder exists leaves no folder behind."""

    TIME_FORMAT = '%m/%d %I:%M:%S %p'

    def __init__(self, enabled=True):
        self.enabled, self.folder, self.file, self.pending = enabled, None, None, []

    def __call__(self, message, to_file=True):
        """Log a line; to_file=False keeps it on the console (frequent progress lines)."""
        if not self.enabled:
            return
        line = f'{time.strftime(self.TIME_FORMAT)} {message}'
        print(line, flush=True)
        if to_file:
            self._write(line)

    def _write(self, line):
        if self.file is None:
            self.pending.append(line)
        else:
            self.file.write(line + '\n')
            self.file.flush()

    def attach(self, folder):
        """Start writing into folder/log.txt (appending on resume), with the lines logged so far."""
        self.folder = folder
        self.file = open(os.path.join(folder, run_folder.LOG), 'a')
        for line in self.pending:
            self._write(line)
        self.pending = []

    def error(self, message):
        """The line a run stops with: on stderr (from every process, which may fail alone) and, once the folder
        exists, last in log.txt."""
        rank = int(os.environ.get('RANK', 0))
        print(f'error{f" (process {rank})" if rank else ""}: {message}', file=sys.stderr, flush=True)
        if self.enabled and self.file is not None:
            with contextlib.suppress(OSError):  # the error may be a full disk
                self._write(f'{time.strftime(self.TIME_FORMAT)} error: {message}')


def run_main(main, args):
    """Run a script's main(args, log), turning an error into one line and an exit status.

    A UserError (and running out of memory) prints one line and exits with status 2; a run that had a folder
    records the error in its log.txt and a FAILED file, so that it is never mistaken for a finished run.
    Ctrl-C says whether --resume can continue the run. After a successful run under torchrun, the process group is
    freed before Python shuts down: its destructor joins Gloo's worker threads, and a worker still releasing an
    all-reduced tensor during interpreter shutdown would abort the process (SIGABRT), failing the whole run. Only
    on success: after an error the other processes may still be inside a collective."""
    log = Log(enabled=int(os.environ.get('RANK', 0)) == 0)
    try:
        main(args, log)
    except KeyboardInterrupt:
        has_checkpoint = log.folder and os.path.isfile(os.path.join(log.folder, run_folder.CHECKPOINT))
        log.error('interrupted; ' + (f'continue with --resume {log.folder}' if has_checkpoint else
                                     'no checkpoint had been written yet'))
        sys.exit(130)
    except (UserError, torch.OutOfMemoryError) as e:
        message = str(e) if isinstance(e, UserError) else (
            f'out of memory on the device ({str(e).splitlines()[0]}); lower --batch_size or use --amp')
        log.error(message)
        _mark_failed(log, message)
        sys.exit(2)
    except BaseException as e:  # a bug: keep the traceback, but never leave the folder looking unfinished
        if not isinstance(e, SystemExit):
            _mark_failed(log, f'{type(e).__name__}: {e}')
        raise
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _mark_failed(log, message):
    if log.enabled and log.folder is not None:
        with contextlib.suppress(OSError):
            run_folder.write_text(os.path.join(log.folder, run_folder.FAILED), message + '\n')


def environment_lines(device):
    lines = [f'python {platform.python_version()}, torch {torch.__version__}, '
             f'torchvision {_version("torchvision")}, CUDA {torch.version.cuda}',
             f'device {device}' + (f' ({torch.cuda.get_device_name(device)})' if device.type == 'cuda' else
                                   f' ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)')]
    commit = git_commit()
    lines.append(f'git commit {commit}' if commit else 'git commit: not a git checkout')
    return lines


def _version(package):
    """An installed package's version, read from its metadata (importing torchvision would take a second)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
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


def nonfinite_entries(state_dict):
    """Names of the floating-point tensors of a state dict that hold NaN or infinity (one host sync)."""
    floats = [(name, t) for name, t in state_dict.items() if t.is_floating_point()]
    if not floats:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).tolist()
    return [name for (name, _), ok in zip(floats, finite) if not ok]


class Run:
    """A run of one script, `kind` 'search' or 'eval': its arguments, folder, checkpoints and resume.

    Only process 0 writes. Each epoch ends with run.save (after the script wrote its results), so checkpoint.pt is
    the last file written: whatever a run holds up to its checkpoint's epoch is complete."""

    def __init__(self, kind, parser, args, log):
        """Take the run's arguments (with --resume: the checkpoint's, see cli.resumed_args), join the processes
        under torchrun, pick the device; then, unless the resumed run is complete, log the environment and seed."""
        self.kind, self.log = kind, log
        self.folder = self.checkpoint = None
        self.saved_epoch, self.checked_epoch = 0, None
        self.label_file_sha256 = None
        if args.resume:
            self.checkpoint, self.folder = run_folder.load_checkpoint(args.resume, kind)
            args = cli.resumed_args(parser, self.checkpoint['args'])
            self.saved_epoch = self.checkpoint['epoch']
        self.args = args
        self.device, self.rank, self.world_size = init_distributed(args.device, args.gpu)
        if self.complete:
            log(f'{self.folder} is complete: its {args.epochs} epochs were run; nothing to do', to_file=False)
            return
        set_threads(getattr(args, 'threads', None), self.device, log, self.world_size)
        for line in environment_lines(self.device):
            log(line)
        set_seed(args.seed, args.deterministic)

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def complete(self):
        """Resuming a run that already did all its epochs (then nothing is to be done)."""
        return self.checkpoint is not None and self.checkpoint['epoch'] >= self.args.epochs

    def path(self, name):
        return os.path.join(self.folder, name)

    def start(self):
        """Create the run folder (or reopen the resumed one), attach log.txt, record the arguments."""
        if self.is_main:
            if self.folder is None:
                self.folder = run_folder.create(self.kind, self.args.save, self.args.dataset)
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path(run_folder.FAILED))  # a resumed run is no longer failed
            self.log.attach(self.folder)
            self.write_json(run_folder.ARGS, {'kind': self.kind, **vars(self.args)})
        self.log(f'args = {vars(self.args)}' + (f' (resumed from {self.args.resume})' if self.args.resume else ''))

    def restore(self, stateful, best):
        """Load model, optimizers, schedulers... (name -> object with load_state_dict) and the random generators
        from the checkpoint when resuming. Returns (first epoch to run, best-epoch record)."""
        if self.checkpoint is None:
            return 0, best
        for name, obj in stateful.items():
            obj.load_state_dict(self.checkpoint[name])
        set_rng_states(self.checkpoint['rng'])
        self.log(f'resumed at epoch {self.checkpoint["epoch"]}')
        return self.checkpoint['epoch'], self.checkpoint['best']

    def check_label_file(self, train_set):
        """Record the digest of the training set's noisy-label file for the checkpoints; a resumed run whose file
        changed since (regenerated with another seed, edited) would continue on other labels: refuse it."""
        self.label_file_sha256 = train_set.label_file_sha256
        saved = (self.checkpoint or {}).get('label_file_sha256')
        if saved is not None and saved != self.label_file_sha256:
            args = self.args
            name = args.noise_file or f'the --noise {args.noise} file'
            raise UserError(f'{name} under {args.data} is not the file this run started with (its sha256 was '
                            f'{saved[:16]}..., now {str(self.label_file_sha256)[:16]}...): resumed, it would go on with '
                            f'other training labels. Put the original file back (or give --noise_file PATH to it), '
                            f'or start a new run')

    def _checkpoint_note(self):
        if self.saved_epoch == 0:
            return 'no checkpoint had been written yet'
        return f'the checkpoint after epoch {self.saved_epoch - 1} in {self.folder or "the run folder"} is intact'

    def check_loss(self, meter, where):
        """Stop the run if a loss was NaN or infinite."""
        if meter.nonfinite.item():
            raise UserError(f'the loss became non-finite during {where}; nothing of it was saved and '
                            f'{self._checkpoint_note()}. Start a new run with a lower --learning_rate, a smaller '
                            f'--grad_clip or without --amp')

    def check_weights(self, model, epoch):
        """Stop the run, saving nothing, if a parameter or buffer (BatchNorm statistics) of the model is not finite.
        Required before each save."""
        bad = nonfinite_entries(model.state_dict())
        if bad:
            raise UserError(f'after epoch {epoch} the network holds non-finite values ({", ".join(bad[:3])}'
                            f'{f" and {len(bad) - 3} more" if len(bad) > 3 else ""}); nothing of this epoch was saved '
                            f'and {self._checkpoint_note()}. Start a new run with a lower --learning_rate, a smaller '
                            f'--grad_clip or without --amp')
        self.checked_epoch = epoch

    def save(self, epoch, best, stateful, **extra):
        """After epoch `epoch`: weights.pt (the model's state dict) and checkpoint.pt (everything resume needs)."""
        assert self.checked_epoch == epoch, 'check_weights(model, epoch) must come before save'
        if self.is_main:
            states = {name: obj.state_dict() for name, obj in stateful.items()}
            self.save_weights(run_folder.WEIGHTS, states['model'])
            self.save_weights(run_folder.CHECKPOINT, {'kind': self.kind, 'epoch': epoch + 1, 'best': best, **states,
                                                      'rng': rng_states(), 'args': vars(self.args),
                                                      'label_file_sha256': self.label_file_sha256, **extra})
        self.saved_epoch = epoch + 1

    def save_weights(self, name, state):
        """torch.save into the run folder, atomically."""
        run_folder.atomic_write(self.path(name), lambda tmp: torch.save(state, tmp), RESUME_ADVICE)

    def write_json(self, name, data):
        run_folder.write_json(self.path(name), data, RESUME_ADVICE)

    def write_text(self, name, text):
        run_folder.write_text(self.path(name), text, RESUME_ADVICE)

    def write_epoch_record(self, name, epoch, record):
        """Add {'epoch': epoch, **record} to the JSON list in the run folder's file `name`, replacing the records of
        this and later epochs (a resumed run repeats the epochs after its checkpoint): one file holds a history."""
        records, _ = run_folder.read_optional_json(self.path(name), expect=list)
        self.write_json(name, [r for r in records or [] if r['epoch'] < epoch] + [{'epoch': epoch, **record}])


def tensorboard_writer(run):
    """A TensorBoard writer into the run folder (process 0 only; None elsewhere)."""
    if not run.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter  # slow to import, and only process 0 needs it
    return SummaryWriter(run.path(run_folder.TENSORBOARD))


def log_scalars(writer, step, **scalars):
    if writer is not None:
        for name, value in scalars.items():
            writer.add_scalar(name, value, step)


# ==========================================================================================================
# One epoch: weight updates, progress and metrics (kept on the device, read once at a report line)

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

    def accuracy(self):
        """Accuracy in percent (one host sync)."""
        return 100 * (self.matrix.diag().sum() / self.matrix.sum().clamp(min=1)).item()

    def compute(self):
        """Accuracy, balanced accuracy (mean recall over the classes present) and macro precision/recall/F1, in
        percent; rows are true classes, columns predictions. A class never predicted has precision 0."""
        m = self.matrix.double().cpu()
        true_positives = m.diag()
        support, predicted = m.sum(1), m.sum(0)
        precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), torch.zeros(()))
        recall = torch.where(support > 0, true_positives / support.clamp(min=1), torch.zeros(()))
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                         torch.zeros(()))
        total = m.sum().clamp(min=1)
        return {'accuracy': 100 * (true_positives.sum() / total).item(),
                'balanced_accuracy': 100 * recall[support > 0].mean().nan_to_num().item(),
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


def duration(seconds):
    seconds = int(seconds)
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class Progress:
    """Progress lines of a pass over a loader: every `report_freq` steps in the log, and on the console at least every
    REPORT_SECONDS, with images/s and the time left in the pass and, for an epoch of training, in the run. Reading the
    loss and accuracy syncs with the device, so lines are only made here. report_freq None: console lines only (an
    evaluation)."""

    REPORT_SECONDS = 30

    def __init__(self, log, prefix, loader, report_freq=None, epoch=0, epochs=None, clock=time.perf_counter):
        self.log, self.prefix, self.report_freq, self.clock = log, prefix, report_freq, clock
        self.steps, self.images_per_step = len(loader), loader.batch_size * loader.world_size
        self.steps_left_after_epoch = None if epochs is None else (epochs - epoch - 1) * self.steps
        self.start = self.last = clock()

    def __call__(self, step, loss_meter=None, matrix=None):
        now = self.clock()
        by_step = self.report_freq is not None and (step % self.report_freq == 0 or step == self.steps - 1)
        if not by_step and now - self.last < self.REPORT_SECONDS:
            return
        self.last = now
        seconds_per_step = (now - self.start) / (step + 1)
        left = seconds_per_step * (self.steps - step - 1)
        run_left = ('' if self.steps_left_after_epoch is None else
                    f', run left ~{duration(left + seconds_per_step * self.steps_left_after_epoch)}')
        figures = '' if loss_meter is None else f' loss {loss_meter.average():.4e} acc {matrix.accuracy():.2f}'
        self.log(f'{self.prefix} {step:03d}/{self.steps}{figures} '
                 f'{self.images_per_step / max(seconds_per_step, 1e-9):.1f} img/s, '
                 f'{"epoch" if self.report_freq is not None else "pass"} left {duration(left)}{run_left}',
                 to_file=by_step)


class CountProgress:
    """A console line at least every Progress.REPORT_SECONDS while `total` items are worked through, one call per
    item or per batch of them: '{verb} 1,200 of 35,000 images, 40.0 images/s, 0:14:20 left'."""

    def __init__(self, total, verb, log, unit='images'):
        self.total, self.verb, self.log, self.unit = total, verb, log, unit
        self.done = 0
        self.start = self.last = time.perf_counter()

    def __call__(self, count=1):
        self.done += count
        now = time.perf_counter()
        if now - self.last < Progress.REPORT_SECONDS or self.done >= self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        self.log(f'{self.verb} {self.done:,} of {self.total:,} {self.unit}, {rate:.1f} {self.unit}/s, '
                 f'{duration((self.total - self.done) / rate) if rate else "?"} left', to_file=False)


def run_epoch(step, loader, num_classes, progress):
    """Call step(x, y) -> (detached logits, detached loss) on every batch; returns the loss meter and the confusion
    matrix, summed over all processes."""
    loss_meter, matrix = LossMeter(loader.device), ConfusionMatrix(num_classes, loader.device)
    for i, (x, y) in enumerate(loader):
        logits, loss = step(x, y)
        loss_meter.update(loss, len(y))
        matrix.update(logits, y)
        progress(i, loss_meter, matrix)
    loss_meter.all_reduce()
    matrix.all_reduce()
    return loss_meter, matrix


def main_logits(output):
    """The class logits of a network's output: the discrete DARTS-family network returns (logits, logits_aux)."""
    return output[0] if isinstance(output, tuple) else output


def evaluate(model, loader, num_classes, amp_dtype=None, progress=None):
    """Loss and confusion matrix over a loader (all processes together under torchrun), in eval mode."""
    model.eval()
    loss_meter, matrix = LossMeter(loader.device), ConfusionMatrix(num_classes, loader.device)
    with torch.no_grad(), autocast(loader.device, amp_dtype):
        for i, (x, y) in enumerate(loader):
            logits = main_logits(model(x))
            loss_meter.update(F.cross_entropy(logits.float(), y), len(y))
            matrix.update(logits, y)
            if progress is not None:
                progress(i, loss_meter, matrix)
    loss_meter.all_reduce()
    matrix.all_reduce()
    return loss_meter, matrix


def evaluation_metrics(model, loader, num_classes, amp_dtype, run, what):
    """The metrics of `what` ('testing after epoch 3'), with its loss: a pass in eval mode that says how far it is
    every Progress.REPORT_SECONDS; a non-finite loss stops the run."""
    loss, matrix = evaluate(model, loader, num_classes, amp_dtype, Progress(run.log, what, loader))
    run.check_loss(loss, what)
    return {**matrix.compute(), 'loss': loss.average()}


def with_progress(loader, progress):
    """The batches of `loader`, reporting progress (no loss or accuracy: a pass that computes neither)."""
    for i, batch in enumerate(loader):
        yield batch
        progress(i)


# ==========================================================================================================
# Model statistics

def count_parameters(model, exclude=()):
    """Number of parameters, leaving out the given ones (e.g. architecture parameters or an auxiliary head)."""
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


def count_weights(model, exclude=()):
    """Number of convolution and linear weights, without biases and normalisation parameters (RLR-CNet's Eq. 10-11
    counting, under which ShuffleNetV2-1.0x has the "1.24 M" of its Table 3), leaving out the given parameters."""
    excluded = {id(p) for p in exclude}
    return sum(m.weight.numel() for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and id(m.weight) not in excluded)


def megabytes(num_parameters):
    """Size of float32 parameters in MB (2^20 bytes)."""
    return num_parameters * 4 / 2 ** 20

