"""run_folder.py: the one atomic write, creating run folders, the kind of a run, reading a run back."""
import json
import multiprocessing
import os

import pytest
import torch

import run_folder
from errors import UserError


def save(state, path):
    run_folder.atomic_write(path, lambda tmp: torch.save(state, tmp))


def test_runs_started_in_the_same_second_never_share_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_folder.time, 'strftime', lambda fmt, *a: '20260101-120000')
    folders = [run_folder.create('eval', 'EXP', 'rafdb') for _ in range(3)]
    assert folders == ['eval-EXP-rafdb-20260101-120000', 'eval-EXP-rafdb-20260101-120000-2',
                       'eval-EXP-rafdb-20260101-120000-3']


def test_full_disk_while_saving_names_the_file_keeps_the_previous_one_and_removes_the_partial(tmp_path, monkeypatch):
    path = tmp_path / 'checkpoint.pt'
    save({'epoch': 1}, str(path))
    real_save = torch.save

    def full_disk(obj, f):
        real_save(obj, f)  # a partial file is left behind, as a failed write does
        raise RuntimeError('[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0: file write failed')
    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(UserError, match=rf'could not write {path} \(.*file write failed\); the previous '
                                        rf'checkpoint.pt is intact, and no partial file was left'):
        save({'epoch': 2}, str(path))
    assert os.listdir(tmp_path) == ['checkpoint.pt']
    assert torch.load(path, weights_only=True) == {'epoch': 1}


def test_checkpoint_is_written_atomically_and_bad_resume_paths_are_explained(tmp_path):
    path = tmp_path / 'checkpoint.pt'
    save({'kind': 'eval', 'epoch': 3, 'args': {}}, str(path))
    assert os.listdir(tmp_path) == ['checkpoint.pt']
    state, folder = run_folder.load_checkpoint(str(tmp_path), 'eval')
    assert state['epoch'] == 3 and folder == str(tmp_path)
    with pytest.raises(UserError, match=r'belongs to a train.py run; resume it with python train.py --resume'):
        run_folder.load_checkpoint(str(tmp_path), 'search')
    with pytest.raises(UserError, match='does not exist'):
        run_folder.load_checkpoint(str(tmp_path / 'missing'), 'eval')
    save({'stem.weight': torch.ones(2)}, str(path))
    with pytest.raises(UserError, match='not a checkpoint of this repository'):
        run_folder.load_checkpoint(str(path), 'eval')
    path.write_bytes(os.urandom(256))
    with pytest.raises(UserError, match='not a readable checkpoint or weights file'):
        run_folder.load_checkpoint(str(path), 'eval')


def _write_many(args):
    path, value = args
    for _ in range(50):
        run_folder.write_json(path, {'value': value, 'padding': 'x' * 10_000})
    return value


def test_concurrent_writers_of_one_file_never_collide_and_leave_one_whole_file(tmp_path):
    path = str(tmp_path / 'report.json')
    with multiprocessing.get_context('spawn').Pool(2) as pool:
        assert sorted(pool.map(_write_many, [(path, 1), (path, 2)])) == [1, 2]
    assert json.load(open(path))['value'] in (1, 2)
    assert os.listdir(tmp_path) == ['report.json']  # no temporary file left behind
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~run_folder.UMASK  # not the temporary file's private 0600


def test_output_in_a_missing_folder_or_onto_a_folder_is_refused_before_any_work(tmp_path):
    with pytest.raises(UserError, match=rf'the folder {tmp_path / "missing"} does not exist'):
        run_folder.check_output_folder(str(tmp_path / 'missing' / 'out.csv'))
    (tmp_path / 'file').write_text('')
    with pytest.raises(UserError, match='is a file, not a folder'):
        run_folder.write_json(str(tmp_path / 'file' / 'out.json'), {})
    with pytest.raises(UserError, match='it is a folder'):
        run_folder.write_json(str(tmp_path), {})


def test_atomic_folder_appears_only_when_complete(tmp_path):
    out = tmp_path / 'data'
    with pytest.raises(RuntimeError):
        with run_folder.atomic_folder(str(out)) as tmp:
            (open(os.path.join(tmp, 'a.txt'), 'w')).write('1')
            raise RuntimeError('interrupted')
    assert os.listdir(tmp_path) == []
    with run_folder.atomic_folder(str(out)) as tmp:
        open(os.path.join(tmp, 'a.txt'), 'w').write('1')
    assert os.listdir(out) == ['a.txt']
    with pytest.raises(UserError, match='already exists and is not empty'):
        with run_folder.atomic_folder(str(out)):
            pass


def test_the_kind_of_a_run_is_read_from_args_json_and_guessed_only_for_older_runs(tmp_path):
    def folder(name, files):
        path = tmp_path / name
        path.mkdir()
        for file, text in files.items():
            (path / file).write_text(text)
        return str(path)
    assert run_folder.run_kind(folder('x1', {'args.json': '{"kind": "search", "epochs": 3}'})) == 'search'
    assert run_folder.run_kind(folder('search-x2', {'args.json': '{"kind": "eval"}'})) == 'eval'
    assert run_folder.run_kind(folder('x3', {'args.json': '{"warmup_epochs": 1}'})) == 'search'  # older search
    assert run_folder.run_kind(folder('x4', {'genotype.txt': 'Genotype(...)'})) == 'search'
    assert run_folder.run_kind(folder('x5', {'args.json': '{"epochs": 3}'})) == 'eval'  # older train.py run
    assert run_folder.run_kind(folder('x6', {'notes.txt': ''})) is None
    assert run_folder.failure(folder('x7', {'FAILED': 'the loss became non-finite\n'})) == 'the loss became non-finite'


@pytest.mark.parametrize('text, problem', [('{"accuracy": 9', 'not a readable'), ('[1, 2]', 'holds a JSON list'),
                                           ('\x00\xff', 'not a readable')])
def test_damaged_json_files_are_named_not_tracebacks(tmp_path, text, problem):
    path = tmp_path / 'metrics.json'
    path.write_bytes(text.encode('latin-1'))
    content, why = run_folder.read_optional_json(str(path))
    assert content is None and problem in why and str(path) in why
    assert run_folder.read_optional_json(str(tmp_path / 'missing.json')) == (None, None)
