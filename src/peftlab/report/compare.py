"""Any two methods of a store, paired: `peftlab compare STORE A B`.

The report compares every method with the best one (Holm-corrected over that family). A user often
has one question of their own instead: is A better than B, on this task's metric, on the general
text they kept, or on a retention task? Or is one decoding strategy better than another for the same
adapter (`lora@greedy` vs `lora@top_p=0.9`: a side written `LABEL@EVALUATION` is scored by that
evaluation of its runs)? This answers it with the same machinery, for one pair (so no
multiplicity correction): each label's best configuration on the task's primary metric, paired on
the shared seeds and test examples (`stats.compare`: two-level bootstrap interval, permutation
p-value, verdict, minimum detectable effect). A deterministic side (base, an external adapter) pairs
with every seed of the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.evaluation.forgetting import EVALUATION, METRIC
from peftlab.evaluation.metrics import direction_of
from peftlab.report import stats as st
from peftlab.report.aggregate import (
    CONFIDENCE,
    RETENTION,
    Aggregate,
    Group,
    best_per_label,
    format_grid,
    signed_text,
)


class CompareError(ValueError):
    """The pair cannot be compared; the message is one sentence naming what is missing and what exists."""


@dataclass(frozen=True)
class Pairing:
    """`a - b` on one score of one task, each side its label's best configuration."""

    task: str
    on: str  # "the task", "forgetting" (general text) or a retention task's name
    metric: str
    direction: str | None
    a: Group
    b: Group
    comparison: st.Comparison
    a_evaluation: str = ""  # `LABEL@EVALUATION`: the side's score set (a decoding strategy), "" the primary one
    b_evaluation: str = ""

    def text(self) -> str:
        c = self.comparison
        where = {"the task": f"{self.task}", EVALUATION: f"{self.task} runs' general text"}.get(
            self.on, f"{self.task} runs' retention task {self.on}")
        better = {"higher": "higher is better", "lower": "lower is better"}.get(self.direction or "", "no direction")
        size = c.sample_size.replace(" x ", " × ")
        sa = self.a.label + (f"@{self.a_evaluation}" if self.a_evaluation else "")
        sb = self.b.label + (f"@{self.b_evaluation}" if self.b_evaluation else "")
        verdict = {"better": f"{sa} is better", "worse": f"{sa} is worse", "tied": "tied"}.get(c.verdict, c.verdict)
        lines = [f"{_name(self.a, self.a_evaluation)} − {_name(self.b, self.b_evaluation)} on {where}, "
                 f"{self.metric} ({better}):",
                 f"  Δ = {signed_text(c.difference)} [{signed_text(c.lo)}, {signed_text(c.hi)}] "
                 f"({round(100 * CONFIDENCE)}% interval), p = {c.p_value:.2g}, {size}: {verdict}",
                 f"  {sa} {c.a_value:.4g}, {sb} {c.b_value:.4g}"
                 + ("" if c.degenerate or not c.mde else  # identical scores have no spread to size a difference by
                    f"; at this size a difference below about {c.mde:.3g} would probably go unnoticed")]
        if c.degenerate:
            lines.append(f"  no verdict possible: {'; '.join(c.degenerate)}")
        return "\n".join(lines)


def _name(g: Group, evaluation: str = "") -> str:
    grid = format_grid(g.grid)
    name = g.label + (f"@{evaluation}" if evaluation else "")
    return f"{name} ({grid})" if grid else name


def compare_labels(agg: Aggregate, a: str, b: str, task: str | None = None, metric: str | None = None,
                   on: str = "the task", n_resamples: int = 2000, n_permutations: int = 2000) -> Pairing:
    """`a - b` (method labels) on `task` (the only one when None): its primary metric (or `metric`), or with
    `on` = "forgetting" the general-text loss, or a retention task's name, its primary metric. A side
    written `LABEL@EVALUATION` is scored by that evaluation of its runs (a decoding strategy's name)."""
    (a, a_eval), (b, b_eval) = (_side(x) for x in (a, b))
    if (a_eval or b_eval) and on != "the task":
        raise CompareError(f"--on {on!r} compares the runs' {on} scores; LABEL@EVALUATION names a task evaluation")
    tasks = [t for t in agg.tasks if any(g.label in (a, b) for g in agg.groups_for(t, with_data=True))]
    if task is None:
        if len(tasks) != 1:
            raise CompareError(f"name the task with --task: {a!r} and {b!r} have runs on "
                               f"{', '.join(tasks) or 'no task'}")
        task = tasks[0]
    primary = agg.primary.get(task)
    groups = agg.groups_for(task, with_data=True)
    best = best_per_label(groups, primary, agg.direction(task, primary)) if primary else {}
    labels = sorted({g.label for g in groups})
    for label in (a, b):
        if label not in best:
            raise CompareError(f"no ok run of {label!r} on task {task!r}; labels there: {', '.join(labels) or 'none'}")
    ga, gb = best[a], best[b]
    if on == "the task":
        metric = metric or primary
        keys = [(ev, metric) if ev else ("metric", metric) for ev in (a_eval, b_eval)]
        direction = agg.direction(task, metric) if metric else None
        for g, ev in ((ga, a_eval), (gb, b_eval)):
            if ev and ev not in g.evals:
                raise CompareError(f"{g.label!r} has no evaluation {ev!r} on {task!r}; it has: "
                                   f"{', '.join(sorted(g.evals)) or 'none'}")
    else:
        retention = sorted(set(ga.retention) & set(gb.retention))
        if on not in retention:
            raise CompareError(f"--on {on!r}: both sides have {', '.join(retention) or 'no retention scores'}")
        metrics = ga.retention[on]
        metric = metric or (METRIC if on == EVALUATION else next(
            (m for m in metrics if direction_of(m) is not None), next(iter(metrics), None)))
        keys = [(RETENTION + on, metric)] * 2
        direction = direction_of(metric) if metric else None
    da, db = ga.data.get(keys[0]), gb.data.get(keys[1])
    if da is None or db is None:
        have = sorted(m for k, m in ga.data if k == keys[0][0])
        raise CompareError(f"no per-example {metric!r} scores for both {a!r} and {b!r} on {task!r} "
                           f"({'on ' + on if on != 'the task' else 'the task'}); {a!r} has: {', '.join(have) or 'none'}")
    try:
        comparison = st.compare(da.table, db.table, higher_is_better=direction != "lower", statistic=da.statistic,
                                metric_range=da.metric_range, alpha=1 - CONFIDENCE, n_resamples=n_resamples,
                                n_permutations=n_permutations)
    except ValueError as exc:
        raise CompareError(f"{a!r} and {b!r} cannot be paired on {task!r}: {exc}") from None
    return Pairing(task, on, metric, direction, ga, gb, comparison, a_eval, b_eval)


def _side(text: str) -> tuple[str, str]:
    """`LABEL@EVALUATION` -> (label, evaluation); a plain label -> (label, "")."""
    label, _, evaluation = text.partition("@")
    return label, evaluation
