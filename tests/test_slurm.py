"""reproduce.py --launcher slurm: without submitit it says how to install it; and, marked `tables` (pytest -m tables),
a smoke table through submitit on a SLURM cluster (.ci/slurm.sh starts one on this machine): searches then trainings,
each after its own search, one training requeued mid-run resuming its checkpoint, the table report.py's numbers.
Where SLURM or submitit is missing the end-to-end test skips, except under CI=true, where it fails."""
import csv
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

import launchers
import reproduce
from errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_FLAGS = ['--launcher', 'slurm', '--slurm_gpus', '0', '--slurm_cpus', '1', '--slurm_time', '10']


def test_slurm_without_submitit_says_to_pip_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'submitit', None)  # import submitit raises ImportError
    (tmp_path / 'rafdb').mkdir()
    with pytest.raises(UserError) as raised:
        reproduce.main(['lightweight_rafdb', '--rows', 'fgw_fer', '--rafdb', str(tmp_path / 'rafdb'), '--out',
                        str(tmp_path / 'tables'), '--launcher', 'slurm'])
    assert str(raised.value) == '--launcher slurm needs submitit: pip install submitit'


def slurm_missing():
    """Why no smoke table can run on SLURM here, or None."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        return 'submitit is not installed (pip install submitit)'
    if shutil.which('sbatch') is None:
        return 'no SLURM here (sbatch not found; .ci/slurm.sh starts a one-node cluster as root)'
    try:
        states = subprocess.run(['sinfo', '--noheader', '--format=%t'], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return 'SLURM does not answer (sinfo took over 30 s)'
    if states.returncode != 0 or not {'idle', 'mix', 'alloc', 'comp'} & set(states.stdout.split()):
        return f'SLURM has no node up (sinfo: {(states.stdout + states.stderr).strip()}; .ci/slurm.sh starts one)'
    return None


def wait_for(condition, seconds, what):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f'{what}: not within {seconds} s'
        time.sleep(0.05)


def slurm_ids(job_folder):
    with open(os.path.join(job_folder, launchers.SlurmLauncher.QUEUED)) as f:
        return json.load(f)['jobs']


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.tables
def test_a_smoke_table_on_slurm_trains_after_each_search_resumes_a_requeued_run_and_gives_report_pys_numbers(
        tmp_path, request):
    import report
    import utils
    missing = slurm_missing()
    if missing and os.environ.get('CI') == 'true':
        pytest.fail(f'CI=true, and the SLURM test cannot run: {missing}')
    if missing:
        pytest.skip(missing)
    out = str(tmp_path / 'tables')
    argv = [sys.executable, os.path.join(REPO, 'reproduce.py'), 'search_family_rafdb', '--scale', 'smoke', '--rows',
            'gla_fernet_sequential', '--out', out]
    submitted = subprocess.run(argv + SLURM_FLAGS, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert '2 x train_search.py; ' in submitted.stdout and '2 x train.py, each after its task of ' in submitted.stdout
    table = os.path.join(out, 'search_family_rafdb-smoke')
    jobs = [os.path.join(table, f'gla_fernet_sequential-s{seed}') for seed in (0, 1)]
    ids = {job: slurm_ids(job) for job in jobs}  # [its search's task, its training's task]
    every = {task for job in jobs for task in ids[job]}
    request.addfinalizer(lambda: subprocess.run(['scancel', *every]))  # a failed test leaves no job in the queue
    again = subprocess.run(argv + SLURM_FLAGS, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and 'submitted to SLURM' not in again.stdout, again.stdout + again.stderr

    # Seed 0's training, once its first epoch is saved, gets what a preemption or a time limit sends (SIGUSR2):
    # submitit requeues it, and the task, run again, resumes the run from its checkpoint.
    def checkpoint():
        run = launchers.latest_run(jobs[0], 'eval')
        return run is not None and os.path.isfile(os.path.join(run, 'checkpoint.pt'))
    wait_for(checkpoint, 240, 'the first epoch of the first training')
    training = ids[jobs[0]][1]
    subprocess.run(['scancel', '--signal=USR2', training], check=True)
    logs = os.path.join(table, 'slurm', training)
    wait_for(lambda: 'Requeued job' in ''.join(open(os.path.join(logs, name)).read() for name in os.listdir(logs)
                                               if name.endswith('log.out')), 60, 'the requeue')
    # A requeued job starts again once its credential expired: 10 s on .ci/slurm.sh's cluster (cred_expire), 2 minutes
    # by default.
    wait_for(lambda: not every & launchers.SlurmLauncher.queued(), 240, 'the SLURM jobs to end')

    run = launchers.latest_run(jobs[0], 'eval')
    assert 'resumed at epoch' in open(os.path.join(run, 'log.txt')).read()
    reported = subprocess.run(argv + ['--report'], capture_output=True, text=True, timeout=120)
    assert reported.returncode == 0, reported.stdout + reported.stderr
    row, = read_csv(os.path.join(out, 'search_family_rafdb-smoke.csv'))
    assert (row['status'], row['n'], row['seeds']) == ('complete', '2', '0 1')
    report.main(report.parser.parse_args([*jobs, '--out', str(tmp_path / 'report'), '--no-figures', '--no-latency']),
                utils.Log())
    # report.py groups each training apart (each has its own searched genotype): the table's row is the mean and the
    # sample standard deviation of the runs' numbers as report.py reads them
    runs = [run for run in read_csv(tmp_path / 'report' / 'runs.csv') if run['run'].startswith('eval-')]
    assert sorted(run['seed'] for run in runs) == ['0', '1']
    for selection, column in (('test_selected', 'ours'), ('last5_mean', 'also')):
        numbers = [float(run[f'{selection}_accuracy']) for run in runs]
        assert (float(row[f'{column}_mean']), float(row[f'{column}_std'])) == (report.mean(numbers),
                                                                             report.std(numbers))
