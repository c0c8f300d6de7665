"""Sweeps: expand an experiment into runs, show the plan, run what is left, resume after a crash.

`peftlab sweep FILE` = `plan.expand` (tasks × methods × grid points × seeds) + the run store's
status of every run + an executor:

* **Resume.** Every run has a stable id (`RunConfig.run_id`), so running the same file again
  picks up where the last invocation stopped: `ok` runs are skipped; a run whose process died
  (`kill -9`, power loss: `running` with a dead pid) or that was cancelled (Ctrl-C) is cleared
  and re-run; `failed`/`diverged` runs are skipped unless `--retry-failed`. A run whose
  `result.json` is unreadable or not a valid result is warned about (naming the file), shown as
  `unreadable` and re-run; it never stops the sweep.
* **Dry run.** `--dry-run` (and the plan shown before a sweep) reads the store read-only
  (`Store(root, readonly=True)`): nothing is created or written, so it works on a read-only
  mount or a full disk, and a missing or stale index is made up for from the run directories.
* **Sharing a store.** Before a run starts, its per-run `flock` is taken, its status re-read
  under the lock and its directory cleared (keeping the lock file); a run whose lock another
  process holds is skipped ("busy"). Two sweeps on one store therefore never run the same run
  twice and never clobber each other's files; the SQLite index is WAL with immediate
  transactions, a busy timeout and retries while it is locked.
* **Executors.** `local` runs one after another in this process with one `ModelCache` (the base
  model is loaded once; each run gets a deep copy; 4-bit bases are never cached). `ray` sends
  each run to a Ray cluster as a task with a resource request (`peftlab.executors.ray_executor`).
* **Identity.** `sweep_id` = experiment name + a hash of the expanded plan's run ids, so every
  invocation of the same file (same preset/overrides) shares it; each result carries it.

Executor options come from the experiment's `executor:` mapping:

```yaml
executor:
  kind: ray            # local | ray (the CLI's --executor wins)
  address: auto        # Ray address (the CLI's --address wins); none: start a local Ray
  num_cpus: 1          # per run (default 1)
  num_gpus: 0          # per run (default 0: set it on GPU clusters)
  memory_gb: 8         # per run (Ray `memory`, a scheduling hint)
  resources: {}        # custom Ray resources per run
  max_retries: 0       # Ray retries of a run whose worker died (default 0: record it failed)
  env: {}              # extra environment variables for the Ray workers
  setup: pkg.mod:func  # called in the process that runs the runs, before them (register tasks…)
```
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from peftlab.config import ConfigError, ExperimentConfig, RunConfig

EXECUTORS = ("local", "ray")
EXECUTOR_KEYS = ("kind", "address", "num_cpus", "num_gpus", "memory_gb", "resources", "max_retries", "env", "setup")

# A planned run's state, as read from the store before the sweep starts.
NEW, OK, INTERRUPTED, CANCELLED, FAILED, DIVERGED, BUSY, UNREADABLE = (
    "new", "ok", "interrupted", "cancelled", "failed", "diverged", "busy", "unreadable")


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the sweep; `.summary` says what finished (the interrupted run is `cancelled`)."""

    def __init__(self, summary: "SweepSummary"):
        super().__init__("sweep interrupted")
        self.summary = summary


# ------------------------------------------------------------------------------------------ plan
@dataclass
class PlannedRun:
    rc: RunConfig
    run_id: str
    state: str  # new | ok | interrupted | cancelled | failed | diverged | busy | unreadable
    action: str  # run | skip

    @property
    def note(self) -> str:
        if self.state == NEW:
            return "new"
        if self.action == "run":
            return f"{self.state}→rerun"
        return self.state


@dataclass
class SweepPlan:
    experiment: ExperimentConfig
    sweep_id: str
    store_root: Path
    runs: list[PlannedRun]
    retry_failed: bool = False
    history: dict = field(default_factory=dict)  # (label, task) -> [seconds of previous ok runs]

    @property
    def to_run(self) -> list[PlannedRun]:
        return [p for p in self.runs if p.action == "run"]

    def count(self, *states: str, action: str | None = None) -> int:
        return sum(1 for p in self.runs if p.state in states and (action is None or p.action == action))

    def estimate_s(self, runs: list[PlannedRun] | None = None) -> float | None:
        """Sequential seconds for `runs` (default: those to run) from previous ok runs of this experiment."""
        everything = [s for values in self.history.values() for s in values]
        if not everything:
            return None
        overall = sum(everything) / len(everything)
        total = 0.0
        for p in self.to_run if runs is None else runs:
            values = self.history.get((p.rc.method.label, p.rc.task.name))
            total += sum(values) / len(values) if values else overall
        return total

    def mean_run_s(self) -> float | None:
        everything = [s for values in self.history.values() for s in values]
        return sum(everything) / len(everything) if everything else None


def sweep_id_for(exp: ExperimentConfig, runs: list[RunConfig]) -> str:
    """Stable per experiment content: the name plus a hash of the expanded plan (its run ids)."""
    digest = hashlib.sha256("\n".join(sorted(rc.run_id() for rc in runs)).encode()).hexdigest()[:8]
    return f"{exp.name}-{digest}"


def executor_options(exp: ExperimentConfig) -> dict:
    """The experiment's `executor:` mapping, checked (unknown keys are errors, like everywhere else)."""
    import difflib

    opts = dict(exp.executor or {})
    for key in opts:
        if key not in EXECUTOR_KEYS:
            close = difflib.get_close_matches(str(key), EXECUTOR_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"executor: unknown key {key!r}{hint}; valid: {', '.join(EXECUTOR_KEYS)}")
    kind = opts.get("kind", "local")
    if kind not in EXECUTORS:
        raise ConfigError(f"executor.kind: {kind!r} is not valid; valid: {', '.join(EXECUTORS)}")
    for key in ("num_cpus", "num_gpus", "memory_gb", "max_retries"):
        value = opts.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"executor.{key}: expected a number >= 0, got {value!r}")
    for key in ("resources", "env"):
        if opts.get(key) is not None and not isinstance(opts[key], dict):
            raise ConfigError(f"executor.{key}: expected a mapping, got {opts[key]!r}")
    return opts


def check_trackers(trackers: list[str]) -> None:
    """Fail before any run starts when a tracker is unknown or its package is missing."""
    if not trackers:
        return
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    valid = [t.value for t in LoggerType if t.value != "all"]
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in trackers:
        if name not in valid:
            raise ConfigError(f"trackers: {name!r} is not an accelerate tracker; valid: {', '.join(valid)}")
        if name not in available:
            package = "tensorboard" if name == "tensorboard" else name.replace("_", "-")
            raise ConfigError(f"trackers: {name!r} is not installed here (pip install {package})")


def _read_state(store: Any, run_id: str, retry_failed: bool) -> tuple[str, str]:
    """(state, action) of one run from its result file and lock, without writing anything."""
    status = store.status(run_id)
    if status is None:
        return (UNREADABLE if store.result_problem(run_id) else NEW), "run"
    if status == "ok":
        return OK, "skip"
    # Not finished: if another process holds the lock it is running right now (a second sweep).
    if store.lock(run_id).held_elsewhere():
        return BUSY, "skip"
    if status in ("running", "interrupted"):  # running + free lock: its process is gone
        return INTERRUPTED, "run"
    if status == "cancelled":
        return CANCELLED, "run"
    if status in ("failed", "diverged"):
        return status, "run" if retry_failed else "skip"
    return INTERRUPTED, "run"  # unknown status: treat as not finished


def _durations(results: list[dict]) -> dict:
    out: dict = {}
    for r in results:
        if r.get("status") != "ok" or not r.get("started_at") or not r.get("finished_at"):
            continue
        try:
            seconds = (dt.datetime.fromisoformat(r["finished_at"]) - dt.datetime.fromisoformat(r["started_at"]))
        except (TypeError, ValueError):
            continue
        out.setdefault((r.get("label"), r.get("task")), []).append(max(seconds.total_seconds(), 1.0))
    return out


def make_plan(exp: ExperimentConfig, store: Any = None, retry_failed: bool = False) -> SweepPlan:
    """Expand `exp` and read every run's state from the store (a path, a Store, or None).

    A path is opened read-only and a directory that does not exist yet is not created, so
    `--dry-run` writes nothing (and works on a read-only or full store).
    """
    from peftlab.plan import validate
    from peftlab.store import Store

    runs = validate(exp)
    root = Path(store.root if isinstance(store, Store) else (store or exp.output_dir))
    if not isinstance(store, Store):
        store = Store(root, readonly=True) if root.is_dir() else None
    planned = []
    for rc in runs:
        run_id = rc.run_id()
        state, action = _read_state(store, run_id, retry_failed) if store else (NEW, "run")
        planned.append(PlannedRun(rc=rc, run_id=run_id, state=state, action=action))
    history = _durations(store.results(experiment=exp.name)) if store else {}
    return SweepPlan(experiment=exp, sweep_id=sweep_id_for(exp, runs), store_root=root, runs=planned,
                     retry_failed=retry_failed, history=history)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _fmt_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_plan(plan: SweepPlan, max_rows: int | None = None, executor: str = "local") -> str:
    """The plan as text: one row per task × method × grid point (seeds with their states), then counts."""
    exp = plan.experiment
    groups: dict[tuple, list[PlannedRun]] = {}
    for p in plan.runs:  # grid values may be lists (target_modules), so the key is their text
        coords = "  ".join(f"{k}={_fmt_value(v)}" for k, v in p.rc.grid.items()) or "-"
        groups.setdefault((p.rc.task.name, p.rc.method.label, coords), []).append(p)
    rows = [("task", "method", "grid", "seeds (state)")]
    for (task, label, coords), members in groups.items():
        seeds = "  ".join(f"s{p.rc.seed}:{p.note}" for p in members)
        rows.append((task, label, coords, seeds))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    shown = rows if max_rows is None or len(rows) <= max_rows + 1 else rows[: max_rows + 1]
    lines = [f"sweep {plan.sweep_id}: {exp.name} on {exp.model.name} → {plan.store_root}/  (executor: {executor})"]
    axes = [f"tasks: {', '.join(t.name for t in exp.tasks)}", f"methods: {', '.join(m.label for m in exp.methods)}"]
    if exp.grid:
        axes.append("grid: " + " × ".join(
            f"{k} [{', '.join(_fmt_value(v) for v in (vals if isinstance(vals, list) else [vals]))}]"
            for k, vals in exp.grid.items()))
    axes.append(f"seeds: {', '.join(str(s) for s in exp.seeds)}")
    lines.append("  " + " · ".join(axes) + f" → {len(plan.runs)} run(s)")
    lines.append("")
    for r in shown:
        lines.append("  " + "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    if len(shown) < len(rows):
        lines.append(f"  … {len(rows) - len(shown)} more row(s) (peftlab sweep FILE --dry-run lists all)")
    lines.append("")
    reruns = plan.count(INTERRUPTED, CANCELLED, action="run")
    unreadable = plan.count(UNREADABLE)
    retried = plan.count(FAILED, DIVERGED, action="run")
    skipped_failed = plan.count(FAILED, DIVERGED, action="skip")
    parts = [f"total {len(plan.runs)}", f"already ok {plan.count(OK)}", f"to run {len(plan.to_run)}"]
    detail = [f"{plan.count(NEW)} new"]
    if reruns:
        detail.append(f"{plan.count(INTERRUPTED, action='run')} interrupted + "
                      f"{plan.count(CANCELLED, action='run')} cancelled re-run")
    if retried:
        detail.append(f"{retried} failed/diverged retried")
    if unreadable:
        detail.append(f"{unreadable} unreadable re-run")
    if plan.to_run:
        parts[-1] += f" ({', '.join(detail)})"
    if skipped_failed:
        parts.append(f"failed/diverged skipped {skipped_failed} (--retry-failed re-runs them)")
    if plan.count(BUSY):
        parts.append(f"busy {plan.count(BUSY)} (being run by another process; skipped)")
    lines.append("  " + " · ".join(parts))
    estimate = plan.estimate_s()
    n_hist = sum(len(v) for v in plan.history.values())
    if not plan.to_run:
        lines.append("  nothing to run")
    elif estimate is not None:
        how = "one after another" if executor == "local" else "if run one after another; less in parallel"
        lines.append(f"  estimated time: ~{fmt_duration(estimate)} ({how}; from {n_hist} previous ok run(s) "
                     f"of {exp.name})")
    else:
        lines.append("  estimated time: unknown (no previous runs of this experiment in the store)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ claim + run
@dataclass
class Outcome:
    kind: str  # ran | busy | done (ok meanwhile, by another process) | skipped (failed, not retried)
    run_id: str
    result: dict | None = None
    seconds: float = 0.0


def claim_and_run(rc: RunConfig, store: Any, sweep_id: str | None, retry_failed: bool = False,
                  progress: Callable[[int, int, float], None] | None = None, cache: Any = None) -> Outcome:
    """Take the run's lock, re-read its status under it, clear a stale run directory, run it.

    This is the only way a sweep starts a run (locally or in a Ray worker), which is what makes two
    sweeps on one store safe: whoever holds the lock decides, and sees the latest status.
    KeyboardInterrupt propagates (the runner has recorded the run as `cancelled`).
    """
    from peftlab.runner import execute_run

    run_id = rc.run_id()
    lock = store.lock(run_id)
    if not lock.acquire():
        return Outcome("busy", run_id)
    try:
        status = store.status(run_id)
        if status == "ok":
            return Outcome("done", run_id, store.read_result(run_id))
        if status in ("failed", "diverged") and not retry_failed:
            return Outcome("skipped", run_id, store.read_result(run_id))
        # new, interrupted (its process is gone: we hold its lock), cancelled, or retried: start clean
        store.delete_run(run_id, keep_lock=True)
        t0 = time.perf_counter()
        result = execute_run(rc, store, sweep_id=sweep_id, progress=progress, cache=cache, lock=lock)
        return Outcome("ran", run_id, result, time.perf_counter() - t0)
    finally:
        lock.release()


def resolve_setup(setup: Callable[[], Any] | str | None) -> Callable[[], Any] | None:
    """`setup` as a callable, or `"package.module:function"` imported here."""
    if setup is None or callable(setup):
        return setup
    module, _, name = str(setup).partition(":")
    if not module or not name:
        raise ConfigError(f"executor.setup: expected 'package.module:function', got {setup!r}")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ConfigError(f"executor.setup: {setup!r} is not a callable")
    return fn


# ------------------------------------------------------------------------------------------ display
class Display:
    """Progress output: a live line on a TTY (run k/N, step, loss, ETA), sparse plain lines otherwise."""

    PLAIN_INTERVAL_S = 60.0  # a non-TTY step line at most this often
    LIVE_INTERVAL_S = 0.1

    def __init__(self, n: int, enabled: bool = True, out: TextIO | None = None, tty: bool | None = None,
                 prior_run_s: float | None = None):
        self.n = n
        self.enabled = enabled
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.prior_run_s = prior_run_s  # mean run time of earlier sweeps (until this one has its own)
        self.durations: list[float] = []
        self.sweep_start = time.perf_counter()
        self._live = False
        self._last_print = float("-inf")
        self.k = 0
        self.rc: RunConfig | None = None

    # ----------------------------------------------------------------- helpers
    def _write(self, text: str) -> None:
        if self.enabled:
            self.out.write(text)
            self.out.flush()

    def clear_live(self) -> None:
        if self._live:
            self._write("\r" + " " * self._width() + "\r")
            self._live = False

    def _width(self) -> int:
        return max(40, shutil.get_terminal_size((120, 20)).columns - 1)

    def mean_run_s(self) -> float | None:
        if self.durations:
            return sum(self.durations) / len(self.durations)
        return self.prior_run_s

    def eta(self, current_left: float | None = None) -> float | None:
        """Seconds left: the current run's rest (from its step rate) + runs not started × mean run time
        (of this sweep's finished runs; of earlier runs of the experiment until there is one)."""
        left_runs = max(self.n - self.k, 0)
        if self.throughput_eta:  # runs in parallel (Ray): finished runs per second so far
            elapsed = time.perf_counter() - self.sweep_start
            return elapsed / self.k * left_runs if self.k else None
        mean = self.mean_run_s()
        if mean is None:
            if current_left is None or self._run_start is None:
                return None
            mean = (time.perf_counter() - self._run_start) + current_left
        return (current_left or 0.0) + left_runs * mean

    # ----------------------------------------------------------------- events
    _run_start: float | None = None
    _first_step: tuple[int, float] | None = None
    throughput_eta = False

    def waiting(self, finished: int, pending: int) -> None:
        """Parallel executors: a status line while runs execute elsewhere."""
        elapsed = time.perf_counter() - self.sweep_start
        line = (f"{finished}/{self.n} finished, {pending} queued or running, elapsed {fmt_duration(elapsed)}, "
                f"ETA {fmt_duration(self.eta())}")
        if self.tty:
            self._live_line(line)
        elif time.perf_counter() - self._last_print >= self.PLAIN_INTERVAL_S:
            self._last_print = time.perf_counter()
            self._write(line + "\n")

    def run_started(self, k: int, rc: RunConfig) -> None:
        self.k, self.rc = k, rc
        self._run_start = time.perf_counter()
        self._first_step = None
        if self.tty:
            self._live_line(f"run {k}/{self.n} {self._label()}: loading", force=True)

    def _label(self) -> str:
        rc = self.rc
        grid = " ".join(f"{k.split('.')[-1]}={_fmt_value(v)}" for k, v in sorted(rc.grid.items()))
        return f"{rc.method.label}{' ' + grid if grid else ''} {rc.task.name} s{rc.seed}"

    def step(self, step: int, total: int, loss: float) -> None:
        now = time.perf_counter()
        if self._first_step is None:
            self._first_step = (step, now)
        first_step, first_t = self._first_step
        if step > first_step:
            rate = (now - first_t) / (step - first_step)
        else:
            rate = (now - (self._run_start or now)) / max(step, 1)
        current_left = rate * max(total - step, 0)
        line = (f"run {self.k}/{self.n} {self._label()}: step {step}/{total} loss {loss:.4f} "
                f"ETA {fmt_duration(self.eta(current_left))}")
        if self.tty:
            self._live_line(line, force=step == total)
        elif now - self._last_print >= self.PLAIN_INTERVAL_S:
            self._last_print = now
            self._write(line + "\n")

    def _live_line(self, text: str, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_print < self.LIVE_INTERVAL_S:
            return
        self._last_print = now
        width = self._width()
        self._write("\r" + text[:width].ljust(width))
        self._live = True

    def run_finished(self, k: int, result: dict, seconds: float) -> None:
        from peftlab.cli import summary_line

        self.durations.append(seconds)
        self.k = k
        self.clear_live()
        eta = self.eta(None) if k < self.n else None
        took = f"{seconds:.1f}s" if seconds < 60 else fmt_duration(seconds)
        tail = f"  ({took}" + (f", ETA {fmt_duration(eta)})" if eta is not None else ")")
        grid = result.get("grid") or {}
        if grid:  # summary_line names the method entry, not its grid point
            tail += "  " + " ".join(f"{key.split('.')[-1]}={_fmt_value(v)}" for key, v in sorted(grid.items()))
        self._write(f"[{k}/{self.n}] {summary_line(result)}{tail}\n")

    def note(self, text: str) -> None:
        self.clear_live()
        self._write(text + "\n")


# ------------------------------------------------------------------------------------------ summary
@dataclass
class SweepSummary:
    sweep_id: str
    experiment: str
    store: str
    executor: str
    total: int
    results: list[dict] = field(default_factory=list)  # runs executed by this invocation
    already_ok: list[str] = field(default_factory=list)
    done_elsewhere: list[str] = field(default_factory=list)  # finished by another process meanwhile
    skipped_failed: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    interrupted: bool = False
    duration_s: float = 0.0

    @property
    def ran(self) -> list[str]:
        return [r["run_id"] for r in self.results]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    @property
    def ok(self) -> bool:
        """Every run of the plan is ok (or being run by another sweep) and nothing was interrupted."""
        return (not self.interrupted and not self.skipped_failed
                and all(r["status"] == "ok" for r in self.results))

    def line(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items())) or "none"
        parts = [f"{len(self.results)} ran ({counts})", f"{len(self.already_ok)} already ok"]
        if self.done_elsewhere:
            parts.append(f"{len(self.done_elsewhere)} finished by another process")
        if self.skipped_failed:
            parts.append(f"{len(self.skipped_failed)} failed/diverged skipped")
        if self.busy:
            parts.append(f"{len(self.busy)} busy in another process")
        return f"sweep {self.sweep_id}: " + ", ".join(parts) + f" in {fmt_duration(self.duration_s)}"


# ------------------------------------------------------------------------------------------ run_sweep
def run_sweep(exp: ExperimentConfig, store: Any = None, executor: str = "local", retry_failed: bool = False,
              progress: bool = True, ray_address: str | None = None,
              setup: Callable[[], Any] | str | None = None, out: TextIO | None = None,
              plan: SweepPlan | None = None) -> SweepSummary:
    """Run every run of `exp` that is not done yet; returns what happened.

    `store`: a `Store`, a path, or None (the experiment's `output_dir`). `executor`: `local` or
    `ray` (`ray_address`: None starts a local Ray, `"auto"` joins a running cluster). `setup`: a
    callable or `"module:function"` run before the runs in each process that executes them (e.g.
    to register a custom task); the experiment's `executor.setup` is used when not given.
    `progress`: print the live line and one line per finished run to `out` (default stdout).
    Ctrl-C raises `SweepInterrupted` (a KeyboardInterrupt) carrying the summary so far.
    """
    from peftlab.store import Store

    opts = executor_options(exp)
    check_trackers(list(exp.trackers))
    store = store if isinstance(store, Store) else Store(store or exp.output_dir)
    plan = plan or make_plan(exp, store, retry_failed)
    setup = setup if setup is not None else opts.get("setup")
    summary = SweepSummary(sweep_id=plan.sweep_id, experiment=exp.name, store=str(store.root), executor=executor,
                           total=len(plan.runs), already_ok=[p.run_id for p in plan.runs if p.state == OK],
                           busy=[p.run_id for p in plan.runs if p.state == BUSY],
                           skipped_failed=[p.run_id for p in plan.runs
                                           if p.state in (FAILED, DIVERGED) and p.action == "skip"])
    display = Display(len(plan.to_run), enabled=progress, out=out, prior_run_s=plan.mean_run_s())
    start = time.perf_counter()
    try:
        if executor == "local":
            from peftlab.executors.local import run_local

            run_local(plan, store, summary, display, retry_failed, setup)
        elif executor == "ray":
            from peftlab.executors.ray_executor import run_ray

            run_ray(plan, store, summary, display, retry_failed, setup, opts,
                    ray_address if ray_address is not None else opts.get("address"))
        else:
            raise ConfigError(f"executor: {executor!r} is not valid; valid: {', '.join(EXECUTORS)}")
    except KeyboardInterrupt as exc:
        summary.interrupted = True
        raise SweepInterrupted(summary) from exc
    finally:
        summary.duration_s = time.perf_counter() - start
        display.clear_live()
    return summary


def record(summary: SweepSummary, outcome: Outcome, display: Display, k: int) -> None:
    """Book one outcome into the summary and the display (shared by the executors)."""
    if outcome.kind == "ran":
        summary.results.append(outcome.result)
        display.run_finished(k, outcome.result, outcome.seconds)
    elif outcome.kind == "busy":
        summary.busy.append(outcome.run_id)
        display.note(f"[{k}/{display.n}] {outcome.run_id}: skipped, being run by another process")
    elif outcome.kind == "done":
        summary.done_elsewhere.append(outcome.run_id)
        display.note(f"[{k}/{display.n}] {outcome.run_id}: skipped, finished by another process meanwhile")
    elif outcome.kind == "skipped":
        summary.skipped_failed.append(outcome.run_id)
        display.note(f"[{k}/{display.n}] {outcome.run_id}: skipped, failed in another process "
                     "(--retry-failed re-runs it)")


# ------------------------------------------------------------------------------------------ CLI
def _resume_command(args: Any) -> str:
    import shlex

    parts = ["peftlab", "sweep", str(args.config)]
    if getattr(args, "preset", None):
        parts += ["--preset", args.preset]
    for item in getattr(args, "sets", None) or []:
        parts += ["--set", item]
    if getattr(args, "store", None):
        parts += ["--store", args.store]
    if getattr(args, "executor", None):
        parts += ["--executor", args.executor]
    if getattr(args, "address", None):
        parts += ["--address", args.address]
    if getattr(args, "allow_code_execution", False):
        parts.append("--allow-code-execution")
    return " ".join(shlex.quote(p) for p in parts)


def sweep_cmd(args: Any) -> int:
    """`peftlab sweep FILE`: show the plan, then run what is left (exit 0: every run ok)."""
    from peftlab.cli import load_for_cli
    from peftlab.store import Store

    exp = load_for_cli(args)
    opts = executor_options(exp)
    address = getattr(args, "address", None) or opts.get("address")
    executor = getattr(args, "executor", None) or ("ray" if getattr(args, "address", None) else None) \
        or opts.get("kind", "local")
    plan = make_plan(exp, exp.output_dir, args.retry_failed)
    print(format_plan(plan, max_rows=None if args.dry_run else 40, executor=executor))
    if executor == "ray" and not opts.get("num_gpus"):
        print("  note: each run requests no GPU (set executor.num_gpus in the experiment for GPU clusters)")
    if args.dry_run:
        return 0
    check_trackers(list(exp.trackers))
    store = Store(exp.output_dir)
    if plan.to_run:
        print()
        try:
            summary = run_sweep(exp, store, executor=executor, retry_failed=args.retry_failed, progress=True,
                                ray_address=address, plan=plan)
        except SweepInterrupted as exc:
            print(f"\n{exc.summary.line()}")
            print("interrupted: finished runs are kept; the interrupted run(s) are recorded as cancelled and "
                  f"re-run on resume.\nresume with: {_resume_command(args)}")
            return 130
        print(summary.line())
        if summary.busy:
            print(f"  {len(summary.busy)} run(s) are being run by another process; run the sweep again later "
                  "to pick up any that it does not finish")
        if summary.skipped_failed and not args.retry_failed:
            print(f"  {len(summary.skipped_failed)} failed/diverged run(s) skipped; add --retry-failed to re-run them")
        ok = summary.ok
    else:
        ok = not plan.count(FAILED, DIVERGED)
    report_dir = getattr(args, "report_dir", None)
    if report_dir:
        from peftlab.report import write_report

        paths = write_report(store.results(experiment=exp.name), Path(report_dir), title=exp.name)
        print(f"report: {paths.get('report.html') or paths.get('summary.md') or report_dir}")
    else:
        print(f"see: peftlab ls runs --store {store.root} --experiment {exp.name}  |  "
              f"peftlab report {store.root} --experiment {exp.name}")
    return 0 if ok else 1


__all__ = ["SweepPlan", "PlannedRun", "SweepSummary", "SweepInterrupted", "Outcome", "make_plan", "format_plan",
           "run_sweep", "sweep_cmd", "claim_and_run", "sweep_id_for", "executor_options", "resolve_setup"]
