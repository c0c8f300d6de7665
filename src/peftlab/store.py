"""The run store: one directory per run plus a SQLite index of all runs.

`runs/<run-id>/result.json` is the truth; `runs/index.sqlite` is a query index rebuilt from those
files at any time (`Store.rebuild_index`). Every file is written to a temporary name and moved into
place with `os.replace`, so a crash leaves either the old file or the new one, never half of one;
a run that dies leaves `status: running` behind with a pid, which readers report as interrupted.
A per-run lock file (`flock`) keeps two sweeps sharing a store from running the same run twice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml

SCHEMA_VERSION = 1
TERMINAL = ("ok", "failed", "diverged", "cancelled")
INDEX_COLUMNS = ("run_id", "experiment", "sweep_id", "label", "method", "task", "model", "seed", "status",
                 "primary_metric", "primary_value", "config_hash", "started_at", "finished_at", "result_json")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory and `os.replace` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive, non-blocking `flock` on `runs/<id>/.lock`, released when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self._fh: Any = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            return False
        return True

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class Store:
    """Run directories and the results index under one root (default `runs/`)."""

    def __init__(self, root: str | Path = "runs"):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = self.root / "index.sqlite"
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, experiment TEXT, sweep_id TEXT, "
                "label TEXT, method TEXT, task TEXT, model TEXT, seed INTEGER, status TEXT, primary_metric TEXT, "
                "primary_value REAL, config_hash TEXT, started_at TEXT, finished_at TEXT, result_json TEXT)"
            )

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.index_path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            yield db
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # ------------------------------------------------------------------------------ run files
    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def lock(self, run_id: str) -> RunLock:
        return RunLock(self.run_dir(run_id) / ".lock")

    def write_config(self, run_id: str, config: dict) -> None:
        atomic_write_text(self.run_dir(run_id) / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def read_result(self, run_id: str) -> dict | None:
        path = self.run_dir(run_id) / "result.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def write_result(self, result: dict) -> None:
        """Write result.json atomically, then upsert its index row."""
        result = {"schema_version": SCHEMA_VERSION, **result}
        atomic_write_text(self.run_dir(result["run_id"]) / "result.json",
                          json.dumps(result, indent=2, default=_json_default))
        self._index(result)

    def _index(self, result: dict) -> None:
        metrics = result.get("metrics") or {}
        primary = result.get("primary_metric")
        row = {
            "run_id": result["run_id"], "experiment": result.get("experiment"), "sweep_id": result.get("sweep_id"),
            "label": result.get("label"), "method": result.get("method"), "task": result.get("task"),
            "model": result.get("model"), "seed": result.get("seed"), "status": result.get("status"),
            "primary_metric": primary, "primary_value": metrics.get(primary) if primary else None,
            "config_hash": result.get("config_hash"), "started_at": result.get("started_at"),
            "finished_at": result.get("finished_at"),
            "result_json": json.dumps(result, default=_json_default),
        }
        cols = ", ".join(INDEX_COLUMNS)
        marks = ", ".join("?" for _ in INDEX_COLUMNS)
        with self._db() as db:
            db.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", [row[c] for c in INDEX_COLUMNS])

    def delete_run(self, run_id: str, keep_lock: bool = False) -> None:
        """Remove the run's files and index row; `keep_lock` leaves `.lock` in place, so a process
        holding that lock (clearing a stale run before re-running it) keeps excluding others."""
        run_dir = self.run_dir(run_id)
        if keep_lock and run_dir.is_dir():
            for path in run_dir.iterdir():
                if path.name == ".lock":
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        with self._db() as db:
            db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    # ------------------------------------------------------------------------------ queries
    def status(self, run_id: str) -> str | None:
        """The run's status; a `running` run whose process is gone reads as `interrupted`."""
        result = self.read_result(run_id)
        if result is None:
            return None
        status = result.get("status")
        if status == "running" and not pid_alive(result.get("pid")):
            return "interrupted"
        return status

    def results(self, **filters: Any) -> list[dict]:
        """Result dicts from the index, filtered by column equality (e.g. `status="ok"`)."""
        where = " AND ".join(f"{k} = ?" for k in filters if k in INDEX_COLUMNS)
        sql = "SELECT result_json FROM runs" + (f" WHERE {where}" if where else "") + " ORDER BY started_at, run_id"
        values = [v for k, v in filters.items() if k in INDEX_COLUMNS]
        db = sqlite3.connect(self.index_path, timeout=60)
        try:
            rows = db.execute(sql, values).fetchall()
        finally:
            db.close()
        out = []
        for (blob,) in rows:
            result = json.loads(blob)
            if result.get("status") == "running" and not pid_alive(result.get("pid")):
                result["status"] = "interrupted"
            out.append(result)
        return out

    def rebuild_index(self) -> int:
        """Re-create the index from the result.json files (the files are the truth)."""
        with self._db() as db:
            db.execute("DELETE FROM runs")
        count = 0
        for path in sorted(self.root.glob("*/result.json")):
            result = self.read_result(path.parent.name)
            if result and "run_id" in result:
                self._index(result)
                count += 1
        return count


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)
