"""The run store under faults: bad result files, a missing, stale or corrupt index, a read-only or
full store, a stale lock and a run directory without a result.

Every fault must leave the other runs usable: `sweep --dry-run`, `ls runs`, the read-only listing
the report reads and a sweep itself keep working; a bad result.json is named in one warning line
and re-run; the index always ends up agreeing with the files. No model is trained here: the
sweep's `execute_run` is replaced by one that records an ok result at once.
"""

from __future__ import annotations

import builtins
import errno
import json
import logging
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from peftlab.cli import main
from peftlab.store import Store, StoreError, StoreWriteError

LOGGER = "peftlab.store"


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def planned(tmp_path, tiny_llama_dir):
    """An experiment of 3 runs (lora, seeds 0-2) whose results are all ok in a store."""
    import dataclasses

    from peftlab.config import load_experiment
    from peftlab.plan import expand

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "faults", "model": str(tiny_llama_dir),
        "tasks": [{"lm": {"limit_train": 8, "limit_eval": 4, "max_length": 32}}],
        "methods": ["lora"], "seeds": [0, 1, 2],
        "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0, "num_threads": 1},
    }, sort_keys=False))
    root = tmp_path / "store"
    exp = dataclasses.replace(load_experiment(path), output_dir=str(root))
    runs = expand(exp)
    store = Store(root)
    for rc in runs:
        store.write_result(ok_result(rc))
    return {"path": path, "root": root, "exp": exp, "runs": runs, "ids": [rc.run_id() for rc in runs],
            "store": store}


def ok_result(rc, sweep_id: str | None = None) -> dict:
    return {"run_id": rc.run_id(), "experiment": rc.experiment, "sweep_id": sweep_id, "status": "ok",
            "label": rc.method.label, "method": rc.method.method, "task": rc.task.name, "seed": rc.seed,
            "model": rc.model.name, "grid": dict(rc.grid), "metrics": {"perplexity": 20.0 + rc.seed},
            "metric_directions": {"perplexity": "lower"}, "primary_metric": "perplexity", "cost": {},
            "error": None, "started_at": f"2026-01-01T00:00:0{rc.seed}+00:00",
            "finished_at": "2026-01-01T00:01:00+00:00"}


@pytest.fixture
def fake_execute(monkeypatch):
    """Replace the runner: a run is recorded ok at once (the store is what is under test)."""
    import peftlab.runner as runner

    ran = []

    def execute_run(rc, store, sweep_id=None, progress=None, cache=None, lock=None, eval_progress=None):
        ran.append(rc.run_id())
        result = ok_result(rc, sweep_id)
        store.write_result(result)
        return result

    monkeypatch.setattr(runner, "execute_run", execute_run)
    return ran


def index_rows(root: Path) -> list[tuple]:
    db = sqlite3.connect(root / "index.sqlite")
    try:
        return db.execute("SELECT * FROM runs ORDER BY run_id").fetchall()
    finally:
        db.close()


def assert_index_agrees(root: Path) -> None:
    """The index holds exactly what a rebuild from the files gives."""
    before = index_rows(root)
    Store(root).rebuild_index()
    assert index_rows(root) == before


def tree(root: Path) -> dict:
    """Every path under root with its size and mtime (to prove a read wrote nothing)."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns, path.is_dir())
    return out


def dry_run(planned, capsys) -> str:
    assert main(["sweep", str(planned["path"]), "--store", str(planned["root"]), "--dry-run"]) == 0
    return capsys.readouterr().out


def ls_runs(planned, capsys) -> str:
    assert main(["ls", "runs", "--store", str(planned["root"])]) == 0
    return capsys.readouterr().out


def read_only_ids(root: Path) -> list[str]:
    return [r["run_id"] for r in Store(root, readonly=True).results()]


def report_rows(root: Path, out: Path) -> int:
    """What `peftlab report` writes from the read-only listing (runs.csv rows)."""
    import csv

    from peftlab.report import write_report

    written = write_report(Store(root, readonly=True).results(), out)
    return len(list(csv.DictReader(written["tables/runs.csv"].open())))


def error_line(err: str) -> str:
    """The CLI's one error line (stderr may also carry warnings)."""
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


def warnings_about(caplog, path: Path) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
            and str(path) in r.getMessage()]


def check_bad_result(planned, capsys, caplog, fake_execute, tmp_path, problem: str) -> None:
    """Run 0's result.json is bad: every reader names it once, the others keep working, a sweep re-runs it."""
    ids, root = planned["ids"], planned["root"]
    path = root / ids[0] / "result.json"
    caplog.set_level(logging.WARNING, logger=LOGGER)
    store = Store(root)
    assert store.status(ids[0]) is None and store.read_result(ids[0]) is None
    assert problem in store.result_problem(ids[0])
    [line] = warnings_about(caplog, path)  # one line, naming the file, once per process
    assert problem in line and "\n" not in line and "re-runs it" in line

    out = dry_run(planned, capsys)
    assert "s0:unreadable→rerun  s1:ok  s2:ok" in out
    assert "already ok 2 · to run 1 (0 new, 1 unreadable re-run)" in out
    out = ls_runs(planned, capsys)
    assert "2 run(s)" in out and ids[0] not in out
    assert read_only_ids(root) == ids[1:]
    assert report_rows(root, tmp_path / "report") == 2
    # ls and report are read-only (they never write); the next writer brings the index in step
    assert len(Store(root).results()) == 2
    assert [r[0] for r in index_rows(root)] == ids[1:]  # no stale "ok" row left in the index
    assert_index_agrees(root)

    from peftlab.executors import run_sweep

    summary = run_sweep(planned["exp"], Store(root))
    assert summary.ran == [ids[0]] and summary.already_ok == ids[1:] and summary.ok
    assert fake_execute == [ids[0]]
    assert [Store(root).status(i) for i in ids] == ["ok"] * 3
    assert len(Store(root).results()) == 3
    assert_index_agrees(root)


# ------------------------------------------------------------------------------------------ 1-5: bad result.json
def test_binary_garbage_result_is_named_and_rerun(planned, capsys, caplog, fake_execute, tmp_path) -> None:
    (planned["root"] / planned["ids"][0] / "result.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe" * 40)
    check_bad_result(planned, capsys, caplog, fake_execute, tmp_path, "is not text (byte 0x89 at offset 0")


def test_json_array_result_is_named_and_rerun(planned, capsys, caplog, fake_execute, tmp_path) -> None:
    (planned["root"] / planned["ids"][0] / "result.json").write_text("[]")
    check_bad_result(planned, capsys, caplog, fake_execute, tmp_path, "holds an array where a result object belongs")


def test_truncated_result_no_stale_ok_in_index(planned, capsys, caplog, fake_execute, tmp_path) -> None:
    path = planned["root"] / planned["ids"][0] / "result.json"
    assert planned["ids"][0] in [r[0] for r in index_rows(planned["root"])]  # indexed ok before
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    check_bad_result(planned, capsys, caplog, fake_execute, tmp_path, "is not valid JSON (truncated or corrupted")


def test_result_missing_required_fields_is_named_and_rerun(planned, capsys, caplog, fake_execute, tmp_path) -> None:
    path = planned["root"] / planned["ids"][0] / "result.json"
    path.write_text(json.dumps({"run_id": planned["ids"][0], "metrics": {"perplexity": 1.0}}))
    check_bad_result(planned, capsys, caplog, fake_execute, tmp_path, "lacks the required field(s) status")


def test_result_of_another_schema_version_is_named_and_rerun(planned, capsys, caplog, fake_execute,
                                                             tmp_path) -> None:
    path = planned["root"] / planned["ids"][0] / "result.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "schema_version": 2}))
    check_bad_result(planned, capsys, caplog, fake_execute, tmp_path, "has schema_version 2")


def test_validate_result_names_each_problem(tmp_path) -> None:
    from peftlab.store import validate_result

    assert validate_result({"run_id": "a", "status": "ok"}, "a") is None
    assert validate_result({"status": "ok"}) == "lacks the required field(s) run_id"
    assert "not its directory's name" in validate_result({"run_id": "b", "status": "ok"}, "a")
    assert "has status 'great'" in validate_result({"run_id": "a", "status": "great"})
    assert "in 'metrics' where an object belongs" in validate_result({"run_id": "a", "status": "ok", "metrics": [1]})
    assert "holds a string" in validate_result("ok")
    with pytest.raises(ValueError, match="not writing the result of run 'x': it has status 'great'"):
        Store(tmp_path / "s").write_result({"run_id": "x", "status": "great"})


# ------------------------------------------------------------------------------------------ 6-8: the index
def test_deleted_index_is_rebuilt_and_read_only_reads_use_the_files(planned, capsys, tmp_path) -> None:
    root, ids = planned["root"], planned["ids"]
    (root / "index.sqlite").unlink()
    assert read_only_ids(root) == ids
    assert not (root / "index.sqlite").exists(), "a read-only read must not re-create the index"
    assert report_rows(root, tmp_path / "report") == 3
    out = dry_run(planned, capsys)
    assert "already ok 3 · to run 0" in out and "nothing to run" in out
    assert not (root / "index.sqlite").exists()
    out = ls_runs(planned, capsys)  # read-only too: the files are the truth
    assert "3 run(s)" in out
    assert not (root / "index.sqlite").exists()
    assert len(Store(root).results()) == 3  # the next writer re-creates and fills it
    assert [r[0] for r in index_rows(root)] == sorted(ids)
    assert_index_agrees(root)


def test_stale_index_sees_run_dirs_added_and_removed_behind_its_back(planned, capsys, caplog, tmp_path) -> None:
    root, ids = planned["root"], planned["ids"]
    shutil.rmtree(root / ids[1])  # removed behind the index's back
    extra = json.loads((root / ids[2] / "result.json").read_text())
    extra.update(run_id="faults--lora--lm--s9--handmade", seed=9)
    (root / extra["run_id"]).mkdir()
    (root / extra["run_id"] / "result.json").write_text(json.dumps(extra))  # added behind its back
    rewritten = json.loads((root / ids[2] / "result.json").read_text())
    rewritten["metrics"] = {"perplexity": 99.0}
    (root / ids[2] / "result.json").write_text(json.dumps(rewritten))  # changed behind its back

    want = sorted([ids[0], ids[2], extra["run_id"]])
    readonly = Store(root, readonly=True).results()
    assert sorted(r["run_id"] for r in readonly) == want
    assert {r["run_id"]: r["metrics"]["perplexity"] for r in readonly}[ids[2]] == 99.0
    assert report_rows(root, tmp_path / "report") == 3
    out = dry_run(planned, capsys)
    assert "s0:ok  s1:new  s2:ok" in out
    store = Store(root)
    assert sorted(r["run_id"] for r in store.results()) == want
    assert [r[0] for r in index_rows(root)] == want  # brought up to date
    assert [r["metrics"]["perplexity"] for r in store.results(run_id=ids[2])] == [99.0]
    assert len(store.results(experiment="faults", status="ok")) == 3
    assert "3 run(s)" in ls_runs(planned, capsys)
    assert_index_agrees(root)
    assert not warnings_about(caplog, root)


def test_corrupt_index_file_is_read_around_then_moved_aside_and_rebuilt(planned, capsys, caplog, tmp_path) -> None:
    root, ids = planned["root"], planned["ids"]
    caplog.set_level(logging.WARNING, logger=LOGGER)
    (root / "index.sqlite").write_bytes(b"this is not a database" * 200)
    before = tree(root)
    assert read_only_ids(root) == ids
    assert tree(root) == before, "a read-only read must not repair the index on disk"
    assert any("is not a usable SQLite index" in m for m in warnings_about(caplog, root / "index.sqlite"))
    assert "already ok 3" in dry_run(planned, capsys)
    assert report_rows(root, tmp_path / "report") == 3

    store = Store(root)  # a writer moves it aside and rebuilds it
    assert (root / "index.sqlite.corrupt").read_bytes().startswith(b"this is not a database")
    assert [r["run_id"] for r in store.results()] == ids
    assert "3 run(s)" in ls_runs(planned, capsys)
    assert_index_agrees(root)

    (root / "index.sqlite").write_bytes(b"garbage again" * 300)  # corrupted under a live Store: next write repairs
    store.write_result({**store.read_result(ids[0]), "metrics": {"perplexity": 5.0}})
    assert [r["metrics"]["perplexity"] for r in store.results(run_id=ids[0])] == [5.0]
    assert len(store.results()) == 3
    assert_index_agrees(root)


# ------------------------------------------------------------------------------------------ 9-10: no writes possible
def _refuse_writes(monkeypatch, root: Path) -> list[str]:
    """Make every Python-level write under `root` fail with EROFS (chmod does not bind root)."""
    attempts: list[str] = []
    root_s = str(root.resolve())

    def inside(path) -> bool:
        try:
            return os.path.abspath(os.fspath(path)).startswith(root_s)
        except TypeError:
            return False

    def refuse(path):
        attempts.append(str(path))
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    real_open, real_os_open, real_mkstemp = builtins.open, os.open, tempfile.mkstemp
    real_mkdir, real_replace, real_unlink = os.mkdir, os.replace, os.unlink

    def fake_open(file, mode="r", *args, **kwargs):
        if inside(file) and any(c in mode for c in "wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkstemp(*args, dir=None, **kwargs):
        if dir is not None and inside(dir):
            refuse(dir)
        return real_mkstemp(*args, dir=dir, **kwargs)

    def guard(real):
        def call(path, *args, **kwargs):
            if inside(path):
                refuse(path)
            return real(path, *args, **kwargs)
        return call

    real_connect = sqlite3.connect

    def fake_connect(database, *args, **kwargs):
        text = str(database)
        if inside(text) and not (kwargs.get("uri") and "mode=ro" in text):
            refuse(text)
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(tempfile, "mkstemp", fake_mkstemp)
    monkeypatch.setattr(os, "mkdir", guard(real_mkdir))
    monkeypatch.setattr(os, "replace", lambda src, dst: refuse(dst) if inside(dst) else real_replace(src, dst))
    monkeypatch.setattr(os, "unlink", guard(real_unlink))
    monkeypatch.setattr(sqlite3, "connect", fake_connect)
    return attempts


def test_read_only_store_reads_never_write(planned, capsys, monkeypatch, tmp_path) -> None:
    root, ids = planned["root"], planned["ids"]
    store = planned["store"]
    (root / ids[0] / "result.json").write_text("[]")  # a bad file and a busy run among them
    store.write_result({**store.read_result(ids[1]), "status": "running", "pid": os.getpid(), "finished_at": None})
    holder = store.lock(ids[1])
    assert holder.acquire()
    try:
        os.chmod(root, 0o555)  # binds for non-root users; for root the monkeypatches below do
        before = tree(root)
        attempts = _refuse_writes(monkeypatch, root)
        assert read_only_ids(root) == ids[1:]
        report_rows(root, tmp_path / "report")
        out = dry_run(planned, capsys)
        assert "s0:unreadable→rerun  s1:busy  s2:ok" in out
        assert attempts == [] and tree(root) == before
        with pytest.raises(StoreWriteError, match=r"cannot write .*: the file system is read-only") as info:
            Store(root)  # a writer fails at once, in one sentence naming the path
        assert isinstance(info.value, RuntimeError) and "\n" not in str(info.value)
        with pytest.raises(StoreError, match="opened read-only"):
            Store(root, readonly=True).write_result(ok_result(planned["runs"][0]))
        assert main(["sweep", str(planned["path"]), "--store", str(root)]) == 2
        line = error_line(capsys.readouterr().err)
        assert str(root) in line and "read-only" in line
        monkeypatch.undo()
    finally:
        os.chmod(root, 0o755)
        holder.release()
    assert tree(root) == before


def test_full_disk_is_one_sentence_naming_the_path(planned, capsys, monkeypatch, tmp_path) -> None:
    root, ids = planned["root"], planned["ids"]
    store = planned["store"]
    (root / ids[0] / "result.json").unlink()  # run 0 is left to run

    def enospc(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", enospc)
    path = root / ids[1] / "result.json"
    with pytest.raises(StoreWriteError) as info:
        store.write_result({**store.read_result(ids[1]), "status": "failed", "error": "x"})
    message = str(info.value)
    assert message == f"cannot write {path}: no space left on device (free some space, then run the command again)"
    assert isinstance(info.value, OSError) and isinstance(info.value, RuntimeError) and info.value.errno == errno.ENOSPC
    assert pickle.loads(pickle.dumps(info.value)).message == message
    assert store.status(ids[1]) == "ok" and not list(path.parent.glob("*.tmp"))  # the old result is intact

    # reads keep working on a full disk
    assert read_only_ids(root) == ids[1:] and "2 run(s)" in ls_runs(planned, capsys)
    assert "to run 1 (1 new)" in dry_run(planned, capsys)

    # a sweep stops at the first write with that one sentence (the real runner: nothing is trained)
    assert main(["sweep", str(planned["path"]), "--store", str(root)]) == 2
    line = error_line(capsys.readouterr().err)
    assert f"{root / ids[0]}/" in line and "no space left on device" in line

    # the index's own writes: sqlite's "database or disk is full" is the same sentence, naming the index
    monkeypatch.undo()
    real_connect = Store._connect

    class FullDisk:
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            if sql.lstrip().upper().startswith(("INSERT", "DELETE")):
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

        def close(self):
            self.db.close()

    monkeypatch.setattr(Store, "_connect", lambda self: FullDisk(real_connect(self)))
    with pytest.raises(StoreWriteError, match=f"cannot write {root / 'index.sqlite'}: no space left on device"):
        store.write_result(store.read_result(ids[1]))
    assert len(store.results()) == 2  # a read never fails because the index cannot be updated


# ------------------------------------------------------------------------------------------ 11-12: runs half there
def test_lock_file_left_by_a_dead_process_does_not_block(planned, capsys, fake_execute) -> None:
    root, ids = planned["root"], planned["ids"]
    store = planned["store"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.write_result({**store.read_result(ids[0]), "status": "running", "pid": dead.pid, "finished_at": None})
    (root / ids[0] / ".lock").write_text(f"{dead.pid}\n")  # a lock file from the dead process, no flock held
    assert store.status(ids[0]) == "interrupted"
    assert not store.lock(ids[0]).held_elsewhere()
    assert "s0:interrupted→rerun" in dry_run(planned, capsys)
    assert [r["status"] for r in Store(root, readonly=True).results()] == ["interrupted", "ok", "ok"]

    from peftlab.executors import run_sweep

    summary = run_sweep(planned["exp"], store)
    assert summary.ran == [ids[0]] and summary.ok and fake_execute == [ids[0]]
    assert store.status(ids[0]) == "ok"
    assert_index_agrees(root)


def test_run_dir_without_result_json_is_a_new_run(planned, capsys, caplog, fake_execute) -> None:
    root, ids = planned["root"], planned["ids"]
    caplog.set_level(logging.WARNING, logger=LOGGER)
    (root / ids[0] / "result.json").unlink()
    (root / ids[0] / "config.yaml").write_text("leftover: true\n")
    (root / ids[0] / "adapter").mkdir()
    store = Store(root)
    assert store.status(ids[0]) is None and store.result_problem(ids[0]) is None
    assert "s0:new  s1:ok  s2:ok" in dry_run(planned, capsys)
    assert "2 run(s)" in ls_runs(planned, capsys)
    assert read_only_ids(root) == ids[1:]
    assert len(store.results()) == 2  # a writer brings the index in step
    assert [r[0] for r in index_rows(root)] == sorted(ids[1:])
    assert not warnings_about(caplog, root)  # nothing is wrong: the run just has not finished

    from peftlab.executors import run_sweep

    summary = run_sweep(planned["exp"], store)
    assert summary.ran == [ids[0]] and summary.ok
    assert not (root / ids[0] / "adapter").exists()  # cleared before the re-run
    assert_index_agrees(root)


# ------------------------------------------------------------------------------------------ concurrency
def test_concurrent_store_creation_never_reports_locked(tmp_path) -> None:
    """Several processes open one fresh store at the same moment and write at once (the race behind
    `database is locked` at `PRAGMA journal_mode=WAL`)."""
    go = tmp_path / "go"
    script = tmp_path / "writer.py"
    script.write_text(
        "import sys, time\nfrom pathlib import Path\nfrom peftlab.store import Store\n"
        "root, go, me = sys.argv[1:]\n"
        "while not Path(go).exists():\n    time.sleep(0.001)\n"
        "s = Store(root)\n"
        "for i in range(10):\n"
        "    s.write_result({'run_id': f'r{me}-{i}', 'status': 'ok', 'metrics': {}})\n"
        "    s.results()\n")
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "store"), str(go), str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(4)]
    import time

    time.sleep(1.0)
    go.touch()
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    store = Store(tmp_path / "store")
    assert len(store.results()) == 40
    assert_index_agrees(store.root)
