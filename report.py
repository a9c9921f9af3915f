"""Put many runs side by side: the comparison table and the mean +- std table of a paper, accuracy against parameters,
MACs and latency with the Pareto front, the budgets each network meets, training curves, confusion matrices, and for
searches the architecture weights over epochs (paper Sec. 4)."""
import argparse

import cli

SELECTIONS = {  # metrics.json key: how the epoch of the numbers was chosen
    'last': 'last epoch',
    'val_selected': 'best validation',
    'test_selected': 'test-selected',
    'last5_mean': 'mean of the last 5 epochs',  # as the noisy-label FER papers report (EAC); of those run, if fewer
}

parser = argparse.ArgumentParser('report', description=__doc__)
parser.add_argument('runs', nargs='+',
                    help="run folders, folders holding run folders, or quoted patterns such as 'eval-*' 'search-*'")
parser.add_argument('--out', default='report', help='folder for report.md, runs.csv, groups.csv and figures/')
parser.add_argument('--selection', choices=list(SELECTIONS), default='last',
                    help='the accuracy of the accuracy-versus-cost figures and Pareto fronts: last epoch, best '
                         'validation epoch, best test epoch (selected on the test set: optimistic), or the mean of the '
                         'last 5 epochs')
parser.add_argument('--figures', action=argparse.BooleanOptionalAction, default=True,
                    help='draw the figures (--no-figures: the tables only, at once)')
parser.add_argument('--latency', action=argparse.BooleanOptionalAction, default=True,
                    help="measure each network's CPU batch-1 latency, rebuilt from its run (--no-latency: skip)")
parser.add_argument('--latency_repeats', type=cli.positive_int, default=5,
                    help='repeats of the latency measurement; the median is reported')
budget_flags = parser.add_argument_group(
    'budgets', 'a column per budget given, in both tables, saying whether each network meets it (a network from a '
               'budgeted search also gets that search\'s budgets, whatever is given here)')
budget_flags.add_argument('--budget_params', type=cli.quantity, default=None,
                          help='parameters without the auxiliary head, e.g. 300k, 1.5M, 2e6')
budget_flags.add_argument('--budget_macs', type=cli.quantity, default=None,
                          help='multiply-adds per image, e.g. 150M, 2e8')
budget_flags.add_argument('--budget_latency_ms', type=cli.positive_float, default=None,
                          help="milliseconds of the CPU batch-1 latency this report measures, e.g. 4.5 (not with "
                               "--no-latency)")


def flag_problem(args):
    """Why flags that parse one by one cannot go together, or None."""
    if args.budget_latency_ms is not None and not args.latency:
        return ('--budget_latency_ms compares the latency this report measures, and --no-latency measures none: '
                'drop one of them')
    return None


if __name__ == '__main__':
    # Parsed before torch is imported (seconds on a busy machine): --help and a bad flag answer at once.
    ARGS = parser.parse_args()
    if flag_problem(ARGS):
        parser.error(flag_problem(ARGS))

import collections  # noqa: E402
import csv  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import genotypes  # noqa: E402
import pareto  # noqa: E402
import recipes  # noqa: E402
import run_folder  # noqa: E402
import train  # noqa: E402
import utils  # noqa: E402
import visualize  # noqa: E402
from baselines import uses_genotype  # noqa: E402
from benchmark import time_calls  # noqa: E402
from errors import UserError  # noqa: E402
from selection import LAST_EPOCHS  # noqa: E402
from trained import build_network  # noqa: E402

DASH = pareto.DASH  # '-': a number a run does not hold (failed before it, or written by an older version)
LATENCY_STEPS = 10  # forward passes per repeat
METRICS = (('accuracy', 'acc.'), ('balanced_accuracy', 'bal. acc.'), ('f1', 'macro-F1'))
PROGRESS_SECONDS = 10  # the longest a report goes without a line while it reads, measures or draws
# Flags that say where and how a run went, or name its network or noise file another way than the model label and
# noise column do: runs differing only in these (and the seed) are repeats of one experiment. Every other flag of
# train.py changes what a run computes, so runs must agree on it to share a mean.
NOT_COMPARED = cli.RUN_FLAGS + ('seed', 'save', 'kind', 'arch', 'genotype', 'genotype_file', 'noise_file',
                                'channels_last', 'compile', 'deterministic', 'threads')
NUMBER = (int, float)
# The types of the values report.py uses, as this version writes them; a value of another type means the file is
# damaged or not ours. A key an older version did not write is only missing (a dash).
ARGS_TYPES = {'kind': str, 'model': str, 'dataset': str, 'noise': int, 'noise_file': str, 'seed': int, 'epochs': int,
              'warmup_epochs': int, 'genotype_file': str, 'affectnet_classes': int}
METRICS_TYPES = {'complete': bool, 'epochs_done': int, 'epochs': int, 'model': str, 'recipe': dict, 'genotype': str,
                 'class_names': list, 'params': NUMBER, 'params_without_auxiliary': NUMBER, 'macs': NUMBER,
                 'flops': NUMBER, 'model_size_mb': NUMBER, **{selection: dict for selection in SELECTIONS}}
SELECTION_TYPES = {'accuracy': NUMBER, 'balanced_accuracy': NUMBER, 'f1': NUMBER, 'epoch': int,
                   'epochs': int, 'confusion_matrix': list}  # epochs: how many last5_mean averaged
RECORD_TYPES = {'epoch': int, 'primitives': list, 'normal': dict, 'reduce': dict}  # architecture_weights.json


def main(args, log):
    if flag_problem(args):
        raise UserError(flag_problem(args))
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f'--out {args.out} is a file; give a folder for report.md, the tables and the figures')
    folders, notes = find_runs(args.runs)
    runs = []
    progress = Progress(log, 'reading', len(folders))
    for folder in folders:
        runs.append(read_run(folder))
        progress.step(runs[-1]['name'])
    label_uniquely(runs)
    os.makedirs(os.path.join(args.out, 'figures'), exist_ok=True)
    evals = [r for r in runs if r['kind'] == 'eval']
    searches = [r for r in runs if r['kind'] == 'search']
    progress = Progress(log, 'measuring the latency of' if args.latency else 'tabulating', len(evals))
    for run in evals:
        run['row'] = table_row(run, args.latency, args.latency_repeats, log)
        progress.step(run['label'])
    selections = [s for s in SELECTIONS if any(s in r['metrics'] for r in evals)]
    groups = group_rows([r for r in evals if r['status'] == 'complete'], selections)
    budgets = pareto.given_budgets(args)
    pareto.mark_budgets([r['row'] for r in evals] + groups, budgets)
    fronts = pareto.mark_pareto(groups, args.selection)
    write_csv(os.path.join(args.out, 'runs.csv'), [r['row'] for r in evals], run_columns(selections, budgets))
    write_csv(os.path.join(args.out, 'groups.csv'), groups, group_columns(selections, budgets))
    figures = draw_figures(runs, groups, args.selection, args.out, log) if args.figures else {}
    text = markdown_report(runs, groups, selections, figures, args, notes, fronts)
    run_folder.write_text(os.path.join(args.out, 'report.md'), text)
    for run in runs:
        log(f'{run["label"]}: {run["kind"]}, {run["status"]}' + (f' ({run["problem"]})' if run['problem'] else ''))
    log(f'report of {len(evals)} eval and {len(searches)} search runs in {os.path.join(args.out, "report.md")} '
        f'(tables also as runs.csv and groups.csv, figures in {os.path.join(args.out, "figures")})')


class Progress:
    """A line at least every PROGRESS_SECONDS through a long step (reading many runs' TensorBoard logs, measuring
    latencies, drawing figures), so that a report of many runs never looks hung."""

    def __init__(self, log, what, total):
        self.log, self.what, self.total, self.done = log, what, total, 0
        self.last = time.monotonic()
        if total:
            log(f'{what} {total} run(s)')

    def step(self, name):
        self.done += 1
        if time.monotonic() - self.last >= PROGRESS_SECONDS:
            self.log(f'{self.what} {self.done}/{self.total} runs: {name}')
            self.last = time.monotonic()


# ---------------------------------------------------------------- reading runs

def find_runs(given):
    """The run folders that folders and patterns name, each once (by real path), in order; and a line for each
    item that named none. A folder that is not a run folder is searched for run folders two levels deep (runs/,
    runs/machine-a/)."""
    folders, notes = [], []
    for item in given:
        matches = [item] if os.path.exists(item) else sorted(glob.glob(item))
        if not matches:
            notes.append(f'pattern `{item}` matched no run folder')
        for match in matches:
            if not os.path.isdir(match):
                notes.append(f'`{match}` is a file, not a run folder')
            elif run_folder.is_run_folder(match):
                folders.append(os.path.normpath(match))
            else:
                inside = runs_inside(match)
                if not inside:
                    notes.append(f'`{match}` is not a run folder and holds none (looked two levels deep)')
                folders.extend(inside)
    unique = {}
    for folder in folders:
        unique.setdefault(os.path.realpath(folder), folder)  # the same run given twice (a/b, ./a/b, /abs/a/b)
    if not unique:
        raise UserError(f'no run folder matches {" ".join(given)} ({"; ".join(n.replace("`", "") for n in notes)}); '
                        f'give run folders of train.py or train_search.py, a folder holding them, or patterns such as '
                        f"'eval-*' (quoted)")
    return list(unique.values()), notes


def runs_inside(folder, depth=2):
    """The run folders below `folder`, up to `depth` levels down (never inside a run folder: its tensorboard/)."""
    found = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith('.'):  # hidden: temporary folders of writers
            continue
        path = os.path.normpath(os.path.join(folder, entry.name))
        if run_folder.is_run_folder(path):
            found.append(path)
        elif depth > 1:
            found.extend(runs_inside(path, depth - 1))
    return found


def read_run(folder):
    """What a run folder holds: kind ('eval' or 'search'), status, arguments, metrics or search records. A file that
    is damaged or not of this repository is left out (read as missing) and named in run['problem']."""
    problems = []

    def read(name, expect, types):
        path = os.path.join(folder, name)
        content, problem = run_folder.read_optional_json(path, expect)
        problem = problem or wrong_types(content, types, path)
        problems.extend([problem] if problem else [])
        return None if problem else content

    args = read(run_folder.ARGS, dict, ARGS_TYPES) or {}
    if args.get('genotype_file') and not os.path.isabs(args['genotype_file']):
        # relative to where train.py ran, which is where it made the run folder
        args['genotype_file'] = os.path.join(os.path.dirname(os.path.abspath(folder)), args['genotype_file'])
    metrics = read(run_folder.METRICS, dict, METRICS_TYPES) or {}
    kind = run_folder.run_kind(folder, args)
    run = {'folder': folder, 'name': os.path.basename(folder), 'args': args, 'metrics': metrics, 'kind': kind,
           'failure': run_folder.failure(folder), 'curves': read_curves(folder)}
    if kind == 'search':
        run['history'] = read(run_folder.ARCHITECTURE_WEIGHTS, list, RECORD_TYPES) or []
        done = len(run['history']) or len(run['curves'].get('valid_acc', ((), ()))[0])
        complete = ' best genotype = ' in read_text(os.path.join(folder, run_folder.LOG))
        run['genotype'] = read_text(os.path.join(folder, run_folder.GENOTYPE)).strip() or None
        run['parsed'], problem = parse_genotype(run['genotype'], os.path.join(folder, run_folder.GENOTYPE))
    else:
        done = metrics.get('epochs_done', 0)
        complete = bool(metrics.get('complete'))
        _, problem = parse_genotype(metrics.get('genotype'), os.path.join(folder, run_folder.METRICS))
        problem = problem or wrong_matrix(metrics, os.path.join(folder, run_folder.METRICS))
        if problem:
            run['metrics'] = metrics = {}
    problems.extend([problem] if problem else [])
    total = args.get('epochs', metrics.get('epochs', DASH))
    run['epochs'] = f'{done}/{total}'
    run['problem'] = '; '.join(problems) or None
    run['status'] = ('damaged' if problems else f'failed after {done}/{total} epochs' if run['failure'] else
                     'complete' if complete else f'unfinished: {done}/{total} epochs')
    return run


def wrong_types(content, types, path):
    """Why a JSON file is not what this version writes (a value of another type: damaged, or another program's), or
    None; `types` gives the type of each key, of each record of a list, and nested for the selections."""
    if content is None:
        return None
    records = content if isinstance(content, list) else [content]
    for record in records:
        if not isinstance(record, dict):
            return f'{path} holds a {type(record).__name__} where this version writes an object'
        for key, expect in types.items():
            value = record.get(key)
            if value is not None and (not isinstance(value, expect) or isinstance(value, bool) and expect is not bool):
                return f'{path}: "{key}" is {json.dumps(value)[:40]}, which this version never writes there'
            if key in SELECTIONS and value is not None:
                problem = wrong_types(value, SELECTION_TYPES, f'{path} ({key})')
                if problem:
                    return problem
    return None


def wrong_matrix(metrics, path):
    """Why the last epoch's confusion matrix is not one row and one column per class name, or None."""
    matrix, names = (metrics.get('last') or {}).get('confusion_matrix'), metrics.get('class_names')
    if matrix is None or names is None:
        return None
    if len(matrix) != len(names) or any(not isinstance(row, list) or len(row) != len(names) or
                                        not all(isinstance(n, int) for n in row) for row in matrix):
        return f'{path}: its confusion matrix is not {len(names)} x {len(names)} counts, one per class name'
    return None


def parse_genotype(text, path):
    """(the genotype, None), or (None, why) for text parse_genotype refuses."""
    if not text:
        return None, None
    try:
        return genotypes.parse_genotype(text), None
    except UserError as e:
        return None, f'{path}: its genotype cannot be read ({e})'


def read_text(path):
    if not os.path.isfile(path):
        return ''
    with open(path, encoding='utf-8', errors='replace') as f:
        return f.read()


def read_curves(folder):
    """The per-epoch scalars a run logged to TensorBoard: {tag: (epochs, values)}. Epochs repeated by a resumed run
    keep their last values (the event reader drops the orphaned ones)."""
    directory = os.path.join(folder, run_folder.TENSORBOARD)
    if not os.path.isdir(directory):
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(directory, size_guidance={'scalars': 0})
    events.Reload()
    curves = {}
    for tag in events.Tags()['scalars']:
        by_epoch = {e.step: e.value for e in events.Scalars(tag)}
        curves[tag] = (sorted(by_epoch), [by_epoch[e] for e in sorted(by_epoch)])
    return curves


def label_uniquely(runs):
    """run['label']: its folder name, or where runs share one (copies from two machines) also its parent folder's;
    run['stem']: the start of its figures' file names, unique too (also where case is ignored)."""
    shared = collections.Counter(r['name'] for r in runs)
    taken = set()
    for run in runs:
        run['label'] = run['name']
        if shared[run['name']] > 1:
            parent = os.path.basename(os.path.dirname(os.path.abspath(run['folder'])))
            run['label'] = f'{parent}/{run["name"]}'
        stem, n = run['label'].replace('/', '-'), 1
        while stem.lower() in taken:
            n += 1
            stem = f'{run["label"].replace("/", "-")}-{n}'
        taken.add(stem.lower())
        run['stem'] = stem


def architecture_label(args, metrics):
    """(name for the tables, short name for a figure's legend) of a run's network: the model's, with its genotype's
    for a model built from one: a name from genotypes.py, else the search it came from and that search's method
    ('pc_darts genotype (search-PCD-rafdb-...)'), else its text."""
    model = args.get('model', metrics.get('model', 'gla_fernet'))  # runs of earlier versions trained gla_fernet only
    text = metrics.get('genotype')
    if not uses_genotype(model) or not text:
        return model, model
    name = genotypes.genotype_name(genotypes.parse_genotype(text))
    if name is not None:
        return f'{model} {name}', f'{model} {name}'
    if args.get('genotype_file'):
        search = os.path.basename(os.path.dirname(args['genotype_file'])) or args['genotype_file']
        method = search_method(args['genotype_file'], metrics) or 'searched'
        budgets = pareto.budgets_label(pareto.search_budgets(args['genotype_file'])[0])
        return (f'{method} genotype ({search}' + (f'; {budgets})' if budgets else ')'),  # a sweep reads by its budgets
                f'{method} ({budgets})' if budgets else f'{method} genotype ({save_name(search)})')
    return f'{model} {text}', f'{model} genotype {hashlib.sha1(text.encode()).hexdigest()[:6]}'


def search_method(genotype_file, metrics):
    """The method of the search a genotype came from: train.py's recipe (the method, for a genotype file); for a run
    from before recipes, the search's method file if the search is here; else None (unknown)."""
    recipe = metrics.get('recipe') or {}
    if recipe.get('name') in genotypes.METHODS:
        return recipe['name']
    if os.path.isdir(os.path.dirname(genotype_file)):
        try:
            return run_folder.search_method(genotype_file, genotypes.METHODS)
        except UserError:
            return None
    return None


def search_name(args):
    """The --save name of the search a run's genotype came from (what tells two searches for one budget apart), or
    a dash."""
    folder = os.path.basename(os.path.dirname(args.get('genotype_file') or ''))
    return save_name(folder) if folder else DASH


def save_name(folder_name):
    """The --save part of a run folder's name `<kind>-<save>-<dataset>-<time>` (what tells a user's runs apart), or
    the whole name where it has another form."""
    datasets = '|'.join(re.escape(d) for d in cli.DATASETS)
    found = re.fullmatch(rf'(?:search|eval)-(.+)-(?:{datasets})-\d{{8}}-\d{{6}}(?:-\d+)?', folder_name)
    return found.group(1) if found else folder_name


def table_row(run, latency, repeats, log):
    """The numbers of an eval run, as metrics.json and args.json hold them (a dash for what they lack)."""
    args, metrics = run['args'], run['metrics']
    value = lambda numbers, *keys: next((numbers[k] for k in keys if numbers.get(k) is not None), DASH)
    macs = value(metrics, 'macs')
    if macs == DASH and metrics.get('flops') is not None:
        macs = metrics['flops'] // 2  # a multiply-add is 2 FLOPs
    model, short = architecture_label(args, metrics)
    row = {'run': run['label'], 'status': run['status'], 'model': model, 'short_model': short,
           'dataset': dataset_label(args), 'noise': noise_label(args), 'seed': value(args, 'seed'),
           'epochs': run['epochs'], 'params': value(metrics, 'params_without_auxiliary', 'params'),
           'macs': macs, 'model_size_mb': value(metrics, 'model_size_mb'),
           'latency_ms': cpu_latency_ms(run, repeats, log) if latency and not run['problem'] else DASH,
           'settings': experiment(args), 'folder': run['folder'], 'search': search_name(args)}
    row.update(pareto.search_budget_columns(args, row))
    for selection in SELECTIONS:
        numbers = metrics.get(selection) or {}
        for key, _ in METRICS:
            row[f'{selection}_{key}'] = value(numbers, key)
        row[f'{selection}_epoch'] = value(numbers, 'epoch')
    row['last5_mean_epochs'] = value(metrics.get('last5_mean') or {}, 'epochs')  # fewer than 5 in a short run
    noisy = metrics.get('label_noise') if isinstance(metrics.get('label_noise'), dict) else {}
    row['noise_method'] = value(noisy, 'method') if noisy else value(args, 'noise_method')
    row['auroc'] = value(noisy, 'auroc')  # the last epoch's AUROC of the method's score for flipped labels
    return row


def experiment(args):
    """The flags that decide what a run computes, as (flag, value) pairs; the flags a run's version did not have yet
    take their defaults (so that an older run and a newer one of the same experiment agree). The flags of the other
    noise methods than the run's --noise_method are left out: they change nothing it computes."""
    if not args:
        return ()
    every = vars(cli.resumed_args(train.parser, args, argv=[]))
    own = recipes.NOISE_METHODS.get(every.get('noise_method'), ())
    foreign = {flag for flags in recipes.NOISE_METHODS.values() for flag in flags} - set(own)
    return tuple(sorted((flag, json.dumps(value, sort_keys=True)) for flag, value in every.items()
                        if flag not in NOT_COMPARED and flag not in foreign))


def dataset_label(args):
    if not args:
        return DASH
    if args.get('dataset') == 'affectnet' and args.get('affectnet_classes') == 7:
        return 'affectnet-7'
    return args.get('dataset', DASH)


def noise_label(args):
    if not args:
        return DASH
    if args.get('noise_file'):
        return os.path.basename(args['noise_file'])
    return f'{args.get("noise") or 0}%'


def cpu_latency_ms(run, repeats, log):
    """Median milliseconds of one forward pass of one image on the CPU, the network rebuilt from its run (weights do
    not change the time); a dash if the run cannot be rebuilt."""
    try:
        trained = build_network(run['folder'])
    except UserError as e:
        log(f'{run["label"]}: no latency ({e})')
        return DASH
    model, size = trained.model, trained.args.image_size
    memory_format = torch.channels_last if trained.args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    image = torch.zeros(1, 3, size, size).contiguous(memory_format=memory_format)
    with torch.no_grad():
        median, _, _ = time_calls(lambda: model(image), torch.device('cpu'), LATENCY_STEPS, repeats)
    return 1e3 * median


# ---------------------------------------------------------------- tables

def run_columns(selections, budgets=()):
    columns = ['run', 'status', 'model', 'dataset', 'noise', 'seed', 'epochs', 'params', 'macs', 'model_size_mb',
               'latency_ms'] + [f'meets_{m}' for m in budgets]
    return columns + [f'{s}_{key}' for s in selections
                      for key in [k for k, _ in METRICS] + ['epoch'] + ['epochs'] * (s == 'last5_mean')] + [
        'noise_method', 'auroc'] + pareto.SEARCH_BUDGET_COLUMNS + ['folder']


def group_columns(selections, budgets=()):
    columns = ['model', 'dataset', 'noise', 'noise_method', 'setting', 'runs', 'seeds', 'params', 'macs',
               'model_size_mb', 'latency_ms'] + [f'meets_{m}' for m in budgets] + ['pareto']
    return columns + [f'{s}_{key}_{stat}' for s in selections for key, _ in METRICS for stat in ('mean', 'std')] + [
        'last5_mean_epochs'] * ('last5_mean' in selections) + ['auroc_mean', 'auroc_std'] + pareto.SEARCH_BUDGET_COLUMNS


def group_rows(runs, selections):
    """One row per experiment (network, dataset, noise and every flag that changes what a run computes): mean and
    sample standard deviation over its runs (seeds) of every number; the standard deviation of a single run is a
    dash. Experiments of one model, dataset and noise name in 'setting' the flags whose values tell them apart (a
    1-epoch smoke test is never averaged with 600-epoch runs), but for the noise method, a column of its own: a flag
    another experiment has not (another method's) tells nothing apart. 'auroc': the runs' last noise-detection AUROC
    (a dash where one run has none: no flipped label, or clean labels unknown)."""
    groups = {}
    for run in runs:
        row = run['row']
        key = (row['model'], row['dataset'], row['noise'], row['params'], row['macs'], row['settings'])
        groups.setdefault(key, []).append(row)
    result = []
    for (model, dataset, noise, params, macs, settings), rows in groups.items():
        others = [dict(key[5]) for key in groups if key[:3] == (model, dataset, noise) and key[5] != settings]
        differing = [(flag, json.loads(value)) for flag, value in settings if flag != 'noise_method' and
                     any(flag in other and other[flag] != value for other in others)]
        method = dict(settings).get('noise_method')
        group = {'model': model, 'short_model': rows[0]['short_model'], 'dataset': dataset, 'noise': noise,
                 'noise_method': json.loads(method) if method else DASH,
                 'setting': ', '.join(f'{flag} {value}' for flag, value in differing), 'runs': len(rows),
                 'seeds': ' '.join(str(r['seed']) for r in rows), 'params': params, 'macs': macs,
                 'model_size_mb': rows[0]['model_size_mb'], 'latency_ms': mean([r['latency_ms'] for r in rows]),
                 'panel': f'{dataset}, noise {noise}', 'search': rows[0]['search'],
                 **{column: rows[0][column] for column in pareto.SEARCH_BUDGET_COLUMNS}}  # the model names the search
        for s in selections:
            for key, _ in METRICS:
                values = [r[f'{s}_{key}'] for r in rows]
                group[f'{s}_{key}_mean'] = mean(values)
                group[f'{s}_{key}_std'] = std(values)
        averaged = {r['last5_mean_epochs'] for r in rows} - {DASH}
        group['last5_mean_epochs'] = min(averaged) if averaged else DASH
        aurocs = [r['auroc'] for r in rows]
        group['auroc_mean'], group['auroc_std'] = mean(aurocs), std(aurocs)
        result.append(group)
    return sorted(result, key=lambda g: (g['dataset'], g['noise'], str(g['model']), g['noise_method'], g['setting']))


def mean(values):
    return statistics.fmean(values) if values and DASH not in values else DASH


def std(values):
    """The sample standard deviation; a dash for a single value or where one is missing."""
    return statistics.stdev(values) if len(values) > 1 and DASH not in values else DASH


def write_csv(path, rows, columns):
    """A table as CSV: numbers at full precision, a dash where a run holds none."""
    def write(tmp):
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, columns, extrasaction='ignore')
            writer.writeheader()
            writer.writerows(rows)
    run_folder.atomic_write(path, write)


def number(value, kind):
    """A cell of a markdown table."""
    if value == DASH or value is None:
        return DASH
    if kind == 'count':
        return f'{value:,}'
    if kind == 'mega':
        return f'{value / 1e6:.2f}M'
    if kind == 'ratio':
        return f'{value:.4f}'
    return f'{value:.2f}'


def markdown_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def markdown_report(runs, groups, selections, figures, args, notes, fronts):
    evals = [r for r in runs if r['kind'] == 'eval']
    searches = [r for r in runs if r['kind'] == 'search']
    latency = (f'CPU batch-1 latency: median over {args.latency_repeats} repeats of {LATENCY_STEPS} forward passes of '
               f'one image, float32, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, '
               f'measured by report.py when it made this report' if args.latency else
               'latency not measured (--no-latency)')
    out = [f'# Report of {len(runs)} runs', '',
           f'Made by `python report.py {" ".join(args.runs)}` on {time.strftime("%Y-%m-%d %H:%M")}.', '']
    out += [f'- {note}' for note in notes]
    out += ['## Runs', '']
    for r in runs:
        why = '; '.join(filter(None, (r['failure'], r['problem'])))
        out.append(f'- `{r["label"]}`: {r["kind"]} run, {r["status"]}' + (f' ({why})' if why else ''))
    labels = [f'{label} {SELECTIONS[s]}' for s in selections for _, label in METRICS]
    noisy = any(r['row']['auroc'] != DASH or r['row']['noise_method'] not in (DASH, 'none') for r in evals)
    budgets = pareto.given_budgets(args)
    searched = any(r['row']['search_budgets'] != DASH for r in evals)
    given = [pareto.budget_label(m, v) for m, v in budgets.items()]
    if evals:
        out += ['', '## Every eval run', '',
                'Accuracy, balanced accuracy (mean recall over classes) and macro-F1 on the test set, in %, of the '
                'epoch each selection rule picks: **last epoch**; **best validation** (the epoch of best accuracy on '
                'a validation split); **test-selected** (the epoch of best test accuracy: chosen on the test set, '
                'so optimistic, as the released code\'s best_acc); **mean of the last 5 epochs** (as the noisy-label '
                'FER papers report; a run of fewer epochs averages all it ran, and its cells say how many, e.g. '
                '"(last 2)"). Parameters without the auxiliary head; MACs = multiply-adds for one image; ' +
                latency + '.' + (' Runs trained under label noise (train.py --noise_method) add the method and the '
                                 'last epoch\'s AUROC of its per-sample score for flipped training labels.'
                                 if noisy else ''), '']
        header = ['run', 'status', 'model', 'dataset', 'noise', 'seed', 'epochs', 'params', 'MACs', 'size (MB)',
                  'latency (ms)'] + given + labels + ['method', 'AUROC'] * noisy + pareto.SEARCH_HEADER * searched
        rows = []
        for r in evals:
            row = r['row']
            rows.append([row['run'], row['status'], row['model'], row['dataset'], row['noise'], row['seed'],
                         row['epochs'], number(row['params'], 'count'), number(row['macs'], 'mega'),
                         number(row['model_size_mb'], 'float'), number(row['latency_ms'], 'float')] +
                        [row[f'meets_{m}'] for m in budgets] +
                        [averaged(number(row[f'{s}_{key}'], 'float'), s, row) for s in selections
                         for key, _ in METRICS] +
                        [row['noise_method'], number(row['auroc'], 'ratio')] * noisy +
                        pareto.search_cells(row) * searched)
        out += [markdown_table(header, rows), '']
        left_out = len(evals) - sum(g['runs'] for g in groups)
        out += ['## Mean ± standard deviation over seeds', '',
                'Complete runs that differ only in their seed: the same network, dataset, noise and every training '
                'flag. Where runs of one model, dataset and noise differ in other flags, each setting is a row of its '
                'own, and "setting" names the flags that tell it apart. Sample standard deviation, a dash for a '
                'single run.' + (' "method" is the noise method (train.py --noise_method) and "AUROC" the mean ± std '
                                 'of the runs\' last-epoch AUROC (a dash where a run has none).' if noisy else '') +
                (f' {left_out} unfinished, failed or damaged run(s) left out.' if left_out else ''), '']
        header = (['model', 'dataset', 'noise'] + ['method'] * noisy + ['setting', 'runs', 'seeds', 'params', 'MACs',
                                                                         'size (MB)', 'latency (ms)'] +
                  given + ['Pareto'] + labels + ['AUROC'] * noisy + pareto.SEARCH_HEADER * searched)
        rows = [[g['model'], g['dataset'], g['noise']] + [g['noise_method']] * noisy +
                [g['setting'], g['runs'], g['seeds'], number(g['params'], 'count'), number(g['macs'], 'mega'),
                 number(g['model_size_mb'], 'float'), number(g['latency_ms'], 'float')] +
                [g[f'meets_{m}'] for m in budgets] + [g['pareto']] +
                [averaged(mean_std(g[f'{s}_{key}_mean'], g[f'{s}_{key}_std']), s, g)
                 for s in selections for key, _ in METRICS] +
                [mean_std(g['auroc_mean'], g['auroc_std'], digits=3)] * noisy + pareto.search_cells(g) * searched
                for g in groups]
        out += [markdown_table(header, rows), '']
        out += pareto.cost_section(groups, fronts, figures.get('cost', []), args, SELECTIONS[args.selection],
                                   searched)
    for r in evals:
        if figures.get('runs', {}).get(r['stem']):
            out += [f'### {r["label"]}', '',
                    ' '.join(f'![{name}]({path})' for name, path in figures['runs'][r['stem']]), '']
    for r in searches:
        out += [f'## Search {r["label"]}', '', f'{r["status"]}; genotype: `{r["genotype"] or DASH}`', '']
        out += [' '.join(f'![{name}]({path})' for name, path in figures.get('runs', {}).get(r['stem'], [])), '']
    return '\n'.join(out)


def mean_std(mean_value, std_value, digits=2):
    if mean_value == DASH:
        return DASH
    return f'{mean_value:.{digits}f}' + (f' ± {std_value:.{digits}f}' if std_value != DASH else '')


def averaged(cell, selection, row):
    """A cell of the last-5 selection says how many epochs it averaged where a short run had fewer than 5."""
    epochs = row.get('last5_mean_epochs', DASH)
    if selection != 'last5_mean' or cell == DASH or epochs == DASH or epochs >= LAST_EPOCHS:
        return cell
    return f'{cell} (last {epochs})'


# ---------------------------------------------------------------- figures

def draw_figures(runs, groups, selection, out, log):
    """Every figure of the report, as PNG and PDF under out/figures; returns {section: [(name, path of the PNG
    relative to out)]}: 'cost' the accuracy-versus-cost figures, 'runs' {stem of a run: its figures}."""
    figures = {'cost': [], 'runs': {}}

    def path(name):
        return os.path.join('figures', f'{name}.png')

    points = [{'model': label, 'panel': g['panel'], **{cost: g[cost] for cost in pareto.COSTS},
               'accuracy': g[f'{selection}_accuracy_mean'], 'runs': g['runs'],
               'std': None if g[f'{selection}_accuracy_std'] == DASH else g[f'{selection}_accuracy_std']}
              for g, label in zip(groups, pareto.figure_labels(groups))
              if g.get(f'{selection}_accuracy_mean', DASH) != DASH]
    for cost in pareto.COSTS:  # one figure per cost, of the rows that have it (no latency: no latency figure)
        here = [p for p in points if p[cost] != DASH]
        if here:
            name = f'accuracy_vs_{cost}'
            visualize.plot_accuracy_versus_cost(here, cost, os.path.join(out, path(name)),
                                                f'test accuracy (%), {SELECTIONS[selection]}')
            figures['cost'].append((name, path(name)))
    progress = Progress(log, 'drawing the figures of', len(runs))
    for run in runs:
        drawn = figures['runs'].setdefault(run['stem'], [])
        warmup = (run['args'].get('warmup_epochs') or 0) if run['kind'] == 'search' else 0
        if any(tag.endswith('_acc') for tag in run['curves']):
            name = f'{run["stem"]}-curves'
            visualize.plot_training_curves(run['curves'], os.path.join(out, path(name)), run['label'], warmup)
            drawn.append((name, path(name)))
        last = run['metrics'].get('last')
        names = run['metrics'].get('class_names')
        if last and names and len(last.get('confusion_matrix') or ()) == len(names):
            name = f'{run["stem"]}-confusion'
            accuracy = f'{last["accuracy"]:.2f}%' if last.get('accuracy') is not None else DASH
            visualize.plot_confusion_matrix(
                last['confusion_matrix'], names, os.path.join(out, path(name)),
                f'{run["label"]}\ntest set, last epoch ({last.get("epoch", DASH)}): accuracy {accuracy}')
            drawn.append((name, path(name)))
        if run['kind'] == 'search':
            genotype = run['parsed']
            for cell, title in (('normal', 'normal cell'), ('reduce', 'reduction cell')):
                if genotype is not None:
                    name = f'{run["stem"]}-{cell}-cell'
                    ops, concat = (genotype.normal, genotype.normal_concat) if cell == 'normal' else (
                        genotype.reduce, genotype.reduce_concat)
                    visualize.plot_cell(ops, concat, os.path.join(out, path(name)), f'{title} ({run["label"]})')
                    drawn.append((name, path(name)))
                if run['history']:
                    name = f'{run["stem"]}-{cell}-weights'
                    visualize.plot_architecture_weights(run['history'], cell, os.path.join(out, path(name)),
                                                        warmup_epochs=warmup, genotype=genotype)
                    drawn.append((name, path(name)))
        progress.step(run['label'])
    return figures


if __name__ == '__main__':
    utils.run_main(main, ARGS)
