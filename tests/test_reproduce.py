"""reproduce.py and tables.py: every published table's commands parse against the scripts' own parsers; the plan and
the status say what they should; the table's numbers are report.py's; and, marked `tables` (run apart: pytest -m
tables), smoke tables end to end: a table as report.py reads it, a killed table that resumes to the same weights and
the same table, a failed run reported with its reason while the others complete."""
import contextlib
import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

import cli
import launchers
import reproduce
import tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run_main(argv):
    """reproduce.main's printed output."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        reproduce.main(argv)
    return out.getvalue()


def dry_run_commands(text):
    """[(working folder, script, argv)] of --dry_run's output."""
    commands = []
    for line in text.splitlines():
        if line.startswith('cd '):
            folder, command = line[3:].split(' && ', 1)
            words = shlex.split(command)
            commands.append((shlex.split(folder)[0], os.path.basename(words[1]), words[2:]))
    return commands


def fake_run(job_folder, kind='eval', accuracy=(50.0, 40.0, 45.0), seed=0, model='fgw_fer', complete=True,
             checkpoint=False):
    """A run folder as train.py leaves it, without training: args.json and metrics.json (test-selected, last-5 mean
    and validation-selected accuracies as given)."""
    folder = os.path.join(job_folder, f'{kind}-x-s{seed}-rafdb-20260101-00000{seed}')
    os.makedirs(folder)
    with open(os.path.join(folder, 'args.json'), 'w') as f:
        json.dump({'kind': kind, 'model': model, 'dataset': 'rafdb', 'seed': seed, 'epochs': 3}, f)
    record = lambda value: {'accuracy': value, 'balanced_accuracy': value, 'f1': value, 'epoch': 2}
    test, last5, val = accuracy
    with open(os.path.join(folder, 'metrics.json'), 'w') as f:
        json.dump({'complete': complete, 'epochs_done': 3 if complete else 1, 'epochs': 3, 'params': 1000,
                   'params_without_auxiliary': 1000, 'macs': 10, 'last': record(last5),
                   'test_selected': record(test), 'val_selected': record(val),
                   'last5_mean': {**record(last5), 'epochs': 3}}, f)
    if checkpoint:
        open(os.path.join(folder, 'checkpoint.pt'), 'w').close()
    return folder


# ---------------------------------------------------------------- the tables as data

def test_every_table_row_is_a_setting_with_seeds_a_rule_and_a_source_for_its_number():
    for table in tables.TABLES.values():
        names = [row.name for row in table.rows]
        assert len(names) == len(set(names)), table.name
        for row in table.rows:
            assert row.selection in tables.SELECTIONS and row.seeds and row.train.get('dataset')
            assert (row.reported is None) == (row.source is None), row.name  # a number always says where it is printed
            assert row.search is None or row.search['dataset'] == row.train['dataset']
    assert [row.reported for row in tables.NOISE_RAFDB.rows if row.name.startswith('n30')] == [
        75.50, 77.46, 82.06, 84.42, None]  # LA-Net's Table 1 at 30%; NLA is not in it
    assert all(row.reported is None for row in tables.GLA_FERNET_NOISE.rows) and 'not in our sources' in \
        tables.GLA_FERNET_NOISE.note


def test_seeds_takes_the_first_seeds_of_each_row_at_any_scale(tmp_path):
    for flags, seeds in (([], 3), (['--scale', 'smoke'], 2), (['--scale', 'smoke', '--seeds', '3'], 3),
                         (['--seeds', '1'], 1)):
        commands = dry_run_commands(run_main(['noise_x_networks', '--dry_run', '--out', str(tmp_path), *flags]))
        assert sorted({argv[argv.index('--seed') + 1] for _, _, argv in commands}) == [str(s) for s in range(seeds)]
        assert len(commands) == seeds * len(tables.TABLES['noise_x_networks'].rows)


@pytest.mark.parametrize('scale', ['full', 'smoke'])
@pytest.mark.parametrize('name', list(tables.TABLES))
def test_dry_run_lists_every_command_and_each_parses_against_its_scripts_parser(name, scale, tmp_path):
    import train
    import train_search
    files = []
    for flag, _ in tables.WEIGHT_FILES.values():  # train.py checks that --pretrained names a file
        (tmp_path / flag).write_bytes(b'')
        files += [f'--{flag}', str(tmp_path / flag)]
    text = run_main([name, '--dry_run', '--out', str(tmp_path / 'tables'), '--scale', scale, *files])
    commands = dry_run_commands(text)
    table = tables.TABLES[name]
    seeds = reproduce.SMOKE_SEEDS if scale == 'smoke' else len(tables.SEEDS)
    assert len(commands) == seeds * sum(2 if row.search else 1 for row in table.rows)
    scripts = {'train.py': (train.parser, train.check_args, train.recipe),
               'train_search.py': (train_search.parser, train_search.check_args, train_search.recipe)}
    for folder, script, argv in commands:
        args = cli.parse(*scripts[script], argv)  # a flag that does not parse exits here
        assert folder == os.path.abspath(tmp_path / 'tables' / (name + '-smoke' * (scale == 'smoke')) /
                                         f'{args.save}')  # each run in its own folder <row>-s<seed>
        assert args.save.endswith(f'-s{args.seed}') and os.path.isabs(args.data)
        if scale == 'smoke':
            assert args.epochs == reproduce.SMOKE_FLAGS['epochs']
            assert getattr(args, 'pretrained', None) in (None, 'none')  # no weights to download


def test_a_searched_row_trains_the_genotype_its_own_search_wrote(tmp_path):
    text = run_main(['search_family_rafdb', '--dry_run', '--rows', 'emonas', '--out', str(tmp_path)])
    (search_folder, search, search_argv), (train_folder, train, train_argv) = dry_run_commands(text)[:2]
    assert (search, train) == ('train_search.py', 'train.py') and search_folder == train_folder
    assert search_argv[search_argv.index('--method') + 1] == 'emonas'
    assert train_argv[train_argv.index('--genotype_file') + 1] == 'search-emonas-s0-*'


# ---------------------------------------------------------------- plan, status, report

def test_plan_counts_runs_epochs_and_gpu_hours_from_the_given_step_time(tmp_path):
    text = run_main(['lightweight_rafdb', '--plan', '--step_seconds', '0.1', '--out', str(tmp_path)])
    # 3 seeds of FGW-FER, ShuffleNetV2, RLR-CNet (300 epochs), CoRes-SE (50), DDAMFN (40), EfficientFace (100) and
    # GLA-FERNet (600), each an epoch of RAF-DB's 12,271 training images (FGW-FER: 7/8 of them) in batches of 64, 16,
    # 16, 32, 256, 128 and 64
    steps = 3 * (300 * 168 + 300 * 767 + 300 * 767 + 50 * 384 + 40 * 48 + 100 * 96 + 600 * 192)
    assert f'all: 21 runs, {3 * (3 * 300 + 50 + 40 + 100 + 600):,} GPU-epochs, {steps * 0.1 / 3600:,.1f} GPU-hours' \
        in text
    assert 'step times: --step_seconds 0.1 (given)' in text


def test_plan_takes_a_models_step_time_from_a_benchmark_file_and_says_which(tmp_path):
    measured = tmp_path / 'h100.json'
    measured.write_text(json.dumps({'config': {'model': 'fgw_fer', 'image_size': 100, 'method': 'gla_fernet'},
                                    'train_step_img_s': 640.0, 'device': 'NVIDIA H100'}))
    text = run_main(['lightweight_rafdb', '--plan', '--rows', 'fgw_fer,gla_fernet', '--benchmark', str(measured),
                     '--out', str(tmp_path)])
    assert 'fgw_fer: 3 seeds x [train.py 300 epochs of 168 steps (batch 64, 12,271 images), 1.40 GPU-hours]' in text
    assert 'h100.json: fgw_fer training step 640.0 img/s at 100 px on NVIDIA H100' in text
    assert 'no step time for gla_fernet (give --benchmark FILE or --step_seconds S)' in text
    assert 'all: 6 runs, 2,700 GPU-epochs, 4.2 GPU-hours (without the steps of unknown time)' in text


def fill_lightweight(out):
    """lightweight_rafdb's folders as a table half done: FGW-FER seed 0 done, seed 1 failed before its run folder,
    seed 2 running; GLA-FERNet seed 0 done, seed 1 interrupted; the other rows pending."""
    folder = os.path.join(out, 'lightweight_rafdb')
    fake_run(os.path.join(folder, 'fgw_fer-s0'), accuracy=(70.0, 66.0, 68.0))
    os.makedirs(os.path.join(folder, 'fgw_fer-s1'))
    with open(os.path.join(folder, 'fgw_fer-s1', 'FAILED'), 'w') as f:
        f.write('error: data/raf-basic/EmoLabel/list_patition_label.txt does not exist\n')
    os.makedirs(os.path.join(folder, 'fgw_fer-s2'))
    with open(os.path.join(folder, 'fgw_fer-s2', 'RUNNING'), 'w') as f:
        json.dump({'host': launchers.socket.gethostname(), 'pid': os.getpid(), 'step_pid': None}, f)
    fake_run(os.path.join(folder, 'gla_fernet-s0'), accuracy=(60.0, 55.0, 57.0), model='gla_fernet')
    return fake_run(os.path.join(folder, 'gla_fernet-s1'), seed=1, model='gla_fernet', complete=False,
                    checkpoint=True)


def test_status_gives_each_rows_runs_by_state_and_the_table_so_far(tmp_path):
    fill_lightweight(str(tmp_path))
    text = run_main(['lightweight_rafdb', '--status', '--out', str(tmp_path)])
    assert 'fgw_fer: 1 done, 1 running, 1 failed, 0 interrupted, 0 pending' in text
    assert 'fgw_fer-s1: failed: train.py: error: data/raf-basic/EmoLabel/list_patition_label.txt does not exist' in text
    assert f'fgw_fer-s2: running: pid {os.getpid()} on' in text
    assert 'gla_fernet: 1 done, 0 running, 0 failed, 1 interrupted, 1 pending' in text
    assert 'shufflenet_v2: 0 done, 0 running, 0 failed, 0 interrupted, 3 pending' in text
    assert '| FGW-FER | 68.00 (n=1) / 80.75 |' in text  # FGW-FER's paper selects on validation: ours too
    assert '| ShuffleNetV2 | pending / 84.31 |' in text  # nothing run: no number
    assert '| GLA-FERNet | 60.00 (n=1) / — |' in text


def test_failed_runs_are_listed_and_run_again_only_with_retry_failed_and_an_interrupted_run_resumes(tmp_path):
    interrupted = fill_lightweight(str(tmp_path))
    text = run_main(['lightweight_rafdb', '--dry_run', '--out', str(tmp_path)])
    commands = dry_run_commands(text)
    names = [os.path.basename(folder) for folder, _, _ in commands]
    assert 'fgw_fer-s0' not in names and 'fgw_fer-s1' not in names and 'fgw_fer-s2' not in names
    assert '# fgw_fer-s1: failed (train.py: error: data/raf-basic' in text and '--retry_failed runs it again' in text
    assert ['--resume', os.path.basename(interrupted)] == commands[names.index('gla_fernet-s1')][2]
    retried = dry_run_commands(run_main(['lightweight_rafdb', '--dry_run', '--retry_failed', '--out', str(tmp_path)]))
    assert 'fgw_fer-s1' in [os.path.basename(folder) for folder, _, _ in retried]


def test_the_tables_numbers_are_report_pys_under_the_papers_rule_with_the_fair_one_beside(tmp_path):
    import report
    import utils
    folder = tmp_path / 'lightweight_rafdb'
    runs = [fake_run(str(folder / f'gla_fernet-s{seed}'), seed=seed, model='gla_fernet', accuracy=accuracy)
            for seed, accuracy in enumerate([(60.0, 55.0, 57.0), (64.0, 52.0, 59.0), (61.0, 50.0, 58.0)])]
    run_main(['lightweight_rafdb', '--report', '--rows', 'gla_fernet', '--out', str(tmp_path)])
    row, = read_csv(tmp_path / 'lightweight_rafdb.csv')
    report.main(report.parser.parse_args([*runs, '--out', str(tmp_path / 'report'), '--no-figures', '--no-latency']),
                utils.Log())
    group, = read_csv(tmp_path / 'report' / 'groups.csv')
    assert (row['paper_selection'], row['ours_selection'], row['n'], row['status']) == ('test_best', 'test_selected',
                                                                                         '3', 'complete')
    assert float(row['ours_mean']) == float(group['test_selected_accuracy_mean'])
    assert float(row['ours_std']) == float(group['test_selected_accuracy_std'])
    # the runs hold a validation-selected figure: it stands beside the test-selected one
    assert row['also_selection'] == 'val_selected'
    assert float(row['also_mean']) == float(group['val_selected_accuracy_mean'])
    assert row['paper'] == '' and row['difference'] == ''  # the paper's number is not in our sources
    text = (tmp_path / 'lightweight_rafdb.md').read_text()
    assert 'test-selected too (optimistic' in text and '(best validation)' in text


def test_an_unknown_launcher_is_refused_and_every_launcher_has_the_one_interface(capsys):
    with pytest.raises(SystemExit):
        reproduce.parser.parse_args(['noise_rafdb', '--launcher', 'kubernetes'])
    assert "unknown launcher 'kubernetes'; known: local" in capsys.readouterr().err
    assert reproduce.parser.parse_args(['noise_rafdb']).launcher is launchers.LAUNCHERS['local']  # the default
    for name, launcher in launchers.LAUNCHERS.items():
        assert launcher.name == name and isinstance(launcher.waits, bool) and callable(launcher.launch)


# ---------------------------------------------------------------- end to end (pytest -m tables)

def reproduce_command(*argv):
    return [sys.executable, os.path.join(REPO, 'reproduce.py'), *argv, '--threads', '1']


def run_table(*argv, check=True):
    done = subprocess.run(reproduce_command(*argv), cwd=REPO, capture_output=True, text=True)
    assert not check or done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.tables
def test_a_smoke_table_end_to_end_gives_report_pys_numbers(tmp_path):
    import report
    import utils
    out = str(tmp_path / 'tables')
    run_table('lightweight_rafdb', '--scale', 'smoke', '--rows', 'fgw_fer,gla_fernet', '--jobs', '2', '--out', out)
    rows = {row['row']: row for row in read_csv(os.path.join(out, 'lightweight_rafdb-smoke.csv'))}
    assert [rows[name]['status'] for name in ('fgw_fer', 'gla_fernet')] == ['complete', 'complete']
    folders = [os.path.join(out, 'lightweight_rafdb-smoke', f'{name}-s{seed}') for name in rows for seed in (0, 1)]
    report.main(report.parser.parse_args([*folders, '--out', str(tmp_path / 'report'), '--no-figures',
                                          '--no-latency']), utils.Log())
    groups = {group['model']: group for group in read_csv(tmp_path / 'report' / 'groups.csv')}
    for name, model, selection in [('fgw_fer', 'fgw_fer', 'val_selected'),
                                   ('gla_fernet', 'gla_fernet GLA_FERNet', 'test_selected')]:
        assert groups[model]['seeds'] == '0 1' and rows[name]['ours_selection'] == selection
        for stat in ('mean', 'std'):
            assert float(rows[name][f'ours_{stat}']) == float(groups[model][f'{selection}_accuracy_{stat}'])
    assert float(rows['gla_fernet']['also_mean']) == float(groups['gla_fernet GLA_FERNet']['last5_mean_accuracy_mean'])


def folder_of(out, job, kind):
    return launchers.latest_run(os.path.join(out, job), kind)


@pytest.mark.tables
def test_a_killed_table_skips_finished_runs_and_resumes_the_killed_one_to_an_uninterrupted_tables_end(tmp_path):
    import torch
    argv = ['search_family_rafdb', '--scale', 'smoke', '--rows', 'gla_fernet_sequential', '--jobs', '1']
    out, table = str(tmp_path / 'killed'), str(tmp_path / 'killed' / 'search_family_rafdb-smoke')
    launcher = subprocess.Popen(reproduce_command(*argv, '--out', out), cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    job = 'gla_fernet_sequential-s1'
    deadline = time.time() + 300
    while not (folder_of(table, job, 'eval') and os.path.isfile(os.path.join(folder_of(table, job, 'eval'),
                                                                             'checkpoint.pt'))):
        assert launcher.poll() is None and time.time() < deadline, 'the table ended before its last run was killed'
        time.sleep(0.01)
    os.killpg(launcher.pid, signal.SIGKILL)  # the launcher and the training it runs
    launcher.wait()
    killed = folder_of(table, job, 'eval')
    assert not json.load(open(os.path.join(killed, 'metrics.json'))).get('complete')
    first = os.path.join(table, 'gla_fernet_sequential-s0')
    finished = [os.path.join(folder_of(table, 'gla_fernet_sequential-s0', kind), name)
                for kind, name in (('search', 'genotype.txt'), ('eval', 'metrics.json'))]
    finished.append(os.path.join(folder_of(table, job, 'search'), 'genotype.txt'))
    before = [os.stat(path).st_mtime_ns for path in finished], sorted(os.listdir(first))
    assert 'interrupted' in run_table(*argv[:1], '--scale', 'smoke', '--status', '--out', out).stdout

    run_table(*argv, '--out', out)
    assert ([os.stat(path).st_mtime_ns for path in finished], sorted(os.listdir(first))) == before  # not run again
    assert folder_of(table, job, 'eval') == killed  # the killed run went on in its own folder
    assert 'resumed at epoch' in open(os.path.join(killed, 'log.txt')).read()

    whole = str(tmp_path / 'whole')
    run_table(*argv, '--out', whole)
    resumed = torch.load(os.path.join(killed, 'weights.pt'), weights_only=True)
    uninterrupted = torch.load(os.path.join(folder_of(os.path.join(whole, 'search_family_rafdb-smoke'), job, 'eval'),
                                            'weights.pt'), weights_only=True)
    assert all(torch.equal(resumed[key], uninterrupted[key]) for key in uninterrupted)
    assert open(os.path.join(out, 'search_family_rafdb-smoke.csv')).read() == \
        open(os.path.join(whole, 'search_family_rafdb-smoke.csv')).read()


@pytest.mark.tables
def test_a_failed_run_is_reported_with_its_reason_while_the_others_complete(tmp_path):
    import synthetic
    out = str(tmp_path / 'tables')
    data = os.path.join(out, 'smoke-data', 'rafdb')
    synthetic.make_synthetic(data, layout='rafdb', seed=0, workers=0, log=lambda *a: None, **reproduce.SMOKE_IMAGES)
    noise_file = os.path.join(data, 'EmoLabel', 'new_20_noise.txt')
    os.rename(noise_file, noise_file + '.away')  # the runs at 20% cannot read their labels
    argv = ['noise_rafdb', '--scale', 'smoke', '--rows', 'n10-none,n20-none', '--jobs', '2', '--out', out]
    failed = run_table(*argv, check=False)
    assert failed.returncode == 2 and '2 of 4 runs failed (n20-none-s0, n20-none-s1)' in failed.stderr
    rows = {row['row']: row for row in read_csv(os.path.join(out, 'noise_rafdb-smoke.csv'))}
    assert rows['n10-none']['status'] == 'complete' and rows['n10-none']['n'] == '2'
    assert rows['n20-none']['status'] == '0/2 done, 2 failed' and rows['n20-none']['ours_mean'] == ''
    status = run_table('noise_rafdb', '--scale', 'smoke', '--status', '--out', out).stdout
    assert 'n20-none: 0 done, 0 running, 2 failed' in status and 'new_20_noise.txt' in status
    assert 'n20-none-s0: failed: train.py: ' in open(os.path.join(out, 'noise_rafdb-smoke.md')).read()

    os.rename(noise_file + '.away', noise_file)
    again = run_table(*argv).stdout  # not retried unless asked
    assert 'n20-none-s0: failed' in again and '0 of 4 runs to start' in again
    run_table(*argv, '--retry_failed')
    rows = {row['row']: row for row in read_csv(os.path.join(out, 'noise_rafdb-smoke.csv'))}
    assert rows['n20-none']['status'] == 'complete'
