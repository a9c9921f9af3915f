"""report.py and visualize.py: tables equal to the runs' metrics, means and standard deviations over seeds, every
run listed with its state, figures that exist and are readable, cell diagrams whose labels never collide."""
import csv
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

import genotypes
import pareto
import report
import run_folder
import utils
import visualize
from errors import UserError


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def assert_picture(path, min_side=300):
    """A PNG that is a picture: large enough, and neither blank nor one flat colour; its PDF beside it."""
    image = np.asarray(Image.open(path).convert('L'), dtype=np.float64)
    assert min(image.shape) >= min_side, (path, image.shape)
    assert image.std() > 10 and (image < 128).mean() > 0.005, path
    assert os.path.getsize(os.path.splitext(path)[0] + '.pdf') > 1000


def test_report_tables_equal_the_runs_metrics_with_means_over_seeds_and_figures(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = ['gla_seed0', 'gla_seed1', 'fgw_seed0', 'fgw_seed1', 'unfinished']
    argv = [runs[n] for n in names] + [runs['search'], 'nothing-*', '--out', 'out', '--latency_repeats', '1']
    report.main(report.parser.parse_args(argv), utils.Log())

    rows = {row['run']: row for row in read_csv(tmp_path / 'out' / 'runs.csv')}
    assert list(rows) == [os.path.basename(runs[n]) for n in names]  # every eval run, finished or not
    for name in names[:4]:
        row, metrics = rows[os.path.basename(runs[name])], json.load(open(os.path.join(runs[name], 'metrics.json')))
        assert row['status'] == 'complete' and row['epochs'] == '2/2' and row['dataset'] == 'synthetic'
        assert row['model'] == ('gla_fernet GLA_FERNet' if name.startswith('gla') else 'fgw_fer')
        assert row['noise'] == '0%' and row['seed'] == name[-1]
        assert int(row['params']) == metrics['params_without_auxiliary']
        assert int(row['macs']) * 2 == metrics['flops'] and float(row['model_size_mb']) == metrics['model_size_mb']
        assert float(row['latency_ms']) > 0
        selections = ('last', 'test_selected') + (('val_selected',) if name.startswith('fgw') else ())
        for selection in selections:  # FGW-FER's recipe holds out a validation split
            for key in ('accuracy', 'balanced_accuracy', 'f1', 'epoch'):
                assert float(row[f'{selection}_{key}']) == metrics[selection][key], (name, selection, key)
        if name.startswith('gla'):
            assert row['val_selected_accuracy'] == '-'  # no validation split: no validation-selected figure
    assert rows[os.path.basename(runs['unfinished'])]['status'] == 'unfinished: 1/2 epochs'

    groups = {row['model']: row for row in read_csv(tmp_path / 'out' / 'groups.csv')}
    assert set(groups) == {'gla_fernet GLA_FERNet', 'fgw_fer'}  # the unfinished run is left out
    for prefix, label in (('gla', 'gla_fernet GLA_FERNet'), ('fgw', 'fgw_fer')):
        group = groups[label]
        assert group['runs'] == '2' and group['seeds'] == '0 1'
        for selection, key in itertools.product(('last', 'test_selected'), ('accuracy', 'balanced_accuracy', 'f1')):
            values = [json.load(open(os.path.join(runs[f'{prefix}_seed{s}'], 'metrics.json')))[selection][key]
                      for s in (0, 1)]
            assert float(group[f'{selection}_{key}_mean']) == pytest.approx(statistics.mean(values))
            assert float(group[f'{selection}_{key}_std']) == pytest.approx(statistics.stdev(values))

    text = open(tmp_path / 'out' / 'report.md').read()
    assert 'pattern `nothing-*` matched no run folder' in text
    assert f'`{os.path.basename(runs["search"])}`: search run, complete' in text
    assert '1 unfinished, failed or damaged run(s) left out' in text
    gla = json.load(open(os.path.join(runs['gla_seed0'], 'metrics.json')))['last']
    assert f'| {gla["accuracy"]:.2f} | {gla["balanced_accuracy"]:.2f} | {gla["f1"]:.2f} |' in text

    search = os.path.basename(runs['search'])
    expected = ['accuracy_vs_params', 'accuracy_vs_macs', 'accuracy_vs_latency_ms', f'{search}-curves',
                f'{search}-normal-cell', f'{search}-reduce-cell', f'{search}-normal-weights',
                f'{search}-reduce-weights']
    for name in names:
        expected += [f'{os.path.basename(runs[name])}-curves', f'{os.path.basename(runs[name])}-confusion']
    for name in expected:
        assert_picture(tmp_path / 'out' / 'figures' / f'{name}.png')
        assert f'(figures/{name}.png)' in text


def test_failed_and_older_runs_are_listed_with_dashes_for_what_they_lack(runs, tmp_path, monkeypatch):
    failed = tmp_path / 'eval-failed'  # what utils.run_main leaves of a run that stopped with an error
    shutil.copytree(runs['unfinished'], failed)
    (failed / run_folder.FAILED).write_text('the loss became non-finite during training epoch 1\n')
    older = tmp_path / 'eval-older'  # a run of an earlier version: no --model, fewer keys in metrics.json
    shutil.copytree(runs['gla_seed1'], older)
    args = json.load(open(older / 'args.json'))
    del args['model']
    json.dump(args, open(older / 'args.json', 'w'))
    metrics = json.load(open(older / 'metrics.json'))
    for key in ('params', 'params_without_auxiliary', 'model_size_mb'):
        del metrics[key]
    json.dump(metrics, open(older / 'metrics.json', 'w'))
    monkeypatch.chdir(tmp_path)
    report.main(report.parser.parse_args(['eval-*', '--out', 'out', '--no-figures', '--no-latency']), utils.Log())
    rows = {row['run']: row for row in read_csv(tmp_path / 'out' / 'runs.csv')}
    assert rows['eval-failed']['status'] == 'failed after 1/2 epochs'
    assert rows['eval-older']['status'] == 'complete' and rows['eval-older']['latency_ms'] == '-'
    assert rows['eval-older']['params'] == '-' and rows['eval-older']['model_size_mb'] == '-'
    assert rows['eval-older']['model'] == 'gla_fernet GLA_FERNet'  # an older run without --model trained gla_fernet
    text = open(tmp_path / 'out' / 'report.md').read()
    assert 'eval-failed`: eval run, failed after 1/2 epochs (the loss became non-finite during training epoch 1)' in text
    assert '| eval-older | complete | gla_fernet GLA_FERNet | synthetic | 0% | 1 | 2/2 | - | ' in text


def test_report_without_runs_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no run folder matches eval-\\* search-\\*"):
        report.main(report.parser.parse_args(['eval-*', 'search-*']), utils.Log())


def test_search_records_its_architecture_weights_every_epoch(runs):
    history = json.load(open(os.path.join(runs['search'], run_folder.ARCHITECTURE_WEIGHTS)))
    assert [record['epoch'] for record in history] == [0, 1]
    assert history[0]['primitives'] == genotypes.PRIMITIVES
    assert np.array(history[1]['normal']['ops']).shape == (14, 8) and len(history[1]['reduce']['edges']) == 14


def copy_run(source, destination, args=None, metrics=None, curves=False):
    """A copy of a run folder with some of its arguments and metrics changed (None: delete the key); without its
    TensorBoard log unless `curves` (drawing the curves is slow, and most tests need only the tables)."""
    shutil.copytree(source, destination, ignore=None if curves else shutil.ignore_patterns(run_folder.TENSORBOARD))
    for name, changes in ((run_folder.ARGS, args), (run_folder.METRICS, metrics)):
        content = json.load(open(destination / name))
        for key, value in (changes or {}).items():
            if value is None:
                content.pop(key, None)
            else:
                content[key] = value
        json.dump(content, open(destination / name, 'w'))
    return destination


def make_report(*argv, log=None):
    report.main(report.parser.parse_args([*argv, '--no-latency']), log or utils.Log())


def test_the_model_of_a_searched_genotype_names_its_search_method(runs, tmp_path, monkeypatch):
    search = tmp_path / 'search-PCD-synthetic-20261201-101010'
    shutil.copytree(runs['search'], search)
    (search / run_folder.METHOD).write_text(json.dumps({'method': 'pc_darts'}))
    genotype_text = (search / run_folder.GENOTYPE).read_text().strip()
    args = {'arch': None, 'genotype_file': str(search / run_folder.GENOTYPE)}
    copy_run(runs['gla_seed0'], tmp_path / 'eval-new', args=args,
             metrics={'genotype': genotype_text, 'recipe': {'name': 'pc_darts', 'settings': {}}})
    copy_run(runs['gla_seed1'], tmp_path / 'eval-older', args=args,  # no recipe: the search's method file says
             metrics={'genotype': genotype_text, 'recipe': None})
    monkeypatch.chdir(tmp_path)
    make_report('eval-*', '--out', 'out', '--no-figures')
    rows = {row['run']: row for row in read_csv(tmp_path / 'out' / 'runs.csv')}
    for name in ('eval-new', 'eval-older'):
        assert rows[name]['model'] == 'pc_darts genotype (search-PCD-synthetic-20261201-101010)'


def test_mean_over_seeds_never_pools_a_smoke_test_with_full_runs(runs, tmp_path, monkeypatch):
    copy_run(runs['gla_seed1'], tmp_path / 'eval-smoke', args={'epochs': 1, 'seed': 5})
    monkeypatch.chdir(tmp_path)
    make_report(runs['gla_seed0'], runs['gla_seed1'], 'eval-smoke', '--out', 'out', '--no-figures')
    groups = {row['setting']: row for row in read_csv(tmp_path / 'out' / 'groups.csv')}
    assert set(groups) == {'epochs 2', 'epochs 1'}  # each row names what sets it apart
    assert groups['epochs 2']['seeds'] == '0 1' and groups['epochs 1']['seeds'] == '5'
    values = [json.load(open(os.path.join(runs[f'gla_seed{s}'], 'metrics.json')))['last']['accuracy'] for s in (0, 1)]
    assert float(groups['epochs 2']['last_accuracy_mean']) == pytest.approx(statistics.mean(values))


def noisy_runs(runs, folder, methods):
    """Copies of a tiny run as runs of noise methods: {(method, seed): (extra train.py flags, last AUROC)}."""
    for (method, seed), (flags, auroc) in methods.items():
        name = f'eval-{method}-{"-".join(f"{k}{v}" for k, v in flags.items())}-{seed}'
        copy_run(runs[f'gla_seed{seed}'], folder / name, args={'noise_method': method, 'noise': 30, **flags},
                 metrics={'label_noise': {'method': method, 'auroc': auroc}})


def test_a_setting_names_only_the_flags_of_its_own_noise_method(runs, tmp_path, monkeypatch):
    noisy_runs(runs, tmp_path, {('scn', 0): ({'scn_relabel_epoch': 4}, 0.6), ('scn', 1): ({}, 0.6),
                                ('eac', 0): ({}, 0.7), ('rul', 0): ({}, 0.5), ('nla', 0): ({}, 0.6)})
    monkeypatch.chdir(tmp_path)
    make_report('eval-*', '--out', 'out', '--no-figures')
    settings = sorted(row['setting'] for row in read_csv(tmp_path / 'out' / 'groups.csv'))
    # SCN's two settings differ in SCN's flag; EAC, RUL and NLA are told apart by their method alone
    assert settings == ['', '', '', 'scn_relabel_epoch 4', 'scn_relabel_epoch 9']


def test_groups_give_the_noise_method_and_the_mean_auroc_over_seeds(runs, tmp_path, monkeypatch):
    noisy_runs(runs, tmp_path, {('eac', 0): ({}, 0.7), ('eac', 1): ({}, 0.74), ('rul', 0): ({}, 0.5),
                                ('rul', 1): ({}, None)})  # None: AUROC undefined in one run
    monkeypatch.chdir(tmp_path)
    make_report('eval-*', '--out', 'out', '--no-figures')
    groups = {row['noise_method']: row for row in read_csv(tmp_path / 'out' / 'groups.csv')}
    assert set(groups) == {'eac', 'rul'} and groups['eac']['seeds'] == '0 1'
    assert float(groups['eac']['auroc_mean']) == pytest.approx(0.72)
    assert float(groups['eac']['auroc_std']) == pytest.approx(statistics.stdev([0.7, 0.74]))
    assert groups['rul']['auroc_mean'] == '-' and groups['rul']['auroc_std'] == '-'
    table = open(tmp_path / 'out' / 'report.md').read().split('## Mean ± standard deviation over seeds')[1]
    header = [cell.strip() for cell in table.split('\n| ')[1].split('|')]
    assert header[:4] == ['model', 'dataset', 'noise', 'method'] and 'AUROC' in header
    assert '| gla_fernet GLA_FERNet | synthetic | 30% | eac | ' in table and '| 0.720 ± 0.028 |' in table


def test_a_mean_of_fewer_than_5_epochs_says_how_many(runs, tmp_path, monkeypatch):
    metrics = json.load(open(os.path.join(runs['gla_seed1'], run_folder.METRICS)))
    assert metrics['last5_mean']['epochs'] == 2  # the tiny runs have 2 epochs
    copy_run(runs['gla_seed1'], tmp_path / 'eval-long', args={'epochs': 5},
             metrics={'last5_mean': {**metrics['last5_mean'], 'epochs': 5}})
    monkeypatch.chdir(tmp_path)
    make_report(runs['gla_seed0'], runs['gla_seed1'], 'eval-long', '--out', 'out', '--no-figures')
    rows = {row['run']: row for row in read_csv(tmp_path / 'out' / 'runs.csv')}
    assert rows[os.path.basename(runs['gla_seed1'])]['last5_mean_epochs'] == '2'
    assert rows['eval-long']['last5_mean_epochs'] == '5'
    groups = {row['setting']: row for row in read_csv(tmp_path / 'out' / 'groups.csv')}
    assert groups['epochs 2']['last5_mean_epochs'] == '2' and groups['epochs 5']['last5_mean_epochs'] == '5'
    text = open(tmp_path / 'out' / 'report.md').read()
    short, long = (line for name in (os.path.basename(runs['gla_seed1']), 'eval-long')
                   for line in text.splitlines() if line.startswith(f'| {name} |'))
    last5 = metrics['last5_mean']
    assert (f'| {last5["accuracy"]:.2f} (last 2) | {last5["balanced_accuracy"]:.2f} (last 2) | '
            f'{last5["f1"]:.2f} (last 2) |') in short
    assert f'| {last5["accuracy"]:.2f} | {last5["balanced_accuracy"]:.2f} | {last5["f1"]:.2f} |' in long
    assert '(last 2)' in [line for line in text.splitlines() if line.startswith('| gla_fernet GLA_FERNet |')
                          and '| 0 1 |' in line][0]


def test_a_run_given_twice_counts_once(runs, tmp_path, monkeypatch):
    copy_run(runs['fgw_seed0'], tmp_path / 'eval-a')
    monkeypatch.chdir(tmp_path)
    make_report('eval-a', str(tmp_path / 'eval-a'), './eval-a/', '--out', 'out', '--no-figures')
    rows = read_csv(tmp_path / 'out' / 'runs.csv')
    assert [row['run'] for row in rows] == ['eval-a']


def test_runs_of_the_same_name_from_two_machines_keep_their_own_figures(runs, tmp_path, monkeypatch):
    name = os.path.basename(runs['fgw_seed0'])
    copy_run(runs['fgw_seed0'], tmp_path / 'machine-a' / name)
    copy_run(runs['fgw_seed1'], tmp_path / 'machine-b' / name)
    monkeypatch.chdir(tmp_path)
    make_report(f'machine-a/{name}', f'machine-b/{name}', '--out', 'out')
    rows = {row['run']: row for row in read_csv(tmp_path / 'out' / 'runs.csv')}
    assert set(rows) == {f'machine-a/{name}', f'machine-b/{name}'}
    text = open(tmp_path / 'out' / 'report.md').read()
    confusions = {machine: tmp_path / 'out' / 'figures' / f'{machine}-{name}-confusion.png'
                  for machine in ('machine-a', 'machine-b')}
    for path in confusions.values():
        assert_picture(path)
        assert f'(figures/{path.name})' in text
    assert confusions['machine-a'].read_bytes() != confusions['machine-b'].read_bytes()


def test_a_folder_holding_runs_is_searched_and_an_empty_one_says_so(runs, tmp_path, monkeypatch):
    copy_run(runs['fgw_seed0'], tmp_path / 'runs' / 'eval-one')
    copy_run(runs['fgw_seed1'], tmp_path / 'runs' / 'machine-b' / 'eval-two')  # two levels down
    (tmp_path / 'runs' / 'notes').mkdir()
    (tmp_path / 'empty').mkdir()
    monkeypatch.chdir(tmp_path)
    make_report('runs', '--out', 'out', '--no-figures')
    assert [row['run'] for row in read_csv(tmp_path / 'out' / 'runs.csv')] == ['eval-one', 'eval-two']
    with pytest.raises(UserError, match='empty is not a run folder and holds none'):
        make_report('empty', '--out', 'out2', '--no-figures')


def test_damaged_and_foreign_files_are_one_line_each_and_the_others_go_on(runs, tmp_path, monkeypatch):
    good = copy_run(runs['fgw_seed0'], tmp_path / 'eval-good')
    damaged = {'eval-truncated': '{"complete": true, "last": {"accur', 'eval-list': '[1, 2, 3]',
               'eval-foreign': json.dumps({'complete': True, 'last': {'accuracy': '88.1%'}}),
               'eval-ragged': json.dumps({'class_names': ['a', 'b'], 'last': {'confusion_matrix': [[1]]}})}
    for name, content in damaged.items():
        copy_run(runs['fgw_seed1'], tmp_path / name)
        (tmp_path / name / run_folder.METRICS).write_text(content)
    search = tmp_path / 'search-damaged'
    shutil.copytree(runs['search'], search, ignore=shutil.ignore_patterns(run_folder.TENSORBOARD))
    (search / run_folder.ARCHITECTURE_WEIGHTS).write_text('[{"epoch": 0, "prim')
    monkeypatch.chdir(tmp_path)
    make_report('eval-*', 'search-*', '--out', 'out')
    rows = {row['run']: row for row in read_csv(tmp_path / 'out' / 'runs.csv')}
    assert rows['eval-good']['status'] == 'complete'
    assert float(rows['eval-good']['last_accuracy']) == json.load(open(good / run_folder.METRICS))['last']['accuracy']
    text = open(tmp_path / 'out' / 'report.md').read()
    reasons = {'eval-truncated': 'may be truncated', 'eval-list': 'holds a JSON list',
               'eval-foreign': '"accuracy" is "88.1%"', 'eval-ragged': 'confusion matrix is not 2 x 2',
               'search-damaged': f'{run_folder.ARCHITECTURE_WEIGHTS} is not a readable file'}
    for name, reason in reasons.items():
        line, = [line for line in text.splitlines() if line.startswith(f'- `{name}`')]
        assert 'run, damaged (' in line and reason in line, line
        assert rows.get(name, {'status': 'damaged'})['status'] == 'damaged'
    assert os.path.isfile(tmp_path / 'out' / 'figures' / 'search-damaged-normal-cell.png')  # its genotype is intact


def test_out_naming_a_file_is_refused_at_once(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'report.md').write_text('notes')
    with pytest.raises(UserError, match='--out report.md is a file'):
        make_report(runs['fgw_seed0'], '--out', 'report.md')


def test_writers_of_one_file_at_once_never_collide(tmp_path, monkeypatch):
    """Two reports writing one --out folder at once: another writer's file appears while one writes; each writes
    under its own temporary name, so both finish and the file is whole."""
    from matplotlib.figure import Figure

    def interrupted_by_another_writer(real, write_again):
        def write(*args, **kwargs):
            result = real(*args, **kwargs)
            if not interrupted:
                interrupted.append(True)
                write_again()
            return result
        return write

    interrupted = []
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1])
    path = str(tmp_path / 'figure.png')
    monkeypatch.setattr(Figure, 'savefig', interrupted_by_another_writer(
        Figure.savefig, lambda: visualize.save_figure(figure, path)))
    visualize.save_figure(figure, path)
    assert Image.open(path).size == (300, 300) and os.path.getsize(tmp_path / 'figure.pdf') > 0

    interrupted.clear()
    path = str(tmp_path / 'runs.csv')
    monkeypatch.setattr(csv.DictWriter, 'writerows', interrupted_by_another_writer(
        csv.DictWriter.writerows, lambda: report.write_csv(path, [{'run': 'other'}], ['run'])))
    report.write_csv(path, [{'run': 'mine'}], ['run'])
    assert read_csv(path) == [{'run': 'mine'}]
    assert sorted(os.listdir(tmp_path)) == ['figure.pdf', 'figure.png', 'runs.csv']  # no temporary file left


def test_a_long_report_says_something_at_least_every_30_seconds(runs, tmp_path, monkeypatch):
    """Reading, measuring and drawing many runs: the clock advances 25 s per run and per figure; no two lines of
    the log are further apart than 30 s."""
    now = [0.0]
    lines = []

    def slow(function):
        def run(*args, **kwargs):
            now[0] += 25
            return function(*args, **kwargs)
        return run

    for name in ('fgw_seed0', 'fgw_seed1', 'gla_seed0'):
        copy_run(runs[name], tmp_path / f'eval-{name}')
    monkeypatch.setattr(report.time, 'monotonic', lambda: now[0])
    monkeypatch.setattr(report, 'read_run', slow(report.read_run))
    monkeypatch.setattr(report, 'cpu_latency_ms', slow(lambda *args: 1.0))
    monkeypatch.setattr(visualize, 'plot_confusion_matrix', slow(visualize.plot_confusion_matrix))
    monkeypatch.chdir(tmp_path)
    report.main(report.parser.parse_args(['eval-*', '--out', 'out']), lambda message: lines.append(now[0]))
    assert now[0] >= 3 * 3 * 25  # each run was read, measured and drawn
    assert lines[0] == 0 and max(b - a for a, b in zip(lines, lines[1:])) <= 30


def drawn_figure(monkeypatch, draw):
    """The Figure that draw() saves, laid out as saved, and a renderer to measure it."""
    saved = []
    real = visualize.save_figure
    monkeypatch.setattr(visualize, 'save_figure', lambda figure, path: (real(figure, path), saved.append(figure)))
    draw()
    figure, = saved
    return figure, FigureCanvasAgg(figure).get_renderer()


@pytest.mark.parametrize('cost, low, high', [('macs', 3e4, 5e4), ('macs', 4e7, 9e8), ('params', 2e5, 8e9),
                                             ('latency_ms', 3.9, 6.1), ('latency_ms', 0.4, 80)])
def test_accuracy_versus_cost_is_readable_with_the_names_users_give(tmp_path, monkeypatch, cost, low, high):
    labels = ['fgw_fer', 'fgw_fer (epochs 1)', 'gla_fernet (MACs ≤ 262M, latency ≤ 4.5 ms)',
              'pc_darts genotype (pcdarts-noise30-seed2)',
              'darts genotype (darts-second-order-long)', 'emonas genotype (emonas-rafdb-reproduction)',
              'searched genotype (search-from-machine-b)', 'gla_fernet genotype 3fa9c1']
    costs = np.geomspace(low, high, len(labels))
    points = [{'model': label, 'panel': f'rafdb, noise {noise}%', cost: value, 'accuracy': 80 + k % 5 - noise / 10,
               'std': 0.5, 'runs': 2} for noise in (0, 30) for k, (label, value) in enumerate(zip(labels, costs))]
    figure, renderer = drawn_figure(monkeypatch, lambda: visualize.plot_accuracy_versus_cost(
        points, cost, str(tmp_path / 'cost.png'), 'test accuracy (%), last epoch'))
    legend = figure.legends[0].get_window_extent(renderer)
    inside = lambda box: (box.x0 >= figure.bbox.x0 - 1 and box.x1 <= figure.bbox.x1 + 1 and
                          box.y0 >= figure.bbox.y0 - 1 and box.y1 <= figure.bbox.y1 + 1)
    assert inside(legend)
    boxes = [ax.get_tightbbox(renderer) for ax in figure.axes]  # with tick labels, axis label and title
    for k, (ax, box) in enumerate(zip(figure.axes, boxes)):
        assert inside(box) and not box.overlaps(legend)  # nothing cut, the legend covers nothing
        assert not any(box.overlaps(other) for other in boxes[k + 1:])  # the panels' labels never meet
        assert ax.get_position().width > 0.7 / len(figure.axes)  # the legend takes no panel's width
        ticks = sorted((label.get_window_extent(renderer) for label in ax.get_xticklabels()
                        if label.get_text() and ax.get_xlim()[0] <= label.get_position()[0] <= ax.get_xlim()[1]),
                       key=lambda b: b.x0)
        assert len(ticks) >= 2
        assert all(right.x0 - left.x1 > 0.1 * figure.dpi for left, right in zip(ticks, ticks[1:]))  # >= 0.1 inch


# ---------------------------------------------------------------- accuracy against cost, budgets

def test_the_pareto_front_keeps_what_no_other_point_beats():
    point = lambda name, cost, accuracy, panel='a': {'name': name, 'cost': cost, 'accuracy': accuracy, 'panel': panel}
    points = [point('cheap', 1, 80), point('better', 2, 85), point('same cost, worse', 2, 83),
              point('same accuracy, costlier', 3, 85), point('best', 4, 90), point('tie with best', 4, 90),
              point('dominated', 5, 70)]
    front = [p['name'] for p in pareto.pareto_front(points, 'cost')]
    assert front == ['cheap', 'better', 'best', 'tie with best']  # equal in both: neither beats the other
    assert not pareto.dominates(points[4], points[5], 'cost') and not pareto.dominates(points[0], points[0], 'cost')
    assert pareto.pareto_front(points[::-1], 'cost') == pareto.pareto_front(points, 'cost')[:2] + [points[5], points[4]]
    assert pareto.pareto_front([points[3]], 'cost') == [points[3]] and pareto.pareto_front([], 'cost') == []
    # one front per panel; a point missing its cost or accuracy is on none
    other = [point('other panel', 9, 10, 'b'), point('no cost', '-', 99, 'b'), point('no accuracy', 1, None, 'b')]
    fronts = pareto.fronts(points + other, 'cost')
    assert [p['name'] for p in fronts['b']] == ['other panel'] and fronts['a'] == pareto.pareto_front(points, 'cost')


def test_budgets_read_compactly_and_two_searches_for_one_budget_keep_apart():
    assert pareto.budgets_label({'latency_ms': 4.5, 'macs': 262144, 'params': 1.5e6}) == \
        'params ≤ 1.5M, MACs ≤ 262k, latency ≤ 4.5 ms'
    assert pareto.meets(300, 300) == 'yes' and pareto.meets(301, 300) == 'no'
    group = lambda model, short, search: {'model': model, 'short_model': short, 'search': search, 'setting': '',
                                          'noise_method': 'none'}
    groups = [group('gla_fernet genotype (search-a)', 'gla_fernet (MACs ≤ 1M)', 'a'),
              group('gla_fernet genotype (search-b)', 'gla_fernet (MACs ≤ 1M)', 'b'),
              group('gla_fernet genotype (search-c)', 'gla_fernet (MACs ≤ 2M)', 'c'),
              group('fgw_fer', 'fgw_fer', '-'), group('fgw_fer', 'fgw_fer', '-')]  # one network in two panels
    assert pareto.figure_labels(groups) == ['gla_fernet (MACs ≤ 1M) [a]', 'gla_fernet (MACs ≤ 1M) [b]',
                                            'gla_fernet (MACs ≤ 2M)', 'fgw_fer', 'fgw_fer']


def test_a_bad_budget_flag_is_refused_with_a_clear_message(capsys, tmp_path, monkeypatch):
    for flag, value, message in (('--budget_macs', 'lots', 'must be a positive number such as 300000, 300k, 1.5M'),
                                 ('--budget_params', '0', 'must be a positive number, got 0'),
                                 ('--budget_latency_ms', '-2', 'must be a positive number, got -2')):
        with pytest.raises(SystemExit):
            report.parser.parse_args(['eval-*', flag, value])
        assert f'argument {flag}: {message}' in capsys.readouterr().err
    args = report.parser.parse_args(['eval-*', '--budget_params', '300k', '--budget_macs', '2e8'])
    assert (args.budget_params, args.budget_macs) == (300e3, 2e8)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match='--budget_latency_ms compares the latency this report measures, and '
                                        '--no-latency measures none'):
        make_report('eval-*', '--budget_latency_ms', '5')
    script = subprocess.run([sys.executable, report.__file__, 'eval-*', '--budget_latency_ms', '5', '--no-latency'],
                            capture_output=True, text=True)
    assert script.returncode == 2 and '--no-latency measures none: drop one of them' in script.stderr


def budgeted_search(runs, folder, budgets, target):
    """A copy of the session's search as a search for `budgets` at `target` (what train_search.py writes)."""
    shutil.copytree(runs['search'], folder, ignore=shutil.ignore_patterns(run_folder.TENSORBOARD))
    method = json.load(open(folder / run_folder.METHOD))
    (folder / run_folder.METHOD).write_text(json.dumps({**method, 'target': target, 'budgets': budgets}))
    genotype = (folder / run_folder.GENOTYPE).read_text().strip()
    return ({'arch': None, 'genotype_file': str(folder / run_folder.GENOTYPE)},
            {'genotype': genotype, 'recipe': {'name': 'gla_fernet', 'settings': {}}})


def test_a_network_from_a_budgeted_search_says_which_budgets_it_meets(runs, tmp_path, monkeypatch):
    trained = json.load(open(os.path.join(runs['gla_seed0'], run_folder.METRICS)))
    params, macs = trained['params_without_auxiliary'], trained['macs']
    target = {'channels': 8, 'layers': 3, 'image_size': 16, 'stem_stride': 1, 'stem_multiplier': 3, 'num_classes': 7}
    args, metrics = budgeted_search(runs, tmp_path / 'search-tight-synthetic-20261201-101010',
                                    {'params': params, 'macs': macs - 1, 'latency_ms': 2.0}, target)
    # train.py records --genotype_file as given: relative to where it ran, which is where it made its run folder
    relative = {**args, 'genotype_file': os.path.relpath(args['genotype_file'], tmp_path)}
    copy_run(runs['gla_seed0'], tmp_path / 'eval-at-target', args=relative, metrics=metrics)
    copy_run(runs['gla_seed1'], tmp_path / 'eval-wider', args={**args, 'init_channels': 16}, metrics=metrics)
    copy_run(runs['fgw_seed0'], tmp_path / 'eval-fgw')
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')  # a report made from another folder finds the search all the same
    make_report(str(tmp_path / 'eval-*'), '--out', str(tmp_path / 'out'), '--no-figures', '--budget_params', '1M',
                '--budget_macs', str(macs))
    rows = {row['run']: row for row in read_csv(tmp_path / 'out' / 'runs.csv')}
    fgw_params = json.load(open(os.path.join(runs['fgw_seed0'], run_folder.METRICS)))['params_without_auxiliary']
    assert rows['eval-fgw']['meets_params'] == ('yes' if fgw_params <= 1e6 else 'no')
    assert rows['eval-at-target']['meets_params'] == 'yes' and rows['eval-at-target']['meets_macs'] == 'yes'
    searched = rows['eval-at-target']
    assert searched['search_budgets'] == pareto.budgets_label({'params': params, 'macs': macs - 1, 'latency_ms': 2})
    assert float(searched['search_budget_params']) == params and float(searched['search_budget_macs']) == macs - 1
    assert (searched['search_budget_params_met'], searched['search_budget_macs_met']) == ('yes', 'no')
    assert searched['search_budget_latency_ms_met'] == 'table'  # the table's device, not this CPU
    assert searched['at_search_target'] == 'yes'
    assert rows['eval-wider']['at_search_target'] == 'no: init_channels 16 (target 8)'
    assert rows['eval-fgw']['search_budgets'] == '-' and rows['eval-fgw']['at_search_target'] == '-'
    legend = report.architecture_label(*(json.load(open(tmp_path / 'eval-wider' / name))
                                         for name in (run_folder.ARGS, run_folder.METRICS)))[1]
    assert legend == f'gla_fernet ({searched["search_budgets"]})'  # a budget sweep reads on the figures

    groups = {row['setting'] or row['model']: row for row in read_csv(tmp_path / 'out' / 'groups.csv')}
    at_target = groups['init_channels 8']
    assert at_target['search_budget_macs_met'] == 'no' and at_target['meets_macs'] == 'yes'
    assert all(row['pareto'] in ('none', 'params, macs', 'params', 'macs') for row in groups.values())
    text = open(tmp_path / 'out' / 'report.md').read()
    assert '| params ≤ 1M | MACs ≤ ' in text and '| search budgets | at search target |' in text
    short = pareto.short_cost
    cell = f'params ≤ {short("params", params)}: yes, MACs ≤ {short("macs", macs - 1)}: no, latency ≤ 2 ms: table'
    assert cell in text
    section = text.split('## Accuracy against cost')[1]
    assert '- params, synthetic, noise 0%: ' in section and '- MACs, synthetic, noise 0%: ' in section
    assert 'Latency was not measured (--no-latency): no latency front' in section


def test_the_pareto_column_names_the_costs_a_group_is_on_the_front_of(runs, tmp_path, monkeypatch):
    metrics = lambda name: json.load(open(os.path.join(runs[name], run_folder.METRICS)))
    gla, fgw = metrics('gla_seed0'), metrics('fgw_seed0')
    # a network as costly as GLA-FERNet in parameters but more accurate, and cheapest in MACs but least accurate
    copy_run(runs['gla_seed0'], tmp_path / 'eval-gla')
    copy_run(runs['fgw_seed0'], tmp_path / 'eval-fgw', metrics={
        'params_without_auxiliary': gla['params_without_auxiliary'], 'macs': 1, 'flops': 2,
        'last': {**fgw['last'], 'accuracy': gla['last']['accuracy'] - 1}})
    copy_run(runs['fgw_seed1'], tmp_path / 'eval-fgw-better', metrics={
        'params_without_auxiliary': gla['params_without_auxiliary'], 'macs': gla['macs'] * 2, 'flops': gla['macs'] * 4,
        'last': {**fgw['last'], 'accuracy': gla['last']['accuracy'] + 1}})
    monkeypatch.chdir(tmp_path)
    make_report('eval-*', '--out', 'out', '--no-figures')
    pareto_of = {(row['model'], row['seeds']): row['pareto'] for row in read_csv(tmp_path / 'out' / 'groups.csv')}
    # in parameters, all equal, only the most accurate; in MACs each is cheaper or more accurate than the others
    assert pareto_of == {('gla_fernet GLA_FERNet', '0'): 'macs', ('fgw_fer', '1'): 'params, macs',
                         ('fgw_fer', '0'): 'macs'}


def test_accuracy_against_each_cost_is_drawn_and_no_latency_figure_without_latency(runs, tmp_path, monkeypatch):
    copy_run(runs['gla_seed0'], tmp_path / 'eval-gla')
    copy_run(runs['fgw_seed0'], tmp_path / 'eval-fgw')
    monkeypatch.chdir(tmp_path)
    report.main(report.parser.parse_args(['eval-*', '--out', 'timed', '--latency_repeats', '1',
                                          '--budget_latency_ms', '1e6']), utils.Log())
    for cost in ('params', 'macs', 'latency_ms'):
        assert_picture(tmp_path / 'timed' / 'figures' / f'accuracy_vs_{cost}.png')
        assert f'(figures/accuracy_vs_{cost}.png)' in open(tmp_path / 'timed' / 'report.md').read()
    assert {row['meets_latency_ms'] for row in read_csv(tmp_path / 'timed' / 'groups.csv')} == {'yes'}
    assert any('latency' in row['pareto'] for row in read_csv(tmp_path / 'timed' / 'groups.csv'))
    make_report('eval-*', '--out', 'untimed')
    figures = sorted(name for name in os.listdir(tmp_path / 'untimed' / 'figures') if name.startswith('accuracy'))
    assert figures == [f'accuracy_vs_{cost}.{ext}' for cost in ('macs', 'params') for ext in ('pdf', 'png')]
    assert 'no accuracy-versus-latency figure' in open(tmp_path / 'untimed' / 'report.md').read()


# ---------------------------------------------------------------- cell diagrams

def every_cell_of_four_nodes():
    """One cell per way of choosing the two inputs of each of 4 nodes (180), with the widest operation names."""
    choices = [list(itertools.combinations(range(node + 2), 2)) for node in range(4)]
    for inputs in itertools.product(*choices):
        yield [('dil_conv_5x5', source) for pair in inputs for source in pair]


def overlaps(a, b):
    """Whether two boxes (x0, y0, x1, y1) share any area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def segment_box(p, q):
    return (min(p[0], q[0]), min(p[1], q[1]), max(p[0], q[0]), max(p[1], q[1]))


def test_cell_labels_never_touch_another_label_a_box_or_another_edge():
    figure = visualize.cell_figure([('dil_conv_5x5', 0), ('conv_7x1_1x7', 1)], [2])
    text, renderer, dpi = figure.axes[0].texts, FigureCanvasAgg(figure).get_renderer(), figure.dpi
    widest = max(t.get_window_extent(renderer).width for t in text if t.get_gid() == 'op-label') / dpi
    high = max(t.get_window_extent(renderer).height for t in text if t.get_gid() == 'op-label') / dpi
    cells = list(every_cell_of_four_nodes()) + [genotypes.NASNet.normal, genotypes.AmoebaNet.reduce]
    for ops in cells:
        layout = visualize.cell_layout(ops, range(2, 2 + len(ops) // 2))
        labels = [(e['label'][0] - widest / 2, e['label'][1] - high / 2, e['label'][0] + widest / 2,
                   e['label'][1] + high / 2) for e in layout['edges']]
        boxes = [(x - visualize.BOX_W / 2, -visualize.BOX_H / 2, x + visualize.BOX_W / 2, visualize.BOX_H / 2)
                 for x, _, _ in layout['nodes']]
        for i, (label, edge) in enumerate(zip(labels, layout['edges'])):
            assert not any(overlaps(label, other) for other in labels[i + 1:]), ops
            assert not any(overlaps(label, box) for box in boxes), ops
            for other in layout['edges']:
                if other is not edge:
                    for p, q in zip(other['points'], other['points'][1:]):
                        assert not overlaps(label, segment_box(p, q)), (ops, edge['op'], other['op'])


def test_cell_diagrams_are_pictures_with_spaced_titles(tmp_path):
    visualize.plot_genotype(genotypes.format_genotype(genotypes.GLA_FERNet), str(tmp_path))
    for name in ('normal', 'reduce'):
        assert_picture(tmp_path / f'{name}.png', min_side=200)
    figure = visualize.cell_figure(genotypes.GLA_FERNet.normal, genotypes.GLA_FERNet.normal_concat, 'normal cell')
    assert 'normal cell' in [t.get_text() for t in figure.axes[0].texts]
