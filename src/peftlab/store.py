"""The run store: one directory per run plus a SQLite index of all runs.

`runs/<run-id>/result.json` is the truth; `runs/index.sqlite` is a query index kept in step with
those files:

* **One writer.** `write_result` is the only code that writes a `result.json`: it takes a
  `peftlab.result.RunResult` (or a dict, read as one), which owns the schema and its version, and
  writes `RunResult.to_json()`. Readers get dicts (`read_result`, `results`); whoever changes a
  result reads it with `read_run_result`, changes the fields and writes it back.
* **Atomic files.** Every file is written to a temporary name and moved into place with
  `os.replace`, so a crash leaves either the old file or the new one, never half of one; a run
  that dies leaves `status: running` behind with a pid, which readers report as interrupted.
* **Bad files never block.** A `result.json` that cannot be read or is not a valid result (binary
  garbage, truncated JSON, not an object, required fields missing, another schema version, a
  `run_id` that is not its directory's name) is reported in one warning line naming the file
  (logger `peftlab.store`), left out of `results()`, and reads as "no result" (`status()` is None),
  so a sweep re-runs it. `result_problem()` says what is wrong with it.
* **The index follows the files.** Next to each index row the index records the `result.json`
  it came from (mtime, size, inode). `results()` lists the run directories, stats their
  `result.json` (cheap: no file is read when nothing changed) and re-reads only those that differ
  from the index: added, rewritten, truncated or garbled files and removed run directories are
  noticed, a deleted index is rebuilt, and a corrupt index file is moved aside to
  `index.sqlite.corrupt` and rebuilt (writers only; readers read the files instead).
  `rebuild_index()` rebuilds it from scratch. A file rewritten in place with the same size and
  mtime is not noticed (peftlab itself always replaces files, which changes the inode).
* **Read-only access.** `Store(root, readonly=True)` (or `Store.open_for_reading(root)`) never
  writes: no directory, lock or index is created and nothing is repaired on disk; a missing,
  stale, corrupt or unopenable index (read-only mount, full disk) is made up for by reading the
  `result.json` files. `ls runs`, `report` and `sweep --dry-run` read this way.
* **Sharing a store.** A per-run lock file (`flock`) keeps two sweeps sharing a store from running
  the same run twice. The index is in WAL mode (set once, by whoever creates it, under the
  store's `.index.lock`), every connection has a busy timeout, and an operation that still finds
  the database locked is retried with backoff.
* **Write failures** (full disk, read-only file system, ...) raise `StoreWriteError`, one sentence
  naming the path (an `OSError` and a `RuntimeError`, so the CLI prints it as one line).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import random
import shutil
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import yaml

from peftlab import files
from peftlab.result import EXAMPLES_FILE, InvalidResult, RunResult, json_default, validate_result
from peftlab.status import RunStatus

INDEX_COLUMNS = ("run_id", "experiment", "sweep_id", "label", "method", "task", "model", "seed", "status",
                 "primary_metric", "primary_value", "config_hash", "started_at", "finished_at", "result_json")
BUSY_TIMEOUT_S = 30.0  # sqlite's own wait for a lock, per statement
LOCKED_RETRY_S = 120.0  # then: retry the whole operation with backoff for this long

log = logging.getLogger("peftlab.store")
T = TypeVar("T")
FileKey = tuple[int, int, int]  # (mtime_ns, size, inode) of a result.json


class StoreError(RuntimeError):
    """A run store problem, told in one sentence."""


class StoreWriteError(OSError, StoreError):
    """Writing into the run store failed (full disk, read-only file system, ...); names the path."""

    def __init__(self, path: str | Path, cause: BaseException | str, code: int | None = None):
        code = getattr(cause, "errno", None) if code is None else code
        reason = _reason(cause, code)
        super().__init__(code, reason, str(path))
        self.path = Path(path)
        self.message = f"cannot write {path}: {reason}"

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple:  # pickles (Ray sends exceptions between processes)
        return (type(self), (str(self.path), self.strerror, self.errno))


def _reason(cause: BaseException | str, code: int | None = None) -> str:
    code = getattr(cause, "errno", None) if code is None else code
    text = str(cause)
    if code in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in text or "disk full" in text:
        return "no space left on device (free some space, then run the command again)"
    if code == errno.EROFS or "readonly database" in text or "read-only" in text:
        return "the file system is read-only"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror[0].lower() + cause.strerror[1:]
    return text or type(cause).__name__


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_text(path: Path, text: str) -> os.stat_result:
    """`peftlab.files.atomic_write_text` (temp file, fsync, `os.replace`) for the store: any
    OSError becomes a `StoreWriteError` naming `path`. Returns the written file's stat."""
    try:
        return files.atomic_write_text(path, text)
    except OSError as exc:
        if isinstance(exc, StoreWriteError):
            raise
        raise StoreWriteError(Path(path), exc) from exc


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, TypeError, ValueError):
        return False
    return True


class RunLock(files.FileLock):
    """An exclusive, non-blocking `flock` on `runs/<id>/.lock`, released when the process dies."""

    def acquire(self, blocking: bool = False) -> bool:
        try:
            return super().acquire(blocking)
        except OSError as exc:  # the lock file cannot be created (read-only store, full disk)
            raise StoreWriteError(self.path, exc) from exc


_WARNED: set[tuple[str, str]] = set()


def _warn_file(path: Path, problem: str, consequence: str) -> None:
    """One line per bad file and problem per process (a sweep reads a file several times)."""
    if (str(path), problem) in _WARNED:
        return
    _WARNED.add((str(path), problem))
    log.warning("%s %s; %s", path, problem, consequence)


def _warn(path: Path, problem: str) -> None:
    _warn_file(path, problem, "treated as a run without a result (a sweep re-runs it)")


def _warn_examples(path: Path, problem: str) -> None:
    _warn_file(path, problem, "no per-example scores for this run")


def parse_examples(text: str) -> dict[str, dict[str, dict[str, Any]]]:
    """`{evaluation: {id: {metric: value}}}` from examples.jsonl's text; ValueError naming the bad line."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"line {number} is not JSON: {exc}") from exc
        if (not isinstance(line, dict) or not isinstance(line.get("evaluation"), str)
                or not isinstance(line.get("id"), str) or not isinstance(line.get("values"), dict)):
            raise ValueError(f"line {number} is not an object with a string evaluation and id and object values")
        out.setdefault(line["evaluation"], {})[line["id"]] = line["values"]
    return out


def _file_key(st: os.stat_result) -> FileKey:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _is_locked(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    """Corruption (not a database, malformed image) rather than an operational problem."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


def _columns(result: dict) -> dict:
    """The index columns of a result, except `result_json`."""
    metrics = result.get("metrics") or {}
    primary = result.get("primary_metric")
    return {
        "run_id": result["run_id"], "experiment": result.get("experiment"), "sweep_id": result.get("sweep_id"),
        "label": result.get("label"), "method": result.get("method"), "task": result.get("task"),
        "model": result.get("model"), "seed": result.get("seed"), "status": result.get("status"),
        "primary_metric": primary, "primary_value": metrics.get(primary) if primary else None,
        "config_hash": result.get("config_hash"), "started_at": result.get("started_at"),
        "finished_at": result.get("finished_at"),
    }


def _row(result: dict) -> dict:
    return {**_columns(result), "result_json": json.dumps(result, default=json_default)}


class _Snapshot:
    """What the index holds: per run its file key and problem, and the rows matching a filter."""

    def __init__(self, files: dict[str, tuple[FileKey, str | None]], rows: dict[str, str], run_ids: set[str]):
        self.files, self.rows, self.run_ids = files, rows, run_ids

    @property
    def ids(self) -> set[str]:
        return self.run_ids | set(self.files)


class Store:
    """Run directories and the results index under one root (default `runs/`).

    `readonly=True`: never write (the root must exist); see the module docstring.
    """

    def __init__(self, root: str | Path = "runs", readonly: bool = False):
        self.root = Path(root)
        self.readonly = readonly
        self.index_path = self.root / "index.sqlite"
        self._lock_depth = 0
        if readonly:
            if not self.root.is_dir():
                raise FileNotFoundError(f"no run store at {self.root} (run `peftlab run` or `peftlab sweep` first)")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreWriteError(self.root, exc) from exc
        with self._index_lock():
            self._create_index()

    @classmethod
    def open_for_reading(cls, root: str | Path = "runs") -> "Store":
        return cls(root, readonly=True)

    # ------------------------------------------------------------------------------ index plumbing
    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        """The store-wide `flock` on `.index.lock` around creating, repairing or rebuilding the index."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        lock = RunLock(self.root / ".index.lock")
        lock.acquire(blocking=True)
        try:
            self._lock_depth = 1
            yield
        finally:
            self._lock_depth = 0
            lock.release()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.index_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        return db

    def _connect_readonly(self) -> sqlite3.Connection:
        """A connection that writes nothing. Without a `-wal` file no writer has the index open and
        it is complete, so it is opened `immutable` (sqlite creates no `-wal`/`-shm` for it); with
        one, `mode=ro` (sqlite uses the existing `-wal`/`-shm`)."""
        wal = self.index_path.with_name(self.index_path.name + "-wal").exists()
        uri = "file:" + urllib.parse.quote(str(self.index_path.resolve())) + ("?mode=ro" if wal else
                                                                              "?mode=ro&immutable=1")
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)

    def _retry(self, fn: Callable[[], T]) -> T:
        """`fn()`, retried with backoff while sqlite says the database is locked or busy."""
        deadline = time.monotonic() + LOCKED_RETRY_S
        delay = 0.01
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc):
                    raise
                if time.monotonic() > deadline:
                    raise StoreError(f"the run index {self.index_path} stayed locked for more than "
                                     f"{LOCKED_RETRY_S:.0f} s (another process holds it)") from exc
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def _transaction(self, body: Callable[[sqlite3.Connection], T], repair: bool = True) -> T:
        """Run `body(db)` in one immediate write transaction (retried while locked)."""
        if self.readonly:
            raise StoreError(f"the run store {self.root} was opened read-only")
        self._ensure_index()

        def attempt() -> T:
            db = self._connect()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = body(db)
                    db.execute("COMMIT")
                    return out
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
            finally:
                db.close()

        try:
            return self._retry(attempt)
        except sqlite3.DatabaseError as exc:
            if repair and (_is_corrupt(exc) or "no such table" in str(exc)):
                self._repair(exc)
                return self._transaction(body, repair=False)
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreWriteError(self.index_path, exc) from exc
            raise

    def _ensure_index(self) -> None:
        """Re-create a deleted index (it is then filled from the run directories by `results()`)."""
        if not self.index_path.exists():
            with self._index_lock():
                self._create_index()

    def _create_index(self) -> bool:
        """Create the index (WAL mode, tables) if needed; a corrupt one is moved aside and rebuilt.

        Call with `.index.lock` held. Returns whether it was rebuilt.
        """
        if not self.index_path.exists():  # a stale -wal/-shm must not be replayed onto a new index
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(OSError):
                    self.index_path.with_name(self.index_path.name + suffix).unlink()

        def setup() -> None:
            db = self._connect()
            try:
                if str(db.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")  # persistent: only the index's creator sets it
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, experiment TEXT, sweep_id TEXT, "
                    "label TEXT, method TEXT, task TEXT, model TEXT, seed INTEGER, status TEXT, "
                    "primary_metric TEXT, primary_value REAL, config_hash TEXT, started_at TEXT, "
                    "finished_at TEXT, result_json TEXT)")
                db.execute("CREATE TABLE IF NOT EXISTS files (run_id TEXT PRIMARY KEY, mtime_ns INTEGER, "
                           "size INTEGER, inode INTEGER, problem TEXT)")
                db.execute("COMMIT")
            finally:
                db.close()

        try:
            self._retry(setup)
            return False
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise StoreWriteError(self.index_path, exc) from exc
            self._move_aside(exc)
        try:
            self._retry(setup)
        except sqlite3.DatabaseError as exc:
            raise StoreWriteError(self.index_path, exc) from exc
        self._rebuild_locked()
        return True

    def _move_aside(self, exc: BaseException) -> None:
        aside = self.index_path.with_name(self.index_path.name + ".corrupt")
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.index_path, aside)
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                self.index_path.with_name(self.index_path.name + suffix).unlink()
        log.warning("%s is not a usable SQLite index (%s); moved it to %s and rebuilt it from the run "
                    "directories", self.index_path, exc, aside.name)

    def _healthy(self) -> bool:
        try:
            db = self._connect()
            try:
                ok = db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                return ok and {"runs", "files"} <= tables
            finally:
                db.close()
        except sqlite3.Error:
            return False

    def _repair(self, exc: BaseException) -> None:
        """A corrupt index: move it aside and rebuild it (unless another process already did)."""
        with self._index_lock():
            if self.index_path.exists():
                if self._healthy():
                    return
                self._move_aside(exc)
            self._create_index()
            self._rebuild_locked()

    # ------------------------------------------------------------------------------ run files
    def run_dir(self, run_id: str) -> Path:
        return self.root / run_id

    def lock(self, run_id: str) -> RunLock:
        return RunLock(self.run_dir(run_id) / ".lock")

    def write_config(self, run_id: str, config: dict) -> None:
        atomic_write_text(self.run_dir(run_id) / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    def load_result(self, run_id: str) -> tuple[dict | None, str | None, FileKey | None]:
        """(result, problem, file key) of the run's result.json: (None, None, None) when there is none;
        (None, problem, key) when it is unusable (warned once, naming the file)."""
        path = self.run_dir(run_id) / "result.json"
        try:
            fd = os.open(path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None, None, None
        except OSError as exc:
            problem = f"cannot be read ({_reason(exc)})"
            _warn(path, problem)
            return None, problem, None
        try:
            key = _file_key(os.fstat(fd))  # of the very file read below, even if it is replaced meanwhile
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            data = b"".join(chunks)
        except OSError as exc:
            problem = f"cannot be read ({_reason(exc)})"
            _warn(path, problem)
            return None, problem, None
        finally:
            os.close(fd)
        problem = None
        result = None
        try:
            result = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            problem = (f"is not text (byte {data[exc.start]:#04x} at offset {exc.start} is not UTF-8: "
                       "binary garbage?)")
        except json.JSONDecodeError as exc:
            what = "is empty" if not data.strip() else "is not valid JSON (truncated or corrupted"
            problem = what if not data.strip() else f"{what}: {exc.msg} at line {exc.lineno} column {exc.colno})"
        except RecursionError:
            problem = "is not valid JSON (nested too deeply)"
        problem = problem or validate_result(result, run_id)
        if problem:
            _warn(path, problem)
            return None, problem, key
        return result, None, key

    # ------------------------------------------------------------------------------ per-example scores
    def read_examples(self, run_id: str) -> dict[str, dict[str, dict[str, Any]]]:
        """The run's per-example scores, `{evaluation: {example id: {metric: value}}}` (examples.jsonl).

        Read-only and never fatal: a missing file (a failed run, or one recorded before per-example
        scores were kept) gives {}; an unreadable or malformed one (a line that is not an object
        with a string `evaluation` and `id` and an object `values`) gives {} and one warning naming
        the path. A later line for the same (evaluation, id) wins.
        """
        path = self.run_dir(run_id) / EXAMPLES_FILE
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            _warn_examples(path, f"cannot be read ({_reason(exc)})")
            return {}
        try:
            return parse_examples(text)
        except ValueError as exc:
            _warn_examples(path, f"is malformed ({exc})")
            return {}

    def write_examples(self, run_id: str, lines: list[dict], replace: Any = None) -> None:
        """Write the run's examples.jsonl atomically: `lines` only (`replace` None), or the file's lines of
        other evaluations than those in `replace` followed by `lines` (a re-evaluation). Lines of the
        file that cannot be read are dropped with a warning; write failures raise `StoreWriteError`."""
        path = self.run_dir(run_id) / EXAMPLES_FILE
        kept: list[str] = []
        if replace is not None and path.exists():
            names = set(replace)
            try:
                parse_examples(path.read_text(encoding="utf-8"))  # refuse to carry garbage over
                for raw in path.read_text(encoding="utf-8").splitlines():
                    if raw.strip() and json.loads(raw)["evaluation"] not in names:
                        kept.append(raw)
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                _warn_examples(path, f"could not be kept ({exc}); rewritten with the new evaluation only")
                kept = []
        new = [json.dumps(line, default=json_default, allow_nan=True) for line in lines]
        try:
            with files.atomic_open(path, "w") as fh:
                for raw in kept + new:
                    fh.write(raw + "\n")
        except OSError as exc:
            if isinstance(exc, StoreWriteError):
                raise
            raise StoreWriteError(path, exc) from exc

    # ------------------------------------------------------------------------------ samples and config
    def read_samples(self, run_id: str) -> list[dict]:
        """The run's samples.jsonl: one object per test example (its `id`/`task_id`, or `index` in test order,
        the gold answer, the outputs and their scores), in test order. Read-only and never fatal: a missing file
        gives []; an unreadable one, or a line that is not a JSON object, gives [] and one warning naming the
        path (logger `peftlab.store`)."""
        path = self.run_dir(run_id) / "samples.jsonl"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            _warn_file(path, f"cannot be read ({_reason(exc)})", "no samples shown for this run")
            return []
        lines = []
        for n, raw in enumerate(text.splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except json.JSONDecodeError as exc:
                line, problem = None, f"is malformed (line {n}: {exc.msg})"
            else:
                problem = None if isinstance(line, dict) else f"is malformed (line {n} is not an object)"
            if problem:
                _warn_file(path, problem, "no samples shown for this run")
                return []
            lines.append(line)
        return lines

    def read_config(self, run_id: str) -> dict | None:
        """The run's config.yaml (the resolved run as it started), or None when it has none; an unreadable or
        malformed one gives None and one warning naming the path."""
        path = self.run_dir(run_id) / "config.yaml"
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            _warn_file(path, f"cannot be read ({exc})", "its configuration is shown from result.json only")
            return None
        if not isinstance(data, dict):
            _warn_file(path, "is not a mapping", "its configuration is shown from result.json only")
            return None
        return data

    def read_result(self, run_id: str) -> dict | None:
        """The run's result, or None when it has none or an unusable one (warned, naming the file)."""
        return self.load_result(run_id)[0]

    def result_problem(self, run_id: str) -> str | None:
        """What is wrong with the run's result.json (None: it is fine or absent)."""
        return self.load_result(run_id)[1]

    def read_run_result(self, run_id: str) -> RunResult | None:
        """The run's result as a `RunResult` (to change and write back), or None like `read_result`."""
        result = self.read_result(run_id)
        return None if result is None else RunResult.from_dict(result, run_id)

    def write_result(self, result: RunResult | dict) -> None:
        """Write the run's result.json atomically (`RunResult.to_json()`), then upsert its index row.

        The only writer of result.json. A dict is read as a `RunResult` first; a result that is not
        valid raises ValueError ("not writing the result of run ...: it <problem>") and writes nothing.
        """
        if self.readonly:
            raise StoreError(f"the run store {self.root} was opened read-only")
        try:
            if not isinstance(result, RunResult):
                result = RunResult.from_dict(result)
            text = result.to_json()
            data = json.loads(text)  # index exactly what the file holds (as a rebuild would)
            problem = validate_result(data)
            if problem:
                raise InvalidResult(problem)
        except InvalidResult as exc:
            run_id = result.run_id if isinstance(result, RunResult) else (
                result.get("run_id") if isinstance(result, dict) else None)
            raise ValueError(f"not writing the result of run {run_id!r}: it {exc.problem}") from None
        st = atomic_write_text(self.run_dir(data["run_id"]) / "result.json", text)
        key = _file_key(st)
        self._transaction(lambda db: self._upsert(db, data, key))

    @staticmethod
    def _upsert(db: sqlite3.Connection, result: dict, key: FileKey) -> None:
        row = _row(result)
        cols = ", ".join(INDEX_COLUMNS)
        marks = ", ".join("?" for _ in INDEX_COLUMNS)
        db.execute(f"INSERT OR REPLACE INTO runs ({cols}) VALUES ({marks})", [row[c] for c in INDEX_COLUMNS])
        db.execute("INSERT OR REPLACE INTO files (run_id, mtime_ns, size, inode, problem) VALUES (?, ?, ?, ?, NULL)",
                   (result["run_id"], *key))

    @staticmethod
    def _record(db: sqlite3.Connection, run_id: str, result: dict | None, problem: str | None,
                key: FileKey | None) -> None:
        """Index what a file holds: its row, its problem (no row), or nothing (no file)."""
        if result is not None and key is not None:
            Store._upsert(db, result, key)
            return
        db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        if problem is not None and key is not None:
            db.execute("INSERT OR REPLACE INTO files (run_id, mtime_ns, size, inode, problem) VALUES (?, ?, ?, ?, ?)",
                       (run_id, *key, problem))
        else:
            db.execute("DELETE FROM files WHERE run_id = ?", (run_id,))

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

        def forget(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM files WHERE run_id = ?", (run_id,))

        self._transaction(forget)

    # ------------------------------------------------------------------------------ queries
    def status(self, run_id: str) -> RunStatus | None:
        """The run's status; a `running` run whose process is gone reads as `interrupted`.

        None: no result.json, or an unusable one (warned, naming the file).
        """
        result = self.read_result(run_id)
        if result is None:
            return None
        status = RunStatus(result["status"])
        if status == RunStatus.RUNNING and not pid_alive(result.get("pid")):
            return RunStatus.INTERRUPTED
        return status

    def _scan(self) -> dict[str, FileKey | None]:
        """Run id -> key of its result.json, for every run directory that has one (None: not stat-able)."""
        out: dict[str, FileKey | None] = {}
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return out
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if not entry.is_dir():
                    continue
                out[entry.name] = _file_key(os.stat(os.path.join(entry.path, "result.json")))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError:
                out[entry.name] = None
        return out

    def _snapshot(self, filters: dict[str, Any]) -> _Snapshot | None:
        """The index's file keys and the rows matching `filters`, or None when it cannot be read."""
        if not self.index_path.exists():
            return None
        where = " AND ".join(f"{k} = ?" for k in filters)
        sql = "SELECT run_id, result_json FROM runs" + (f" WHERE {where}" if where else "")

        def read() -> _Snapshot:
            db = self._connect_readonly() if self.readonly else self._connect()
            try:
                db.execute("BEGIN")  # one consistent view of both tables
                files = {r[0]: ((r[1], r[2], r[3]), r[4]) for r in
                         db.execute("SELECT run_id, mtime_ns, size, inode, problem FROM files")}
                run_ids = {r[0] for r in db.execute("SELECT run_id FROM runs")}
                rows = dict(db.execute(sql, list(filters.values())).fetchall())
                db.execute("COMMIT")
                return _Snapshot(files, rows, run_ids)
            finally:
                db.close()

        try:
            return self._retry(read)
        except (sqlite3.Error, StoreError) as exc:
            if isinstance(exc, sqlite3.DatabaseError) and _is_corrupt(exc):
                if not self.readonly:
                    self._repair(exc)
                    return self._snapshot(filters)
                if (str(self.index_path), "corrupt") not in _WARNED:
                    _WARNED.add((str(self.index_path), "corrupt"))
                    log.warning("%s is not a usable SQLite index (%s); reading the run directories instead",
                                self.index_path, exc)
            else:
                log.debug("index %s unreadable (%s); reading the run directories", self.index_path, exc)
            return None

    def _refresh(self, stale: list[str], gone: list[str]) -> dict[str, tuple]:
        """Re-read the stale runs' files and index them; drop rows of removed runs (one transaction,
        so a concurrent writer's newer row is never overwritten with an older file)."""

        def body(db: sqlite3.Connection) -> dict[str, tuple]:
            loaded = {}
            for run_id in stale:
                loaded[run_id] = self.load_result(run_id)
                self._record(db, run_id, *loaded[run_id])
            for run_id in gone:
                if not (self.run_dir(run_id) / "result.json").exists():
                    self._record(db, run_id, None, None, None)
            return loaded

        return self._transaction(body)

    def results(self, **filters: Any) -> list[dict]:
        """Result dicts, filtered by index-column equality (e.g. `status="ok"`), oldest first.

        Rows whose result.json is unchanged come from the index; added, changed or removed runs are
        re-read from their files (and, unless read-only, the index is brought up to date).
        """
        cols = {k: v for k, v in filters.items() if k in INDEX_COLUMNS and k != "result_json"}
        if not self.readonly:
            try:
                self._ensure_index()
            except StoreError as exc:  # a read never fails because the index can't be written
                log.debug("could not re-create the index %s: %s", self.index_path, exc)
        snap = self._snapshot(cols)
        on_disk = self._scan()
        known = snap.files if snap else {}
        run_ids = snap.run_ids if snap else set()
        stale = sorted(r for r, key in on_disk.items()
                       if key is None or r not in known or known[r][0] != key or (not known[r][1] and r not in run_ids))
        gone = sorted((snap.ids if snap else set()) - set(on_disk))
        loaded: dict[str, tuple] | None = None
        if not self.readonly and (stale or gone):
            try:
                loaded = self._refresh(stale, gone)
            except (StoreError, sqlite3.Error) as exc:  # a read never fails because the index can't be written
                log.debug("could not update the index %s: %s", self.index_path, exc)
        if loaded is None:
            loaded = {run_id: self.load_result(run_id) for run_id in stale}
        out = []
        for run_id in on_disk:
            if run_id in loaded:
                result = loaded[run_id][0]
                if result is None or any(_columns(result)[k] != v for k, v in cols.items()):
                    continue
            else:
                problem = known[run_id][1]
                if problem:
                    _warn(self.run_dir(run_id) / "result.json", problem)
                    continue
                blob = snap.rows.get(run_id) if snap else None
                if blob is None:
                    continue
                result = json.loads(blob)
            if result.get("status") == RunStatus.RUNNING and not pid_alive(result.get("pid")):
                result["status"] = RunStatus.INTERRUPTED.value
            out.append(result)
        out.sort(key=lambda r: (r.get("started_at") is not None, str(r.get("started_at") or ""), r["run_id"]))
        return out

    def rebuild_index(self) -> int:
        """Re-create the index from the result.json files (the files are the truth); returns the number
        of usable results indexed."""
        if self.readonly:
            raise StoreError(f"the run store {self.root} was opened read-only")
        with self._index_lock():
            self._create_index()
            return self._rebuild_locked()

    def _rebuild_locked(self) -> int:
        def body(db: sqlite3.Connection) -> int:
            db.execute("DELETE FROM runs")
            db.execute("DELETE FROM files")
            count = 0
            for run_id in sorted(self._scan()):
                result, problem, key = self.load_result(run_id)
                self._record(db, run_id, result, problem, key)
                count += result is not None
            return count

        return self._transaction(body, repair=False)
