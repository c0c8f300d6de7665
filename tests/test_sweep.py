"""Sweeps: plan display, resume rules, kill -9 resume, two sweeps sharing a store, Ctrl-C, trackers.

Runs use the tiny random Llama of conftest.py and in-memory records (`install_fake_data` replaces
`peftlab.data.load_records`); subprocess tests run a small driver script that installs the same
fake data and then calls the real CLI / API, so nothing touches the network.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import fake_load_records

TESTS_DIR = Path(__file__).resolve().parent
def install_fake_data() -> None:
    """A sweep `setup` hook (also used by the Ray test's workers): no network, no archives."""
    import peftlab.data as data

    data.load_records = fake_load_records


def experiment_dict(model_dir: Path, name: str = "sw", methods=("lora",), seeds=(0,), steps: int = 2,
                    limit_train: int = 8, grid: dict | None = None, **extra) -> dict:
    raw = {
        "name": name, "model": str(model_dir),
        "tasks": [{"lm": {"limit_train": limit_train, "limit_eval": 4, "max_length": 32}}],
        "methods": list(methods), "seeds": list(seeds),
        "train": {"max_steps": steps, "batch_size": 4, "warmup_steps": 0, "eval_batches": 1, "num_threads": 1},
    }
    if grid:
        raw["grid"] = grid
    raw.update(extra)
    return raw


def write_experiment(path: Path, model_dir: Path, **kwargs) -> Path:
    path.write_text(yaml.safe_dump(experiment_dict(model_dir, **kwargs), sort_keys=False))
    return path


def load(path: Path, store: Path):
    import dataclasses

    from peftlab.config import load_experiment

    return dataclasses.replace(load_experiment(path), output_dir=str(store))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def index_rows(store_root: Path) -> list[tuple]:
    db = sqlite3.connect(store_root / "index.sqlite")
    try:
        return db.execute("SELECT * FROM runs ORDER BY run_id").fetchall()
    finally:
        db.close()


def assert_index_matches_files(store) -> None:
    before = index_rows(store.root)
    store.rebuild_index()
    assert index_rows(store.root) == before
    db = sqlite3.connect(store.root / "index.sqlite")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()


def fake_result(rc, status: str, sweep_id: str | None = None, **extra) -> dict:
    return {"run_id": rc.run_id(), "experiment": rc.experiment, "sweep_id": sweep_id, "status": status,
            "label": rc.method.label, "method": rc.method.method, "task": rc.task.name, "seed": rc.seed,
            "model": rc.model.name, "grid": dict(rc.grid), "metrics": {}, "cost": {}, "error": None,
            "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:00:30+00:00", **extra}


# ------------------------------------------------------------------------------------------ plan
def test_dry_run_shows_plan_states_counts_and_estimate(tmp_path, tiny_llama_dir, capsys) -> None:
    from peftlab.cli import main
    from peftlab.plan import expand
    from peftlab.store import Store

    path = write_experiment(tmp_path / "exp.yaml", tiny_llama_dir, methods=["base", "lora", "ia3"], seeds=[0, 1],
                            grid={"lora.r": [4, 8], "train.lr": [1e-4, 1e-3]})
    fresh = tmp_path / "fresh-store"
    assert main(["sweep", str(path), "--store", str(fresh), "--dry-run"]) == 0
    out = capsys.readouterr().out
    # base once (it trains nothing, so no seed changes it); lora 2 r × 2 lr × 2 seeds; ia3 2 lr × 2 seeds
    assert "→ 13 run(s)" in out and "total 13 · already ok 0 · to run 13 (13 new)" in out
    assert "lora.r=8  train.lr=0.001" in out and "estimated time: unknown" in out
    assert not fresh.exists(), "--dry-run must not create the store"

    store_root = tmp_path / "store"
    store = Store(store_root)
    runs = expand(load(path, store_root))
    by_state = dict(zip(["ok", "ok2", "running-dead", "cancelled", "failed", "diverged", "busy"], runs[:7],
                        strict=True))
    store.write_result(fake_result(by_state["ok"], "ok"))
    store.write_result(fake_result(by_state["ok2"], "ok"))
    store.write_result(fake_result(by_state["running-dead"], "running", pid=dead_pid(), finished_at=None))
    store.write_result(fake_result(by_state["cancelled"], "cancelled"))
    store.write_result(fake_result(by_state["failed"], "failed", error="boom"))
    store.write_result(fake_result(by_state["diverged"], "diverged", error="nan"))
    store.write_result(fake_result(by_state["busy"], "running", pid=os.getpid(), finished_at=None))
    holder = store.lock(by_state["busy"].run_id())
    assert holder.acquire()  # "another process" is running it (flock conflicts across open files)
    try:
        assert main(["sweep", str(path), "--store", str(store_root), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert ("total 13 · already ok 2 · to run 8 (6 new, 1 interrupted + 1 cancelled re-run) · "
                "failed/diverged skipped 2 (--retry-failed re-runs them) · busy 1") in out
        assert "s0:ok" in out and "interrupted→rerun" in out and "cancelled→rerun" in out
        assert "failed" in out and "diverged" in out and "busy" in out
        assert "estimated time: ~04:00 (one after another; from 2 previous ok run(s) of sw)" in out

        assert main(["sweep", str(path), "--store", str(store_root), "--dry-run", "--retry-failed"]) == 0
        out = capsys.readouterr().out
        assert "to run 10 (6 new, 1 interrupted + 1 cancelled re-run, 2 failed/diverged retried)" in out
    finally:
        holder.release()


def test_base_runs_once_under_the_first_seed(tmp_path, tiny_llama_dir) -> None:
    from peftlab.plan import expand

    exp = load(write_experiment(tmp_path / "e.yaml", tiny_llama_dir, methods=["base", "lora"], seeds=[3, 1, 2]),
               tmp_path / "s")
    runs = expand(exp)
    assert [(r.method.label, r.seed) for r in runs] == [("base", 3), ("lora", 3), ("lora", 1), ("lora", 2)]


def test_sweep_id_is_stable_per_experiment_content(tmp_path, tiny_llama_dir) -> None:
    from peftlab.plan import expand, sweep_id_for

    path = write_experiment(tmp_path / "exp.yaml", tiny_llama_dir, methods=["lora"], seeds=[0, 1])
    a, b = load(path, tmp_path / "a"), load(path, tmp_path / "b")
    assert sweep_id_for(a, expand(a)) == sweep_id_for(b, expand(b))  # the store does not change it
    assert sweep_id_for(a, expand(a)).startswith("sw-")
    more = write_experiment(tmp_path / "more.yaml", tiny_llama_dir, methods=["lora"], seeds=[0, 1, 2])
    c = load(more, tmp_path / "a")
    assert sweep_id_for(c, expand(c)) != sweep_id_for(a, expand(a))


def test_executor_options_are_validated_and_mapped_to_ray_options(tmp_path, tiny_llama_dir, monkeypatch) -> None:
    from peftlab.config import ConfigError
    from peftlab.executors.ray_executor import task_options
    from peftlab.plan import executor_options

    exp = load(write_experiment(tmp_path / "e.yaml", tiny_llama_dir,
                                executor={"num_cpus": 2, "memory_gb": 1.5, "env": {"X": 1}}), tmp_path / "s")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PEFTLAB_CACHE", "/somewhere")
    monkeypatch.setenv("UNRELATED_SECRET", "no")
    opts = task_options(executor_options(exp))
    assert opts["num_cpus"] == 2 and opts["num_gpus"] == 0 and opts["memory"] == int(1.5 * 2**30)
    assert opts["max_retries"] == 0
    env = opts["runtime_env"]["env_vars"]
    assert env["HF_HUB_OFFLINE"] == "1" and env["PEFTLAB_CACHE"] == "/somewhere" and env["X"] == "1"
    assert "UNRELATED_SECRET" not in env and env["TOKENIZERS_PARALLELISM"]
    bad = load(write_experiment(tmp_path / "b.yaml", tiny_llama_dir, executor={"num_gpu": 1}), tmp_path / "s")
    with pytest.raises(ConfigError, match="did you mean 'num_gpus'"):
        executor_options(bad)


def test_run_claims_each_run_under_its_lock_like_sweep(tmp_path, tiny_llama_dir, monkeypatch, capsys) -> None:
    """`peftlab run` starts runs through the sweep's claim-and-run: a run whose lock another process
    holds is reported busy and not executed; a free one is claimed, run once, and kept on the next call."""
    import peftlab.runner as runner
    from peftlab.cli import main
    from peftlab.plan import expand
    from peftlab.store import Store

    path = write_experiment(tmp_path / "exp.yaml", tiny_llama_dir, methods=["lora"], seeds=[0, 1])
    store_root = tmp_path / "store"
    store = Store(store_root)
    busy, free = (rc.run_id() for rc in expand(load(path, store_root)))
    executed: list[tuple[str, bool]] = []

    def fake_execute(rc, store, sweep_id=None, progress=None, cache=None, lock=None, eval_progress=None):
        executed.append((rc.run_id(), store.lock(rc.run_id()).held_elsewhere()))  # held: we run under it
        result = fake_result(rc, "ok", sweep_id)
        store.write_result(result)
        return result

    monkeypatch.setattr(runner, "execute_run", fake_execute)
    holder = store.lock(busy)
    assert holder.acquire()  # "another process" is running it (flock conflicts across open files)
    try:
        assert main(["run", str(path), "--store", str(store_root)]) == 0
    finally:
        holder.release()
    out = capsys.readouterr().out
    assert executed == [(free, True)]  # the busy run was not executed; the free one ran under its lock
    assert f"{busy}: skipped, being run by another process" in out
    assert "done: 1 ok, 0 not ok, 1 busy in another process" in out
    assert store.status(busy) is None and store.status(free) == "ok"

    executed.clear()
    assert main(["run", str(path), "--store", str(store_root)]) == 0
    out = capsys.readouterr().out
    assert executed == [(busy, True)]  # now free; the finished one is kept
    assert f"{free}: already done (use --force to re-run)" in out


# ------------------------------------------------------------------------------------------ progress
def test_progress_display_live_line_and_sparse_plain_lines(tmp_path, tiny_llama_dir) -> None:
    from peftlab.cli.display import Display
    from peftlab.plan import expand

    rc = expand(load(write_experiment(tmp_path / "e.yaml", tiny_llama_dir, grid={"lora.r": [4]}), tmp_path))[0]
    out = io.StringIO()
    d = Display(3, out=out, tty=True)
    d.run_started(1, rc)
    d.step(1, 10, 2.5)
    time.sleep(0.12)
    d.step(5, 10, 2.25)
    text = out.getvalue()
    assert "run 1/3 lora r=4 lm s0: step 5/10 loss 2.2500 ETA " in text and "\r" in text
    d.run_finished(1, {"label": "lora", "task": "lm", "seed": 0, "status": "ok", "metrics": {}}, 12.0)
    assert "[1/3] lora" in out.getvalue() and "ETA 00:24" in out.getvalue()  # 2 runs left × 12 s

    plain = io.StringIO()
    d = Display(2, out=plain, tty=False)
    d.run_started(1, rc)
    for step in range(1, 50):
        d.step(step, 50, 1.0)
    lines = plain.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in plain.getvalue()  # plain output: sparingly


# ------------------------------------------------------------------------------------------ local runs
def test_local_sweep_resume_rules_and_one_model_load(tmp_path, tiny_llama_dir, fake_records, monkeypatch) -> None:
    import peftlab.runner as runner
    from peftlab.executors import run_sweep
    from peftlab.store import Store

    loads = []
    real_load = runner.load_model
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    exp = load(write_experiment(tmp_path / "e.yaml", tiny_llama_dir, methods=["base", "lora", "ia3"]), tmp_path / "s")
    store = Store(tmp_path / "s")
    first = run_sweep(exp, store)
    assert first.counts() == {"ok": 3} and first.ok and len(loads) == 1  # one ModelCache: base loaded once
    ids = {r["label"]: r["run_id"] for r in first.results}
    assert {r["sweep_id"] for r in store.results()} == {first.sweep_id}
    assert (store.run_dir(ids["lora"]) / "adapter").exists()

    # base: stays ok; lora: cancelled earlier (a stale file must not survive the re-run); ia3: failed
    lora = store.read_result(ids["lora"])
    store.write_result({**lora, "status": "cancelled", "error": "Ctrl-C"})
    (store.run_dir(ids["lora"]) / "stale.txt").write_text("old")
    ia3 = store.read_result(ids["ia3"])
    store.write_result({**ia3, "status": "failed", "error": "boom"})
    base_mtime = (store.run_dir(ids["base"]) / "result.json").stat().st_mtime_ns

    second = run_sweep(exp, store)
    assert second.ran == [ids["lora"]] and second.already_ok == [ids["base"]]
    assert second.skipped_failed == [ids["ia3"]] and not second.ok
    assert not (store.run_dir(ids["lora"]) / "stale.txt").exists()
    assert (store.run_dir(ids["lora"]) / ".lock").exists()
    assert (store.run_dir(ids["base"]) / "result.json").stat().st_mtime_ns == base_mtime
    assert store.status(ids["ia3"]) == "failed"

    third = run_sweep(exp, store, retry_failed=True)
    assert third.ran == [ids["ia3"]] and third.ok
    assert [store.status(i) for i in ids.values()] == ["ok", "ok", "ok"]
    assert_index_matches_files(store)


def test_ctrl_c_cancels_current_run_stops_and_resumes(tmp_path, tiny_llama_dir, monkeypatch, capsys) -> None:
    import peftlab.data as data
    from peftlab.cli import main
    from peftlab.plan import expand
    from peftlab.store import Store

    calls = {"train": 0}

    def interrupting(task, split, source="auto", limit=None, seed=0):
        if split == "train":
            calls["train"] += 1
            if calls["train"] == 2:
                raise KeyboardInterrupt
        return fake_load_records(task, split, source, limit, seed)

    monkeypatch.setattr(data, "load_records", interrupting)
    path = write_experiment(tmp_path / "e.yaml", tiny_llama_dir, methods=["lora", "ia3", "dora"])
    store_root = tmp_path / "s"
    assert main(["sweep", str(path), "--store", str(store_root)]) == 130
    out = capsys.readouterr().out
    assert f"resume with: peftlab sweep {path} --store {store_root}" in out
    runs = expand(load(path, store_root))
    store = Store(store_root)
    assert [store.status(rc.run_id()) for rc in runs] == ["ok", "cancelled", None]
    assert store.read_result(runs[1].run_id())["sweep_id"].startswith("sw-")

    assert main(["sweep", str(path), "--store", str(store_root), "--report", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "to run 2 (1 new, 0 interrupted + 1 cancelled re-run)" in out
    assert [store.status(rc.run_id()) for rc in runs] == ["ok", "ok", "ok"]
    assert f"report: {tmp_path / 'report' / 'report.html'}" in out and (tmp_path / "report" / "report.html").exists()


def test_tracker_off_by_default_and_tensorboard_when_asked(tmp_path, tiny_llama_dir, fake_records) -> None:
    from peftlab.config import ConfigError
    from peftlab.executors import run_sweep
    from peftlab.plan import check_trackers
    from peftlab.store import Store

    with pytest.raises(ConfigError, match="not an accelerate tracker"):
        check_trackers(["tensorbored"])
    store = Store(tmp_path / "s")
    plain = run_sweep(load(write_experiment(tmp_path / "a.yaml", tiny_llama_dir, name="plain"), tmp_path / "s"),
                      store)
    assert plain.ok and not list(store.run_dir(plain.ran[0]).rglob("events.out.tfevents*"))
    pytest.importorskip("tensorboard")
    exp = load(write_experiment(tmp_path / "b.yaml", tiny_llama_dir, name="tb", trackers=["tensorboard"]),
               tmp_path / "s")
    summary = run_sweep(exp, store)
    assert summary.ok
    events = list(store.run_dir(summary.ran[0]).rglob("events.out.tfevents*"))
    assert events and events[0].stat().st_size > 0


# ------------------------------------------------------------------------------------------ processes
def driver(tmp_path: Path, body: str) -> Path:
    """A script that installs the fake data layer, then runs `body` (the real CLI or API)."""
    path = tmp_path / f"driver_{abs(hash(body)) % 10**6}.py"
    path.write_text(textwrap.dedent(f"""\
        import os, sys
        os.environ["HF_HUB_OFFLINE"] = "1"
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from test_sweep import install_fake_data
        install_fake_data()
        """) + textwrap.dedent(body))
    return path


def child_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONUNBUFFERED": "1"}


def test_sweep_resumes_after_kill_9_without_losing_or_redoing_runs(tmp_path, tiny_llama_dir) -> None:
    from peftlab.plan import expand
    from peftlab.store import Store

    path = write_experiment(tmp_path / "exp.yaml", tiny_llama_dir, name="k9", methods=["lora"], seeds=[0, 1, 2],
                            steps=25, limit_train=32)
    store_root = tmp_path / "store"
    cli = driver(tmp_path, "from peftlab.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    ids = [rc.run_id() for rc in expand(load(path, store_root))]
    store = Store(store_root)

    proc = subprocess.Popen([sys.executable, str(cli), "sweep", str(path), "--store", str(store_root)],
                            env=child_env(), cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    try:
        while True:
            assert proc.poll() is None, f"sweep ended before it could be killed:\n{proc.stdout.read().decode()}"
            assert time.monotonic() < deadline, "no moment with a finished run and a running run"
            results = {i: store.read_result(i) for i in ids}
            states = {i: (r or {}).get("status") for i, r in results.items()}
            if "ok" in states.values() and "running" in states.values():
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()

    finished = [i for i in ids if store.status(i) == "ok"]
    killed = [i for i in ids if store.status(i) == "interrupted"]
    assert finished and len(killed) == 1, {i: store.status(i) for i in ids}
    assert store.read_result(killed[0])["status"] == "running"  # on disk; readers see it as interrupted
    before = {i: ((store.run_dir(i) / "result.json").stat().st_mtime_ns, store.read_result(i)["started_at"])
              for i in finished}
    killed_started = store.read_result(killed[0])["started_at"]  # (the new process needs > 1 s to start)

    again = subprocess.run([sys.executable, str(cli), "sweep", str(path), "--store", str(store_root)],
                           env=child_env(), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already ok {len(finished)}" in again.stdout
    assert "1 interrupted + 0 cancelled re-run" in again.stdout
    for i in finished:  # not redone
        assert ((store.run_dir(i) / "result.json").stat().st_mtime_ns, store.read_result(i)["started_at"]) == before[i]
    assert store.read_result(killed[0])["started_at"] != killed_started  # re-ran from scratch
    assert [store.status(i) for i in ids] == ["ok"] * 3
    assert len(store.results(experiment="k9")) == 3
    assert len({r["sweep_id"] for r in store.results(experiment="k9")}) == 1
    assert_index_matches_files(store)


def test_two_sweeps_sharing_a_store_run_each_run_exactly_once(tmp_path, tiny_llama_dir) -> None:
    from peftlab.plan import expand
    from peftlab.store import Store

    path = write_experiment(tmp_path / "exp.yaml", tiny_llama_dir, name="twin", methods=["lora"],
                            seeds=[0, 1, 2, 3], steps=10, limit_train=32)
    store_root = tmp_path / "store"
    go = tmp_path / "go"
    script = driver(tmp_path, f"""\
        import json, time
        from pathlib import Path
        from peftlab.config import load_experiment
        from peftlab.store import Store
        from peftlab.executors import run_sweep
        me = sys.argv[1]
        Path({str(tmp_path)!r}, "ready-" + me).touch()
        while not Path({str(go)!r}).exists():
            time.sleep(0.02)
        s = run_sweep(load_experiment({str(path)!r}), Store({str(store_root)!r}))
        Path({str(tmp_path)!r}, "out-" + me + ".json").write_text(json.dumps(
            {{"ran": s.ran, "busy": s.busy, "done_elsewhere": s.done_elsewhere, "already_ok": s.already_ok}}))
        """)
    procs = [subprocess.Popen([sys.executable, str(script), name], env=child_env(), cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for name in ("a", "b")]
    try:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{n}").exists() for n in ("a", "b")):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        go.touch()
        outputs = [p.communicate(timeout=180)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outputs
    a, b = (json.loads((tmp_path / f"out-{n}.json").read_text()) for n in ("a", "b"))
    ids = [rc.run_id() for rc in expand(load(path, store_root))]
    assert not set(a["ran"]) & set(b["ran"]), (a, b)  # never the same run twice
    assert sorted(a["ran"] + b["ran"]) == sorted(ids)
    for side in (a, b):  # each sweep accounts for every run: ran it, found it busy, or found it finished
        assert sorted(side["ran"] + side["busy"] + side["done_elsewhere"] + side["already_ok"]) == sorted(ids)
    store = Store(store_root)
    assert [store.status(i) for i in ids] == ["ok"] * 4
    assert len(store.results()) == 4
    assert_index_matches_files(store)
