"""The run folder, written and read in one place: the names of its files, the kind of run it holds, creating it, and
reading it back (train.py, predict.py and report.py); and atomic_write, the one way this repository writes a file.
Imports no torch (checkpoints are read with a local import), so the scripts can use it before torch is loaded.

A run folder is `<kind>-<save>-<dataset>-<time>` (a search: `search-...`, a training run: `eval-...`, the released
code's names). args.json records the kind; runs of versions before that are recognised by their files."""
import contextlib
import glob
import json
import os
import re
import shutil
import socket
import tempfile
import time

from errors import UserError

# The files of a run folder.
ARGS = 'args.json'  # the run's resolved arguments, and its kind
LOG = 'log.txt'
CHECKPOINT = 'checkpoint.pt'  # everything --resume needs; the last file an epoch writes
WEIGHTS = 'weights.pt'  # the network's state dict after the last epoch
BEST = 'best.pt'  # train.py: the state dict of the selected epoch (metrics.json's best_pt says how it was selected)
SWA = 'swa.pt'  # train.py --swa_start: the averaged weights
METRICS = 'metrics.json'  # train.py: the results so far
GENOTYPE = 'genotype.txt'  # train_search.py: the best genotype, one line
METHOD = 'method.json'  # train_search.py: the search method and supernet, beside genotype.txt
ARCHITECTURE_WEIGHTS = 'architecture_weights.json'  # train_search.py: op and edge weights after every epoch
COSTS = 'costs.json'  # train_search.py: expected and exact cost of every epoch's genotype, and missed budgets
CONFUSION_MATRIX = 'confusion_matrix.png'
TENSORBOARD = 'tensorboard'
FAILED = 'FAILED'  # the error of a run that stopped with one

KINDS = {'search': 'train_search.py', 'eval': 'train.py'}  # the run folder's prefix is its kind
# atomic_folder's temporary folders are named after their machine and process, so that a build that was killed can be
# told from one still running, and removed by the next build of the same folder.
BUILDER = re.sub(r'[^A-Za-z0-9-]', '-', socket.gethostname())
UMASK = os.umask(0o022)  # read once (setting is the only way to read it): written files get the usual permissions
os.umask(UMASK)


# ---------------------------------------------------------------- writing

def atomic_write(path, write, advice='then run the command again'):
    """write(tmp), then rename tmp to `path`: a kill or a full disk never leaves `path` half-written, and the previous
    `path` stays whole until the new one is complete. Every writer gets a temporary name of its own, so processes
    writing the same file at once never collide (the last rename wins).

    A failed write (disk full, permissions, a missing folder) removes the partial file and raises one UserError that
    says whether the previous `path` is intact, and `advice` (what to do once the cause is fixed)."""
    try:
        with atomic_file(path) as tmp:
            write(tmp)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        raise write_error(path, e, advice) from None


@contextlib.contextmanager
def atomic_file(path):
    """atomic_write for a file written over a block (a video, a frame at a time): yields the temporary name, renamed
    to `path` when the block completes; after an error (or Ctrl-C) the temporary file is removed and the error goes
    on as it is (write_error turns a failed write into the UserError atomic_write raises)."""
    check_output_folder(path)
    if os.path.isdir(path):
        raise UserError(f'cannot write {path}: it is a folder; give a file name')
    tmp = None
    try:
        handle, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp',
                                       dir=os.path.dirname(os.path.abspath(path)))
        os.close(handle)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp's 0600 would make every result private to its writer
        yield tmp
        os.replace(tmp, path)
    except BaseException:  # never leave the temporary file behind
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise


def write_error(path, error, advice='then run the command again'):
    """The UserError of a failed write of `path` (an OSError or RuntimeError: disk full, permissions, a missing
    folder), saying whether the previous `path` is intact and `advice`."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
    previous = (f'the previous {os.path.basename(path)} is intact' if os.path.exists(path)
                else f'there was no earlier {os.path.basename(path)}')
    return UserError(f'could not write {path} ({reason}); {previous}, and no partial file was left. Free some disk '
                     f'space (or fix the folder\'s permissions), {advice}')


@contextlib.contextmanager
def atomic_folder(out):
    """Build a folder under a temporary name beside `out`, renamed to `out` only when the block completes: an
    interrupted build never leaves a complete-looking folder. `out` must not exist or be empty. Yields the
    temporary path."""
    out = os.path.normpath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UserError(f'{out} already exists and is not empty; remove it or choose another output folder.')
    check_output_folder(out)
    remove_killed_builds(out)
    tmp = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.{BUILDER}-{os.getpid()}.', suffix='.tmp',
                           dir=os.path.dirname(os.path.abspath(out)))
    os.chmod(tmp, 0o777 & ~UMASK)
    try:
        yield tmp
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_killed_builds(out):
    """Remove the temporary folders of `out` that atomic_folder left on this machine in a process that is gone (killed:
    SIGKILL, a power cut); those of a build still running stay."""
    if os.name != 'posix':  # os.kill(pid, 0) tests a process only on POSIX
        return
    parent = os.path.dirname(os.path.abspath(out))
    own = re.compile(rf'\.{re.escape(os.path.basename(out))}\.{re.escape(BUILDER)}-(\d+)\.[^.]+\.tmp')
    for name in os.listdir(parent):
        found = own.fullmatch(name)
        if found and os.path.isdir(os.path.join(parent, name)) and not process_running(int(found.group(1))):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def process_running(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_output_folder(path):
    """Refuse, before any work is done, an output path whose folder does not exist or is a file."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        what = 'is a file, not a folder' if os.path.exists(folder) else 'does not exist'
        raise UserError(f'cannot write {path}: the folder {folder} {what}; create it or give another path')


def check_output_directory(folder):
    """Refuse, before any work is done, an output folder that cannot be written: a file in its place, a missing
    parent, or no right to create it or write into it (tried with a folder or file made and removed at once)."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f'{folder} is a file, not a folder; give a folder (it is created if missing)')
    check_output_folder(folder)
    try:
        if os.path.isdir(folder):
            tempfile.TemporaryFile(dir=folder).close()
        else:
            os.mkdir(folder)
            os.rmdir(folder)
    except OSError as e:
        what = 'write into' if os.path.isdir(folder) else 'create'
        raise UserError(f'cannot {what} {folder} ({e.strerror}); fix the permissions of '
                        f'{folder if what == "write into" else os.path.dirname(os.path.abspath(folder))} or give '
                        f'another folder') from None


def write_json(path, data, advice='then run the command again'):
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(data, f, indent=2)
    atomic_write(path, write, advice)


def write_text(path, text, advice='then run the command again'):
    def write(tmp):
        with open(tmp, 'w', encoding='utf-8', newline='') as f:
            f.write(text)
    atomic_write(path, write, advice)


def create(kind, save, dataset):
    """A new run folder `kind-save-dataset-time`; runs started in the same second get -2, -3, ... (mkdir is atomic,
    so two runs never share a folder)."""
    base = f'{kind}-{save}-{dataset}-{time.strftime("%Y%m%d-%H%M%S")}'
    for n in range(1, 10_000):
        path = base if n == 1 else f'{base}-{n}'
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise UserError(f'could not create a new run folder next to {base}; remove old run folders')


# ---------------------------------------------------------------- reading

def read_json(path, what='file'):
    """The content of a JSON file that must exist; a missing, truncated or foreign file is one UserError naming it."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f'{path} does not exist') from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f'{path} is not a readable {what} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); '
                        f'it may be truncated or damaged') from None


def read_optional_json(path, expect=dict):
    """(content, problem): (None, None) where the file does not exist; (None, 'why') where it cannot be used (truncated,
    not JSON, not of the type `expect`); never raises, for readers that report a damaged run and go on."""
    if not os.path.exists(path):
        return None, None
    try:
        content = read_json(path)
    except UserError as e:
        return None, str(e)
    if not isinstance(content, expect):
        return None, f'{path} holds a JSON {type(content).__name__}, not the {expect.__name__} this version writes'
    return content, None


def run_kind(folder, args=None):
    """'search', 'eval' or None (not a run folder): args.json's kind; for runs of versions that did not record it,
    what their files and name show (a search has search flags, a genotype.txt, or a `search-` name)."""
    if args is None:
        args, _ = read_optional_json(os.path.join(folder, ARGS))
    if args and args.get('kind') in KINDS:
        return args['kind']
    name = os.path.basename(os.path.normpath(folder))
    if (args and 'warmup_epochs' in args) or os.path.isfile(os.path.join(folder, GENOTYPE)) or name.startswith('search-'):
        return 'search'
    if args or any(os.path.exists(os.path.join(folder, f)) for f in (METRICS, LOG, CHECKPOINT)) or name.startswith('eval-'):
        return 'eval'
    return None


def failure(folder):
    """The error a failed run stopped with (its FAILED file), or None for a run that did not fail."""
    path = os.path.join(folder, FAILED)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8', errors='replace') as f:
            return f.read().strip()[:300] or 'no message'
    except OSError as e:
        return f'its FAILED file is unreadable ({e.strerror})'


def is_run_folder(folder):
    return os.path.isdir(folder) and run_kind(folder) is not None


def find_genotype_file(given):
    """genotype.txt itself, the search folder holding it, or of the searches matching a pattern such as
    'search-EXP-*' the one with the newest genotype.txt. A search writes genotype.txt when its first architecture
    epoch ends, so folders of searches that failed or are still in warm-up never match."""
    if os.path.isfile(given):
        return given
    if os.path.isdir(given):
        path = os.path.join(given, GENOTYPE)
        if os.path.isfile(path):
            return path
        raise UserError(f'{given} holds no {GENOTYPE}: a search writes it when its first architecture epoch '
                        f'(after --warmup_epochs) ends, so this search stopped or is still warming up; let it '
                        f'continue (train_search.py --resume {given}) or give another search')
    matches = glob.glob(given)
    searched = [os.path.join(m, GENOTYPE) for m in matches if os.path.isfile(os.path.join(m, GENOTYPE))]
    if searched:
        return max(searched, key=os.path.getmtime)
    if matches:
        raise UserError(f'{len(matches)} folder(s) match {given!r}, but none holds a {GENOTYPE}: no search '
                        f'among them ended an architecture epoch (they failed, or are still warming up)')
    raise UserError(f'genotype file {given} does not exist (give {GENOTYPE}, the search folder holding it, '
                    f"or a pattern such as 'search-EXP-*')")


def search_method(genotype_path, methods):
    """The method of the search that wrote genotype_path, from the method file next to it; 'gla_fernet' where there
    is none (searches from before the DARTS-family methods were all GLA-FERNet's). `methods`: the known names."""
    path = os.path.join(os.path.dirname(genotype_path), METHOD)
    if not os.path.exists(path):
        return 'gla_fernet'
    content = read_json(path, 'method file')
    method = content.get('method') if isinstance(content, dict) else None
    if method not in methods:
        raise UserError(f"{path}: unknown search method {method!r}; known: {', '.join(methods)} (the file holds "
                        f"{{\"method\": NAME}}, as train_search.py writes it)")
    return method


def search_target(genotype_path):
    """The discrete network a search's costs and budgets were computed for, as train.py flags ({} for a search from
    before budgets, whose method file has no 'target')."""
    path = os.path.join(os.path.dirname(genotype_path), METHOD)
    content = read_json(path, 'method file') if os.path.exists(path) else {}
    target = content.get('target') if isinstance(content, dict) else None
    if not isinstance(target, dict):
        return {}
    flags = {'channels': 'init_channels', 'layers': 'layers', 'image_size': 'image_size', 'stem_stride': 'stem_stride',
             'stem_multiplier': 'stem_multiplier'}
    return {flag: target[key] for key, flag in flags.items() if isinstance(target.get(key), int)}


def load_checkpoint(path, kind):
    """The checkpoint file at `path` (or inside the run folder `path`) of a `kind` run, and its folder."""
    if os.path.isdir(path):
        path = os.path.join(path, CHECKPOINT)
    if not os.path.isfile(path):
        raise UserError(f'cannot resume: {path} does not exist (give a run folder holding {CHECKPOINT}, or the file); '
                        f'a run that stopped before its first epoch ended has none: start it again')
    checkpoint = load_file(path, 'cannot resume: ')
    if not isinstance(checkpoint, dict) or 'args' not in checkpoint or 'epoch' not in checkpoint:
        raise UserError(f'cannot resume: {path} is not a checkpoint of this repository (a weights file?); '
                        f'give the run folder of train.py or train_search.py')
    found = checkpoint.get('kind', 'search' if 'arch_optimizer' in checkpoint else 'eval')
    if found != kind:
        raise UserError(f'cannot resume: {path} belongs to a {KINDS[found]} run; resume it with '
                        f'python {KINDS[found]} --resume {os.path.dirname(os.path.abspath(path))}')
    return checkpoint, os.path.dirname(os.path.abspath(path))


def load_file(path, context='', stand_in=None):
    """A .pt file's content, loaded with weights_only=True (a tampered file is refused, never executed).

    stand_in(name) -> a class or None: for a file that pickles a network whole (torch.save(model)), the class that is
    built in place of the class `name` ('module.Class') it names, one that runs none of the file's code and only
    holds the weights; a name it gives None is refused as any other object."""
    import re

    import torch  # only here: the scripts import this module before torch
    stand_ins = {}
    while True:
        try:
            with torch.serialization.safe_globals([(cls, name) for name, cls in stand_ins.items()]):
                return torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # noqa: BLE001 -- whatever is in the file, it is nothing we can use
            found = re.search(r'GLOBAL (\S+) (?:was not an allowed global|whose module)', str(e))
            cls = stand_in(found.group(1)) if found and stand_in and found.group(1) not in stand_ins else None
            if cls is None:
                refuse_file(path, context, e, found)
            stand_ins[found.group(1)] = cls  # then again, until every class of the file has its stand-in


def refuse_file(path, context, e, found):
    """Raise the UserError of a file that torch.load(weights_only=True) refused with `e` (`found`: the match of the
    class or function it pickles, if that is why)."""
    reason = str(e)
    if reason.startswith('Weights only load failed'):
        # torch's message advises weights_only=False, which would run whatever code the file carries: never passed on.
        # Its own reason is the error it was raised from.
        if found:  # the file pickles a class or function
            raise UserError(f'{context}{path} holds objects other than tensors and plain containers '
                            f'({found.group(1)}), which cannot be loaded safely (unpickling them could run code); '
                            'load it in code you trust, save the weights alone with '
                            'torch.save(model.state_dict(), path) and give that file') from None
        reason = str(e.__context__ or 'not a file of torch.save')
    raise UserError(f'{context}{path} is not a readable checkpoint or weights file ({type(e).__name__}: '
                    f'{(reason.splitlines() or [""])[0][:200]})') from None
