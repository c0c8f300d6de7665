"""Turn raw result dicts into per-configuration statistics over seeds *and* test examples.

Every number the report shows is the mean over the seeds of one configuration (task, model,
label, grid coordinates) with an interval from :func:`peftlab.report.stats.estimate`: when the runs
kept per-example scores (``<run_dir>/examples.jsonl``), a two-level interval over seeds x examples,
clipped to the metric's range; otherwise, for older runs, an interval over the per-seed values only,
labelled "seeds only (no per-example scores)". A configuration of method ``base`` is deterministic:
it is scored once and paired with every seed of the others (if it was run under several seeds, it is
treated as deterministic when its per-example values are identical across them).

Claims that one method beats another are paired comparisons (:func:`stats.compare_to_best`, Holm
over the family of comparisons with the winner) on the shared seeds and examples, with the verdict
words "better", "worse", "tied", "not enough evidence". Only ``status == "ok"`` runs feed the
numbers; failed/diverged/cancelled runs are counted and listed so a method that "wins" because its
bad seeds crashed is visible as such. Degenerate runs (constant predictions, identical to base, a
loss that never fell) are flagged via :func:`stats.degenerate_reasons`, not silently ranked.

Besides the numbers, a group carries what a reader needs to act on them: the resolved configuration of
its runs (:func:`run_config`, flat ``{"train.lr": 0.0005, ...}``), the sample outputs of its runs keyed
by example id (``samples.jsonl``), and its per-example scores, from which :func:`example_view` says which
examples each method gets right that the others do not.

The machinery is numpy + scipy (through ``stats``); nothing here hand-rolls a distribution.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import stats as _sps

from peftlab.evaluation.metrics import direction_of
from peftlab.formatting import fmt_value

from . import stats as st

# ---------------------------------------------------------------------------------------------
# Summary statistics
# ---------------------------------------------------------------------------------------------

CONFIDENCE = 0.95
SEEDS_ONLY = "seeds only (no per-example scores)"
#: Prefix of the data keys of what a run kept outside its task (result.json `retention`): forgetting, retention tasks.
RETENTION = "retention:"


@dataclass(frozen=True)
class Stats:
    """A configuration's number: mean over seeds, its interval and the sample size behind it.

    ``n`` is the number of seeds (1 for a deterministic run), ``n_examples`` the number of test
    examples behind each seed's value (None: the interval uses the per-seed values only, "seeds
    only"). ``ci_low``/``ci_high`` are None when no interval can be measured (one value, seeds only).
    ``estimate`` is the full :class:`stats.Estimate` when per-example scores were used.
    """

    n: int
    mean: float
    std: float | None
    ci_low: float | None
    ci_high: float | None
    values: tuple[float, ...] = ()
    n_examples: int | None = None
    deterministic: bool = False
    estimate: st.Estimate | None = None

    @property
    def half_width(self) -> float | None:
        """Half the interval's width (the ``±`` number when the interval is symmetric)."""
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2.0

    @property
    def symmetric(self) -> bool:
        """False when the interval was clipped to the metric's range (then show [lo, hi], not ±)."""
        if self.ci_low is None or self.ci_high is None:
            return True
        up, down = self.ci_high - self.mean, self.mean - self.ci_low
        return math.isclose(up, down, rel_tol=1e-6, abs_tol=1e-12 * max(1.0, abs(self.mean)))

    @property
    def per_example(self) -> bool:
        return self.n_examples is not None

    @property
    def sample_size(self) -> str:
        """'3 seeds × 200 examples', 'deterministic × 200 examples' or '3 seeds only (no per-example scores)'."""
        seeds = "deterministic" if self.deterministic else f"{self.n} seed{'s' * (self.n != 1)}"
        if self.n_examples is None:
            return f"{seeds}, {SEEDS_ONLY}"
        return f"{seeds} × {self.n_examples} examples"

    @property
    def short_size(self) -> str:
        """Compact sample size for table cells: '3×200', 'det.×200', '3 seeds only'."""
        seeds = "det." if self.deterministic else str(self.n)
        if self.n_examples is None:
            return "det., seeds only" if self.deterministic else f"{self.n} seed{'s' * (self.n != 1)} only"
        return f"{seeds}×{self.n_examples}"


def summarize(values: Sequence[float], confidence: float = CONFIDENCE,
              metric_range: tuple[float, float] | None = None, deterministic: bool = False) -> Stats | None:
    """Seeds only: mean, std (ddof=1) and a t interval over the per-seed values (scipy), clipped to
    ``metric_range``; None for no values, no interval for a single value (or a deterministic run)."""
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return None
    mean = math.fsum(vals) / n
    if n == 1 or deterministic:
        return Stats(1 if deterministic else n, mean, None, None, None, tuple(vals), deterministic=deterministic)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1))
    half = float(_sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    lo, hi = mean - half, mean + half
    if metric_range is not None:
        lo, hi = min(max(lo, metric_range[0]), metric_range[1]), max(min(hi, metric_range[1]), metric_range[0])
    return Stats(n, mean, std, lo, hi, tuple(vals))


def from_estimate(e: st.Estimate) -> Stats:
    """Stats of a per-example :class:`stats.Estimate` (two-level interval, clipped to the metric range)."""
    per_seed = tuple(e.per_seed)
    std = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else None
    return Stats(e.n_seeds, e.value, std, e.lo, e.hi, per_seed, n_examples=e.n_examples,
                 deterministic=e.deterministic, estimate=e)


# ---------------------------------------------------------------------------------------------
# Per-example scores: statistics, ranges, reading examples.jsonl
# ---------------------------------------------------------------------------------------------

_FACTORIES = {"f1", "precision", "recall"}
_BOUNDED_TOKENS = {"accuracy", "acc", "em", "exact", "match", "f1", "pass", "precision", "recall", "rouge",
                   "rougel", "jaccard", "bleu", "correct", "rate"}


def statistic_for(name: str | None) -> st.Statistic | None:
    """The stats.py statistic a result names in ``per_example`` ("mean", "f1", "perplexity", "ratio", ...);
    None when stats.py does not know it."""
    if not name:
        return None
    named = getattr(st, "named_statistic", None)
    if callable(named):
        try:
            return named(name)
        except ValueError:
            return None
    if name.startswith("_") or name not in getattr(st, "__all__", ()):
        return None
    obj = getattr(st, name, None)
    if not callable(obj) or isinstance(obj, type):
        return None
    return obj() if name in _FACTORIES else obj


def metric_range(metric: str, statistic: str | None, values: Iterable[float] = ()) -> tuple[float, float] | None:
    """The range a metric cannot leave: (0, 100) for F1/precision/recall, [1, inf) for perplexity,
    (0, 1) or (0, 100) for accuracy-like means (whichever the values live on); None if unknown."""
    name = metric.lower()
    if statistic in _FACTORIES:
        return (0.0, 100.0)
    if statistic == "perplexity" or "perplexity" in name:
        return (1.0, math.inf)
    if statistic == "ratio":  # loss = nll / tokens, bits per byte: never negative
        return (0.0, math.inf)
    tokens = set(name.replace("@", "_").replace("-", "_").replace(".", "_").split("_"))
    if tokens & _BOUNDED_TOKENS or name.startswith(("pass", "rouge")):
        vals = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(float(v))]
        if vals and min(vals) >= 0:
            if max(vals) <= 1:
                return (0.0, 1.0)
            if max(vals) <= 100:
                return (0.0, 100.0)
    return None


ExampleScores = dict[str, dict[Any, dict[str, Any]]]  # {evaluation: {example id: {metric: value}}}
ExampleLoader = Callable[[str], ExampleScores]
SampleLoader = Callable[[str], list]  # run_id -> the lines of its samples.jsonl
ConfigLoader = Callable[[str], Any]  # run_id -> its config.yaml as a mapping (None when absent)


@dataclass(frozen=True)
class MetricData:
    """Per-example data of one (evaluation, metric) of a configuration, ready for stats.py."""

    table: st.ScoreTable
    statistic: st.Statistic
    statistic_name: str
    metric_range: tuple[float, float] | None
    evaluation: str


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
    retention: dict[str, dict[str, Stats]] = field(default_factory=dict)  # "forgetting" / task -> metric -> stats
    per_seed: dict[tuple[str, str], dict[Any, float]] = field(default_factory=dict)
    directions: dict[str, str] = field(default_factory=dict)
    memory_kinds: set[str] = field(default_factory=set)
    data: dict[tuple[str, str], MetricData] = field(default_factory=dict)  # ("metric"|evaluation, name)
    examples: dict[Any, ExampleScores] = field(default_factory=dict)  # seed -> per-example scores
    degenerate: list[str] = field(default_factory=list)  # plain-words reasons (stats.degenerate_reasons)
    config: dict[str, Any] = field(default_factory=dict)  # resolved configuration, flat (see run_config)
    samples: dict[Any, dict[str, dict]] = field(default_factory=dict)  # seed -> {example id: samples.jsonl line}

    @property
    def is_base(self) -> bool:
        """The base model (no fine-tuning): deterministic, scored once."""
        return self.method == "base" or (self.method is None and self.label == "base")

    @property
    def is_fixed(self) -> bool:
        """A model that no seed of peftlab's changes: base, or an adapter trained elsewhere and only evaluated
        here (`peftlab evaluate DIR --task`, results with an `external` key). Its one run is deterministic and
        pairs with every seed of the others."""
        return self.is_base or (bool(self.runs) and all(r.get("external") for r in self.runs))

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
# Configurations and errors of runs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Varies:
    """A configuration field whose value is not the same in every run (seed) of one configuration."""

    values: tuple[Any, ...]

    def __str__(self) -> str:
        return " | ".join(config_text(v) for v in self.values) + " (differs between seeds)"


def config_text(value: Any) -> str:
    """A configuration value as the report prints it: floats shortest (``0.0005``), lists joined, None as null."""
    if isinstance(value, Varies):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(config_text(v) for v in value) + "]"
    return fmt_value(value)


def _flatten(out: dict[str, Any], prefix: str, value: Any) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(out, f"{prefix}.{k}", v)
    else:
        out[prefix] = value


#: config.yaml sections and keys that are not part of a configuration: the seed varies within one,
#: the grid is spelled out by the method and train fields, the store path is where, not what.
_CONFIG_SKIP = {"seed", "grid", "output_dir", "experiment", "method", "train"}


def run_config(result: dict, config: Mapping | None = None) -> dict[str, Any]:
    """The resolved configuration of one run, flat: ``{"model": ..., "method.r": 8, "train.lr": 0.0005, ...}``.

    From result.json: experiment, model, method and its resolved arguments (``method.*``), task, the train
    config (``train.*``, left out for the base model, which does not train), the decoding strategies
    evaluated and where each data split came from (``data.<split>.*``). ``config``, the run's
    config.yaml when the store has it, adds the task's settings (limits, max_length, args), the model's
    loading options and the evaluation settings. The seed is left out: it is what varies between the runs
    of one configuration.
    """
    out: dict[str, Any] = {"experiment": result.get("experiment"), "model": result.get("model"),
                           "method": result.get("method")}
    args = result.get("method_args")
    _flatten(out, "method", args if isinstance(args, Mapping) else {})
    out["task"] = result.get("task")
    if isinstance(config, Mapping):
        for section, body in config.items():
            if section in _CONFIG_SKIP or body is None:
                continue
            if section == "eval" and isinstance(body, Mapping):
                for k, v in body.items():
                    if k == "decoding" and isinstance(v, list):
                        for d in v:
                            if isinstance(d, Mapping):
                                _flatten(out, f"eval.{d.get('name')}", {k2: v2 for k2, v2 in d.items() if k2 != "name"})
                    else:
                        _flatten(out, f"eval.{k}", v)
            elif isinstance(body, Mapping):
                _flatten(out, section, {k: v for k, v in body.items() if k != "name"})
            else:
                out[str(section)] = body
    if str(result.get("method")) != "base":
        train = result.get("train")
        _flatten(out, "train", train if isinstance(train, Mapping) else {})
    names = [str(e.get("name")) for e in result.get("evaluations") or [] if isinstance(e, Mapping) and e.get("name")]
    if names:
        out["evaluations"] = names
    for split, info in (result.get("data") or {}).items():
        if isinstance(info, Mapping):
            for k in ("count", "source"):  # the origin is in the report's provenance
                if info.get(k) is not None:
                    out[f"data.{split}.{k}"] = info[k]
            if info.get("fingerprint"):
                out[f"data.{split}.fingerprint"] = str(info["fingerprint"])[:12]
    return out


def merge_configs(configs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One configuration from the runs of a group: a field's value, or :class:`Varies` where runs differ."""
    out: dict[str, Any] = {}
    keys: list[str] = []
    for c in configs:
        keys += [k for k in c if k not in keys]
    for k in keys:
        values: list[Any] = []
        for c in configs:
            v = c.get(k)
            if all(_freeze(v) != _freeze(x) for x in values):
                values.append(v)
        out[k] = values[0] if len(values) == 1 else Varies(tuple(values))
    return out


def error_line(error: Any) -> str:
    """What went wrong, in one line: the exception line after the last traceback of a recorded error
    (``RuntimeError: CUDA out of memory``), else the error's first non-empty line."""
    if isinstance(error, Mapping):
        error = error.get("message") or error.get("type") or str(error)
    lines = [line.rstrip() for line in str(error or "").splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        # frames and code are indented; the first unindented line after the last traceback is the exception
        tail = [line for line in lines[starts[-1] + 1:] if line.strip() and not line[0].isspace()]
        if tail:
            return tail[0]
    return next((line.strip() for line in lines if line.strip()), "")


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
    """The few fields the failed-runs list shows: ``message`` is the error's one line that says what
    went wrong (:func:`error_line`), ``error`` the whole recorded text (traceback included)."""
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
        "message": error_line(error),
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


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6)  # result.json may round its metrics a little


def _source(r: dict, ex: ExampleScores, metric: str, value: float) -> tuple[str, str] | None:
    """(score set, statistic name) whose per-example values reproduce a main metric of run ``r``.

    result.json says it (docs/contracts.md, "Per-example scores"): the top-level ``per_example``
    {metric: statistic} and ``per_example_source`` {metric: score set}; without a source, the
    evaluation entry that records the same value, or the only score set holding the metric.
    """
    top = r.get("per_example") if isinstance(r.get("per_example"), dict) else {}
    src = r.get("per_example_source") if isinstance(r.get("per_example_source"), dict) else {}
    stat = top.get(metric)
    if stat and src.get(metric) in ex:
        return str(src[metric]), str(stat)
    evals = [e for e in (r.get("evaluations") or []) if isinstance(e, dict)]
    for e in evals:
        name = str(e.get("name") or "eval")
        e_stat = (e.get("per_example") or {}).get(metric)
        e_src = (e.get("per_example_source") or {}).get(metric) or name
        v = _number((e.get("metrics") or {}).get(metric))
        if e_stat and e_src in ex and v is not None and _close(v, value):
            return str(e_src), str(e_stat)
    if stat:
        having = [name for name, by_id in ex.items() if any(metric in vals for vals in by_id.values())]
        if len(having) == 1:
            return having[0], str(stat)
    return None


def _build_data(group: Group, key: tuple[str, str], metric: str,
                per_run: dict[Any, tuple[str, str, float]], notes: list[str]) -> MetricData | None:
    """ScoreTable of one metric when every ok seed has per-example scores that reproduce its value."""
    where = f"{group.name} [{group.task}] {metric}" + ("" if key[0] == "metric" else f" [{key[0]}]")
    if not per_run or set(per_run) != {r.get("seed") for r in group.runs}:
        if per_run:
            notes.append(f"{where}: per-example scores missing for some seeds; interval over {SEEDS_ONLY}")
        return None
    stat_names = {s for _, s, _ in per_run.values()}
    if len(stat_names) != 1:
        notes.append(f"{where}: seeds name different statistics {sorted(stat_names)}; {SEEDS_ONLY}")
        return None
    stat_name = stat_names.pop()
    statistic = statistic_for(stat_name)
    if statistic is None:
        notes.append(f"{where}: unknown per-example statistic {stat_name!r} (not in report/stats.py); {SEEDS_ONLY}")
        return None
    scores: dict[Any, dict[Any, Any]] = {}
    for seed, (evaluation, _, _) in per_run.items():
        by_id = group.examples.get(seed, {}).get(evaluation, {})
        scores[seed] = {i: vals[metric] for i, vals in by_id.items() if metric in vals}
    try:
        table = st.ScoreTable.from_mapping(scores)
        recomputed = np.asarray(statistic(table.values), dtype=float)
    except (ValueError, TypeError, IndexError) as exc:
        notes.append(f"{where}: per-example scores unusable ({exc}); {SEEDS_ONLY}")
        return None
    for s, seed in enumerate(table.seeds):
        recorded = per_run[seed][2]
        if table.dropped_ids == 0 and not _close(float(recomputed[s]), recorded):
            notes.append(f"{where}: seed {seed}: {stat_name} of the per-example scores is {recomputed[s]:.6g}, "
                         f"the recorded metric {recorded:.6g}; {SEEDS_ONLY}")
            return None
    if group.is_fixed:
        if table.n_seeds == 1 or np.all(table.values == table.values[:1]):
            table = st.ScoreTable(table.seeds[:1], table.ids, table.values[:1], deterministic=True,
                                  dropped_ids=table.dropped_ids)
        else:
            notes.append(f"{where}: {group.label} differs between seeds on some examples; treated as seed-dependent")
    values = table.values[..., 0].ravel()
    rng = metric_range(metric, stat_name, values if stat_name == "mean" else [v for _, _, v in per_run.values()])
    return MetricData(table, statistic, stat_name, rng, next(iter(per_run.values()))[0])


def _stats(group: Group, key: tuple[str, str], metric: str, by_seed: dict[Any, float]) -> Stats | None:
    data = group.data.get(key)
    if data is not None:
        e = st.estimate(data.table, statistic=data.statistic, metric_range=data.metric_range,
                        alpha=1 - CONFIDENCE, n_resamples=1000)
        return from_estimate(e)
    vals = list(by_seed.values())
    det = group.is_fixed and len(vals) >= 1 and all(v == vals[0] for v in vals)
    return summarize(vals, metric_range=metric_range(metric, None, vals), deterministic=det)


def _collect(group: Group, notes: list[str], loader: ExampleLoader | None = None) -> None:
    """Fill a group's stats from its ok runs (metrics, costs, per-decoding evaluations)."""
    metric_vals: dict[str, dict[Any, float]] = defaultdict(dict)
    cost_vals: dict[str, dict[Any, float]] = defaultdict(dict)
    eval_vals: dict[tuple[str, str], dict[Any, float]] = defaultdict(dict)
    sources: dict[tuple[str, str], dict[Any, tuple[str, str, float]]] = defaultdict(dict)
    for r in group.runs:
        seed = r.get("seed")
        ex: ExampleScores = {}
        if loader is not None and r.get("run_id"):
            try:
                ex = loader(str(r["run_id"])) or {}
            except (OSError, ValueError) as exc:
                notes.append(f"{group.name} [{group.task}]: per-example scores of {r.get('run_id')} unreadable ({exc})")
        if ex:
            group.examples[seed] = ex
        for name, value in (r.get("metrics") or {}).items():
            v = _number(value)
            if v is None:
                notes.append(f"{group.name} [{group.task}]: metric {name!r} of {r.get('run_id')} "
                             f"is not a finite number ({value!r}); left out")
                continue
            metric_vals[name][seed] = v
            src = _source(r, ex, name, v) if ex else None
            if src is not None:
                sources[("metric", name)][seed] = (src[0], src[1], v)
        for name, d in (r.get("metric_directions") or {}).items():
            group.directions.setdefault(name, d)
        cost = r.get("cost") or {}
        for name, value in cost.items():
            v = _number(value)
            if v is not None:
                cost_vals[name][seed] = v
        if cost.get("memory_kind"):
            group.memory_kinds.add(str(cost["memory_kind"]))
        retention = [{**entry, "name": RETENTION + str(name)} for name, entry in (r.get("retention") or {}).items()
                     if isinstance(entry, dict)]
        for ev in [*(r.get("evaluations") or []), *retention]:
            if not isinstance(ev, dict):
                continue
            ev_name = str(ev.get("name") or "eval")
            per_example = ev.get("per_example") or {}
            per_source = ev.get("per_example_source") or {}
            for name, value in (ev.get("metrics") or {}).items():
                v = _number(value)
                if v is not None:
                    eval_vals[(ev_name, name)][seed] = v
                    score_set = str(per_source.get(name) or ev_name)
                    if ex and per_example.get(name) and score_set in ex:
                        sources[(ev_name, name)][seed] = (score_set, str(per_example[name]), v)
            tps = _number((ev.get("throughput") or {}).get("tokens_per_s"))
            if tps is not None:
                eval_vals[(ev_name, "tokens_per_s")][seed] = tps
    for key, per_run in sources.items():
        data = _build_data(group, key, key[1], per_run, notes)
        if data is not None:
            group.data[key] = data
    for name, by_seed in metric_vals.items():
        group.metrics[name] = _stats(group, ("metric", name), name, by_seed)  # type: ignore[assignment]
        group.per_seed[("metric", name)] = by_seed
    for name, by_seed in cost_vals.items():
        group.costs[name] = summarize(list(by_seed.values()))  # type: ignore[assignment]
        group.per_seed[("cost", name)] = by_seed
    for (ev_name, name), by_seed in eval_vals.items():
        stats = _stats(group, (ev_name, name), name, by_seed)
        if ev_name.startswith(RETENTION):
            group.retention.setdefault(ev_name[len(RETENTION):], {})[name] = stats  # type: ignore[assignment]
        else:
            group.evals.setdefault(ev_name, {})[name] = stats  # type: ignore[assignment]


def _hashable(v: Any) -> Any:
    """Lists become text, so a flat {key: value} mapping is never mistaken for {seed: values}."""
    return json.dumps(v) if isinstance(v, (list, tuple)) else v


def _flag_degenerate(groups: list[Group], notes: list[str]) -> None:
    """stats.degenerate_reasons per configuration: constant predictions, identical to base, loss never fell."""
    bases = {(g.task, g.model): g for g in groups if g.is_base and g.runs}
    for g in groups:
        if not g.runs or g.is_base:
            continue
        reasons: list[str] = []
        losses = {}
        for r in g.runs:
            pts = (r.get("curves") or {}).get("train_loss")
            if isinstance(pts, list):
                vals = [p[1] if isinstance(p, (list, tuple)) and len(p) >= 2 else
                        p.get("value") if isinstance(p, dict) else None for p in pts]
                vals = [float(v) for v in vals if isinstance(v, (int, float)) and not isinstance(v, bool)]
                if vals:
                    losses[r.get("seed")] = vals
        # constant predictions: the prediction column of a [pred, gold] metric (f1/precision/recall)
        preds: dict[Any, dict[Any, Any]] = {}
        for data in g.data.values():
            if data.statistic_name in _FACTORIES:
                for s, seed in enumerate(data.table.seeds):
                    preds[seed] = dict(zip(data.table.ids, data.table.values[s, :, 0].tolist()))
                break
        if preds or losses:
            reasons += st.degenerate_reasons(preds, losses=losses or None)
        base = bases.get((g.task, g.model))
        if base is not None:
            reasons += _identical_to_base(g, base)
        if reasons:
            g.degenerate = _condense(reasons)
            notes.append(f"[{g.task}] {g.name}: degenerate — " + "; ".join(reasons))


def _condense(reasons: list[str]) -> list[str]:
    """'seed 0: X', 'seed 1: X' → 'seeds 0, 1: X' (same reason on several seeds said once)."""
    by_text: dict[str, list[str]] = {}
    for r in reasons:
        head, sep, rest = r.partition(": ")
        if sep and head.startswith("seed "):
            by_text.setdefault(rest, []).append(head[len("seed "):])
        else:
            by_text.setdefault(r, [])
    return [(f"seed{'s' * (len(seeds) > 1)} {', '.join(seeds)}: {text}" if seeds else text)
            for text, seeds in by_text.items()]


def _identical_to_base(g: Group, base: Group) -> list[str]:
    def flat(ex: ExampleScores) -> dict[Any, Any]:
        return {(e, i, m): _hashable(v) for e, by_id in ex.items() for i, vals in by_id.items() for m, v in vals.items()}

    if g.examples and base.examples:
        base_runs = {s: flat(ex) for s, ex in base.examples.items()}
        det = len(base_runs) == 1 or all(b == next(iter(base_runs.values())) for b in base_runs.values())
        preds = {s: flat(ex) for s, ex in g.examples.items()}
        base_pred: Any = next(iter(base_runs.values())) if det else base_runs
        found = [x for x in st.degenerate_reasons(preds, base_pred) if "identical to base" in x]
        return [x.replace("every example", "every per-example score") for x in found]
    base_metrics = {r.get("seed"): r.get("metrics") or {} for r in base.runs}
    out = []
    for r in g.runs:
        m = r.get("metrics") or {}
        b = base_metrics.get(r.get("seed")) or (next(iter(base_metrics.values())) if len(base_metrics) == 1 else None)
        if m and b and set(m) == set(b) and all(_number(m[k]) is not None and m[k] == b[k] for k in m):
            out.append(f"seed {r.get('seed')}: identical to base on all {len(m)} recorded metrics")
    return out


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


def _as_loader(source: Callable[[str], Any] | Mapping[str, Any] | None) -> Callable[[str], Any] | None:
    """A callable ``run_id -> value`` from a callable or a mapping (None stays None)."""
    if source is None or callable(source):
        return source
    table = dict(source)
    return lambda run_id: table.get(run_id)


def _load(loader: Callable[[str], Any] | None, run_id: Any, what: str, notes: list[str]) -> Any:
    """One run's file through a loader; an unreadable one becomes a note, never an exception."""
    if loader is None or not run_id:
        return None
    try:
        return loader(str(run_id))
    except (OSError, ValueError) as exc:
        notes.append(f"{what} of {run_id} unreadable ({exc})")
        return None


def aggregate(results: Iterable[dict], examples: ExampleLoader | Mapping[str, ExampleScores] | None = None,
              samples: SampleLoader | Mapping[str, list] | None = None,
              configs: ConfigLoader | Mapping[str, Any] | None = None) -> Aggregate:
    """Group result dicts by configuration and compute their statistics.

    ``examples``: per-example scores of a run, ``run_id -> {evaluation: {id: {metric: value}}}`` (a
    callable such as ``Store.read_examples`` or a mapping); without them every interval is
    over the per-seed values only ("seeds only"). ``samples``: ``run_id -> samples.jsonl lines`` (the
    outputs the report shows side by side); ``configs``: ``run_id -> config.yaml`` (adds the task's and
    the evaluation's settings to each configuration). Both optional, callables or mappings.

    Why group on model too: the same label on two base models is two different experiments,
    and averaging them as "seeds" would hide the model effect.
    """
    notes: list[str] = []
    clean: list[dict] = []
    loader = _as_loader(examples)
    sample_loader, config_loader = _as_loader(samples), _as_loader(configs)
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            notes.append(f"result #{i} is not a dict; ignored")
            continue
        clean.append(r)
    groups: dict[tuple, Group] = {}
    ok_runs: dict[tuple, list[dict]] = defaultdict(list)
    every_run: dict[tuple, list[dict]] = defaultdict(list)
    failures, running = [], []
    for r in clean:
        task = str(r.get("task") or "?")
        model = r.get("model")
        key = (task, model, label_of(r), grid_key(r))
        g = groups.setdefault(key, Group(task, model, key[2], r.get("method"), key[3]))
        status = str(r.get("status") or "?")
        g.status_counts[status] += 1
        every_run[key].append(r)
        if status == OK:
            ok_runs[key].append(r)
        elif status == "running":
            running.append(_run_summary(r))
        else:
            failures.append(_run_summary(r))
    for key, g in groups.items():
        g.runs = _dedupe_seeds(ok_runs.get(key, []), notes, f"{g.name} [{g.task}]")
        _collect(g, notes, loader)
        g.config = merge_configs([run_config(r, _load(config_loader, r.get("run_id"), "config.yaml", notes))
                                  for r in g.runs or every_run[key]])  # a configuration that only failed: its runs
    _flag_degenerate(list(groups.values()), notes)
    tasks = sorted({g.task for g in groups.values()})
    directions = {t: _task_directions([g for g in groups.values() if g.task == t], notes)
                  for t in tasks}
    primary = {t: _primary([r for r in clean if str(r.get("task") or "?") == t]) for t in tasks}
    if sample_loader is not None:
        for g in groups.values():
            _attach_samples(g, primary.get(g.task), sample_loader, notes)
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
class Versus:
    """The winner against one other method's best configuration (``row.comparison`` is best − other)."""

    other: Group
    row: st.FamilyRow

    @property
    def comparison(self) -> st.Comparison:
        return self.row.comparison

    @property
    def verdict(self) -> str:
        """What the winner is relative to ``other`` after Holm: better / worse / tied / not enough evidence."""
        return self.row.verdict

    @property
    def p_adjusted(self) -> float:
        return self.row.p_adjusted


@dataclass(frozen=True)
class Winner:
    """Best configuration of a task on its primary metric and its paired comparisons with every other method.

    ``per_example``: the comparisons pair seeds x test examples; False: the per-seed values only
    ("seeds only"), used when some configuration has no per-example scores. ``others`` is ordered
    by closeness (the runner-up first); ``unpaired`` lists methods that share no seed or example with
    the winner and so could not be compared.
    """

    task: str
    metric: str
    direction: str | None
    best: Group
    others: tuple[Versus, ...]
    per_example: bool
    unpaired: tuple[Group, ...] = ()

    @property
    def runner_up(self) -> Group | None:
        return self.others[0].other if self.others else None

    @property
    def paired(self) -> Versus | None:
        """The comparison with the runner-up."""
        return self.others[0] if self.others else None

    @property
    def resolved(self) -> bool:
        """The winner is "better" than every other method (Holm-adjusted)."""
        return bool(self.others) and all(v.verdict == "better" for v in self.others)


def _seed_table(g: Group, metric: str, seeds: list[Any]) -> st.ScoreTable:
    """Seeds only: the per-seed values as one row whose "examples" are the seeds (a deterministic run
    is repeated on every seed of the family), so compare() pairs them by seed."""
    by_seed = g.per_seed.get(("metric", metric), {})
    stats = g.metrics.get(metric)
    if stats is not None and stats.deterministic:
        value = next(iter(by_seed.values()))
        by_seed = {s: value for s in seeds}
    return st.ScoreTable.from_mapping({"seeds": {s: v for s, v in by_seed.items()}})


def _pairable(a: st.ScoreTable, b: st.ScoreTable) -> bool:
    if not set(a.ids) & set(b.ids):
        return False
    return a.deterministic or b.deterministic or bool(set(a.seeds) & set(b.seeds))


def winners(agg: Aggregate, n_resamples: int = 1000, n_permutations: int = 2000) -> list[Winner]:
    """Per task: the best configuration on the primary metric against each other method's best one.

    Paired comparisons (stats.compare_to_best) on the shared seeds and examples, with Holm's
    correction over the family; without per-example scores for every configuration involved, the
    per-seed values are paired instead ("seeds only"). Comparing lora r=8 against lora r=16 would
    answer a tuning question, not a method question, so each label contributes its best configuration.
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
        if len(ranked) == 1:
            out.append(Winner(task, metric, d, best, (), best.metrics[metric].per_example))
            continue
        datas = [g.data.get(("metric", metric)) for g in ranked]
        per_example = (all(x is not None for x in datas)
                       and len({x.statistic_name for x in datas}) == 1)  # type: ignore[union-attr]
        if per_example:
            tables = {g.name: x.table for g, x in zip(ranked, datas)}  # type: ignore[union-attr]
            statistic, rng = datas[0].statistic, datas[0].metric_range  # type: ignore[union-attr]
        else:
            seeds = sorted({s for g in ranked for s in g.per_seed.get(("metric", metric), {})},
                           key=lambda s: (str(type(s)), s))
            tables = {g.name: _seed_table(g, metric, seeds) for g in ranked}
            statistic = st.mean
            rng = metric_range(metric, None, [v for g in ranked for v in g.per_seed[("metric", metric)].values()])
        family = {best.name: tables[best.name]}
        unpaired = []
        for g in ranked[1:]:
            if _pairable(tables[best.name], tables[g.name]):
                family[g.name] = tables[g.name]
            else:
                unpaired.append(g)
        if len(family) == 1:
            out.append(Winner(task, metric, d, best, (), per_example, tuple(unpaired)))
            continue
        try:
            bc = st.compare_to_best(family, higher_is_better=(d != "lower"), statistic=statistic, metric_range=rng,
                                    alpha=1 - CONFIDENCE, n_resamples=n_resamples, n_permutations=n_permutations)
        except ValueError as exc:  # e.g. score sets that cannot be paired: say so, never guess
            agg.notes.append(f"[{task}] {metric}: the methods could not be compared ({exc})")
            out.append(Winner(task, metric, d, best, (), per_example, tuple(ranked[1:])))
            continue
        by_name = {g.name: g for g in ranked}
        if bc.best != best.name:  # a tie on the point estimate: follow stats.py's choice
            best = by_name[bc.best]
        others = tuple(Versus(by_name[r.name], r) for r in bc.rows)
        others = tuple(sorted(others, key=lambda v: abs(v.comparison.difference)))
        out.append(Winner(task, metric, d, best, others, per_example, tuple(unpaired)))
    return out


def _num(x: float) -> str:
    """Three significant digits, no exponent for ordinary sizes."""
    if not math.isfinite(x):
        return str(x)
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.0f}"


def _signed(x: float) -> str:
    return ("+" if x > 0 else "") + _num(x)


def _interval(lo: float, hi: float, signed: bool = False) -> str:
    f = _signed if signed else _num
    return f"[{f(lo)}, {f(hi)}]"


def comparison_size(w: Winner, v: Versus) -> str:
    """'3 seeds × 200 examples', 'deterministic × 200 examples' or '3 seeds, seeds only' (the pairing's n)."""
    c = v.comparison
    if not w.per_example:
        return f"{c.n_examples} seed{'s' * (c.n_examples != 1)}, {SEEDS_ONLY}"
    return c.sample_size.replace(" x ", " × ")


def versus_text(w: Winner, v: Versus) -> str:
    """'Δ = +3.1 [+0.4, +5.8], Holm p = 0.012, 3 seeds × 200 examples' (the best minus the other)."""
    c = v.comparison
    return (f"Δ = {_signed(c.difference)} {_interval(c.lo, c.hi, True)}, Holm p = {v.p_adjusted:.2g}, "
            f"{comparison_size(w, v)}")


def value_text(stats: Stats) -> str:
    """'89.0 [85.1, 92.3]': the mean and its interval (just the mean without one)."""
    return _num(stats.mean) + (f" {_interval(stats.ci_low, stats.ci_high)}" if stats.ci_low is not None else "")


def signed_text(x: float) -> str:
    """'+3.1', '-0.25': a difference with its sign, three significant digits."""
    return _signed(x)


def how_sure(w: Winner) -> str:
    """A short paragraph in plain words: what is resolved for this task, what is not, what would resolve it."""
    stats = w.best.metrics[w.metric]
    value = value_text(stats)
    dir_words = {"higher": "higher is better", "lower": "lower is better"}.get(w.direction or "", "")
    parts = [f"{w.task}: {w.best.name} has the best {w.metric}{' (' + dir_words + ')' if dir_words else ''}: "
             f"{value} from {stats.sample_size}."]
    if not w.others:
        parts.append("There is no other method to compare it with." if not w.unpaired else "")
    resolved = [v for v in w.others if v.verdict != "not enough evidence"]
    open_ = [v for v in w.others if v.verdict == "not enough evidence"]
    if resolved:
        parts.append("Resolved: " + "; ".join(
            (f"{v.verdict} than {v.other.name}" if v.verdict in ("better", "worse") else f"tied with {v.other.name}")
            + f" ({versus_text(w, v)})" for v in resolved) + ".")
    for v in open_:
        c = v.comparison
        if c.degenerate:
            parts.append(f"Not resolved: {w.best.name} vs {v.other.name} ({versus_text(w, v)}) cannot be judged: "
                         + "; ".join(c.degenerate) + ".")
            continue
        if w.per_example:
            advice = v.row.advice
            advice = advice[len("unresolved: "):] if advice.startswith("unresolved: ") else advice
        else:  # the pairing's "examples" are the seeds here
            more = c.more_examples
            advice = (f"roughly {more} more seeds would give 80% power to confirm a difference of "
                      f"{_signed(c.difference)}" if more is not None else "")
        text = (f"Not resolved: {w.best.name} vs {v.other.name} ({versus_text(w, v)}); at this size only a "
                f"difference of about {_num(c.mde)} would be detected reliably")
        parts.append(text + (f"; {advice}." if advice else "."))
    for g in w.unpaired:
        parts.append(f"{g.name} shares no seed or example with {w.best.name}, so it was not compared.")
    if w.others and not w.per_example:
        parts.append(f"These comparisons pair the per-seed values only ({SEEDS_ONLY}): with few seeds they "
                     "can rarely resolve anything; per-example scores would let the test examples count too.")
    flagged = [g for g in [w.best, *(v.other for v in w.others)] if g.degenerate]
    for g in flagged:
        parts.append(f"Caution: {g.name} has degenerate runs ({'; '.join(g.degenerate)}).")
    return " ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# Samples and the per-example view
# ---------------------------------------------------------------------------------------------

_SAMPLE_ID_KEYS = ("id", "task_id")
_INPUT_KEYS = ("question", "prompt", "instruction", "input", "text", "context")
_GOLD_KEYS = ("answers", "answer", "reference", "label", "canonical_solution")


def _seed_order(seed: Any) -> tuple:
    return (str(type(seed)), seed if seed is not None else 0)


def samples_by_id(lines: Sequence[Any], ids: Sequence[Any] | None = None) -> dict[str, dict]:
    """A run's samples.jsonl lines keyed by the example id its examples.jsonl uses (as text).

    A line's own ``id`` (qa, math, instruct) or ``task_id`` (code) is its id, a repeat numbered ``#2``,
    ``#3``... as the tasks number repeated ids; a line without one (sentiment's ``index``) takes the id at
    its ``index`` (else its position) in ``ids``, the score set's example ids in test-record order.
    Lines that cannot be placed are left out.
    """
    out: dict[str, dict] = {}
    seen: dict[str, int] = {}
    for pos, line in enumerate(lines):
        if not isinstance(line, Mapping):
            continue
        own = next((line[k] for k in _SAMPLE_ID_KEYS if isinstance(line.get(k), (str, int))
                    and not isinstance(line.get(k), bool) and str(line[k]) != ""), None)
        if own is not None:
            base = str(own)
            seen[base] = seen.get(base, 0) + 1
            out[base if seen[base] == 1 else f"{base}#{seen[base]}"] = dict(line)
            continue
        idx = line.get("index", pos)
        if ids and isinstance(idx, int) and not isinstance(idx, bool) and 0 <= idx < len(ids):
            out[str(ids[idx])] = dict(line)
    return out


def _attach_samples(g: Group, primary: str | None, loader: SampleLoader, notes: list[str]) -> None:
    """Load each ok run's samples and key them by example id (ids from the primary metric's score set)."""
    data = g.data.get(("metric", primary)) if primary else None
    for r in g.runs:
        lines = _load(loader, r.get("run_id"), "samples.jsonl", notes)
        if not lines:
            continue
        seed = r.get("seed")
        scores = g.examples.get(seed, {})
        evaluation = data.evaluation if data is not None else next(iter(scores), None)
        ids = list(scores.get(evaluation) or {}) if evaluation is not None else []
        keyed = samples_by_id(list(lines), ids)
        if keyed:
            g.samples[seed] = keyed


def _label_word(sample: Mapping, value: Any) -> str:
    """A class index as its label word when the sample names the words (sentiment's ``logprob``)."""
    words = list(sample.get("logprob") or {}) if isinstance(sample.get("logprob"), Mapping) else []
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(words):
        return str(words[value])
    return "unreadable" if value is None else str(value)


def sample_input(sample: Mapping) -> str | None:
    """The test input a sample line shows (question, prompt, ...), if it has one."""
    for k in _INPUT_KEYS:
        if isinstance(sample.get(k), str) and sample[k].strip():
            return sample[k]
    return None


def sample_gold(sample: Mapping) -> str | None:
    """The reference answer(s) of a sample line, as text."""
    for k in _GOLD_KEYS:
        if k not in sample or sample[k] is None:
            continue
        v = sample[k]
        if k == "label":
            return _label_word(sample, v)
        if isinstance(v, list):
            return " | ".join(str(x) for x in dict.fromkeys(str(x) for x in v))  # SQuAD repeats answers
        return str(v)
    return None


def sample_output(sample: Mapping) -> tuple[str | None, int]:
    """(the first generated output, or the predicted label, and how many outputs the line holds)."""
    outs = sample.get("outputs")
    if isinstance(outs, list) and outs:
        return str(outs[0]), len(outs)
    if "prediction" in sample:
        return _label_word(sample, sample["prediction"]), 1
    return None, 0


def first_seed(g: Group) -> Any:
    """The seed whose samples a configuration shows (the lowest)."""
    return min(g.samples, key=_seed_order) if g.samples else None


def _family(agg: Aggregate, task: str) -> list[Group]:
    """Each method's best configuration on the task's primary metric, best first (as :func:`winners`)."""
    metric = agg.primary.get(task)
    groups = agg.groups_for(task, with_data=True)
    if not metric:
        return groups
    return list(best_per_label(groups, metric, agg.direction(task, metric)).values())


@dataclass(frozen=True)
class SampleSet:
    """The samples shown side by side: the same example ids for every configuration shown."""

    task: str
    configs: tuple[Group, ...]  # each method's best configuration that has samples, best first
    ids: tuple[str, ...]  # the first k ids (in the best's test order) that every configuration has
    missing: tuple[Group, ...]  # configurations without samples


def sample_set(agg: Aggregate, task: str, k: int = 5) -> SampleSet | None:
    """The first ``k`` example ids, in the leading configuration's test order, present in the samples
    of every configuration that has samples (the same examples for every method, chosen without looking
    at the outputs); None when no configuration of the task kept samples."""
    family = _family(agg, task)
    shown = [g for g in family if g.samples]
    if not shown:
        return None
    order = list(shown[0].samples[first_seed(shown[0])])
    ids = [i for i in order if all(i in g.samples[first_seed(g)] for g in shown[1:])][:k]
    return SampleSet(task, tuple(shown), tuple(ids), tuple(g for g in family if not g.samples))


def sample_of(g: Group, example_id: str) -> dict | None:
    """The configuration's sample line for an example (its lowest seed that has one)."""
    for seed in sorted(g.samples, key=_seed_order):
        line = g.samples[seed].get(example_id)
        if line is not None:
            return line
    return None


@dataclass(frozen=True)
class HeadToHead:
    """The best configuration against another one, example by example (values averaged over seeds)."""

    other: Group
    shared: int  # examples both were scored on
    best_ahead: int  # examples on which the best scores better
    other_ahead: int  # examples on which the other one scores better

    @property
    def even(self) -> int:
        return self.shared - self.best_ahead - self.other_ahead


@dataclass(frozen=True)
class ExampleView:
    """Which test examples each method gets right that the others do not, on the primary metric.

    ``values[name][id]`` holds one configuration's per-seed values of one example (what one value is:
    ``what``); ``binary`` is the "right" value (1 or 100) when every value is either it or 0, else None.
    """

    task: str
    metric: str
    direction: str
    what: str
    configs: tuple[Group, ...]  # each method's best configuration with per-example scores, best first
    values: dict[str, dict[str, np.ndarray]]
    binary: float | None
    head_to_head: tuple[HeadToHead, ...]
    uniquely_best: dict[str, int]  # name -> examples on which it alone scores best
    n_shared: int  # examples every configuration was scored on
    n_disagree: int  # ... of which the configurations do not all score the same
    disagreements: tuple[str, ...]  # a few of them: first those another method does better on (see example_view)

    def mean(self, name: str, example_id: str) -> float | None:
        v = self.values.get(name, {}).get(example_id)
        return None if v is None else float(np.mean(v))


def example_values(data: MetricData) -> tuple[np.ndarray, str]:
    """Per-seed, per-example values (seeds, examples) of a metric and what one value means.

    F1 / precision / recall are corpus statistics of ``[prediction, gold]``: one example's part is
    whether it is right; perplexity and ratio metrics keep their value per example (``[nll, count]``).
    """
    v = data.table.values
    name = data.statistic_name
    if name in _FACTORIES:
        return (v[..., 0] == v[..., 1]).astype(float), "right (prediction = gold)"
    if name == "perplexity":
        return np.exp(v[..., 0] / np.maximum(v[..., 1], 1e-12)), "the example's own perplexity"
    if name == "ratio":
        return v[..., 0] / np.where(v[..., 1] == 0, np.nan, v[..., 1]), "the example's own ratio"
    return v[..., 0].astype(float), "the example's score"


def binary_top(values: np.ndarray) -> float | None:
    """The "right" value (1 or 100) when every per-example value is either it or 0 (right / wrong), else None."""
    flat = np.asarray(values, dtype=float).ravel()
    if not flat.size or not np.all(np.isfinite(flat)):
        return None
    top = float(flat.max())
    return top if top in (1.0, 100.0) and bool(np.all((flat == 0) | (flat == top))) else None


def example_view(agg: Aggregate, task: str, max_rows: int = 12) -> ExampleView | None:
    """Per-example comparison of each method's best configuration with the task's best one.

    Counts, for every other method, the examples on which the best scores better, worse or the same
    (per-seed values averaged), the examples on which one method alone scores best, and lists up to
    ``max_rows`` examples on which the methods disagree: first those on which another method does
    better than the best (up to half the rows, more when the rest is short), then those on which the best
    alone leads, then those it leads with others, each in test order. None without per-example scores
    for at least two methods under one statistic.
    """
    metric = agg.primary.get(task)
    if not metric:
        return None
    configs = [g for g in _family(agg, task) if ("metric", metric) in g.data]
    if len(configs) < 2 or len({g.data[("metric", metric)].statistic_name for g in configs}) != 1:
        return None
    stat = configs[0].data[("metric", metric)].statistic_name
    direction = "higher" if stat in _FACTORIES else (agg.direction(task, metric) or "higher")
    sign = 1.0 if direction == "higher" else -1.0
    values: dict[str, dict[str, np.ndarray]] = {}
    order: list[str] = []
    what = ""
    for g in configs:
        data = g.data[("metric", metric)]
        vals, what = example_values(data)
        ids = [str(i) for i in data.table.ids]
        values[g.name] = {i: vals[:, k] for k, i in enumerate(ids)}
        if g is configs[0]:
            order = ids
    flat = np.concatenate([v for by_id in values.values() for v in by_id.values()])
    binary = binary_top(flat)
    means = {name: {i: float(np.mean(v)) for i, v in by_id.items()} for name, by_id in values.items()}
    tol = 1e-9 * max(1.0, float(np.nanmax(np.abs(flat))) if flat.size else 1.0)
    best = configs[0]
    heads = []
    for g in configs[1:]:
        shared = [i for i in means[best.name] if i in means[g.name]]
        diff = [sign * (means[best.name][i] - means[g.name][i]) for i in shared]
        heads.append(HeadToHead(g, len(shared), sum(d > tol for d in diff), sum(d < -tol for d in diff)))
    common = [i for i in order if all(i in means[g.name] for g in configs)]
    unique = {g.name: 0 for g in configs}
    behind, alone, shared_lead, n_disagree = [], [], [], 0
    for i in common:
        scored = [(sign * means[g.name][i], g.name) for g in configs]
        hi = max(s for s, _ in scored)
        lo = min(s for s, _ in scored)
        if hi - lo <= tol:
            continue
        n_disagree += 1
        leaders = [name for s, name in scored if s >= hi - tol]
        if len(leaders) == 1:
            unique[leaders[0]] += 1
        (behind if best.name not in leaders else alone if len(leaders) == 1 else shared_lead).append(i)
    ahead = alone + shared_lead
    take_behind = behind[: max(max_rows - len(ahead), max_rows // 2)]
    rows = tuple(take_behind + ahead[: max_rows - len(take_behind)])
    return ExampleView(task, metric, direction, what, tuple(configs), values, binary, tuple(heads), unique,
                       len(common), n_disagree, rows)
