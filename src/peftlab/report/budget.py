"""Expected best validation score vs tuning budget (Dodge et al. 2019, "Show your work").

A tuned experiment (`peftlab.tuning`) spends the same number of trials N on every method. With the
ok trials' validation scores sorted, v_(1) <= ... <= v_(N), the best of n trials drawn with
replacement from them is v_(i) with probability p_i = (i/N)^n - ((i-1)/N)^n, so

    E[best of n] = sum_i p_i v_(i)        spread: sd[best of n] = sqrt(sum_i p_i (v_(i) - E)^2)

(for a metric where lower is better the order is reversed: the best is the minimum). The spread is
the standard deviation of that same distribution, not a bootstrap; the plotted band is E ± sd,
kept inside [v_(1), v_(N)], where the best of n always lies. A curve that starts low and ends high
marks a method that needs tuning; two curves that cross tell that which method "wins" depends on
the budget — a method ahead only at N may be better tuned rather than better.

Only `ok` trials are scored (failed or diverged ones are counted and named in the legend). The
trials and the metric are those the selection used, as the latest final run of the method records
them (`tuning.trials`, `tuning.metric`; trials of an earlier search space in the same store are left
out); without a final run, every trial of the method in the results and its primary metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .plots import STYLE, Palette, Plot, direction_note, new_figure, save_figure, slug


@dataclass(frozen=True)
class BudgetPoint:
    n: int  # trials
    mean: float  # expected best validation score of n trials
    std: float  # its standard deviation


@dataclass(frozen=True)
class BudgetCurve:
    task: str
    label: str
    metric: str
    direction: str  # higher | lower
    values: tuple[float, ...]  # the ok trials' validation scores, in trial order
    trials: int  # every trial, whatever its status
    points: tuple[BudgetPoint, ...]

    @property
    def failed(self) -> int:
        return self.trials - len(self.values)


def expected_max(values: Sequence[float], n: int, higher_is_better: bool = True) -> tuple[float, float]:
    """(E, sd) of the best of `n` draws with replacement from `values` (the maximum, or the minimum when lower
    is better)."""
    if not values:
        raise ValueError("expected_max: no values")
    if n < 1:
        raise ValueError(f"expected_max: n must be >= 1, got {n}")
    v = np.sort(np.asarray(values, dtype=float))
    if not higher_is_better:
        v = v[::-1]  # the "largest" is the smallest: the best of n is the first to come in this order
    big_n = len(v)
    i = np.arange(1, big_n + 1, dtype=float)
    p = (i / big_n) ** n - ((i - 1) / big_n) ** n
    mean = float(np.dot(p, v))
    var = float(np.dot(p, (v - mean) ** 2))
    return mean, math.sqrt(max(var, 0.0))


def expected_max_curve(values: Sequence[float], higher_is_better: bool = True,
                       max_n: int | None = None) -> list[BudgetPoint]:
    """E[best of n] ± sd for n = 1 .. `max_n` (default: the number of values)."""
    return [BudgetPoint(n, *expected_max(values, n, higher_is_better)) for n in range(1, (max_n or len(values)) + 1)]


def is_trial(r: Any) -> bool:
    return isinstance(r, dict) and isinstance(r.get("tuning"), dict) and r["tuning"].get("stage") == "trial"


def _selections(results: Sequence[Any]) -> dict[tuple[str, str], dict]:
    """(task, label) -> the tuning note of its latest final run: the metric and trials its selection used."""
    out: dict[tuple[str, str], tuple[str, dict]] = {}
    for r in results:
        note = r.get("tuning") if isinstance(r, dict) else None
        if isinstance(note, dict) and note.get("stage") == "final" and note.get("metric"):
            key, when = (str(r.get("task")), str(r.get("label"))), str(r.get("started_at") or "")
            if key not in out or when >= out[key][0]:
                out[key] = (when, note)
    return {key: note for key, (_, note) in out.items()}


def budget_curves(results: Sequence[Any], metric: str | None = None) -> list[BudgetCurve]:
    """One curve per (task, method) that has tuning trials among `results` (result dicts, as the store gives
    them), in first-seen order; `metric` overrides the selection's metric."""
    chosen = _selections(results)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if is_trial(r):
            key = (str(r.get("task")), str(r.get("label")))
            used = chosen.get(key, {}).get("trials")
            if not used or r.get("run_id") in used:
                groups.setdefault(key, []).append(r)
    curves = []
    for (task, label), runs in groups.items():
        runs.sort(key=lambda r: r["tuning"].get("trial") or 0)
        name = metric or chosen.get((task, label), {}).get("metric") or next(
            (r.get("primary_metric") for r in runs if r.get("primary_metric")), None)
        if not name:
            continue
        direction = next(((r.get("metric_directions") or {}).get(name) for r in runs
                          if (r.get("metric_directions") or {}).get(name)), "higher")
        values = []
        for r in runs:
            value = (r.get("metrics") or {}).get(name) if r.get("status") == "ok" else None
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values.append(float(value))
        points = tuple(expected_max_curve(values, direction != "lower")) if values else ()
        curves.append(BudgetCurve(task, label, name, direction, tuple(values), len(runs), points))
    return curves


def _leader(a: BudgetCurve, b: BudgetCurve, n: int) -> str:
    """The label whose expected best of n trials is better ("tie" when equal)."""
    diff = a.points[n - 1].mean - b.points[n - 1].mean
    if a.direction == "lower":
        diff = -diff
    return a.label if diff > 0 else b.label if diff < 0 else "tie"


def budget_findings(curves: Sequence[BudgetCurve]) -> list[str]:
    """Per task and pair of methods, one sentence: which one's expected best is ahead at which budgets."""
    out = []
    for task in dict.fromkeys(c.task for c in curves):
        mine = [c for c in curves if c.task == task and c.points]
        for i, a in enumerate(mine):
            for b in mine[i + 1:]:
                if a.metric != b.metric:
                    continue
                top = min(len(a.points), len(b.points))
                leaders = [_leader(a, b, n) for n in range(1, top + 1)]
                out.append(f"{task}: {_lead_text(leaders, a.label, b.label)} (expected best validation {a.metric}, "
                           f"1 to {top} trials)")
    return out


def _lead_text(leader: list[str], a: str, b: str) -> str:
    runs: list[tuple[str, int, int]] = []  # (who, first n, last n)
    for n, who in enumerate(leader, 1):
        if runs and runs[-1][0] == who:
            runs[-1] = (who, runs[-1][1], n)
        else:
            runs.append((who, n, n))
    if len(runs) == 1:
        who = runs[0][0]
        return f"{a} and {b} tie at every budget" if who == "tie" else \
            f"{who} is ahead of {b if who == a else a} at every budget"
    parts = [f"{'tied' if who == 'tie' else who + ' ahead'} at {lo}" + (f"–{hi}" if hi > lo else "") + " trial(s)"
             for who, lo, hi in runs]
    return f"{a} vs {b}: the lead changes with the budget: " + ", ".join(parts)


def budget_plot(curves: Sequence[BudgetCurve], task: str, palette: Palette | None = None) -> Figure | None:
    """Expected best validation score vs number of trials for every tuned method of `task` (None: none)."""
    mine = [c for c in curves if c.task == task and c.points]
    if not mine:
        return None
    palette = palette or Palette([c.label for c in mine])
    fig, ax = new_figure()
    for c in mine:
        ns = np.array([p.n for p in c.points])
        mean = np.array([p.mean for p in c.points])
        std = np.array([p.std for p in c.points])
        lo, hi = min(c.values), max(c.values)
        color = palette.color(c.label)
        count = f"{len(c.values)} ok of {c.trials} trials" if c.failed else f"{c.trials} trials"
        ax.plot(ns, mean, marker=palette.marker(c.label), markersize=4, color=color, label=f"{c.label} ({count})")
        ax.fill_between(ns, np.clip(mean - std, lo, hi), np.clip(mean + std, lo, hi), color=color, alpha=0.18,
                        linewidth=0)
    metrics = sorted({c.metric for c in mine})
    direction = mine[0].direction if len({c.direction for c in mine}) == 1 else None
    ax.set_xlabel("tuning trials (n)")
    ax.set_ylabel(f"expected best validation {'/'.join(metrics)}{direction_note(direction)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{task}: expected best validation score vs budget")
    ax.legend(loc="best")
    return fig


CAPTION = ("Expected best validation score of n tuning trials drawn with replacement from each method's ok trials "
           "(Dodge et al. 2019): E = Σ p_i v_(i), p_i = (i/N)^n − ((i−1)/N)^n; band = ± its standard deviation, kept "
           "inside the observed range. Every method had the same budget; curves that cross mean the winner depends "
           "on how much tuning each gets.")


def write_budget_plots(results: Sequence[Any], out_dir: Path, palette: Palette | None = None) -> list[Plot]:
    """One expected-best-vs-budget figure per task with tuning trials (PNG + SVG); [] when there are none."""
    curves = budget_curves(results)
    plots: list[Plot] = []
    with matplotlib.rc_context(STYLE):
        for task in dict.fromkeys(c.task for c in curves):
            fig = budget_plot(curves, task, palette)
            if fig is None:
                continue
            name = f"budget_{slug(task)}"
            png, svg = save_figure(fig, Path(out_dir), name)
            plots.append(Plot(name, f"{task}: expected best validation score vs tuning budget", CAPTION, task, png, svg))
    return plots
