"""Put many runs side by side: the comparison table and the mean +- std table of a paper, accuracy versus parameters
and MACs, training curves, confusion matrices, and for searches the architecture weights over epochs (paper Sec. 4)."""
import argparse

import cli

SELECTIONS = {  # metrics.json key: how the epoch of the numbers was chosen
    'last': 'last epoch',
    'val_selected': 'best validation',
    'test_selected': 'test-selected',
}

parser = argparse.ArgumentParser('report', description=__doc__)
parser.add_argument('runs', nargs='+', help="run folders, or quoted patterns such as 'eval-*' 'search-*'")
parser.add_argument('--out', default='report', help='folder for report.md, runs.csv, groups.csv and figures/')
parser.add_argument('--selection', choices=list(SELECTIONS), default='last',
                    help='the accuracy the accuracy-versus-size figures plot: last epoch, best validation epoch, or '
                         'best test epoch (selected on the test set: optimistic)')
parser.add_argument('--figures', action=argparse.BooleanOptionalAction, default=True,
                    help='draw the figures (--no-figures: the tables only, at once)')
parser.add_argument('--latency', action=argparse.BooleanOptionalAction, default=True,
                    help="measure each network's CPU batch-1 latency, rebuilt from its run (--no-latency: skip)")
parser.add_argument('--latency_repeats', type=cli.positive_int, default=5,
                    help='repeats of the latency measurement; the median is reported')

if __name__ == '__main__':
    # Parsed before torch is imported (seconds on a busy machine): --help and a bad flag answer at once.
    ARGS = parser.parse_args()

import csv  # noqa: E402
import glob  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

import genotypes  # noqa: E402
import utils  # noqa: E402
import visualize  # noqa: E402
from baselines import uses_genotype  # noqa: E402
from benchmark import measure  # noqa: E402
from cli import UserError  # noqa: E402
from predict import build_network, read_json  # noqa: E402

DASH = '-'  # a number a run does not hold (failed before it, or written by an older version)
LATENCY_STEPS = 10  # forward passes per repeat
METRICS = (('accuracy', 'acc.'), ('balanced_accuracy', 'bal. acc.'), ('f1', 'macro-F1'))


def main(args, log):
    folders, unmatched = find_runs(args.runs)
    runs = [read_run(folder) for folder in folders]
    os.makedirs(os.path.join(args.out, 'figures'), exist_ok=True)
    evals = [r for r in runs if r['kind'] == 'eval']
    searches = [r for r in runs if r['kind'] == 'search']
    for run in evals:
        run['row'] = table_row(run, args.latency, args.latency_repeats, log)
    selections = [s for s in SELECTIONS if any(s in r['metrics'] for r in evals)]
    groups = group_rows([r for r in evals if r['status'] == 'complete'], selections)
    write_csv(os.path.join(args.out, 'runs.csv'), [r['row'] for r in evals], run_columns(selections))
    write_csv(os.path.join(args.out, 'groups.csv'), groups, group_columns(selections))
    figures = draw_figures(runs, groups, args.selection, args.out) if args.figures else {}
    text = markdown_report(runs, groups, selections, figures, args, unmatched)
    with open(os.path.join(args.out, 'report.md'), 'w') as f:
        f.write(text)
    for run in runs:
        log(f'{run["name"]}: {run["kind"] or "not a run folder"}, {run["status"]}')
    log(f'report of {len(evals)} eval and {len(searches)} search runs in {os.path.join(args.out, "report.md")} '
        f'(tables also as runs.csv and groups.csv, figures in {os.path.join(args.out, "figures")})')


# ---------------------------------------------------------------- reading runs

def find_runs(given):
    """The run folders that folders and patterns name, each once, in order; and the patterns that matched none."""
    folders, unmatched = [], []
    for item in given:
        matches = [item] if os.path.exists(item) else sorted(glob.glob(item))
        matches = [m for m in matches if os.path.isdir(m)]
        if not matches:
            unmatched.append(item)
        folders.extend(os.path.normpath(m) for m in matches)
    if not folders:
        raise UserError(f'no run folder matches {" ".join(given)}; give run folders of train.py or train_search.py, '
                        f"or patterns such as 'eval-*' (quoted)")
    return list(dict.fromkeys(folders)), unmatched


def read_run(folder):
    """What a run folder holds: kind ('eval', 'search' or None), status, arguments, metrics or search records."""
    name = os.path.basename(folder)
    args = read_json(os.path.join(folder, 'args.json'))
    metrics = read_json(os.path.join(folder, 'metrics.json'))
    run = {'folder': folder, 'name': name, 'args': args, 'metrics': metrics, 'kind': None,
           'status': 'not a run folder (no args.json, metrics.json or log.txt)'}
    failed = os.path.join(folder, utils.FAILED_MARKER)
    failure = None
    if os.path.isfile(failed):
        with open(failed) as f:
            failure = (f.read().strip() or 'no message')[:200]
    log_text = ''
    if os.path.isfile(os.path.join(folder, 'log.txt')):
        with open(os.path.join(folder, 'log.txt')) as f:
            log_text = f.read()
    if 'warmup_epochs' in args or os.path.isfile(os.path.join(folder, 'genotype.txt')) or name.startswith('search-'):
        run['kind'] = 'search'
        run['history'] = read_json(os.path.join(folder, utils.ARCHITECTURE_WEIGHTS_FILE)) or []
        run['curves'] = read_curves(folder)
        done = len(run['history']) or len(run['curves'].get('valid_acc', ((), ()))[0])
        complete = ' best genotype = ' in log_text
        genotype_file = os.path.join(folder, 'genotype.txt')
        run['genotype'] = open(genotype_file).read().strip() if os.path.isfile(genotype_file) else None
    elif args or metrics or log_text or name.startswith('eval-'):
        run['kind'] = 'eval'
        run['curves'] = read_curves(folder)
        done = metrics.get('epochs_done', 0)
        complete = bool(metrics.get('complete'))
    else:
        return run
    total = args.get('epochs', metrics.get('epochs', DASH))
    run['epochs'] = f'{done}/{total}'
    run['status'] = (f'failed after {done}/{total} epochs' if failure else 'complete' if complete else
                     f'unfinished: {done}/{total} epochs')
    run['failure'] = failure
    return run


def read_curves(folder):
    """The per-epoch scalars a run logged to TensorBoard: {tag: (epochs, values)}. Epochs repeated by a resumed run
    keep their last values (the event reader drops the orphaned ones)."""
    directory = os.path.join(folder, 'tensorboard')
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


def architecture_label(args, metrics, genotype_text=None):
    """A model's name, with its genotype's for a model built from one: a name from genotypes.py, the search folder
    it came from, or its text."""
    model = args.get('model', 'gla_fernet')  # runs of earlier versions trained gla_fernet only
    genotype_text = genotype_text or metrics.get('genotype')
    if not uses_genotype(model) or not genotype_text:
        return model
    name = genotypes.genotype_name(genotypes.parse_genotype(genotype_text))
    if name is None and args.get('genotype_file'):
        name = os.path.basename(os.path.dirname(args['genotype_file'])) or args['genotype_file']
    return f'{model} {name or genotype_text}'


def table_row(run, latency, repeats, log):
    """The numbers of an eval run, as metrics.json and args.json hold them (a dash for what they lack)."""
    args, metrics = run['args'], run['metrics']
    flops = metrics.get('flops')
    row = {'run': run['name'], 'status': run['status'], 'model': architecture_label(args, metrics),
           'dataset': dataset_label(args), 'noise': noise_label(args), 'seed': args.get('seed', DASH),
           'epochs': run['epochs'],
           'params': metrics.get('params_without_auxiliary', metrics.get('params', DASH)),
           'macs': metrics.get('macs', flops // 2 if flops is not None else DASH),  # a multiply-add is 2 FLOPs
           'model_size_mb': metrics.get('model_size_mb', DASH),
           'latency_ms': cpu_latency_ms(run, repeats, log) if latency else DASH}
    for selection in SELECTIONS:
        numbers = metrics.get(selection, {})
        for key, _ in METRICS:
            row[f'{selection}_{key}'] = numbers.get(key, DASH)
        row[f'{selection}_epoch'] = numbers.get('epoch', DASH)
    return row


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
    return f'{args.get("noise", 0)}%'


def cpu_latency_ms(run, repeats, log):
    """Median milliseconds of one forward pass of one image on the CPU, the network rebuilt from its run (weights do
    not change the time); a dash if the run cannot be rebuilt."""
    try:
        trained = build_network(run['folder'])
    except UserError as e:
        log(f'{run["name"]}: no latency ({e})')
        return DASH
    model, size = trained.model, trained.args.image_size
    memory_format = torch.channels_last if trained.args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    image = torch.zeros(1, 3, size, size).contiguous(memory_format=memory_format)
    with torch.no_grad():
        median, _, _ = measure(lambda: model(image), torch.device('cpu'), LATENCY_STEPS, repeats)
    return 1e3 * median


# ---------------------------------------------------------------- tables

def run_columns(selections):
    columns = ['run', 'status', 'model', 'dataset', 'noise', 'seed', 'epochs', 'params', 'macs', 'model_size_mb',
               'latency_ms']
    return columns + [f'{s}_{key}' for s in selections for key in [k for k, _ in METRICS] + ['epoch']]


def group_columns(selections):
    columns = ['model', 'dataset', 'noise', 'runs', 'seeds', 'params', 'macs', 'model_size_mb', 'latency_ms']
    return columns + [f'{s}_{key}_{stat}' for s in selections for key, _ in METRICS for stat in ('mean', 'std')]


def group_rows(runs, selections):
    """One row per (model, dataset, noise) and network size: mean and sample standard deviation over its runs
    (seeds) of every number; the standard deviation of a single run is a dash."""
    groups = {}
    for run in runs:
        row = run['row']
        groups.setdefault((row['model'], row['dataset'], row['noise'], row['params'], row['macs']), []).append(row)
    result = []
    for (model, dataset, noise, params, macs), rows in groups.items():
        group = {'model': model, 'dataset': dataset, 'noise': noise, 'runs': len(rows),
                 'seeds': ' '.join(str(r['seed']) for r in rows), 'params': params, 'macs': macs,
                 'model_size_mb': rows[0]['model_size_mb'], 'latency_ms': mean([r['latency_ms'] for r in rows])}
        for s in selections:
            for key, _ in METRICS:
                values = [r[f'{s}_{key}'] for r in rows]
                group[f'{s}_{key}_mean'] = mean(values)
                group[f'{s}_{key}_std'] = (statistics.stdev(values) if len(values) > 1 and DASH not in values
                                           else DASH)
        result.append(group)
    return sorted(result, key=lambda g: (g['dataset'], g['noise'], str(g['model'])))


def mean(values):
    return statistics.fmean(values) if values and DASH not in values else DASH


def write_csv(path, rows, columns):
    """A table as CSV: numbers at full precision, a dash where a run holds none."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, columns, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)


def number(value, kind):
    """A cell of a markdown table."""
    if value == DASH or value is None:
        return DASH
    if kind == 'count':
        return f'{value:,}'
    if kind == 'mega':
        return f'{value / 1e6:.2f}M'
    return f'{value:.2f}'


def markdown_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def markdown_report(runs, groups, selections, figures, args, unmatched):
    evals = [r for r in runs if r['kind'] == 'eval']
    searches = [r for r in runs if r['kind'] == 'search']
    latency = (f'CPU batch-1 latency: median over {args.latency_repeats} repeats of {LATENCY_STEPS} forward passes of '
               f'one image, float32, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, '
               f'measured by report.py when it made this report' if args.latency else
               'latency not measured (--no-latency)')
    out = [f'# Report of {len(runs)} runs', '',
           f'Made by `python report.py {" ".join(args.runs)}` on {time.strftime("%Y-%m-%d %H:%M")}.', '']
    out += [f'- pattern `{item}` matched no run folder' for item in unmatched]
    out += ['## Runs', '']
    out += [f'- `{r["name"]}`: {r["kind"] or "?"} run, {r["status"]}' + (f' ({r["failure"]})' if r.get('failure') else '')
            for r in runs]
    labels = [f'{label} {SELECTIONS[s]}' for s in selections for _, label in METRICS]
    if evals:
        out += ['', '## Every eval run', '',
                'Accuracy, balanced accuracy (mean recall over classes) and macro-F1 on the test set, in %, of the '
                'epoch each selection rule picks: **last epoch**; **best validation** (the epoch of best accuracy on '
                'a validation split); **test-selected** (the epoch of best test accuracy: chosen on the test set, '
                'so optimistic, as the released code\'s best_acc). Parameters without the auxiliary head; MACs = '
                'multiply-adds for one image; ' + latency + '.', '']
        header = ['run', 'status', 'model', 'dataset', 'noise', 'seed', 'epochs', 'params', 'MACs', 'size (MB)',
                  'latency (ms)'] + labels
        rows = []
        for r in evals:
            row = r['row']
            rows.append([row['run'], row['status'], row['model'], row['dataset'], row['noise'], row['seed'],
                         row['epochs'], number(row['params'], 'count'), number(row['macs'], 'mega'),
                         number(row['model_size_mb'], 'float'), number(row['latency_ms'], 'float')] +
                        [number(row[f'{s}_{key}'], 'float') for s in selections for key, _ in METRICS])
        out += [markdown_table(header, rows), '']
        left_out = len(evals) - sum(g['runs'] for g in groups)
        out += ['## Mean ± standard deviation over seeds', '',
                'Complete runs of the same model, dataset and noise level (and so the same network); sample '
                'standard deviation, a dash for a single run.' +
                (f' {left_out} unfinished or failed run(s) left out.' if left_out else ''), '']
        header = ['model', 'dataset', 'noise', 'runs', 'seeds', 'params', 'MACs', 'size (MB)', 'latency (ms)'] + labels
        rows = [[g['model'], g['dataset'], g['noise'], g['runs'], g['seeds'], number(g['params'], 'count'),
                 number(g['macs'], 'mega'), number(g['model_size_mb'], 'float'), number(g['latency_ms'], 'float')] +
                [mean_std(g[f'{s}_{key}_mean'], g[f'{s}_{key}_std']) for s in selections for key, _ in METRICS]
                for g in groups]
        out += [markdown_table(header, rows), '']
    if figures.get('cost'):
        out += ['## Accuracy versus size', ''] + [f'![{name}]({path})' for name, path in figures['cost']] + ['']
    for r in evals:
        if figures.get(r['name']):
            out += [f'### {r["name"]}', '', ' '.join(f'![{name}]({path})' for name, path in figures[r['name']]), '']
    for r in searches:
        out += [f'## Search {r["name"]}', '', f'{r["status"]}; genotype: `{r["genotype"] or DASH}`', '']
        out += [' '.join(f'![{name}]({path})' for name, path in figures.get(r['name'], [])), '']
    return '\n'.join(out)


def mean_std(mean_value, std):
    if mean_value == DASH:
        return DASH
    return f'{mean_value:.2f}' + (f' ± {std:.2f}' if std != DASH else '')


# ---------------------------------------------------------------- figures

def draw_figures(runs, groups, selection, out):
    """Every figure of the report, as PNG and PDF under out/figures; returns {section: [(name, path of the PNG
    relative to out)]}."""
    figures = {}

    def path(name):
        return os.path.join('figures', f'{name}.png')

    points = [{'model': g['model'], 'panel': f'{g["dataset"]}, noise {g["noise"]}', 'params': g['params'],
               'macs': g['macs'], 'accuracy': g[f'{selection}_accuracy_mean'], 'std': g[f'{selection}_accuracy_std'],
               'runs': g['runs']}
              for g in groups if f'{selection}_accuracy_mean' in g and DASH not in
              (g['params'], g['macs'], g[f'{selection}_accuracy_mean'])]
    for point in points:
        point['std'] = None if point['std'] == DASH else point['std']
    if points:
        figures['cost'] = []
        for cost in ('params', 'macs'):
            name = f'accuracy_vs_{cost}'
            visualize.plot_accuracy_versus_cost(points, cost, os.path.join(out, path(name)),
                                                f'test accuracy (%), {SELECTIONS[selection]}')
            figures['cost'].append((name, path(name)))
    for run in runs:
        drawn = figures.setdefault(run['name'], [])
        warmup = run['args'].get('warmup_epochs', 0) if run['kind'] == 'search' else 0
        if run['kind'] is None:
            continue
        if any(tag.endswith('_acc') for tag in run['curves']):
            name = f'{run["name"]}-curves'
            visualize.plot_training_curves(run['curves'], os.path.join(out, path(name)), run['name'], warmup)
            drawn.append((name, path(name)))
        last = run['metrics'].get('last')
        if last and run['metrics'].get('class_names'):
            name = f'{run["name"]}-confusion'
            visualize.plot_confusion_matrix(
                last['confusion_matrix'], run['metrics']['class_names'], os.path.join(out, path(name)),
                f'{run["name"]}\ntest set, last epoch ({last.get("epoch", DASH)}): accuracy {last["accuracy"]:.2f}%')
            drawn.append((name, path(name)))
        if run['kind'] == 'search':
            genotype = genotypes.parse_genotype(run['genotype']) if run['genotype'] else None
            for cell, title in (('normal', 'normal cell'), ('reduce', 'reduction cell')):
                if genotype is not None:
                    name = f'{run["name"]}-{cell}-cell'
                    ops, concat = (genotype.normal, genotype.normal_concat) if cell == 'normal' else (
                        genotype.reduce, genotype.reduce_concat)
                    visualize.plot_cell(ops, concat, os.path.join(out, path(name)), f'{title} ({run["name"]})')
                    drawn.append((name, path(name)))
                if run['history']:
                    name = f'{run["name"]}-{cell}-weights'
                    visualize.plot_architecture_weights(run['history'], cell, os.path.join(out, path(name)),
                                                        warmup_epochs=warmup, genotype=genotype)
                    drawn.append((name, path(name)))
    return figures


if __name__ == '__main__':
    utils.run_main(main, ARGS)
