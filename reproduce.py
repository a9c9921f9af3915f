"""Reproduce a published table (tables.py): expand it into runs of train_search.py and train.py, run them, and write
the table beside the paper's numbers (docs/reproduce.md).

The runs are run by a launcher of launchers.py (--launcher local: subprocesses on this machine; slurm: a SLURM
cluster through submitit).
"""
import argparse
import fnmatch
import math
import os
import shlex
import sys
import time

import cli
import genotypes
import recipes
import run_folder
import tables
from errors import UserError
from selection import LAST_EPOCHS
from launchers import (INTERRUPTED, SCRIPTS, SLURM_CPUS, SLURM_MINUTES, SLURM_TIMEOUTS, Job,
                       finished, latest_run, launcher_class, lock_holder, set_aside, step_now)

DATA_FLAGS = {'rafdb': 'rafdb', 'affectnet': 'affectnet'}  # a table's dataset -> the reproduce.py flag of its root
# --scale smoke: the same table shrunk so that the machinery runs on a CPU in minutes; numbers meaningless.
SMOKE_SEEDS = 2
SMOKE_IMAGES = {'n_train': 64, 'n_test': 28}  # per synthetic set, in the dataset's own layout
SMOKE_FLAGS = {'epochs': 3, 'batch_size': 16, 'image_size': 16, 'workers': 0}
SMOKE_DARTS = {'init_channels': 8, 'layers': 3}  # the supernet and the discrete DARTS-family network
SMOKE_WARMUP = 1

parser = argparse.ArgumentParser('reproduce', description='Run a published table (tables.py) and write it beside '
                                 "the paper's numbers: OUT/TABLE.md and OUT/TABLE.csv (docs/reproduce.md).")
parser.add_argument('table', choices=list(tables.TABLES), help='the table to reproduce')
parser.add_argument('--out', default='tables', help='folder of the tables; the runs go into OUT/TABLE/<row>-s<seed>/')
action = parser.add_mutually_exclusive_group()
action.add_argument('--dry_run', action='store_true',
                    help='print the commands that would run now, each after a cd into its folder; run nothing')
action.add_argument('--status', action='store_true',
                    help='per row the runs done, running, failed and pending, and the table so far')
action.add_argument('--plan', action='store_true', help='runs, GPU-epochs and GPU-hours the table takes')
action.add_argument('--report', action='store_true', help='write OUT/TABLE.md and OUT/TABLE.csv from the runs done')
parser.add_argument('--launcher', type=lambda name: launcher_class(name), default='local',
                    help='how runs are started: local (subprocesses on this machine), slurm (job arrays on a '
                         'SLURM cluster through submitit; docs/reproduce.md)')
parser.add_argument('--jobs', type=cli.positive_int, default=1,
                    help='local: runs at a time (with CUDA at most one per GPU, each on its own)')
parser.add_argument('--threads', type=cli.positive_int, default=None,
                    help="local: each run's CPU threads (default: the cores shared among --jobs)")
parser.add_argument('--slurm_partition', default=None, help="slurm: the partition (default: the cluster's)")
parser.add_argument('--slurm_time', type=cli.positive_int, default=SLURM_MINUTES,
                    help='slurm: minutes of one job; a run that needs more is requeued and resumes, '
                         f'{SLURM_TIMEOUTS} times at most')
parser.add_argument('--slurm_gpus', type=int, choices=[0, 1], default=1,
                    help='slurm: GPUs of one job (a run uses one; 0: on the CPU)')
parser.add_argument('--slurm_cpus', type=cli.positive_int, default=SLURM_CPUS,
                    help="slurm: CPUs of one job, its run's --threads")
parser.add_argument('--slurm_mem', default=None, help="slurm: memory of one job, as sbatch --mem takes it (32G; "
                                                      "default: the cluster's)")
parser.add_argument('--retry_failed', action='store_true',
                    help='run the failed runs again (resumed where they have a checkpoint); else they are listed')
parser.add_argument('--scale', choices=['full', 'smoke'], default='full',
                    help='smoke: the same table on synthetic sets in the datasets\' layouts, tiny networks, '
                         f'{SMOKE_FLAGS["epochs"]} epochs, {SMOKE_SEEDS} seeds (into OUT/TABLE-smoke/)')
parser.add_argument('--seeds', type=cli.positive_int, default=None,
                    help="the first N seeds of each row (default: the table's 3; with --scale smoke 2)")
parser.add_argument('--rows', default=None, help='only these rows: names or patterns, comma-separated (n10-*)')
parser.add_argument('--rafdb', default=cli.DEFAULT_ROOTS['rafdb'], help='the RAF-DB folder (docs/datasets.md)')
parser.add_argument('--affectnet', default=cli.DEFAULT_ROOTS['affectnet'], help='the AffectNet folder')
parser.add_argument('--msceleb', default='resnet18_msceleb.pth',
                    help="the MS-Celeb-1M ResNet-18 checkpoint of the noise methods' papers (RUL's and EAC's file)")
parser.add_argument('--mfn_msceleb', default='MFN_msceleb.pth',
                    help="DDAMFN's MS-Celeb-1M MixedFeatureNet (its repository's pretrained/MFN_msceleb.pth)")
parser.add_argument('--efficientface_msceleb', default='Pretrained_EfficientFace.tar',
                    help="EfficientFace's MS-Celeb-1M weights (its README's Pretrained_EfficientFace.tar)")
parser.add_argument('--efficientface_ldg', default='Pretrained_LDG.tar',
                    help="EfficientFace's label distribution generator for RAF-DB, a ResNet-50 (Pretrained_LDG.tar)")
parser.add_argument('--benchmark', action='append', default=[],
                    help='--plan: a JSON file of benchmark.py --json whose step times the plan uses (repeat it for '
                         'several models)')
parser.add_argument('--step_seconds', type=cli.positive_float, default=None,
                    help='--plan: the seconds of one step, for every run no --benchmark file measured')


def main(argv=None):
    args = parser.parse_args(argv)
    if (args.benchmark or args.step_seconds) and not args.plan:
        parser.error('--benchmark and --step_seconds apply to --plan')
    table = tables.TABLES[args.table]
    rows = selected_rows(table, args.rows)
    name = table.name + ('-smoke' if args.scale == 'smoke' else '')
    folder = os.path.join(args.out, name)
    seeds = [SeedRun(row, seed, os.path.join(folder, f'{row.name}-s{seed}'))
             for row in rows for seed in row.seeds[:args.seeds or (SMOKE_SEEDS if args.scale == 'smoke' else None)]]
    if args.plan:
        return print('\n'.join(plan(rows, seeds, args)))
    if args.status:
        print('\n'.join(status_lines(rows, seeds)) + '\n')
        return print(table_markdown(table, results(rows, seeds), seeds, name, args))
    if args.report:
        return write_table(table, rows, seeds, name, args)
    roots = data_roots(rows, args, create=not args.dry_run)
    jobs, notes = [], []
    for run in seeds:
        if run.state == 'done' or run.state == 'running' or (run.state == 'failed' and not args.retry_failed):
            notes.append(f'{run.name}: {run.state}' + (f' ({run.reason})' if run.reason else '') +
                         (' (--retry_failed runs it again)' if run.state == 'failed' else ''))
            continue
        jobs.append(Job(run.name, run.folder, steps(run, roots, args)))
    if args.dry_run:
        for job in jobs:
            print(f'# {job.name}')
            print('\n'.join(f'cd {shlex.quote(os.path.abspath(step.cwd))} && {shlex.join(step.command())}'
                            for step in job.steps))
        return print('\n'.join(f'# {note}' for note in notes))
    for note in notes:
        print(note, flush=True)
    for job in jobs:
        os.makedirs(job.folder, exist_ok=True)
        set_aside(job.folder)
    launcher = args.launcher(args)
    print(f'{len(jobs)} of {len(seeds)} runs to start ({launcher.name} launcher)', flush=True)
    exits = launcher.launch(jobs) if jobs else {}
    if launcher.waits or not jobs:
        for run in seeds:
            run.refresh()
        write_table(table, rows, seeds, name, args)
    failed = sorted(name for name, code in exits.items() if code not in (0, None, *INTERRUPTED))
    if failed:
        raise UserError(f'{len(failed)} of {len(jobs)} runs failed ({", ".join(failed)}); their reasons: '
                        f'python reproduce.py {args.table} --out {args.out} --scale {args.scale} --status')


def selected_rows(table, patterns):
    patterns = ['*'] if patterns is None else [p.strip() for p in patterns.split(',') if p.strip()]
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(row.name, p) for row in table.rows)]
    if unmatched:
        raise UserError(f'--rows {", ".join(unmatched)}: no row of {table.name} is called so; its rows: '
                        f'{", ".join(row.name for row in table.rows)}')
    return [row for row in table.rows if any(fnmatch.fnmatchcase(row.name, p) for p in patterns)]


# ---------------------------------------------------------------- the state of a run, read from its folder

class SeedRun:
    """One seed of a row: its job folder OUT/TABLE/<row>-s<seed>/, in which each step's run folder lands (a search
    row: search-<row>-s<seed>-..., then eval-<row>-s<seed>-...), and its state, read from the folders alone:
    'done', 'running' (a live launcher's lock), 'failed' (a FAILED file: the run's own, or the job's when a step
    stopped before its run folder existed), 'interrupted' (a checkpoint to resume) or 'pending'."""

    def __init__(self, row, seed, folder):
        self.row, self.seed, self.folder = row, seed, folder
        self.name = os.path.basename(folder)
        self.kinds = ('search', 'eval') if row.search else ('eval',)
        self.refresh()

    def refresh(self):
        self.runs = {kind: latest_run(self.folder, kind) for kind in self.kinds}
        self.state, self.reason = self._state()

    def _state(self):
        holder = lock_holder(self.folder)
        if holder:
            return 'running', holder
        job_failure = run_folder.failure(self.folder) if os.path.isdir(self.folder) else None
        for kind in self.kinds:
            run = self.runs[kind]
            if run is not None and finished(kind, run):
                continue
            failure = run and run_folder.failure(run)
            if failure or job_failure:
                return 'failed', f'{SCRIPTS[kind]}: {failure or job_failure}'
            if run is not None and os.path.isfile(os.path.join(run, run_folder.CHECKPOINT)):
                return 'interrupted', f'{os.path.basename(run)} resumes'
            return 'pending', ''
        return 'done', ''


# ---------------------------------------------------------------- commands

def steps(run, roots, args):
    """The steps a seed still needs: a finished run is skipped, an interrupted (or, with --retry_failed, a failed)
    run with a checkpoint resumes, any other starts anew; a training after a search reads the search's genotype."""
    todo = [step_now(kind, run.runs[kind], fresh_flags(run.row, run.seed, kind, roots, args.scale, weight_files(args)),
                     run.folder) for kind in run.kinds]
    return [step for step in todo if step is not None]


def weight_files(args):
    """{placeholder of tables.WEIGHT_FILES: the file its reproduce.py flag gives}."""
    return {placeholder: getattr(args, flag) for placeholder, (flag, _) in tables.WEIGHT_FILES.items()}


def fresh_flags(row, seed, kind, roots, scale, files):
    """The command-line flags of a new run of `kind` for one seed of a row (files: weight_files)."""
    flags = dict(row.search if kind == 'search' else row.train)
    save = f'{row.name}-s{seed}'
    if scale == 'smoke':
        flags = smoke_flags(flags, kind)
    flags.update(data=roots.get(flags.get('dataset')), save=save, seed=seed)
    if kind == 'eval' and row.search:
        flags['genotype_file'] = f'search-{save}-*'  # the search of this job, in the same folder
    for name, value in flags.items():
        if isinstance(value, str) and value in files:  # --pretrained, --efficientface_teacher
            flags[name] = os.path.abspath(files[value])
    return flag_list(flags)


def smoke_flags(flags, kind):
    """A row's flags at --scale smoke: tiny networks and inputs, few epochs, no pretrained weights or teacher."""
    flags = {name: value for name, value in flags.items()
             if name != 'pretrained' and not (isinstance(value, str) and value in tables.WEIGHT_FILES)}
    model = flags.get('model', 'gla_fernet')
    flags.update(SMOKE_FLAGS)
    if kind == 'search' or model == 'gla_fernet':
        flags.update(SMOKE_DARTS)
    if kind == 'search':
        method = genotypes.METHODS[flags.get('method', 'gla_fernet')]
        flags['warmup_epochs'] = min(SMOKE_WARMUP, method['search']['warmup_epochs'])
        # the network train.py will build (its flags are SMOKE_DARTS too): what a budget is the cost of
        flags.update(target_channels=SMOKE_DARTS['init_channels'], target_layers=SMOKE_DARTS['layers'])
    else:
        flags['image_size'] = recipes.fitting_image_size(model, flags['image_size'])  # DDAMFN: 112, EfficientFace: 224
        recipe = recipes.MODELS[model].recipe
        if recipe.get('pretrained'):
            flags['pretrained'] = 'none'  # CoRes-SE's recipe downloads ImageNet weights
        if recipe.get('lr_warmup_epochs', 0) >= SMOKE_FLAGS['epochs']:
            flags['lr_warmup_epochs'] = SMOKE_WARMUP  # its warm-up would take every epoch
    return flags


def flag_list(flags):
    """{flag: value} as command-line words: True a bare switch, a list its items."""
    return [word for name, value in flags.items() for word in [f'--{name}'] + (
        [] if value is True else list(map(str, value)) if isinstance(value, (list, tuple)) else [str(value)])]


def data_roots(rows, args, create):
    """{dataset: its folder, absolute (runs start in their own folders)}: the given ones, checked; at --scale smoke
    synthetic sets in each dataset's layout under OUT/smoke-data/ (made when `create`)."""
    datasets = {flags['dataset'] for row in rows for flags in (row.train, row.search) if flags}
    roots = {}
    for dataset in sorted(datasets):
        if args.scale == 'smoke':
            roots[dataset] = os.path.abspath(os.path.join(args.out, 'smoke-data', dataset))
            if create and not os.path.isdir(roots[dataset]):
                import synthetic
                synthetic.make_synthetic(roots[dataset], layout=dataset, seed=0, workers=0, **SMOKE_IMAGES)
            continue
        roots[dataset] = os.path.abspath(getattr(args, DATA_FLAGS[dataset]))
        if create and not os.path.isdir(roots[dataset]):
            raise UserError(f'{roots[dataset]} does not exist: give the {dataset} folder with '
                            f'--{DATA_FLAGS[dataset]} PATH (docs/datasets.md), or try --scale smoke')
    for placeholder, (flag, what) in tables.WEIGHT_FILES.items():
        path = getattr(args, flag)
        used = any(placeholder in row.train.values() for row in rows)
        if create and args.scale == 'full' and used and not os.path.isfile(path):
            raise UserError(f'{path} does not exist: give {what} with --{flag} PATH, or try --scale smoke')
    return roots


# ---------------------------------------------------------------- launchers

# ---------------------------------------------------------------- the table beside the paper's

PAPER_RULES = {'test_best': 'best test epoch', 'last5_mean': 'mean of the last 5 epochs',
               'val_selected': 'best validation epoch', 'unstated': 'not stated'}
CSV_COLUMNS = ['row', 'label', 'group', 'column', 'paper', 'paper_selection', 'ours_mean', 'ours_std', 'n',
               'difference', 'ours_selection', 'also_mean', 'also_std', 'also_selection', 'status', 'seeds', 'source',
               'note']


def row_result(row, runs):
    """A row's line of the table: the paper's number and ours, the mean and sample standard deviation over the seeds
    done, of the number report.py reads from each run folder (report.table_row) under the paper's selection rule;
    where the paper selected on the test set, also our validation-selected number (the last-5 mean without a
    validation split). Nothing but these runs' own numbers is ours: no run done, no number."""
    import report
    done = [run for run in runs if run.state == 'done']
    read = [report.read_run(run.runs['eval']) for run in done]
    report.label_uniquely(read)
    numbers = [report.table_row(run, False, 1, print) for run in read]
    ours = tables.SELECTIONS[row.selection]
    result = {'row': row.name, 'label': row.label or row.name, 'group': row.group, 'column': row.column,
              'paper': row.reported, 'paper_selection': row.selection, 'ours_selection': ours, 'n': len(numbers),
              'status': row_status(runs), 'seeds': ' '.join(str(run.seed) for run in done),
              'source': str(row.source) if row.source else '', 'note': row.note,
              'last5_epochs': min((n['last5_mean_epochs'] for n in numbers
                                   if isinstance(n['last5_mean_epochs'], int)), default=None)}
    result['ours_mean'], result['ours_std'] = mean_std(numbers, ours, report)
    if row.selection == 'test_best':
        also = 'val_selected' if numbers and all(n['val_selected_accuracy'] != report.DASH for n in numbers) else \
            'last5_mean'
        result['also_selection'] = also
        result['also_mean'], result['also_std'] = mean_std(numbers, also, report)
    both = result['ours_mean'] is not None and row.reported is not None
    result['difference'] = result['ours_mean'] - row.reported if both else None
    return result


def mean_std(numbers, selection, report):
    values = [n[f'{selection}_accuracy'] for n in numbers]
    mean, std = report.mean(values), report.std(values)
    return None if mean == report.DASH else mean, None if std == report.DASH else std


def row_status(runs):
    counts = {state: sum(run.state == state for run in runs) for state in
              ('done', 'running', 'failed', 'interrupted', 'pending')}
    if counts['done'] == len(runs):
        return 'complete'
    if counts['pending'] == len(runs):
        return 'pending'
    return f'{counts["done"]}/{len(runs)} done' + ''.join(f', {n} {state}' for state, n in counts.items()
                                                         if n and state != 'done')


def results(rows, runs):
    return [row_result(row, [run for run in runs if run.row is row]) for row in rows]


def selection_label(selection, result=None):
    import report
    label = report.SELECTIONS.get(selection, selection)
    epochs = (result or {}).get('last5_epochs')
    if selection == 'last5_mean' and epochs is not None and epochs < LAST_EPOCHS:
        label = f'mean of the last {epochs} epochs: the runs had fewer than {LAST_EPOCHS}'
    return label


def ours_cell(result, key='ours'):
    if result[f'{key}_mean'] is None:
        return 'pending' if result['status'] == 'pending' else result['status']
    std = result[f'{key}_std']
    return f'{result[f"{key}_mean"]:.2f}' + (f' ± {std:.2f}' if std is not None else '') + f' (n={result["n"]})'


def paper_cell(value):
    return '—' if value is None else f'{value:.2f}'


def table_markdown(table, lines, runs, name, args):
    """The table as the paper lays it out (its rows and columns, each cell ours / theirs), then every row with its
    selection rules, difference and source, then the notes."""
    import report
    columns = list(table.columns) or list(dict.fromkeys(result['column'] for result in lines))
    columns = [c for c in columns if any(result['column'] == c for result in lines)]
    places = list(dict.fromkeys((result['group'], result['label']) for result in lines))
    grouped = any(group for group, _ in places)
    command = ' '.join([args.table, '--out', args.out] + ['--scale', 'smoke'] * (args.scale == 'smoke') +
                       ['--seeds', str(args.seeds)] * bool(args.seeds) + ['--rows', args.rows] * bool(args.rows))
    out = [f'# {table.title}', '', f'Made by `python reproduce.py {command}` on {time.strftime("%Y-%m-%d %H:%M")}, '
           f'from the run folders under `{os.path.join(args.out, name)}/`. Test accuracy in %; ours is the mean ± '
           'sample standard deviation over the seeds done (n), each run\'s number as report.py reads it, its epoch '
           'chosen by the paper\'s rule; "pending": no run done yet.' +
           (' **Smoke scale: synthetic data, tiny networks; the numbers say nothing.**' if args.scale == 'smoke' else
            ''), '']
    out += [table.note, ''] if table.note else []
    out += ['## As the paper lays it out', '', 'Each cell: ours / the paper\'s.', '']
    header = ['group'] * grouped + [''] + columns
    body = []
    for group, label in places:
        cells = []
        for column in columns:
            match = [r for r in lines if (r['group'], r['label'], r['column']) == (group, label, column)]
            cells.append(f'{ours_cell(match[0])} / {paper_cell(match[0]["paper"])}' if match else '')
        body.append([group] * grouped + [label] + cells)
    out += [report.markdown_table(header, body), '', '## Every row', '']
    header = ['row', 'paper', "paper's selection", 'ours', 'our selection', 'difference', 'beside it', 'status',
              'source']
    body = [[r['row'], paper_cell(r['paper']), PAPER_RULES[r['paper_selection']], ours_cell(r),
             selection_label(r['ours_selection'], r), '—' if r['difference'] is None else f'{r["difference"]:+.2f}',
             f'{ours_cell(r, "also")} ({selection_label(r["also_selection"], r)})' if 'also_selection' in r else '',
             r['status'], r['source'] or 'not in our sources'] for r in lines]
    out += [report.markdown_table(header, body), '', '## Notes', '']
    if any('also_selection' in r for r in lines):
        out.append('- Where the paper chose its epoch on the test set, ours is test-selected too (optimistic, as '
                   'theirs), and "beside it" gives, labelled, our validation-selected number, or the mean of the last '
                   '5 epochs where the runs hold no validation split: the fair one.')
    out += [f'- {r["row"]}: {r["note"]}' for r in lines if r['note']]
    out += [f'- {run.name}: {run.state}' + (f': {run.reason}' if run.reason else '')
            for run in runs if run.state in ('failed', 'running', 'interrupted')]
    return '\n'.join(out) + '\n'


def write_table(table, rows, runs, name, args):
    """OUT/<table>.md and OUT/<table>.csv (one line per row) from the runs done."""
    import report
    os.makedirs(args.out, exist_ok=True)
    lines = results(rows, runs)
    report.write_csv(os.path.join(args.out, f'{name}.csv'),
                     [{key: '' if value is None else value for key, value in line.items()} for line in lines],
                     CSV_COLUMNS)
    run_folder.write_text(os.path.join(args.out, f'{name}.md'), table_markdown(table, lines, runs, name, args))
    print(f'wrote {os.path.join(args.out, name)}.md and .csv: ' + ', '.join(
        f'{sum(r["status"] == s for r in lines)} rows {s}' for s in ('complete', 'pending')) +
          f', {sum(r["status"] not in ("complete", "pending") for r in lines)} partly done', flush=True)


def status_lines(rows, runs):
    states = ('done', 'running', 'failed', 'interrupted', 'pending')
    lines = []
    for row in rows:
        mine = [run for run in runs if run.row is row]
        lines.append(f'{row.name}: ' + ', '.join(f'{sum(r.state == s for r in mine)} {s}' for s in states))
        lines += [f'  {run.name}: {run.state}: {run.reason}' for run in mine if run.reason]
    lines.append(f'all {len(runs)} runs: ' + ', '.join(f'{sum(r.state == s for r in runs)} {s}' for s in states) +
                 ' (interrupted runs resume; failed ones run again with --retry_failed)')
    return lines


# ---------------------------------------------------------------- --plan

class StepTimes:
    """Seconds of one step of a run: from benchmark.py --json files (the training step of the run's model, the search
    step of its method; the nearest input size measured, scaled by the pixels), else --step_seconds, else unknown."""

    def __init__(self, files, step_seconds):
        self.measured = [(path, run_folder.read_json(path, 'benchmark.py JSON file')) for path in files]
        self.step_seconds = step_seconds

    def step(self, kind, args):
        """(seconds, where they come from) of one step of a run with these arguments."""
        key, field, name, what = (('search_step_img_s', 'method', args.method, 'search') if kind == 'search' else
                                  ('train_step_img_s', 'model', args.model, 'training'))
        found = [(path, m) for path, m in self.measured if m.get(key) and m.get('config', {}).get(field) == name]
        if found:
            path, m = min(found, key=lambda f: abs(f[1]['config']['image_size'] - args.image_size))
            size = m['config']['image_size']
            return (args.batch_size / m[key] * (args.image_size / size) ** 2,
                    f'{os.path.basename(path)}: {name} {what} step {m[key]:.1f} img/s at {size} px on {m["device"]}'
                    + (f', scaled to {args.image_size} px' if size != args.image_size else ''))
        if self.step_seconds is not None:
            return self.step_seconds, f'--step_seconds {self.step_seconds:g} (given)'
        return None, f'no step time for {name} (give --benchmark FILE or --step_seconds S)'


def plan(rows, runs, args):
    """Runs, epochs and GPU-hours of the table's runs not done yet and of all of them: each step's epochs, batch size
    and training images as its command resolves them (the training of a searched genotype with its method's
    recipe), each step taking a measured time; evaluation and data loading are not counted."""
    import synthetic
    import train
    import train_search
    times = StepTimes(args.benchmark, args.step_seconds)
    roots = data_roots(rows, args, create=False)
    totals = {'all': [0, 0, 0.0], 'left': [0, 0, 0.0]}
    lines, sources, unknown = [], set(), set()
    for row in rows:
        mine = [run for run in runs if run.row is row]
        described = []
        for run in mine:
            for kind in run.kinds:
                method = (row.search or {}).get('method', 'gla_fernet')
                recipe = train.recipe if not row.search else lambda a: (method, genotypes.METHODS[method]['train'])
                script = train_search if kind == 'search' else train
                parsed = cli.parse(script.parser, None, train_search.recipe if kind == 'search' else recipe,
                                   fresh_flags(row, run.seed, kind, roots, args.scale, weight_files(args)))
                images = SMOKE_IMAGES['n_train'] if args.scale == 'smoke' else sum(
                    synthetic.LAYOUTS[parsed.dataset]['counts']['train'][:parsed.affectnet_classes])
                steps = (int(images * parsed.train_portion) // parsed.batch_size if kind == 'search' else
                         math.ceil(images * (1 - parsed.val_portion) / parsed.batch_size))
                seconds, source = times.step(kind, parsed)
                (sources if seconds is not None else unknown).add(source)
                cost = [1, parsed.epochs, (seconds or 0.0) * steps * parsed.epochs]
                for key in ('all',) if run.runs[kind] and finished(kind, run.runs[kind]) else ('all', 'left'):
                    totals[key] = [a + b for a, b in zip(totals[key], cost)]
                if run is mine[0]:
                    described.append(f'{SCRIPTS[kind]} {parsed.epochs} epochs of {steps:,} steps (batch '
                                     f'{parsed.batch_size}, {images:,} images)' +
                                     (f', {seconds * steps * parsed.epochs / 3600:.2f} GPU-hours' if seconds else ''))
        lines.append(f'{row.name}: {len(mine)} seeds x [{"; ".join(described)}]')
    hours = lambda key: (f'{totals[key][2] / 3600:,.1f} GPU-hours' + (' (without the steps of unknown time)'
                                                                       if unknown else ''))
    lines += [f'all: {totals["all"][0]} runs, {totals["all"][1]:,} GPU-epochs, {hours("all")}',
              f'not done yet: {totals["left"][0]} runs, {totals["left"][1]:,} GPU-epochs, {hours("left")}',
              'step times: ' + ('; '.join(sorted(sources)) or 'none') + ''.join(f'; {u}' for u in sorted(unknown))]
    return lines


if __name__ == '__main__':
    try:
        main()
    except UserError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print('interrupted: the runs stopped with their checkpoints; run the same command again to resume them',
              file=sys.stderr)
        sys.exit(130)
