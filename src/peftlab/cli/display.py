"""Everything the CLI shows on the terminal: one line per run, the sweep's plan, live progress, the summary.

`Display` is the `ProgressListener` the CLI hands to an executor: a live line on a TTY (run k/N,
step, loss, ETA), sparse plain lines otherwise.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Callable, TextIO

from peftlab.config import RunConfig
from peftlab.executors.base import SweepSummary
from peftlab.formatting import fmt_duration, fmt_elapsed, fmt_gib, fmt_value
from peftlab.plan import PlannedRun, SweepPlan
from peftlab.status import FINISHED_BADLY, OutcomeKind, PlanState, RunStatus


# ------------------------------------------------------------------------------------------ one run
def summary_line(result: dict) -> str:
    """One run on one line: label, task, seed, status, primary metric, cost; the error's last line."""
    cost = result.get("cost") or {}
    primary = result.get("primary_metric")
    value = (result.get("metrics") or {}).get(primary)
    metric = f"{primary}={value:.4g}" if isinstance(value, (int, float)) else "-"
    tps = cost.get("tokens_per_s")
    mem = cost.get("peak_memory_bytes")
    parts = [f"{result.get('label', '?'):<14}", f"{result.get('task', '?'):<9}", f"s{result.get('seed')}",
             f"{result.get('status', '?'):<9}", f"{metric:<24}",
             f"trainable={cost.get('trainable_pct', 0):.4f}%" if cost else "",
             f"tok/s={tps:.0f}" if tps else "", f"peak={fmt_gib(mem)}" if mem else ""]
    line = "  ".join(p for p in parts if p)
    if result.get("status") != RunStatus.OK and result.get("error"):
        line += f"  error: {result['error'].strip().splitlines()[-1][:120]}"
    return line


def step_printer(i: int, n: int, rc: RunConfig, out: TextIO | None = None) -> Callable[[int, int, float], None]:
    """`peftlab run`'s live step line (on a TTY only)."""
    def show(step: int, total: int, loss: float) -> None:
        stream = out or sys.stdout
        if stream.isatty():
            print(f"\r[{i}/{n}] {rc.method.label} {rc.task.name} s{rc.seed}: step {step}/{total} loss {loss:.4f}",
                  end="", flush=True, file=stream)
    return show


# ------------------------------------------------------------------------------------------ plan
def format_plan(plan: SweepPlan, max_rows: int | None = None, executor: str = "local") -> str:
    """The plan as text: one row per task × method × grid point (seeds with their states), then counts."""
    exp = plan.experiment
    groups: dict[tuple, list[PlannedRun]] = {}
    for p in plan.runs:  # grid values may be lists (target_modules), so the key is their text
        coords = "  ".join(f"{k}={fmt_value(v)}" for k, v in p.rc.grid.items()) or "-"
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
            f"{k} [{', '.join(fmt_value(v) for v in (vals if isinstance(vals, list) else [vals]))}]"
            for k, vals in exp.grid.items()))
    axes.append(f"seeds: {', '.join(str(s) for s in exp.seeds)}")
    lines.append("  " + " · ".join(axes) + f" → {len(plan.runs)} run(s)")
    lines.append("")
    for r in shown:
        lines.append("  " + "  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3])
    if len(shown) < len(rows):
        lines.append(f"  … {len(rows) - len(shown)} more row(s) (peftlab sweep FILE --dry-run lists all)")
    lines.append("")
    reruns = plan.count(PlanState.INTERRUPTED, PlanState.CANCELLED, action="run")
    unreadable = plan.count(PlanState.UNREADABLE)
    retried = plan.count(*FINISHED_BADLY, action="run")
    skipped_failed = plan.count(*FINISHED_BADLY, action="skip")
    parts = [f"total {len(plan.runs)}", f"already ok {plan.count(PlanState.OK)}", f"to run {len(plan.to_run)}"]
    detail = [f"{plan.count(PlanState.NEW)} new"]
    if reruns:
        detail.append(f"{plan.count(PlanState.INTERRUPTED, action='run')} interrupted + "
                      f"{plan.count(PlanState.CANCELLED, action='run')} cancelled re-run")
    if retried:
        detail.append(f"{retried} failed/diverged retried")
    if unreadable:
        detail.append(f"{unreadable} unreadable re-run")
    if plan.to_run:
        parts[-1] += f" ({', '.join(detail)})"
    if skipped_failed:
        parts.append(f"failed/diverged skipped {skipped_failed} (--retry-failed re-runs them)")
    if plan.count(PlanState.BUSY):
        parts.append(f"busy {plan.count(PlanState.BUSY)} (being run by another process; skipped)")
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


def sweep_summary_line(summary: SweepSummary) -> str:
    """`sweep ID: 3 ran (3 ok), 2 already ok … in 01:23`."""
    counts = ", ".join(f"{n} {s}" for s, n in sorted(summary.counts().items())) or "none"
    parts = [f"{len(summary.results)} ran ({counts})", f"{len(summary.already_ok)} already ok"]
    if summary.done_elsewhere:
        parts.append(f"{len(summary.done_elsewhere)} finished by another process")
    if summary.skipped_failed:
        parts.append(f"{len(summary.skipped_failed)} failed/diverged skipped")
    if summary.busy:
        parts.append(f"{len(summary.busy)} busy in another process")
    return f"sweep {summary.sweep_id}: " + ", ".join(parts) + f" in {fmt_duration(summary.duration_s)}"


SKIP_REASONS = {
    OutcomeKind.BUSY: "skipped, being run by another process",
    OutcomeKind.DONE: "skipped, finished by another process meanwhile",
    OutcomeKind.SKIPPED: "skipped, failed in another process (--retry-failed re-runs it)",
}


# ------------------------------------------------------------------------------------------ live progress
class Display:
    """Progress output: a live line on a TTY (run k/N, step, loss, ETA), sparse plain lines otherwise.

    Implements `peftlab.executors.base.ProgressListener`.
    """

    PLAIN_INTERVAL_S = 60.0  # a non-TTY step line at most this often
    LIVE_INTERVAL_S = 0.1

    def __init__(self, n: int = 0, enabled: bool = True, out: TextIO | None = None, tty: bool | None = None,
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
        self.throughput_eta = False
        self._run_start: float | None = None
        self._first_step: tuple[int, float] | None = None

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

    def _label(self) -> str:
        rc = self.rc
        grid = " ".join(f"{k.split('.')[-1]}={fmt_value(v)}" for k, v in sorted(rc.grid.items()))
        return f"{rc.method.label}{' ' + grid if grid else ''} {rc.task.name} s{rc.seed}"

    def _live_line(self, text: str, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last_print < self.LIVE_INTERVAL_S:
            return
        self._last_print = now
        width = self._width()
        self._write("\r" + text[:width].ljust(width))
        self._live = True

    # ----------------------------------------------------------------- ProgressListener
    def sweep_started(self, plan: SweepPlan) -> None:
        self.n = len(plan.to_run)
        if self.prior_run_s is None:
            self.prior_run_s = plan.mean_run_s()
        self.sweep_start = time.perf_counter()

    def parallel(self) -> None:
        self.throughput_eta = True

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

    def run_finished(self, k: int, result: dict, seconds: float) -> None:
        self.durations.append(seconds)
        self.k = k
        self.clear_live()
        eta = self.eta(None) if k < self.n else None
        tail = f"  ({fmt_elapsed(seconds)}" + (f", ETA {fmt_duration(eta)})" if eta is not None else ")")
        grid = result.get("grid") or {}
        if grid:  # summary_line names the method entry, not its grid point
            tail += "  " + " ".join(f"{key.split('.')[-1]}={fmt_value(v)}" for key, v in sorted(grid.items()))
        self._write(f"[{k}/{self.n}] {summary_line(result)}{tail}\n")

    def run_skipped(self, k: int, run_id: str, kind: OutcomeKind) -> None:
        self.note(f"[{k}/{self.n}] {run_id}: {SKIP_REASONS.get(kind, str(kind))}")

    def note(self, text: str) -> None:
        self.clear_live()
        self._write(text + "\n")

    def close(self) -> None:
        self.clear_live()
