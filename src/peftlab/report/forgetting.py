"""Forgetting beside gain: what each method cost outside its task, paired with base on the same examples.

Every run scores held-out general text (`retention.forgetting`, metric `general_loss`, nats per
token; `peftlab.evaluation.forgetting`) and any retention tasks of the experiment. For each method
(its best configuration on the task's primary metric) this module compares that score with the
base model's, paired on the same paragraphs or examples (base is deterministic and pairs with every
seed), with `stats.compare`'s interval, permutation p-value and verdict. The verdict is said in the
words of forgetting: a higher general loss than base is "forgot", a lower one "improved", an
interval inside the tie band "no change"; "not enough evidence" otherwise. It also pairs the gain
on the task's primary metric over base, so the report can plot gain against forgetting with the
Pareto front (most gain, least forgetting).
"""

from __future__ import annotations

from dataclasses import dataclass

from peftlab.evaluation.forgetting import EVALUATION, METRIC
from peftlab.evaluation.metrics import direction_of
from peftlab.report import stats as st
from peftlab.report.aggregate import CONFIDENCE, RETENTION, Aggregate, Group, Stats, best_per_label

#: Verdict words of `stats.compare` (a = the method, b = base, lower loss is better) in forgetting's terms.
WORDS = {"better": "improved", "worse": "forgot", "tied": "no change", "not enough evidence": "not enough evidence"}


@dataclass(frozen=True)
class Retained:
    """One method's score outside its task (`name`: "forgetting" or a retention task) against base's."""

    group: Group
    name: str
    metric: str
    value: Stats | None
    vs_base: st.Comparison | None  # method − base on the shared examples (seeds × examples)
    gain: st.Comparison | None  # the method's primary-metric gain over base, paired the same way

    @property
    def words(self) -> str:
        if self.vs_base is None:
            return "no paired comparison"
        if self.name != EVALUATION:  # a retention task's metric: better/worse keep their meaning
            return {"better": "better than base", "worse": "worse than base"}.get(self.vs_base.verdict,
                                                                                 self.vs_base.verdict)
        return WORDS.get(self.vs_base.verdict, self.vs_base.verdict)


def _paired(a: Group, b: Group, key: tuple[str, str], higher_is_better: bool) -> st.Comparison | None:
    da, db = a.data.get(key), b.data.get(key)
    if da is None or db is None or da.statistic_name != db.statistic_name:
        return None
    try:
        return st.compare(da.table, db.table, higher_is_better=higher_is_better, statistic=da.statistic,
                          metric_range=da.metric_range, alpha=1 - CONFIDENCE, n_resamples=1000, n_permutations=2000)
    except ValueError:  # nothing shared to pair on
        return None


def retained(agg: Aggregate, task: str) -> list[Retained]:
    """Per method of `task` (its best configuration) and per retention score: the comparison with base."""
    primary = agg.primary.get(task)
    groups = agg.groups_for(task, with_data=True)
    base = next((g for g in groups if g.is_base), None)
    if base is None or not primary:
        return []
    d = agg.direction(task, primary)
    out = []
    for g in best_per_label(groups, primary, d).values():
        if g is base:
            continue
        gain = _paired(g, base, ("metric", primary), d != "lower")
        for name in sorted(g.retention, key=lambda n: (n != EVALUATION, n)):
            metrics = g.retention[name]
            metric = METRIC if name == EVALUATION else next(
                (m for m in metrics if direction_of(m) is not None), next(iter(metrics), None))
            if metric is None:
                continue
            higher = direction_of(metric) == "higher"
            out.append(Retained(g, name, metric, metrics.get(metric),
                                _paired(g, base, (RETENTION + name, metric), higher), gain))
    return out


def base_value(agg: Aggregate, task: str, name: str, metric: str) -> Stats | None:
    base = next((g for g in agg.groups_for(task, with_data=True) if g.is_base), None)
    return None if base is None else base.retention.get(name, {}).get(metric)


def gain_forgetting_front(rows: list[Retained]) -> list[Retained]:
    """The forgetting rows no other row beats on both gain (higher) and forgetting (lower)."""
    pts = [r for r in rows if r.name == EVALUATION and r.vs_base is not None and r.gain is not None]
    return [r for r in pts if not any(
        o.gain.difference >= r.gain.difference and o.vs_base.difference <= r.vs_base.difference  # type: ignore[union-attr]
        and (o.gain.difference > r.gain.difference or o.vs_base.difference < r.vs_base.difference)  # type: ignore[union-attr]
        for o in pts)]
