"""Pareto fronts of quality against cost.

A PEFT comparison is a trade-off, not a ranking: a method that is 0.3 points worse but trains
1 % of the parameters can be the right choice. The front is the set of configurations no other
configuration beats on both axes at once; everything else is dominated and can be dropped.
"""

from __future__ import annotations

import math
from typing import Sequence

from .aggregate import Group, cost_direction


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
