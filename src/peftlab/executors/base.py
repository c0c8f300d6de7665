"""What every executor shares: claiming a run, the progress listener, the outcome and the summary.

`claim_and_run` is the only way a run starts — from `peftlab run`, the local executor and every
Ray worker — which is what makes two processes on one store safe: the per-run `flock` is taken,
the run's status re-read under it and its directory cleared (keeping the lock file); a run whose
lock another process holds is `busy` and not run.

Executors report progress to a `ProgressListener` they are handed (the CLI's display is one; the
default is silent), so nothing here knows about terminals.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol

from peftlab.config import ConfigError, RunConfig
from peftlab.status import FINISHED_BADLY, OutcomeKind, RunStatus

if TYPE_CHECKING:
    from peftlab.plan import SweepPlan


class ProgressListener(Protocol):
    """What an executor tells whoever watches a sweep (`k` counts the runs to run, from 1)."""

    def sweep_started(self, plan: "SweepPlan") -> None: ...

    def run_started(self, k: int, rc: RunConfig) -> None: ...

    def step(self, step: int, total: int, loss: float) -> None: ...

    def evaluating(self, phase: str, done: float, total: int) -> None:
        """The current run's evaluation scored `done` of the `total` examples of `phase` (e.g. "test")."""

    def run_finished(self, k: int, result: dict, seconds: float) -> None: ...

    def run_skipped(self, k: int, run_id: str, kind: OutcomeKind) -> None: ...

    def parallel(self) -> None:
        """Runs now execute elsewhere, several at a time (estimate from throughput, not run times)."""

    def waiting(self, finished: int, pending: int) -> None: ...

    def note(self, text: str) -> None: ...

    def close(self) -> None: ...


class SilentListener:
    """A listener that shows nothing (the default of `run_sweep` called from Python)."""

    def sweep_started(self, plan: Any) -> None: ...
    def run_started(self, k: int, rc: RunConfig) -> None: ...
    def step(self, step: int, total: int, loss: float) -> None: ...
    def evaluating(self, phase: str, done: float, total: int) -> None: ...
    def run_finished(self, k: int, result: dict, seconds: float) -> None: ...
    def run_skipped(self, k: int, run_id: str, kind: OutcomeKind) -> None: ...
    def parallel(self) -> None: ...
    def waiting(self, finished: int, pending: int) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the sweep; `.summary` says what finished (the interrupted run is `cancelled`)."""

    def __init__(self, summary: "SweepSummary"):
        super().__init__("sweep interrupted")
        self.summary = summary


# ------------------------------------------------------------------------------------------ claim + run
@dataclass
class Outcome:
    kind: OutcomeKind
    run_id: str
    result: dict | None = None
    seconds: float = 0.0


def claim_and_run(rc: RunConfig, store: Any, sweep_id: str | None, retry_failed: bool = False,
                  progress: Callable[[int, int, float], None] | None = None, cache: Any = None,
                  force: bool = False, eval_progress: Callable[[str, float, int], None] | None = None) -> Outcome:
    """Take the run's lock, re-read its status under it, clear a stale run directory, run it.

    Under the lock: an `ok` run is `done` (unless `force`); a `failed`/`diverged` one is `skipped`
    unless `retry_failed` (or `force`); anything else (new, interrupted — its process is gone since
    we hold its lock —, cancelled) starts clean. A run whose lock is held elsewhere is `busy`.
    KeyboardInterrupt propagates (the runner has recorded the run as `cancelled`).
    """
    from peftlab.runner import execute_run

    run_id = rc.run_id()
    lock = store.lock(run_id)
    if not lock.acquire():
        return Outcome(OutcomeKind.BUSY, run_id)
    try:
        status = store.status(run_id)
        if not force:
            if status == RunStatus.OK:
                return Outcome(OutcomeKind.DONE, run_id, store.read_result(run_id))
            if status in FINISHED_BADLY and not retry_failed:
                return Outcome(OutcomeKind.SKIPPED, run_id, store.read_result(run_id))
        store.delete_run(run_id, keep_lock=True)
        t0 = time.perf_counter()
        result = execute_run(rc, store, sweep_id=sweep_id, progress=progress, cache=cache, lock=lock,
                             eval_progress=eval_progress)
        return Outcome(OutcomeKind.RAN, run_id, result, time.perf_counter() - t0)
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
    pending: list[str] = field(default_factory=list)  # tuned experiments: what kept a method from its test runs
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
        """Every run of the plan is ok (or being run by another sweep), nothing was interrupted and every tuned
        method reached its test runs."""
        return (not self.interrupted and not self.skipped_failed and not self.pending
                and all(r["status"] == RunStatus.OK for r in self.results))


def record(summary: SweepSummary, outcome: Outcome, listener: ProgressListener, k: int) -> None:
    """Book one outcome into the summary and tell the listener (shared by the executors)."""
    if outcome.kind == OutcomeKind.RAN:
        summary.results.append(outcome.result)
        listener.run_finished(k, outcome.result, outcome.seconds)
        return
    if outcome.kind == OutcomeKind.BUSY:
        summary.busy.append(outcome.run_id)
    elif outcome.kind == OutcomeKind.DONE:
        summary.done_elsewhere.append(outcome.run_id)
    elif outcome.kind == OutcomeKind.SKIPPED:
        summary.skipped_failed.append(outcome.run_id)
    listener.run_skipped(k, outcome.run_id, outcome.kind)


__all__ = ["ProgressListener", "SilentListener", "SweepInterrupted", "Outcome", "SweepSummary", "claim_and_run",
           "resolve_setup", "record"]
