"""Turn raw result dicts into per-configuration statistics over seeds.

The report never trusts a single seed: every number it shows is a mean over the seeds of one
configuration (task, model, label, grid coordinates) with a Student-t confidence interval, and
every claim that one method beats another is a paired test over the seeds both share. Only
``status == "ok"`` runs feed the numbers; failed/diverged/cancelled runs are counted and listed
so a method that "wins" because its bad seeds crashed is visible as such.

Everything here is pure Python + ``math`` so the report works without scipy.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Sequence

from peftlab.evaluation.metrics import direction_of

# ---------------------------------------------------------------------------------------------
# Student t distribution (regularized incomplete beta, no scipy)
# ---------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for I_x(a, b) (modified Lentz); converges fast for x < (a+1)/(a+b+2)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b); the building block of the t CDF."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError("df must be positive")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


@lru_cache(maxsize=1024)
def t_ppf(p: float, df: float) -> float:
    """Inverse t CDF by bracketing + bisection: exact to ~1e-12, cheap enough to cache per df."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_critical(df: float, confidence: float = 0.95) -> float:
    """Two-sided critical value, e.g. 12.706 for df=1 at 95 %."""
    return t_ppf(0.5 + confidence / 2.0, df)


# ---------------------------------------------------------------------------------------------
# Summary statistics
# ---------------------------------------------------------------------------------------------

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Stats:
    """Mean over seeds with sample std (ddof=1) and a t interval; interval is None when n == 1."""

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    values: tuple[float, ...] = ()

    @property
    def half_width(self) -> float | None:
        """CI half-width, the ``±`` number in tables."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2.0


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Stats | None:
    """Mean, std (ddof=1) and Student-t CI; None for no values, no interval for a single value."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return None
    mean = math.fsum(vals) / n
    if n == 1:
        return Stats(1, mean, None, None, None, tuple(vals))
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_critical(n - 1, confidence) * std / math.sqrt(n)
    return Stats(n, mean, std, mean - half, mean + half, tuple(vals))


# ---------------------------------------------------------------------------------------------
# Directions
# ---------------------------------------------------------------------------------------------

#: Cost fields the report knows; ``None`` = informative but neither better nor worse.
COST_DIRECTIONS: dict[str, str | None] = {
    "trainable_params": "lower",
    "total_params": "lower",
    "trainable_pct": "lower",
    "adapter_bytes": "lower",
    "train_time_s": "lower",
    "eval_time_s": "lower",
    "peak_memory_bytes": "lower",
    "cuda_max_allocated_bytes": "lower",
    "cuda_max_reserved_bytes": "lower",
    "train_flops": "lower",
    "tokens_per_s": "higher",
    "eval_tokens_per_s": "higher",
    "eval_s_per_example": "lower",
    "mfu": "higher",
    "steps": None,
    "tokens_trained": None,
}



def cost_direction(name: str) -> str | None:
    """Built-in direction for a cost field; unknown fields are guessed from their unit suffix."""
    if name in COST_DIRECTIONS:
        return COST_DIRECTIONS[name]
    if name.endswith("per_s"):
        return "higher"
    if name.endswith(("_s", "_bytes", "_params", "_pct", "_flops")):
        return "lower"
    return None


def is_better(a: float, b: float, direction: str | None) -> bool:
    """Strictly better under a direction; no direction means nothing is better."""
    if direction == "higher":
        return a > b
    if direction == "lower":
        return a < b
    return False


def _number(value: Any) -> float | None:
    """Finite float or None: bools, strings, NaN and inf never enter a mean."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------------

GridKey = tuple[tuple[str, Any], ...]
OK = "ok"
#: Statuses of the contract that end a run without a result. Anything else that is neither "ok"
#: nor "running" (the store reports dead running runs as "interrupted") is treated the same way.
FAILED_STATUSES = ("failed", "diverged", "cancelled")


def _freeze(value: Any) -> Any:
    """Hashable form of a grid value (lists/dicts can appear as swept values)."""
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def grid_key(result: dict) -> GridKey:
    """Sorted, hashable grid coordinates of a run."""
    grid = result.get("grid") or {}
    if not isinstance(grid, dict):
        return ()
    return tuple(sorted((str(k), _freeze(v)) for k, v in grid.items()))


def label_of(result: dict) -> str:
    """The experiment's name for the method entry, falling back to the registry key."""
    return str(result.get("label") or result.get("method") or "?")


@dataclass
class Group:
    """All runs of one configuration across seeds; stats come from the ok runs only."""

    task: str
    model: str | None
    label: str
    method: str | None
    grid: GridKey
    runs: list[dict] = field(default_factory=list)
    status_counts: Counter = field(default_factory=Counter)
    metrics: dict[str, Stats] = field(default_factory=dict)
    costs: dict[str, Stats] = field(default_factory=dict)
    evals: dict[str, dict[str, Stats]] = field(default_factory=dict)
    per_seed: dict[tuple[str, str], dict[Any, float]] = field(default_factory=dict)
    directions: dict[str, str] = field(default_factory=dict)
    memory_kinds: set[str] = field(default_factory=set)

    @property
    def key(self) -> tuple:
        return (self.task, self.model, self.label, self.grid)

    @property
    def n_ok(self) -> int:
        return len(self.runs)

    @property
    def n_failed(self) -> int:
        """Runs that ended without a usable result (failed, diverged, cancelled, interrupted...)."""
        return sum(n for s, n in self.status_counts.items() if s not in (OK, "running"))

    @property
    def seeds(self) -> list[Any]:
        return [r.get("seed") for r in self.runs]

    @property
    def grid_dict(self) -> dict[str, Any]:
        return dict(self.grid)

    @property
    def name(self) -> str:
        """Human name: label plus short grid coordinates, e.g. ``lora (r=8, lr=0.0005)``."""
        if not self.grid:
            return self.label
        return f"{self.label} ({format_grid(self.grid)})"

    def stat(self, kind: str, name: str) -> Stats | None:
        """Stats of a metric (kind="metric") or cost field (kind="cost")."""
        return (self.metrics if kind == "metric" else self.costs).get(name)

    def mean(self, kind: str, name: str) -> float | None:
        s = self.stat(kind, name)
        return None if s is None else s.mean


def short_key(key: str, all_keys: Iterable[str] = ()) -> str:
    """``train.lr`` → ``lr`` unless that would collide with another key's short form."""
    short = key.rsplit(".", 1)[-1]
    clash = [k for k in all_keys if k != key and k.rsplit(".", 1)[-1] == short]
    return key if clash else short


def format_value(value: Any) -> str:
    """Compact grid value: 0.0005 → 5e-04, 8 → 8."""
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.0e}"
        return f"{value:g}"
    return str(value)


def format_grid(grid: GridKey) -> str:
    keys = [k for k, _ in grid]
    return ", ".join(f"{short_key(k, keys)}={format_value(v)}" for k, v in grid)


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------


@dataclass
class Aggregate:
    """Everything the tables, plots and HTML need, computed once."""

    groups: list[Group]
    failures: list[dict]
    running: list[dict]
    tasks: list[str]
    primary: dict[str, str | None]
    directions: dict[str, dict[str, str]]
    notes: list[str]
    results: list[dict]

    def groups_for(self, task: str, with_data: bool = False) -> list[Group]:
        """Groups of one task; ``with_data`` drops configurations that have no ok run."""
        return [g for g in self.groups if g.task == task and (g.n_ok > 0 or not with_data)]

    def direction(self, task: str, metric: str) -> str | None:
        return self.directions.get(task, {}).get(metric)

    def metric_names(self, task: str) -> list[str]:
        """Metrics of a task, primary first then alphabetical."""
        names = {m for g in self.groups_for(task) for m in g.metrics}
        primary = self.primary.get(task)
        rest = sorted(names - {primary})
        return ([primary] if primary in names else []) + rest


def _run_summary(r: dict) -> dict:
    """The few fields the failed-runs list shows."""
    error = r.get("error")
    if isinstance(error, dict):
        error = error.get("message") or error.get("type") or str(error)
    return {
        "run_id": r.get("run_id", "?"),
        "experiment": r.get("experiment"),
        "task": str(r.get("task") or "?"),
        "label": label_of(r),
        "method": r.get("method"),
        "grid": format_grid(grid_key(r)),
        "seed": r.get("seed"),
        "status": r.get("status", "?"),
        "error": (str(error).strip() if error else ""),
        "started_at": r.get("started_at"),
    }


def _finished(r: dict) -> str:
    return str(r.get("finished_at") or r.get("started_at") or "")


def _dedupe_seeds(runs: list[dict], notes: list[str], name: str) -> list[dict]:
    """One ok run per seed (the latest) so a re-run doesn't count twice in a mean."""
    by_seed: dict[Any, dict] = {}
    for r in sorted(runs, key=_finished):
        seed = r.get("seed")
        if seed in by_seed:
            notes.append(
                f"{name}: seed {seed} has several ok runs; kept {r.get('run_id')}, "
                f"ignored {by_seed[seed].get('run_id')}"
            )
        by_seed[seed] = r
    return sorted(by_seed.values(), key=lambda r: (str(type(r.get("seed"))), r.get("seed") or 0))


def _collect(group: Group, notes: list[str]) -> None:
    """Fill a group's stats from its ok runs (metrics, costs, per-decoding evaluations)."""
    metric_vals: dict[str, dict[Any, float]] = defaultdict(dict)
    cost_vals: dict[str, dict[Any, float]] = defaultdict(dict)
    eval_vals: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in group.runs:
        seed = r.get("seed")
        for name, value in (r.get("metrics") or {}).items():
            v = _number(value)
            if v is None:
                notes.append(f"{group.name} [{group.task}]: metric {name!r} of {r.get('run_id')} "
                             f"is not a finite number ({value!r}); left out")
                continue
            metric_vals[name][seed] = v
        for name, d in (r.get("metric_directions") or {}).items():
            group.directions.setdefault(name, d)
        cost = r.get("cost") or {}
        for name, value in cost.items():
            v = _number(value)
            if v is not None:
                cost_vals[name][seed] = v
        if cost.get("memory_kind"):
            group.memory_kinds.add(str(cost["memory_kind"]))
        for ev in r.get("evaluations") or []:
            if not isinstance(ev, dict):
                continue
            ev_name = str(ev.get("name") or "eval")
            for name, value in (ev.get("metrics") or {}).items():
                v = _number(value)
                if v is not None:
                    eval_vals[(ev_name, name)].append(v)
            tps = _number((ev.get("throughput") or {}).get("tokens_per_s"))
            if tps is not None:
                eval_vals[(ev_name, "tokens_per_s")].append(tps)
    for name, by_seed in metric_vals.items():
        group.metrics[name] = summarize(list(by_seed.values()))  # type: ignore[assignment]
        group.per_seed[("metric", name)] = by_seed
    for name, by_seed in cost_vals.items():
        group.costs[name] = summarize(list(by_seed.values()))  # type: ignore[assignment]
        group.per_seed[("cost", name)] = by_seed
    for (ev_name, name), vals in eval_vals.items():
        group.evals.setdefault(ev_name, {})[name] = summarize(vals)  # type: ignore[assignment]


def _task_directions(groups: list[Group], notes: list[str]) -> dict[str, str]:
    """One direction per metric per task; conflicts and missing declarations become notes."""
    out: dict[str, str] = {}
    for g in groups:
        for name, d in g.directions.items():
            if d not in ("higher", "lower"):
                continue
            if name in out and out[name] != d:
                notes.append(f"[{g.task}] metric {name!r} declared both {out[name]!r} and {d!r}; "
                             f"using {out[name]!r}")
            out.setdefault(name, d)
    for g in groups:
        for name in g.metrics:
            if name not in out:
                known = direction_of(name)
                out[name] = known or "higher"
                if known is None:
                    notes.append(f"[{g.task}] metric {name!r} has no declared direction (task YAML) and is not in "
                                 f"the metric registry (peftlab.evaluation.metrics); assuming 'higher'-is-better")
    return out


def _primary(results: list[dict]) -> str | None:
    """Most common primary metric among a task's ok runs, else among all its runs.

    Why a vote: experiments normally agree, and a single odd run should not flip what the
    whole task table is ranked by.
    """
    for pool in ([r for r in results if r.get("status") == OK], results):
        counts = Counter(r.get("primary_metric") for r in pool if r.get("primary_metric"))
        if counts:
            return str(counts.most_common(1)[0][0])
    return None


def aggregate(results: Iterable[dict]) -> Aggregate:
    """Group result dicts by configuration and compute per-seed statistics.

    Why group on model too: the same label on two base models is two different experiments,
    and averaging them as "seeds" would hide the model effect.
    """
    notes: list[str] = []
    clean: list[dict] = []
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            notes.append(f"result #{i} is not a dict; ignored")
            continue
        clean.append(r)
    groups: dict[tuple, Group] = {}
    ok_runs: dict[tuple, list[dict]] = defaultdict(list)
    failures, running = [], []
    for r in clean:
        task = str(r.get("task") or "?")
        model = r.get("model")
        key = (task, model, label_of(r), grid_key(r))
        g = groups.setdefault(key, Group(task, model, key[2], r.get("method"), key[3]))
        status = str(r.get("status") or "?")
        g.status_counts[status] += 1
        if status == OK:
            ok_runs[key].append(r)
        elif status == "running":
            running.append(_run_summary(r))
        else:
            failures.append(_run_summary(r))
    for key, g in groups.items():
        g.runs = _dedupe_seeds(ok_runs.get(key, []), notes, f"{g.name} [{g.task}]")
        _collect(g, notes)
    tasks = sorted({g.task for g in groups.values()})
    directions = {t: _task_directions([g for g in groups.values() if g.task == t], notes)
                  for t in tasks}
    primary = {t: _primary([r for r in clean if str(r.get("task") or "?") == t]) for t in tasks}
    ordered = _order_groups(list(groups.values()), primary, directions)
    failures.sort(key=lambda f: (f["task"], f["label"], str(f["seed"])))
    return Aggregate(ordered, failures, running, tasks, primary, directions, notes, clean)


def _grid_sort_key(grid: GridKey) -> tuple:
    return tuple((k, (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v))) for k, v in grid)


def _order_groups(groups: list[Group], primary: dict[str, str | None],
                  directions: dict[str, dict[str, str]]) -> list[Group]:
    """Task, then labels best-first by their best configuration, then grid order within a label.

    Why: readers scan a table top-down for the winner, but the grid of one method should stay
    together and in numeric order so trends over r or lr are readable.
    """
    best_of_label: dict[tuple, float] = {}
    for g in groups:
        metric = primary.get(g.task)
        d = directions.get(g.task, {}).get(metric or "", "higher")
        m = g.mean("metric", metric) if metric else None
        score = math.inf if m is None else (-m if d == "higher" else m)
        lk = (g.task, g.model, g.label)
        best_of_label[lk] = min(best_of_label.get(lk, math.inf), score)
    return sorted(groups, key=lambda g: (g.task, str(g.model), best_of_label[(g.task, g.model, g.label)],
                                         g.label, _grid_sort_key(g.grid)))


# ---------------------------------------------------------------------------------------------
# Comparisons
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """Paired comparison a − b over shared seeds; the verdict speaks for ``a``."""

    metric: str
    direction: str | None
    n: int
    seeds: tuple
    mean_diff: float | None
    ci_low: float | None
    ci_high: float | None

    @property
    def excludes_zero(self) -> bool:
        """True when the CI lies strictly on one side of 0 (a significant difference)."""
        if self.ci_low is None or self.ci_high is None:
            return False
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def verdict(self) -> str:
        """"better"/"worse" for a vs b, "n.s." when the CI covers 0, "n<2" without an interval."""
        if self.ci_low is None or self.mean_diff is None:
            return "n<2"
        if not self.excludes_zero or self.direction is None:
            return "n.s."
        positive = self.ci_low > 0
        return "better" if positive == (self.direction == "higher") else "worse"


def paired_compare(a: Group, b: Group, name: str, direction: str | None = None,
                   kind: str = "metric", confidence: float = CONFIDENCE) -> Paired:
    """Paired t interval of per-seed differences a − b on the seeds both configurations ran.

    Pairing on seeds removes the seed-to-seed variance (data order, init) that both methods
    share, which is what makes small seed counts usable at all.
    """
    if direction is None:
        direction = (a.directions.get(name) or b.directions.get(name)) if kind == "metric" \
            else cost_direction(name)
    va = a.per_seed.get((kind, name), {})
    vb = b.per_seed.get((kind, name), {})
    shared = sorted(set(va) & set(vb), key=lambda s: (str(type(s)), s))
    diffs = [va[s] - vb[s] for s in shared]
    st = summarize(diffs, confidence)
    if st is None:
        return Paired(name, direction, 0, (), None, None, None)
    return Paired(name, direction, st.n, tuple(shared), st.mean, st.ci_low, st.ci_high)


def rank_groups(groups: Iterable[Group], metric: str, direction: str | None) -> list[Group]:
    """Groups that have the metric, best mean first."""
    have = [g for g in groups if g.mean("metric", metric) is not None]
    sign = -1.0 if direction == "higher" else 1.0
    return sorted(have, key=lambda g: sign * g.mean("metric", metric))  # type: ignore[operator]


def best_per_label(groups: Iterable[Group], metric: str, direction: str | None) -> dict[str, Group]:
    """Best configuration of each label (what a method can reach after tuning its grid)."""
    out: dict[str, Group] = {}
    for g in rank_groups(groups, metric, direction):
        out.setdefault(g.label, g)
    return out


@dataclass(frozen=True)
class Winner:
    """Best configuration of a task and how it fares against the best other method."""

    task: str
    metric: str
    direction: str | None
    best: Group
    runner_up: Group | None
    paired: Paired | None

    @property
    def significant(self) -> bool:
        return self.paired is not None and self.paired.verdict == "better"


def winners(agg: Aggregate) -> list[Winner]:
    """Per task: the best mean primary metric, with a paired test against the runner-up method.

    The runner-up is the best configuration of a *different* label; comparing lora r=8 against
    lora r=16 would answer a tuning question, not a method question.
    """
    out = []
    for task in agg.tasks:
        metric = agg.primary.get(task)
        if not metric:
            continue
        d = agg.direction(task, metric)
        ranked = list(best_per_label(agg.groups_for(task, with_data=True), metric, d).values())
        if not ranked:
            continue
        best = ranked[0]
        runner = ranked[1] if len(ranked) > 1 else None
        paired = paired_compare(best, runner, metric, d) if runner else None
        out.append(Winner(task, metric, d, best, runner, paired))
    return out
