"""How reproduce.py's runs are run: a job (one seed of a table's row: its steps, a search then the training of its
genotype, in a folder of its own), the state of a job read from its folder (finished, interrupted, failed, running
under another launcher), and the launchers that run jobs, a table of classes with one interface (docs/reproduce.md).

A launcher is built as `Launcher(args)` (reproduce.py's parsed flags) and has one method, `launch(jobs)`. Each Job
holds `name` ('<row>-s<seed>'), `folder` (made by reproduce.py) and `steps`, a list of Step(script, flags, cwd): run
`python <script> <flags...>` in `cwd` (the run folder lands inside it), in order, a step only after the previous one
exited with status 0. A launcher may add only flags about where a run goes (cli.RUN_FLAGS: --threads, --device,
--gpu) and environment variables, never a flag that changes what a run computes; each runs a job through
`run_job(job, flags, env)` (which holds the job's lock, keeps each step's output in the job's folder and writes its
FAILED file). `launch` returns {job name: the exit status of the last step it ran (None: not run to its end)} once
the jobs have ended (`waits = True`: 'local') or once they are submitted (`waits = False`: 'slurm'; reproduce.py
then writes the table on a later --report or --status). A run's state is read from its folder, never from the
launcher, so a launcher keeps no state between calls.
"""
import argparse
import os
import queue
import shlex
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import run_folder
from errors import UserError

REPO = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = {'search': 'train_search.py', 'eval': 'train.py'}  # a row's steps, in the order they run
LOCK = 'RUNNING'  # in a job's folder while a launcher runs it: host, pids, refreshed every HEARTBEAT_SECONDS
HEARTBEAT_SECONDS = 30
STALE_SECONDS = 300  # a lock of another machine not refreshed for this long belongs to a job that died with it
INTERRUPTED = (130, -2, -9, -15)  # Ctrl-C, SIGINT, SIGKILL, SIGTERM: the run continues with --resume, it did not fail
SLURM_MINUTES = 24 * 60  # --launcher slurm: a job's time limit, a common partition maximum
SLURM_TIMEOUTS = 3  # times a job that reached its time limit is requeued (submitit's max_num_timeout)
SLURM_CPUS = 4  # a run's main process and the --workers (2) decoding images on its first epoch


# ---------------------------------------------------------------- a job's state, from its folder

def latest_run(folder, kind):
    """The newest run folder of `kind` in a job's folder (its name ends with its start time), or None; folders set
    aside (hidden) are not runs."""
    if not os.path.isdir(folder):
        return None
    found = sorted(name for name in os.listdir(folder) if name.startswith(f'{kind}-') and
                   run_folder.run_kind(os.path.join(folder, name)) == kind)
    return os.path.join(folder, found[-1]) if found else None


def finished(kind, run):
    """A training run whose metrics.json says complete; a search that wrote its genotype and ended its last epoch."""
    if kind == 'eval':
        metrics, _ = run_folder.read_optional_json(os.path.join(run, run_folder.METRICS))
        return bool(metrics and metrics.get('complete'))
    log = os.path.join(run, run_folder.LOG)
    if not os.path.isfile(os.path.join(run, run_folder.GENOTYPE)) or not os.path.isfile(log):
        return False
    with open(log, encoding='utf-8', errors='replace') as f:
        return ' best genotype = ' in f.read()  # the search's last line but one, after its final epoch


def lock_holder(folder):
    """'pid P on HOST' of the launcher running this job, or None: no lock, or a launcher (and its step) that died."""
    lock, _ = run_folder.read_optional_json(os.path.join(folder, LOCK))
    if not lock:
        return None
    if lock.get('host') == socket.gethostname():
        alive = any(pid_alive(pid) for pid in (lock.get('pid'), lock.get('step_pid')) if pid)
    else:
        alive = time.time() - os.path.getmtime(os.path.join(folder, LOCK)) < STALE_SECONDS
    return f'pid {lock.get("step_pid") or lock.get("pid")} on {lock.get("host")}' if alive else None


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a killed process nobody reaped yet is a zombie: dead
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (OSError, IndexError):
        return True


def set_aside(folder):
    """Before a job starts: hide its run folders that cannot go on (stopped before their first checkpoint, or failed
    without one), so that the new run's folder is the only one of its kind; and clear the job's FAILED file."""
    for kind in SCRIPTS:
        run = latest_run(folder, kind)
        if run is not None and not finished(kind, run) and not os.path.isfile(os.path.join(run, run_folder.CHECKPOINT)):
            os.replace(run, os.path.join(folder, f'.set-aside-{os.path.basename(run)}'))
    if os.path.isfile(os.path.join(folder, run_folder.FAILED)):
        os.remove(os.path.join(folder, run_folder.FAILED))


# ---------------------------------------------------------------- jobs and launchers

@dataclass
class Step:
    """`python <script> <flags>` run in `cwd` (the job's folder)."""
    script: str
    flags: list
    cwd: str

    @property
    def kind(self):
        return next(kind for kind, script in SCRIPTS.items() if script == self.script)

    def command(self):
        return [sys.executable, os.path.join(REPO, self.script), *self.flags]


@dataclass
class Job:
    name: str
    folder: str
    steps: list


def step_now(kind, run, fresh_flags, cwd):
    """The step a run of `kind` needs now, from `run`, its newest folder (or None): none where it finished, --resume
    where it has a checkpoint (interrupted, or failed after one), else a new run with `fresh_flags`. The launchers
    plan with it when a table is started, and a SLURM task again when it starts (it may have been requeued)."""
    if run is not None and finished(kind, run):
        return None
    if run is not None and os.path.isfile(os.path.join(run, run_folder.CHECKPOINT)):
        return Step(SCRIPTS[kind], ['--resume', os.path.basename(run)], cwd)
    return Step(SCRIPTS[kind], fresh_flags, cwd)


def run_job(job, flags=(), env=None, stop=None, log=print):
    """Run a job's steps in order in its folder, each with `flags` added (where it runs: --threads) and `env` set;
    the output of each goes to <folder>/<script>.out. Holds the job's lock meanwhile. A step that fails stops the
    job, and where it left no FAILED file of its own (it stopped before its run folder existed) the job's folder
    gets one with its last line. Returns the exit status of the last step run (None: `stop` was set first).
    Every launcher runs a job through this function."""
    lock = Lock(job.folder)
    code = None
    try:
        for step in job.steps:
            if stop is not None and stop.is_set():
                return None
            log(f'{job.name}: {shlex.join([os.path.basename(step.script), *step.flags, *flags])}')
            output = os.path.join(job.folder, f'{os.path.splitext(step.script)[0]}.out')
            with open(output, 'a', encoding='utf-8') as out:
                process = subprocess.Popen([*step.command(), *flags], cwd=step.cwd, stdout=out,
                                           stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
                lock.hold(process.pid)
                code = lock.wait(process)
            if code in INTERRUPTED:
                log(f'{job.name}: {step.script} was interrupted (status {code}); the next run resumes it')
                return code
            if code != 0:
                reason = last_line(output) or f'exit status {code}'
                run = latest_run(job.folder, step.kind)
                if run is None or run_folder.failure(run) is None:
                    run_folder.write_text(os.path.join(job.folder, run_folder.FAILED), reason + '\n')
                log(f'{job.name}: {step.script} failed (status {code}): {reason}')
                return code
        log(f'{job.name}: done')
        return code
    finally:
        lock.release()


class Lock:
    """The RUNNING file of a job's folder: this machine, the launcher's pid and its current step's, rewritten every
    HEARTBEAT_SECONDS so that a job of another machine that stopped refreshing it counts as dead."""

    def __init__(self, folder):
        self.path = os.path.join(folder, LOCK)
        self.hold(None)

    def hold(self, step_pid):
        run_folder.write_json(self.path, {'host': socket.gethostname(), 'pid': os.getpid(), 'step_pid': step_pid,
                                          'time': time.time()})
        self.step_pid = step_pid

    def wait(self, process):
        while True:
            try:
                return process.wait(timeout=HEARTBEAT_SECONDS)
            except subprocess.TimeoutExpired:
                self.hold(self.step_pid)

    def release(self):
        if os.path.exists(self.path):
            os.remove(self.path)


def last_line(path):
    """The last line of a step's output that says why it stopped (its 'error: ...' line where there is one)."""
    with open(path, encoding='utf-8', errors='replace') as f:
        lines = [line.strip() for line in f.read().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith('error')]
    return (errors or lines or [''])[-1][:300]


class LocalLauncher:
    """Subprocesses on this machine, --jobs at a time: with CUDA each on a GPU of its own (CUDA_VISIBLE_DEVICES),
    else on the CPU, the cores shared among the jobs (--threads)."""
    name, waits = 'local', True

    def __init__(self, args):
        self.jobs, self.threads = args.jobs, args.threads
        self.stop = threading.Event()

    def launch(self, jobs):
        gpus = cuda_devices()
        slots = min(self.jobs, len(jobs), len(gpus) or self.jobs)
        if gpus and self.jobs > len(gpus):
            print(f'--jobs {self.jobs}: {len(gpus)} GPU(s), so {slots} at a time (one GPU each)', flush=True)
        threads = self.threads or max(1, (os.cpu_count() or 1) // slots)
        free, exits = queue.SimpleQueue(), {}
        for device in gpus[:slots] or [None] * slots:
            free.put(device)

        def work(job):
            device = free.get()
            try:
                env = {} if device is None else {'CUDA_VISIBLE_DEVICES': device}
                exits[job.name] = run_job(job, ['--threads', str(threads)], env, self.stop)
            finally:
                free.put(device)

        pool = ThreadPoolExecutor(slots)
        futures = [pool.submit(work, job) for job in jobs]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:  # the runs got the Ctrl-C too, and stop with a checkpoint: start no other
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        return exits


def cuda_devices():
    """The GPU indices a run may be given, as CUDA_VISIBLE_DEVICES names them; none without CUDA."""
    import torch
    if not torch.cuda.is_available():
        return []
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    names = [v.strip() for v in visible.split(',')] if visible else [str(i) for i in range(torch.cuda.device_count())]
    return names[:torch.cuda.device_count()]


class SlurmLauncher:
    """SLURM through submitit (an optional extra: pip install submitit): one job array per stage, the jobs' first steps
    (the searches, and the trainings with nothing before them), then the trainings after their searches, each task of
    that array starting once its own search ended with status 0 (aftercorr; a failed search cancels its training
    only). Each task runs its step through run_job, as the local launcher does, on --slurm_cpus threads. A task reads
    its folder when it starts, so that one requeued after a preemption or its time limit (submitit: SIGUSR2 before
    the end, then scontrol requeue) resumes its run from the checkpoint, and a finished step is not run again."""
    name, waits = 'slurm', False
    QUEUED = 'SLURM'  # in a job's folder: its tasks' SLURM ids, so that a job still in the queue is not submitted again

    def __init__(self, args):
        try:
            import submitit
        except ImportError:
            raise UserError('--launcher slurm needs submitit: pip install submitit') from None
        self.submitit, self.args = submitit, args

    def launch(self, jobs):
        queued = self.queued()
        exits, todo = {}, []
        for job in jobs:
            record, _ = run_folder.read_optional_json(os.path.join(job.folder, self.QUEUED))
            waiting = sorted(queued & set((record or {}).get('jobs', [])))
            if waiting:
                print(f'{job.name}: still in the SLURM queue as {", ".join(waiting)}; not submitted again', flush=True)
                exits[job.name] = None
            else:
                todo.append(job)
        if not todo:
            return exits
        todo.sort(key=lambda job: -len(job.steps))  # task i of a stage follows task i of the stage before it
        args = self.args
        executor = self.submitit.SlurmExecutor(folder=os.path.join(os.path.dirname(todo[0].folder), 'slurm', '%j'),
                                               max_num_timeout=SLURM_TIMEOUTS)
        executor.update_parameters(
            job_name=f'reproduce-{os.path.basename(os.path.dirname(todo[0].folder))}', partition=args.slurm_partition,
            time=args.slurm_time, cpus_per_task=args.slurm_cpus, gpus_per_node=args.slurm_gpus or None,
            mem=args.slurm_mem, setup=[f'export PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}'])
        # Where the run goes: the job's CPUs as torch threads, and the device SLURM gave it (CUDA_VISIBLE_DEVICES).
        flags = ['--threads', str(args.slurm_cpus), '--device', 'cuda' if args.slurm_gpus else 'cpu']
        ids, previous, arrays = {job.name: [] for job in todo}, None, []
        for stage in range(len(todo[0].steps)):
            members = [job for job in todo if len(job.steps) > stage]
            if previous is not None:  # submitit submits a single task as a job of its own, not an array
                executor.update_parameters(dependency=(f'aftercorr:{previous.split("_")[0]}' if len(members) > 1 else
                                                       f'afterok:{previous}'),
                                           additional_parameters={'kill-on-invalid-dep': 'yes'})
            try:
                with executor.batch():
                    tasks = [executor.submit(SlurmTask(job.name, job.folder, job.steps[stage], flags))
                             for job in members]
            except (self.submitit.core.utils.FailedJobError, OSError) as e:
                raise UserError(f'sbatch refused the jobs ({str(e).strip()}); check --slurm_partition, --slurm_gpus '
                                f'(0 on a cluster without GPUs), --slurm_time and --slurm_mem') from None
            for job, task in zip(members, tasks):
                ids[job.name].append(task.job_id)
                run_folder.write_json(os.path.join(job.folder, self.QUEUED), {'jobs': ids[job.name]})
                exits[job.name] = None
            previous = tasks[0].job_id
            scripts = ', '.join(dict.fromkeys(job.steps[stage].script for job in members))
            arrays.append(f'{previous.split("_")[0]}: {len(tasks)} x {scripts}' +
                          (f', each after its task of {arrays[-1].split(":")[0]}' if arrays else ''))
        scale = ' --scale smoke' if args.scale == 'smoke' else ''
        print(f'submitted to SLURM (logs in {os.path.dirname(executor.folder)}): ' + '; '.join(arrays) +
              f'. Follow them with: python reproduce.py {args.table} --out {args.out}{scale} --status; '
              'once they end, --report writes the table', flush=True)
        return exits

    @staticmethod
    def queued():
        """The ids (123_4, or 123 for a job of its own) of this user's SLURM jobs still queued or running."""
        import getpass
        done = subprocess.run(['squeue', '--noheader', '--array', '--format=%i', f'--user={getpass.getuser()}'],
                              capture_output=True, text=True)
        return set(done.stdout.split()) if done.returncode == 0 else set()


class SlurmTask:
    """One step of a job as a SLURM task of SlurmLauncher: the step its folder asks for when the task starts (a
    started run resumes from its checkpoint, a finished one is skipped), run through run_job; a step that fails fails
    the task, so that SLURM does not start the training after it."""

    def __init__(self, name, folder, step, flags):
        self.name, self.folder, self.flags = name, folder, flags
        self.step = (step.script, step.flags, step.cwd)  # plain values: the task unpickles without this module's Step

    def __call__(self):
        set_aside(self.folder)
        step = self.now()
        if step is None:
            print(f'{self.name}: {self.step[0]} finished already', flush=True)
            return 0
        code = run_job(Job(self.name, self.folder, [step]), self.flags)
        if code != 0:
            output = os.path.join(self.folder, f'{os.path.splitext(step.script)[0]}.out')
            raise RuntimeError(f'{self.name}: {step.script} ended with status {code}: {last_line(output)}')
        return code

    def now(self):
        """The step as reproduce.py would plan it now (step_now)."""
        script, flags, cwd = self.step
        kind = Step(script, flags, cwd).kind
        return step_now(kind, latest_run(self.folder, kind), flags, cwd)

    def checkpoint(self, *args, **kwargs):
        """submitit calls this before it requeues a preempted or timed-out task: the same task, which finds the run's
        checkpoint when it starts again."""
        import submitit
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


LAUNCHERS = {'local': LocalLauncher, 'slurm': SlurmLauncher}


def launcher_class(name):
    if name not in LAUNCHERS:
        raise argparse.ArgumentTypeError(f'unknown launcher {name!r}; known: {", ".join(LAUNCHERS)}')
    return LAUNCHERS[name]
