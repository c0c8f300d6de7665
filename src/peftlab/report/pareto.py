"""Pareto fronts of quality against cost.

A PEFT comparison is a trade-off, not a ranking: a method that is 0.3 points worse but trains
1 % of the parameters can be the right choice. The front is the set of configurations no other
configuration beats on both axes at once; everything else is dominated and can be dropped.

:func:`recommend` turns the fronts and the paired comparisons with the best (``aggregate.winners``:
Holm-adjusted, verdicts "better" / "worse" / "tied" / "not enough evidence") into what to use: the
best configuration, the methods the data cannot tell apart from it, and the cheapest of those at each
budget (trainable parameters, peak memory, training time), with the numbers and sample sizes behind
each statement. Configurations with degenerate runs are never recommended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from peftlab.formatting import fmt_sig, human_bytes, human_duration, human_pct

from .aggregate import Aggregate, Group, Versus, Winner, cost_direction, signed_text, value_text, versus_text


def _oriented(quality: float, cost: float, quality_direction: str, cost_dir: str) -> tuple[float, float]:
    """Map both axes to "lower is better" so one dominance rule covers every direction."""
    q = -quality if quality_direction == "higher" else quality
    c = -cost if cost_dir == "higher" else cost
    return q, c


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a dominates b: no worse on both (oriented, lower-better) axes and strictly better on one."""
    return a[0] <= b[0] and a[1] <= b[1] and (a[0] < b[0] or a[1] < b[1])


def pareto_front(points: Sequence[tuple[float | None, float | None]],
                 quality_direction: str = "higher", cost_dir: str = "lower") -> list[int]:
    """Indices of non-dominated ``(cost, quality)`` points, sorted by increasing cost.

    Points with a missing or non-finite coordinate are ignored rather than guessed. Exact
    duplicates are all kept (neither dominates the other).
    """
    valid = [
        (i, _oriented(float(q), float(c), quality_direction, cost_dir))
        for i, (c, q) in enumerate(points)
        if c is not None and q is not None and math.isfinite(c) and math.isfinite(q)
    ]
    front = [i for i, p in valid if not any(dominates(o, p) for j, o in valid if j != i)]
    return sorted(front, key=lambda i: (points[i][0], i))  # type: ignore[index,return-value]


def group_front(groups: Sequence[Group], metric: str, quality_direction: str,
                cost: str = "trainable_pct") -> list[Group]:
    """Pareto-optimal configurations for a metric vs a cost field (mean over seeds)."""
    pts = [(g.mean("cost", cost), g.mean("metric", metric)) for g in groups]
    idx = pareto_front(pts, quality_direction, cost_direction(cost) or "lower")
    return [groups[i] for i in idx]


# ---------------------------------------------------------------------------------------------
# What to use: the best method at each budget, and how sure that is
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """A cost a reader may be limited by: the cost field, its name in words and its formatter."""

    field: str
    title: str
    least: str  # the cheapest end of it, in words
    fmt: Callable[[float | None], str]


BUDGETS = (Budget("trainable_pct", "trainable parameters", "Fewest trainable parameters", human_pct),
           Budget("peak_memory_bytes", "peak memory", "Lowest peak memory", human_bytes),
           Budget("train_time_s", "training time", "Shortest training", human_duration))


def display_name(g: Group) -> str:
    """How a recommendation names a configuration ("the base model" for the untrained reference)."""
    return "the base model" if g.is_base and g.name == "base" else f"{g.name} (no fine-tuning)" if g.is_base else g.name


def base_of(agg: Aggregate, g: Group) -> Group | None:
    """The base model's configuration of the same task and model (None without one with results)."""
    return next((b for b in agg.groups_for(g.task, with_data=True) if b.is_base and b.model == g.model), None)


def gain_over_base(agg: Aggregate, g: Group, metric: str) -> float | None:
    """Points of ``metric`` gained over the base model (positive = better, whatever the direction)."""
    base = base_of(agg, g)
    value, ref = g.mean("metric", metric), base.mean("metric", metric) if base is not None else None
    if base is None or base is g or value is None or ref is None:
        return None
    return (value - ref) if agg.direction(g.task, metric) != "lower" else (ref - value)


def cost_per_point(agg: Aggregate, g: Group, metric: str, cost: str, scale: float = 1.0) -> float | None:
    """Mean ``cost`` (times ``scale``) per point of ``metric`` gained over base; None without a gain."""
    gain, spent = gain_over_base(agg, g, metric), g.mean("cost", cost)
    if gain is None or spent is None or gain <= 0:
        return None
    return spent * scale / gain


@dataclass(frozen=True)
class Pick:
    """The cheapest configuration on one budget among the best and those not shown worse than it."""

    budget: Budget
    group: Group
    cost: float
    versus: Versus | None  # its comparison with the best (None: it is the best)
    cheapest: Group | None = None  # the cheapest usable configuration overall, when that is another one
    cheapest_versus: Versus | None = None


@dataclass(frozen=True)
class Recommendation:
    """What to use for a task, built from the paired comparisons with the best (Holm) and the costs.

    ``band``: methods the comparisons cannot tell apart from the best ("not enough evidence" or
    "tied"); ``worse``: resolved worse than the best; ``unjudged``: comparisons that could not be made
    (degenerate, or no shared seed/example); ``excluded``: configurations with degenerate runs, which
    are never recommended. ``fronts``: per budget, the Pareto front of the usable configurations,
    cheapest first (the best quality each budget buys).
    """

    winner: Winner
    band: tuple[Versus, ...]
    worse: tuple[Versus, ...]
    unjudged: tuple[Versus, ...]
    unpaired: tuple[Group, ...]
    excluded: tuple[Group, ...]
    picks: tuple[Pick, ...]
    fronts: dict[str, list[Group]]

    def versus(self, g: Group) -> Versus | None:
        return next((v for v in self.winner.others if v.other is g), None)


def recommend(agg: Aggregate, w: Winner) -> Recommendation:
    """The best configuration, what cannot be told apart from it, and the cheapest choice per budget."""
    others = list(w.others)
    usable = lambda g: not g.degenerate  # noqa: E731
    band = tuple(v for v in others if v.verdict in ("not enough evidence", "tied")
                 and not v.comparison.degenerate and usable(v.other))
    worse = tuple(v for v in others if v.verdict == "better" and usable(v.other))
    unjudged = tuple(v for v in others if v.comparison.degenerate and usable(v.other))
    family = [w.best, *(v.other for v in others), *w.unpaired]
    excluded = tuple(g for g in family if not usable(g))
    candidates = [g for g in [w.best, *(v.other for v in band)] if usable(g)]
    by_group = {id(v.other): v for v in others}
    picks, fronts = [], {}
    for b in BUDGETS:
        priced = [g for g in family if usable(g) and g.mean("cost", b.field) is not None]
        fronts[b.field] = group_front(priced, w.metric, w.direction or "higher", b.field)
        have = [g for g in candidates if g.mean("cost", b.field) is not None]
        if not have:
            continue
        pick = min(have, key=lambda g: g.mean("cost", b.field))  # type: ignore[arg-type,return-value]
        cheapest = min(priced, key=lambda g: g.mean("cost", b.field))  # type: ignore[arg-type,return-value]
        extra = cheapest if cheapest.mean("cost", b.field) < pick.mean("cost", b.field) else None  # type: ignore[operator]
        picks.append(Pick(b, pick, pick.mean("cost", b.field), by_group.get(id(pick)),  # type: ignore[arg-type]
                          extra, by_group.get(id(extra)) if extra is not None else None))
    return Recommendation(w, band, worse, unjudged, tuple(g for g in w.unpaired if usable(g)), excluded,
                          tuple(picks), fronts)


def _relation(w: Winner, v: Versus | None, numbers: bool = True) -> str:
    """How a configuration stands against the best, in words, with the numbers behind it (``numbers``)."""
    if v is None:
        return "not compared with the best (no shared seed or example)"
    words = {"better": "resolved worse than the best", "worse": "resolved better than the best",
             "tied": "tied with the best"}.get(v.verdict, "not told apart from the best")
    if v.comparison.degenerate:
        words = "not judged against the best (" + "; ".join(v.comparison.degenerate) + ")"
    return f"{words}: {versus_text(w, v)}" if numbers else words


def _names(vs: Sequence[Versus]) -> str:
    return ", ".join(display_name(v.other) for v in vs)


def recommendation_headline(rec: Recommendation) -> str:
    """One sentence: what to use for the task and, in short, how sure that is."""
    w = rec.winner
    best, st = w.best, w.best.metrics[w.metric]
    words = {"higher": "higher is better", "lower": "lower is better"}.get(w.direction or "", "")
    resolved = bool(w.others) and not w.unpaired and all(v.verdict == "better" for v in w.others)
    lead = f"use {display_name(best)}" if resolved or not (w.others or w.unpaired) else \
        f"{display_name(best)} has the best estimate"
    text = f"{w.task} ({w.metric}{', ' + words if words else ''}): {lead}, {value_text(st)} from {st.sample_size}"
    if best.degenerate:
        return text + "; but its runs are degenerate, so check them before trusting any of this."
    if not w.others and not w.unpaired:
        return text + "; it is the only method with results."
    if rec.band:
        text += f"; not told apart from {_names(rec.band)}"
    if rec.worse:
        text += f"; resolved better than {_names(rec.worse)}"
    return text + "."


def recommendation_details(agg: Aggregate, rec: Recommendation) -> list[str]:
    """The sentences behind the headline: the gain over base and its price, how sure each statement is
    (differences, intervals, Holm p, sample sizes), and the cheapest choice at each budget."""
    w = rec.winner
    best = w.best
    out = []
    per_point, gain = cost_per_point(agg, best, w.metric, "train_time_s"), gain_over_base(agg, best, w.metric)
    if per_point is not None and gain is not None:
        out.append(f"Gain over the base model: {signed_text(gain)} {w.metric}, for {human_duration(per_point)} of "
                   "training per point.")
    def listed(vs: Sequence[Versus]) -> str:
        return "; ".join(f"{display_name(v.other)} ({versus_text(w, v)})" for v in vs)

    if rec.band:
        mde = max(v.comparison.mde for v in rec.band)
        out.append(f"Not told apart from the best (Δ = best − other): {listed(rec.band)}. That is not evidence of "
                   f"equality: at this size a difference below about {fmt_sig(mde, 3)} would probably go unnoticed.")
    elif w.others and not rec.unjudged and not rec.unpaired and all(v.verdict == "better" for v in w.others):
        # every comparison's own verdict, not only those listed above: a degenerate method left out of the
        # recommendation (rec.excluded) was still not told apart from the best
        out.append("The best is resolved better than every other method (95% intervals, Holm-adjusted).")
    if rec.worse:
        out.append(f"Resolved worse than the best (Δ = best − other): {listed(rec.worse)}.")
    out += [f"{display_name(v.other)} could not be judged against the best ({'; '.join(v.comparison.degenerate)})."
            for v in rec.unjudged]
    out += [f"{display_name(g)} shares no seed or example with the best and was not compared." for g in rec.unpaired]
    if rec.excluded:
        out.append("Never recommended, degenerate runs: " + "; ".join(
            f"{g.name} ({'; '.join(g.degenerate)})" for g in rec.excluded) + ".")
    if not w.others and not w.unpaired:
        return out
    told = {id(v.other) for v in [*rec.band, *rec.worse]}  # their numbers are given above
    for p in rec.picks:
        b = p.budget
        if p.group is best:
            text = f"{b.least}: {display_name(best)} itself ({b.fmt(p.cost)})"
        else:
            text = (f"{b.least} without being shown worse than the best: {display_name(p.group)} ({b.fmt(p.cost)}, "
                    f"against {b.fmt(best.mean('cost', b.field))} for {best.name})")
        if p.cheapest is not None:
            g, v = p.cheapest, p.cheapest_versus
            q = g.metrics.get(w.metric)
            relation = _relation(w, v, numbers=id(g) not in told)
            text += (f"; cheaper still: {display_name(g)} ({b.fmt(g.mean('cost', b.field))}"
                     + (f", {value_text(q)}" if q is not None else "") + f"), {relation}")
        out.append(text + ".")
    return out


def recommendation_text(agg: Aggregate, rec: Recommendation) -> str:
    """The recommendation paragraph: the headline, then the sentences behind it."""
    return " ".join([recommendation_headline(rec), *recommendation_details(agg, rec)])
