"""report.py and visualize.py: tables equal to the runs' metrics, means and standard deviations over seeds, every
run listed with its state, figures that exist and are readable, cell diagrams whose labels never collide."""
import csv
import itertools
import json
import os
import shutil
import statistics

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from PIL import Image

import genotypes
import report
import utils
import visualize
from cli import UserError


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
    assert '1 unfinished or failed run(s) left out' in text
    gla = json.load(open(os.path.join(runs['gla_seed0'], 'metrics.json')))['last']
    assert f'| {gla["accuracy"]:.2f} | {gla["balanced_accuracy"]:.2f} | {gla["f1"]:.2f} |' in text

    search = os.path.basename(runs['search'])
    expected = ['accuracy_vs_params', 'accuracy_vs_macs', f'{search}-curves', f'{search}-normal-cell',
                f'{search}-reduce-cell', f'{search}-normal-weights', f'{search}-reduce-weights']
    for name in names:
        expected += [f'{os.path.basename(runs[name])}-curves', f'{os.path.basename(runs[name])}-confusion']
    for name in expected:
        assert_picture(tmp_path / 'out' / 'figures' / f'{name}.png')
        assert f'(figures/{name}.png)' in text


def test_failed_and_older_runs_are_listed_with_dashes_for_what_they_lack(runs, tmp_path, monkeypatch):
    failed = tmp_path / 'eval-failed'  # what utils.run_main leaves of a run that stopped with an error
    shutil.copytree(runs['unfinished'], failed)
    (failed / utils.FAILED_MARKER).write_text('the loss became non-finite during training epoch 1\n')
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
    history = json.load(open(os.path.join(runs['search'], utils.ARCHITECTURE_WEIGHTS_FILE)))
    assert [record['epoch'] for record in history] == [0, 1]
    assert history[0]['primitives'] == genotypes.PRIMITIVES
    assert np.array(history[1]['normal']['ops']).shape == (14, 8) and len(history[1]['reduce']['edges']) == 14


def test_epoch_records_of_a_resumed_run_replace_the_repeated_epochs(tmp_path):
    path = str(tmp_path / 'history.json')
    for epoch in (0, 1, 2, 1, 2):  # killed after writing epoch 2 but before its checkpoint: resumed at epoch 1
        utils.write_epoch_record(path, epoch, {'value': epoch})
    assert json.load(open(path)) == [{'epoch': e, 'value': e} for e in (0, 1, 2)]


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
