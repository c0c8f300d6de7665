"""Everything the CLI shows on the terminal: one line per run, the runs table of `ls runs`, the sweep's
plan, live progress, the summary.

`Display` is the `ProgressListener` the CLI hands to an executor: a live line on a TTY (run k/N,
step, loss, ETA), sparse plain lines otherwise.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Any, Callable, TextIO

from peftlab.config import RunConfig
from peftlab.executors.base import SweepSummary
from peftlab.formatting import fmt_duration, fmt_elapsed, fmt_gib, fmt_value
from peftlab.plan import PlannedRun, SweepPlan
from peftlab.status import FINISHED_BADLY, OutcomeKind, PlanState, RunStatus


def print_json(doc: Any) -> None:
    """`--json`: the command's one document on stdout (values JSON lacks, such as paths, as text)."""
    print(json.dumps(doc, indent=2, ensure_ascii=False, default=str))


# ------------------------------------------------------------------------------------------ one run
def metric_text(result: dict) -> str:
    """`perplexity=21.3`: the run's primary metric, or `-` when it has none."""
    primary = result.get("primary_metric")
    value = (result.get("metrics") or {}).get(primary)
    return f"{primary}={value:.4g}" if isinstance(value, (int, float)) else "-"


def error_tail(result: dict) -> str | None:
    """The last line of a run's error (its traceback's message), for runs that are not ok."""
    if result.get("status") != RunStatus.OK and result.get("error"):
        lines = str(result["error"]).strip().splitlines()
        return lines[-1][:120] if lines else None
    return None


def summary_line(result: dict) -> str:
    """One run on one line: label, task, seed, status, primary metric, cost; the error's last line."""
    cost = result.get("cost") or {}
    tps = cost.get("tokens_per_s")
    mem = cost.get("peak_memory_bytes")
    parts = [f"{result.get('label', '?'):<14}", f"{result.get('task', '?'):<9}", f"s{result.get('seed')}",
             f"{result.get('status', '?'):<9}", f"{metric_text(result):<24}",
             f"trainable={cost.get('trainable_pct', 0):.4f}%" if cost else "",
             f"tok/s={tps:.0f}" if tps else "", f"peak={fmt_gib(mem)}" if mem else ""]
    line = "  ".join(p for p in parts if p)
    error = error_tail(result)
    if error:
        line += f"  error: {error}"
    return line


# ------------------------------------------------------------------------------------------ ls runs
# Keys of a run's config that never tell two runs of one (experiment, task, method, seed) group apart
# in a useful way: the group's own coordinates, where it is stored, and the grid (shown by itself).
_NOT_SETTINGS = ("experiment", "seed", "output_dir", "trackers", "grid", "method.label", "method.method", "task.name")


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        out[prefix] = [v["name"] for v in value]  # eval.decoding: the strategies by name
    else:
        out[prefix] = value


def run_settings(result: dict, config: dict | None = None) -> dict[str, Any]:
    """A run's resolved settings as dotted keys (`train.lr`, `method.args.r`, `task.limit_train`, `model.name`).

    `config` is the run's config.yaml (task, evaluation and model fields); the result's resolved
    method arguments (defaults filled in), training settings and model name are laid over it.
    """
    flat: dict[str, Any] = {}
    _flatten(config or {}, "", flat)
    _flatten({"model": {"name": result.get("model")}, "method": {"args": result.get("method_args") or {}},
              "train": result.get("train") or {}}, "", flat)
    return {k: v for k, v in flat.items() if not any(k == s or k.startswith(s + ".") for s in _NOT_SETTINGS)}


def run_group(result: dict) -> tuple:
    """Runs that look alike on a summary line: same experiment, task, method and seed."""
    return (result.get("experiment"), result.get("task"), result.get("method"), result.get("seed"))


def distinguishing_settings(results: list[dict], configs: dict[str, dict | None]) -> dict[str, dict[str, Any]]:
    """Run id -> the settings whose values differ between runs of the same experiment, task, method
    and seed (two lora runs with different `train.lr`: `{"train.lr": 0.001}` for one of them).

    `configs`: run id -> its config.yaml (or None); config fields are compared only when every run
    of the group has one, so a missing file never reads as a difference.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault(run_group(r), []).append(r)
    out: dict[str, dict[str, Any]] = {r["run_id"]: {} for r in results}
    for members in groups.values():
        if len(members) < 2:
            continue
        with_config = all(configs.get(m["run_id"]) for m in members)
        flats = [run_settings(m, configs.get(m["run_id"]) if with_config else None) for m in members]
        keys = list(dict.fromkeys(k for f in flats for k in f))
        for key in keys:
            seen = {json.dumps(f[key], sort_keys=True, default=str) if key in f else None for f in flats}
            if len(seen) > 1:
                for m, f in zip(members, flats):
                    if key in f:
                        out[m["run_id"]][key] = f[key]
    return out


def setting_value(value: Any) -> str:
    """A setting as a user writes it: `0.001`, `null`, `true`, `q_proj,v_proj`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(setting_value(v) for v in value)
    return fmt_value(value)


def settings_text(grid: dict, overrides: dict[str, Any]) -> str:
    """`r=8 lr=0.001`: grid coordinates, then the other distinguishing settings, by their last name part
    (the whole dotted key where two parts would read alike)."""
    grid_items = [(key, setting_value(value)) for key, value in sorted(grid.items())]
    in_grid = {(key.split(".")[-1], text) for key, text in grid_items}  # the grid's `lora.r=4` is `method.args.r=4`
    items = grid_items + [("model" if key == "model.name" else key, setting_value(value))
                          for key, value in overrides.items()
                          if (key.split(".")[-1], setting_value(value)) not in in_grid]
    names = [key.split(".")[-1] for key, _ in items]
    return " ".join(f"{key if names.count(name) > 1 else name}={text}" for (key, text), name in zip(items, names))


def runs_table(results: list[dict], overrides: dict[str, dict[str, Any]]) -> str:
    """`peftlab ls runs`: a header and one row per run (an error's last line under its row)."""
    header = ("run", "method", "task", "seed", "status", "metric", "trainable", "tok/s", "peak mem",
              "grid & distinguishing settings")
    rows: list[tuple[tuple[str, ...], str | None]] = []
    for r in results:
        cost = r.get("cost") or {}
        pct, tps, mem = cost.get("trainable_pct"), cost.get("tokens_per_s"), cost.get("peak_memory_bytes")
        rows.append(((str(r.get("run_id", "?")), str(r.get("label", "?")), str(r.get("task", "?")), f"s{r.get('seed')}",
                      str(r.get("status", "?")), metric_text(r),
                      f"{pct:.4f}%" if isinstance(pct, (int, float)) else "-",
                      f"{tps:.0f}" if tps else "-", fmt_gib(mem) if mem else "-",
                      settings_text(r.get("grid") or {}, overrides.get(r.get("run_id", ""), {})) or "-"),
                     error_tail(r)))
    widths = [max(len(row[i]) for row in [header, *(cells for cells, _ in rows)]) for i in range(len(header) - 1)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]

    lines = [line(header)]
    for cells, error in rows:
        lines.append(line(cells))
        if error:
            lines.append(f"    error: {error}")
    return "\n".join(lines)


def step_printer(i: int, n: int, rc: RunConfig, out: TextIO | None = None) -> Callable[[int, int, float], None]:
    """`peftlab run`'s live step line (on a TTY only)."""
    def show(step: int, total: int, loss: float) -> None:
        stream = out or sys.stdout
        if stream.isatty():
            print(f"\r[{i}/{n}] {rc.method.label} {rc.task.name} s{rc.seed}: step {step}/{total} loss {loss:.4f}",
                  end="", flush=True, file=stream)
    return show


# ------------------------------------------------------------------------------------------ plan
def _point(value: Any) -> str:
    """A grid coordinate: a tied axis's point as `(r=4, lora_alpha=8)`, anything else as fmt_value."""
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k.split('.')[-1]}={fmt_value(v)}" for k, v in value.items()) + ")"
    return fmt_value(value)


def format_plan(plan: SweepPlan, max_rows: int | None = None, executor: str = "local") -> str:
    """The plan as text: one row per task × method × grid point (seeds with their states), then counts."""
    exp = plan.experiment
    groups: dict[tuple, list[PlannedRun]] = {}
    for p in plan.runs:  # grid values may be lists (target_modules), so the key is their text
        coords = "  ".join(f"{k}={_point(v)}" for k, v in p.rc.grid.items()) or "-"
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
            f"{k} [{', '.join(_point(v) for v in (vals if isinstance(vals, list) else [vals]))}]"
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
        self._eval_start: tuple[str, float, float] | None = None  # (phase, time, done) of the phase's start

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
        self.n = len(plan.to_run) + plan.pending  # a tuned sweep's test runs join once its trials are selected
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

    def evaluating(self, phase: str, done: float, total: int) -> None:
        """The live line while a run is scored: phase, examples done, rate and the ETA."""
        now = time.perf_counter()
        if not done or self._eval_start is None or self._eval_start[0] != phase:
            self._eval_start = (phase, now, done)
        _, t0, d0 = self._eval_start
        rate = (done - d0) / (now - t0) if done > d0 and now > t0 else None
        current_left = (total - done) / rate if rate else None
        line = (f"run {self.k}/{self.n} {self._label()}: evaluating {phase} {int(done)}/{total}"
                + (f" ({rate:.1f}/s)" if rate else "") + f" ETA {fmt_duration(self.eta(current_left))}")
        if self.tty:
            self._live_line(line, force=done >= total)
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
