"""How sure can I be? Intervals, paired comparisons and verdicts over seeds *and* test examples.

Everything here is a pure function of per-example scores (numpy + scipy, no model, no torch), so a
report can be rebuilt from stored results. The data of one configuration (task x method x
hyper-parameters) is a table ``seed -> example id -> score``: every seed was scored on the same
test examples, so seeds and examples are *crossed*, not nested.

What is estimated
-----------------
The number we want is the configuration's metric *for the method*, not for one lucky checkpoint on
one particular test set: the expectation over training seeds **and** over the population the test
examples were drawn from. Its point estimate is the mean over seeds of the per-seed metric
(``statistic`` applied to each seed's examples; the default statistic is the mean of the scores).
Two things make that estimate uncertain, and the interval covers both:

* seed variation: another seed trains a different model (this is the only thing the old
  "t over seeds" interval saw);
* example variation: another test set of the same size gives another number. With a few hundred
  examples this is usually the larger part, and it is the *only* part for a deterministic run (the
  base model), which therefore gets an example-level interval, not "+- 0".

With one stochastic seed, seed variation cannot be measured: the interval then covers example
sampling only, and the result says so (``notes``). A single seed is an honest interval for "this
checkpoint", not for "this method".

The bootstrap
-------------
We draw a two-level bootstrap: resample seeds with replacement, then resample test examples with
replacement. Because the examples are shared by all seeds, one example draw is used for every drawn
seed (resampling examples independently per seed would treat the crossed design as nested and miss
most of the example part: in simulation that interval covered only 77-94 % for one configuration).
The replicates are computed for any ``statistic`` (vectorised: one gather, one call per block).

The plain percentile interval of that bootstrap is kept in ``percentile_lo/hi`` for reference (it
never leaves the range of a bounded metric), but it is not the headline interval: in simulation
(3 seeds x 200 examples) it covered 97.7-99.3 % without seed effects (it counts the seed x example
noise about three times) and down to 81.5 % with large ones (no resample of three seeds reaches beyond
the observed seeds, and [min, max] of three seed means holds the truth only 75 % of the time).

So the bootstrap is used for what it does well, the example-level variance of *any* statistic, and
the pieces are put together as in a two-way random-effects ANOVA, counting each source once:

    A = var_s(T_s) / S                       seed term: spread of the per-seed statistics   (S - 1 d.f.)
    E = var_b(mean_s T*_bs)                  example term: bootstrap, seeds held fixed      (N - 1 d.f.)
    R = (mean_s var_b(T*_bs) - E) / (S - 1)  seed x example term, inside both A and E ((S-1)(N-1) d.f.)
    SE^2 = A + E - R                         (max(A, E) if that is not positive)

T_s is the statistic of seed s, T*_bs the same on bootstrap example draw b (bootstrap variances are
scaled by N/(N-1)). For the mean this is exactly the ANOVA estimate (MS_seed + MS_example - MS_res)/(SN).
A one-way decomposition (seeds as groups, examples within) would file the example effects, which the
seeds share, under "within seed" and so wrongly let more seeds shrink them.

The interval
------------
``estimate +- h`` (clipped to ``metric_range``, e.g. ``(0, 100)`` for accuracy; a difference to
+-(hi - lo)). The small-sample problem is A: it rests on S - 1 degrees of freedom, 2 with three seeds.
The two textbook answers err in opposite directions:

* Welch-Satterthwaite, ``t(1 - alpha/2, nu) * SE``: right when A is a small part of SE^2, but with 2-3
  seeds it under-covers when A matters (simulation: 91.6-94 %), because nu is estimated from A itself;
* the generalized pivotal (fiducial) interval of the two-way model, the (1 - alpha) quantile of
  ``|Z| sqrt(A/U_1 + E/U_2 - R/U_3)``, U_k ~ chi^2(d_k)/d_k: right when A dominates, conservative
  (97-98 %) when A is a small part.

``h = w * fiducial + (1 - w) * Satterthwaite`` with w = A / SE^2, the seed term's share. Both parts are
the exact t interval when there is one source of variation (one seed: t with N - 1 d.f.) and agree
for many seeds. Measured coverage is in tests/test_stats.py and its module docstring.

Comparing two configurations
----------------------------
``compare(a, b)`` works on the paired data: the seeds both have (a deterministic run pairs with every
seed of the other side) and the example ids both have; the result says how many of each it used and
how many it dropped. The difference is ``mean over seeds of (statistic(a_s) - statistic(b_s))``;
its interval comes from the same bootstrap with the *same* seeds and example draws for both sides.

The p-value is a paired permutation test: if a and b were interchangeable, swapping their scores on
any example would not change the distribution of the difference. We swap a random subset of
examples (the same examples in every seed; for the mean this is flipping the sign of the
per-example differences) many times (all 2^N swaps when that is not more than ``n_permutations``)
and count how often the swapped |difference| is at least the observed one (two-sided). This test
treats the trained checkpoints as given: it answers "could these models' difference on these many
examples be luck of the examples?". Seed-to-seed variation is in the interval, which is why a verdict
needs both.

Verdicts (``a`` relative to ``b``, with ``higher_is_better`` deciding the direction):

* "tied": the whole interval lies within +-``tie_margin`` (only when a margin > 0 is given);
* "better" / "worse": p < alpha **and** the interval excludes 0;
* "not enough evidence": anything else, and always when the comparison is degenerate - fewer than 2
  shared examples, a and b identical on every example, or a zero-width interval (all per-example
  differences identical: e.g. per-seed means A = [81, 83] vs B = [80, 82] whose example
  differences are all +1 give no way to measure uncertainty, so no verdict other than this one).

When one winner is compared with several others, ``compare_to_best`` adjusts the p-values with
Holm's step-down method (family-wise error <= alpha) and a "better" then needs the *adjusted* p.

Power, said plainly: ``mde`` is the minimum detectable effect, the true difference that this many
seeds x examples would call with 80 % probability at alpha: the interval's half-width plus the same
construction's 80 % one-sided quantile (``(t(1 - alpha/2) + t(0.8)) * SE`` for one source of
variation, about 2.8 SE with many degrees of freedom). For an unresolved comparison,
``more_examples`` / ``more_seeds`` say roughly how many more test examples (same seeds) or more seeds
(same examples) would give 80 % power to confirm a difference of the observed size (or, with a tie
margin, to confirm a tie), from the variance components (``VarianceComponents.variance``). Examples
and seeds are not interchangeable: a seed-dominated comparison cannot be resolved by more examples,
and with a fixed test set the example-level part does not shrink with more seeds; ``None`` says
"this route cannot resolve it".

Degenerate runs
---------------
``degenerate_reasons`` lists plain-words reasons to distrust a run before ranking it: constant
predictions (one class), predictions identical to the base model on every example, a loss that never
fell below its start (or became non-finite).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Literal, Union

import numpy as np
from scipy import stats as _sps

__all__ = [
    "BestComparison",
    "Comparison",
    "Estimate",
    "FamilyRow",
    "ScoreTable",
    "Statistic",
    "VarianceComponents",
    "compare",
    "compare_to_best",
    "degenerate_reasons",
    "estimate",
    "f1",
    "holm",
    "mean",
    "named_statistic",
    "per_row",
    "perplexity",
    "precision",
    "ratio",
    "recall",
]

Statistic = Callable[[np.ndarray], np.ndarray]
"""A metric computed from per-example records: ``x`` has shape ``(..., n_examples, n_columns)`` and the
result shape ``(...)`` (reduce over the example axis; the leading axes are seeds / resamples)."""

Verdict = Literal["better", "worse", "tied", "not enough evidence"]
Scores = Union["ScoreTable", Mapping[Any, Mapping[Hashable, Any]], np.ndarray]

_CHUNK_ELEMENTS = 2_000_000  # per gathered block, keeps memory at ~16 MB per column whatever N is
_Z_POWER = 0.8  # planned power for the minimum detectable effect and the "what would resolve it" advice

# ---------------------------------------------------------------------------------------------
# statistics (vectorised over leading axes)
# ---------------------------------------------------------------------------------------------


def mean(x: np.ndarray) -> np.ndarray:
    """Mean of column 0 over examples: accuracy / exact match / pass@1 / mean score (the default)."""
    return np.mean(x[..., 0], axis=-1)


def perplexity(x: np.ndarray) -> np.ndarray:
    """exp(total NLL / total tokens) from columns (nll_sum, n_tokens) per example."""
    return np.exp(np.sum(x[..., 0], axis=-1) / np.sum(x[..., 1], axis=-1))


def ratio(x: np.ndarray) -> np.ndarray:
    """Total of column 0 over total of column 1 (no exp): loss = nll_sum / n_tokens, bits per byte = (nll / ln 2) / bytes."""
    den = np.sum(x[..., 1], axis=-1)
    return np.divide(np.sum(x[..., 0], axis=-1), den, out=np.full(np.shape(den), np.nan), where=den != 0)


def _confusion(x: np.ndarray, positive: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, gold = x[..., 0] == positive, x[..., 1] == positive
    tp = np.sum(pred & gold, axis=-1)
    fp = np.sum(pred & ~gold, axis=-1)
    fn = np.sum(~pred & gold, axis=-1)
    return tp, fp, fn


def _ratio(num: np.ndarray, den: np.ndarray, scale: float) -> np.ndarray:
    den = np.asarray(den, dtype=float)
    return scale * np.divide(num, den, out=np.zeros(den.shape), where=den > 0)


def precision(positive: float = 1, scale: float = 100.0) -> Statistic:
    """Precision of the ``positive`` label from columns (pred, gold); 0 when nothing is predicted positive."""

    def stat(x: np.ndarray) -> np.ndarray:
        tp, fp, _ = _confusion(x, positive)
        return _ratio(tp, tp + fp, scale)

    return stat


def recall(positive: float = 1, scale: float = 100.0) -> Statistic:
    """Recall of the ``positive`` label from columns (pred, gold); 0 when there is no positive example."""

    def stat(x: np.ndarray) -> np.ndarray:
        tp, _, fn = _confusion(x, positive)
        return _ratio(tp, tp + fn, scale)

    return stat


def f1(positive: float = 1, scale: float = 100.0) -> Statistic:
    """F1 of the ``positive`` label from columns (pred, gold): 2TP / (2TP + FP + FN), 0 when that is 0/0."""

    def stat(x: np.ndarray) -> np.ndarray:
        tp, fp, fn = _confusion(x, positive)
        return _ratio(2 * tp, 2 * tp + fp + fn, scale)

    return stat


def per_row(fn: Callable[[np.ndarray], float]) -> Statistic:
    """Wrap a plain metric ``fn(records (n_examples, n_columns)) -> float`` as a (looping, slower) Statistic."""

    def stat(x: np.ndarray) -> np.ndarray:
        flat = x.reshape((-1,) + x.shape[-2:])
        return np.array([fn(rows) for rows in flat], dtype=float).reshape(x.shape[:-2])

    return stat


def named_statistic(name: str) -> Statistic:
    """The statistic a result's ``per_example`` mapping names: mean, perplexity, ratio, f1, precision, recall
    (the last three of label 1 from columns (pred, gold), scale 100)."""
    named: dict[str, Callable[[], Statistic]] = {
        "mean": lambda: mean, "perplexity": lambda: perplexity, "ratio": lambda: ratio,
        "f1": f1, "precision": precision, "recall": recall}
    if name not in named:
        raise ValueError(f"unknown statistic {name!r}; known: {', '.join(named)}")
    return named[name]()


def _apply(statistic: Statistic, x: np.ndarray) -> np.ndarray:
    out = np.asarray(statistic(x), dtype=float)
    if out.shape != x.shape[:-2]:
        raise ValueError(f"statistic returned shape {out.shape} for input {x.shape}; expected {x.shape[:-2]}")
    if not np.all(np.isfinite(out)):
        raise ValueError("statistic returned a non-finite value (nan/inf); it must be defined on every resample")
    return out


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def _sorted(keys: Any) -> list:
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=repr)


@dataclass(frozen=True, eq=False)
class ScoreTable:
    """Per-example records of one configuration: ``values[s, i, k]`` = column k of example ``ids[i]`` at ``seeds[s]``.

    ``deterministic`` marks a run that does not depend on the seed (e.g. the base model, run once): it
    has one row, pairs with every seed of the other side in :func:`compare`, and has no seed variance.
    ``dropped_ids`` counts example ids that were missing from some seed and therefore left out.
    """

    seeds: tuple[Hashable, ...]
    ids: tuple[Hashable, ...]
    values: np.ndarray
    deterministic: bool = False
    dropped_ids: int = 0

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=float)
        if v.ndim == 2:
            v = v[:, :, None]
        if v.ndim != 3 or v.shape[0] != len(self.seeds) or v.shape[1] != len(self.ids) or v.shape[2] < 1:
            raise ValueError(f"values of shape {v.shape} do not match {len(self.seeds)} seeds x {len(self.ids)} ids")
        if v.shape[0] == 0 or v.shape[1] == 0:
            raise ValueError("a score table needs at least one seed and one example")
        if self.deterministic and v.shape[0] != 1:
            raise ValueError("a deterministic run has exactly one row (it does not depend on the seed)")
        if len(set(self.ids)) != len(self.ids) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("duplicate seed or example id")
        if not np.all(np.isfinite(v)):
            s, i = np.argwhere(~np.isfinite(v))[0][:2]
            raise ValueError(f"non-finite score at seed {self.seeds[s]!r}, example {self.ids[i]!r}")
        object.__setattr__(self, "values", v)

    @classmethod
    def from_mapping(cls, scores: Mapping[Any, Mapping[Hashable, Any]], deterministic: bool = False) -> ScoreTable:
        """``{seed: {example_id: score or (col0, col1, ...)}}``; ids missing from some seed are dropped (counted)."""
        if not scores:
            raise ValueError("no seeds")
        seeds = _sorted(scores)
        id_sets = [set(scores[s]) for s in seeds]
        shared = set.intersection(*id_sets)
        ids = _sorted(shared)
        dropped = len(set.union(*id_sets)) - len(shared)
        if not ids:
            raise ValueError("the seeds share no example id")
        rows = []
        for s in seeds:
            row = [np.atleast_1d(np.asarray(scores[s][i], dtype=float)) for i in ids]
            if len({r.shape for r in row}) != 1 or row[0].ndim != 1:
                raise ValueError(f"seed {s!r}: every example needs the same number of columns")
            rows.append(np.stack(row))
        if len({r.shape for r in rows}) != 1:
            raise ValueError("seeds differ in their number of columns")
        return cls(tuple(seeds), tuple(ids), np.stack(rows), deterministic=deterministic, dropped_ids=dropped)

    @classmethod
    def from_deterministic(cls, scores: Mapping[Hashable, Any]) -> ScoreTable:
        """One seed-independent run ``{example_id: score}`` (e.g. the base model)."""
        return cls.from_mapping({None: scores}, deterministic=True)

    @classmethod
    def from_array(cls, values: Any, seeds: Sequence[Hashable] | None = None, ids: Sequence[Hashable] | None = None,
                   deterministic: bool = False) -> ScoreTable:
        """An array of shape (seeds, examples) or (seeds, examples, columns); default seeds/ids are 0..n-1."""
        v = np.asarray(values, dtype=float)
        if v.ndim not in (2, 3):
            raise ValueError("values must have shape (seeds, examples) or (seeds, examples, columns)")
        seeds = tuple(range(v.shape[0])) if seeds is None else tuple(seeds)
        ids = tuple(range(v.shape[1])) if ids is None else tuple(ids)
        return cls(seeds, ids, v, deterministic=deterministic)

    @property
    def n_seeds(self) -> int:
        return self.values.shape[0]

    @property
    def n_examples(self) -> int:
        return self.values.shape[1]


def _table(scores: Scores) -> ScoreTable:
    if isinstance(scores, ScoreTable):
        return scores
    if isinstance(scores, np.ndarray):
        return ScoreTable.from_array(scores)
    if isinstance(scores, Mapping):
        return ScoreTable.from_mapping(scores)
    raise TypeError(f"expected a ScoreTable, a {{seed: {{id: score}}}} mapping or an array, got {type(scores).__name__}")


# ---------------------------------------------------------------------------------------------
# the bootstrap and the variance components
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VarianceComponents:
    """Where the uncertainty comes from, per unit, so that it can be projected to other sizes.

    For S seeds and N examples the variance of the estimate is::

        variance(S, N) = seed / S + example / N + residual / (S * N)

    ``seed``: variance of the true per-seed value between seeds (None when it cannot be measured: one
    stochastic seed; 0 for a deterministic run); ``example``: variance of the seed-averaged per-example
    contribution between examples (for a non-mean statistic: N x its bootstrap variance);
    ``residual``: the seed x example interaction (how differently seeds do on the same example; folded
    into ``example`` when there is one seed). Estimated by the two-way random-effects ANOVA of the module
    docstring from the per-seed statistics and the bootstrap (exact for the mean as resamples -> oo);
    negative estimates are set to 0.
    """

    seed: float | None
    example: float
    residual: float
    n_seeds: int
    n_examples: int

    def variance(self, n_seeds: float | None = None, n_examples: float | None = None) -> float:
        """Projected variance of the estimate at ``n_seeds`` x ``n_examples`` (default: the current sizes)."""
        s = self.n_seeds if n_seeds is None else n_seeds
        n = self.n_examples if n_examples is None else n_examples
        return (self.seed or 0.0) / s + self.example / n + self.residual / (s * n)


@dataclass(frozen=True)
class _Boot:
    value: float
    per_seed: np.ndarray
    se: float
    df: float
    terms: _Var
    percentile: tuple[float, float]
    components: VarianceComponents


def _example_replicates(tables: Sequence[np.ndarray], statistic: Statistic, idx: np.ndarray) -> np.ndarray:
    """Per-seed statistic on resampled examples: tables of (S, N, K), idx (B, N) -> (B, S), summed with signs.

    With two tables the result is statistic(first) - statistic(second) on the same draws (the paired case).
    """
    S, N, K = tables[0].shape
    B = idx.shape[0]
    out = np.zeros((B, S))
    step = max(1, _CHUNK_ELEMENTS // (S * N * K))
    for lo in range(0, B, step):
        block = idx[lo : lo + step]
        for sign, v in zip((1.0, -1.0), tables):
            out[lo : lo + step] += sign * _apply(statistic, v[:, block, :]).T  # v[:, block] is (S, b, N, K)
    return out


@dataclass(frozen=True)
class _Var:
    """SE^2 = seed + example - residual: mean squares / (S N) with their d.f. (0 d.f.: not estimable)."""

    seed: float = 0.0
    seed_df: float = 0.0
    example: float = 0.0
    example_df: float = 0.0
    residual: float = 0.0
    residual_df: float = 0.0

    def terms(self) -> tuple[tuple[float, float], ...]:
        """(weight, d.f.) in fixed slots 0 seed, 1 example, 2 residual (weight 0 / d.f. 0 when absent)."""
        return ((self.seed, self.seed_df), (self.example, self.example_df), (-self.residual, self.residual_df))


def _variance(S: int, N: int, A: float, E: float, R: float) -> _Var:
    """The terms of SE^2 that S seeds x N examples can estimate."""
    return _Var(seed=A if S > 1 else 0.0, seed_df=S - 1, example=E if N > 1 else 0.0, example_df=N - 1,
                residual=R if S > 1 and N > 1 else 0.0, residual_df=(S - 1) * (N - 1))


def _satterthwaite(terms: Sequence[tuple[float, float]]) -> float:
    total = sum(w for w, _ in terms)
    den = sum(w * w / d for w, d in terms if d > 0 and w != 0)
    return total * total / den if den > 0 else math.inf


def _se_df(v: _Var) -> tuple[float, float]:
    """SE^2 (the sum of the terms) and its Welch-Satterthwaite d.f.; if the sum is not positive, the largest term.

    The d.f. never go below those of the least informed positive term (a negative term can push the
    formula lower than any source of information justifies).
    """
    terms = [(w, d) for w, d in v.terms() if d > 0 and w != 0]
    positive = [(w, d) for w, d in terms if w > 0]
    if not positive:
        return 0.0, math.inf
    var = sum(w for w, _ in terms)
    if var <= 0:
        return max(positive)
    return var, max(_satterthwaite(terms), min(d for _, d in positive))


_PIVOT_DRAWS = 8000


@lru_cache(maxsize=1)
def _pivot_draws() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed stratified uniforms (one stream per term), their normal scores, and |Z|: the fiducial part is
    a fixed numerical integration, identical on every call (smooth in its inputs, so sizes can be searched)."""
    g = np.random.default_rng(20240917)
    grid = (np.arange(_PIVOT_DRAWS) + 0.5) / _PIVOT_DRAWS
    u = g.permuted(np.tile(grid, (3, 1)), axis=1)
    return u, _sps.norm.ppf(u), np.abs(_sps.norm.ppf(g.permuted(grid)))


@lru_cache(maxsize=128)
def _chi2_exact(slot: int, df: float) -> np.ndarray:
    return _sps.chi2.ppf(_pivot_draws()[0][slot], df) / df


def _chi2_over_df(slot: int, df: float) -> np.ndarray:
    """chi^2_df / df at the fixed uniforms of stream ``slot`` (Wilson-Hilferty above 100 d.f.)."""
    if df <= 100:
        return _chi2_exact(slot, df)
    c = 2.0 / (9.0 * df)
    return np.maximum(1.0 - c + _pivot_draws()[1][slot] * math.sqrt(c), 1e-6) ** 3


def _fiducial_quantile(v: _Var, p: float) -> float:
    """p-quantile of |Z| sqrt(max(0, sum_k w_k / (chi^2_dk / dk))): the generalized pivotal quantity."""
    _, _, z = _pivot_draws()
    draws = np.zeros(_PIVOT_DRAWS)
    for slot, (w, d) in enumerate(v.terms()):
        if w != 0 and d > 0:
            draws += w / _chi2_over_df(slot, float(d))
    return float(np.quantile(z * np.sqrt(np.maximum(draws, 0.0)), p))


def _half_width(v: _Var, p: float) -> float:
    """Half-width of a central p interval (module docstring: "The interval").

    w * fiducial + (1 - w) * Satterthwaite-t half-width, with w = the seed term's share of SE^2.
    """
    var, df = _se_df(v)
    if var <= 0:
        return 0.0 if any(d > 0 for _, d in v.terms()) else math.inf
    satterthwaite = _t((1 + p) / 2, df) * math.sqrt(var)
    w = min(1.0, max(0.0, v.seed / var)) if v.seed_df > 0 else 0.0
    return satterthwaite if w == 0 else w * _fiducial_quantile(v, p) + (1 - w) * satterthwaite


def _bootstrap(tables: Sequence[np.ndarray], statistic: Statistic, deterministic: bool, alpha: float,
               n_resamples: int, rng: np.random.Generator) -> _Boot:
    if n_resamples < 20:
        raise ValueError("n_resamples must be at least 20")
    S, N, _ = tables[0].shape
    per_seed = _apply(statistic, tables[0])
    if len(tables) == 2:
        per_seed = per_seed - _apply(statistic, tables[1])
    value = float(per_seed.mean())

    idx = rng.integers(0, N, size=(n_resamples, N))
    rep = _example_replicates(tables, statistic, idx)  # (B, S)
    if S > 1:
        seed_draw = rng.integers(0, S, size=(n_resamples, S))
        two_level = np.take_along_axis(rep, seed_draw, axis=1).mean(axis=1)
    else:
        two_level = rep[:, 0]
    percentile = tuple(float(q) for q in np.quantile(two_level, [alpha / 2, 1 - alpha / 2]))

    if N > 1:
        corr = N / (N - 1)  # bootstrap variances are (N-1)/N of the unbiased ones
        E = float(np.var(rep.mean(axis=1), ddof=1)) * corr
        within = float(np.mean(np.var(rep, axis=0, ddof=1))) * corr
    else:
        E = within = 0.0
    A = float(np.var(per_seed, ddof=1)) / S if S > 1 else 0.0
    Rr = max(0.0, (within - E) / (S - 1)) if S > 1 and N > 1 else 0.0  # = residual / (S N)
    terms = _variance(S, N, A, E, Rr)
    var, df = _se_df(terms)
    if S > 1:
        components = VarianceComponents(
            seed=max(0.0, S * (A - Rr)), example=max(0.0, N * (E - Rr)), residual=N * S * Rr, n_seeds=S, n_examples=N
        )
    else:
        components = VarianceComponents(
            seed=0.0 if deterministic else None, example=N * E, residual=0.0, n_seeds=1, n_examples=N
        )
    return _Boot(value, per_seed, math.sqrt(var), df, terms, percentile, components)


def _t(q: float, df: float) -> float:
    return float(_sps.norm.ppf(q)) if not math.isfinite(df) else float(_sps.t.ppf(q, df))


def _clip(lo: float, hi: float, bounds: tuple[float, float] | None) -> tuple[float, float]:
    if bounds is None:
        return lo, hi
    return min(max(lo, bounds[0]), bounds[1]), max(min(hi, bounds[1]), bounds[0])


def _check_range(metric_range: tuple[float, float] | None) -> tuple[float, float] | None:
    if metric_range is None:
        return None
    lo, hi = (float(x) for x in metric_range)
    if not lo < hi:
        raise ValueError(f"metric_range must be (lo, hi) with lo < hi, got {metric_range}")
    return lo, hi


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


# ---------------------------------------------------------------------------------------------
# one configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """A configuration's metric with its interval and the sample size behind it."""

    value: float  # mean over seeds of the per-seed statistic
    lo: float  # (1 - alpha) interval, clipped to metric_range
    hi: float
    se: float  # standard error (seed + example variation)
    df: float  # Welch-Satterthwaite degrees of freedom of SE (information; see the module doc for the interval)
    n_seeds: int
    n_examples: int
    per_seed: tuple[float, ...]
    deterministic: bool
    metric_range: tuple[float, float] | None
    percentile_lo: float  # plain two-level bootstrap percentile interval, for reference (see module doc)
    percentile_hi: float
    components: VarianceComponents
    notes: tuple[str, ...]  # caveats in plain words (one seed, dropped ids, ...)
    alpha: float = 0.05

    @property
    def sample_size(self) -> str:
        """'3 seeds x 200 examples' (or 'deterministic x 200 examples')."""
        seeds = "deterministic" if self.deterministic else f"{self.n_seeds} seed{'s' * (self.n_seeds != 1)}"
        return f"{seeds} x {self.n_examples} examples"


def estimate(scores: Scores, *, statistic: Statistic = mean, metric_range: tuple[float, float] | None = None,
             alpha: float = 0.05, n_resamples: int = 2000, random_seed: int | None = 0) -> Estimate:
    """Point estimate and (1 - alpha) interval of one configuration over seeds and test examples.

    ``scores``: ``{seed: {example_id: score}}`` (or records, with ``statistic`` computing the metric from
    them), a :class:`ScoreTable` (use ``ScoreTable.from_deterministic`` for a seed-independent run) or an
    array (seeds, examples[, columns]). ``random_seed`` fixes the bootstrap so a report is reproducible.
    """
    _check_alpha(alpha)
    bounds = _check_range(metric_range)
    table = _table(scores)
    S, N = table.n_seeds, table.n_examples
    boot = _bootstrap([table.values], statistic, table.deterministic, alpha, n_resamples, np.random.default_rng(random_seed))
    notes = []
    if S == 1 and not table.deterministic and N > 1:
        notes.append("one seed: the interval covers test-example sampling only; seed-to-seed variation is not measured")
    if N == 1 and S > 1:
        notes.append("one example per seed: the interval reflects seed variation only")
    if S == 1 and N == 1:
        notes.append("one seed and one example: no uncertainty can be measured")
    if table.dropped_ids:
        notes.append(f"{table.dropped_ids} example ids missing from some seed were left out")

    half = _half_width(boot.terms, 1 - alpha)
    lo, hi = boot.value - half, boot.value + half
    lo, hi = _clip(lo, hi, bounds)
    p_lo, p_hi = _clip(*boot.percentile, bounds)
    return Estimate(
        value=boot.value, lo=lo, hi=hi, se=boot.se, df=boot.df, n_seeds=S, n_examples=N,
        per_seed=tuple(float(x) for x in boot.per_seed), deterministic=table.deterministic, metric_range=bounds,
        percentile_lo=p_lo, percentile_hi=p_hi, components=boot.components, notes=tuple(notes), alpha=alpha,
    )


# ---------------------------------------------------------------------------------------------
# two configurations
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """``a - b`` on the paired data (shared seeds x shared examples), its interval, p-value and verdict."""

    difference: float  # mean over shared seeds of statistic(a_s) - statistic(b_s) on the shared examples
    lo: float  # (1 - alpha) interval of the difference (clipped to +-(range width) when a range is given)
    hi: float
    se: float
    df: float
    p_value: float  # two-sided paired permutation (sign-flip / label-swap) test
    verdict: Verdict  # "better" / "worse" say what a is relative to b
    degenerate: tuple[str, ...]  # why no verdict is possible (empty when the comparison is usable)
    a_value: float  # each side's value on the paired data
    b_value: float
    n_seeds: int  # seeds used (1 when both are deterministic)
    n_examples: int  # examples used
    deterministic: bool  # both sides are deterministic: no seed variation at all
    seeds_only_in_a: int  # left out because the other side lacks them
    seeds_only_in_b: int
    ids_only_in_a: int
    ids_only_in_b: int
    mde: float  # minimum detectable effect (80 % power at alpha) at n_seeds x n_examples
    components: VarianceComponents
    percentile_lo: float
    percentile_hi: float
    higher_is_better: bool
    tie_margin: float
    alpha: float
    n_permutations: int  # permutations evaluated (all 2^N when exact)
    exact_p: bool

    @property
    def sample_size(self) -> str:
        """'3 seeds x 200 examples' (or 'deterministic x 200 examples')."""
        seeds = "deterministic" if self.deterministic else f"{self.n_seeds} seed{'s' * (self.n_seeds != 1)}"
        return f"{seeds} x {self.n_examples} examples"

    @cached_property
    def _plan(self) -> tuple[int | None, int | None, str]:
        if self.verdict != "not enough evidence" or self.degenerate:
            return None, None, ""
        return _resolve(self.difference, self.tie_margin, self.components, self.alpha, not self.deterministic)

    @property
    def more_examples(self) -> int | None:
        """Unresolved: about this many more test examples (same seeds) would resolve it; None: cannot / resolved."""
        return self._plan[0]

    @property
    def more_seeds(self) -> int | None:
        """Unresolved: about this many more seeds (same examples) would resolve it; None: cannot / unknown / resolved."""
        return self._plan[1]

    @property
    def advice(self) -> str:
        """The two numbers above in plain words ("" when resolved or degenerate). Computed on first use."""
        return self._plan[2]

    def summary(self) -> str:
        """One line in plain words, e.g. '+3.10 [+0.41, +5.79], p = 0.012 (3 seeds x 200 examples): better'."""
        text = (f"{self.difference:+.2f} [{self.lo:+.2f}, {self.hi:+.2f}], p = {self.p_value:.2g} "
                f"({self.sample_size}): {self.verdict}")
        if self.degenerate:
            text += " (" + "; ".join(self.degenerate) + ")"
        elif self.advice:
            text += f" - {self.advice}"
        return text


def _pair(ta: ScoreTable, tb: ScoreTable) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    if ta.values.shape[2] != tb.values.shape[2]:
        raise ValueError(f"a has {ta.values.shape[2]} columns per example, b has {tb.values.shape[2]}")
    in_b = {i: k for k, i in enumerate(tb.ids)}
    ids = [i for i in ta.ids if i in in_b]
    if not ids:
        raise ValueError("a and b share no example id: they were not evaluated on the same test set")
    ia = np.array([k for k, i in enumerate(ta.ids) if i in in_b])
    ib = np.array([in_b[i] for i in ids])
    va, vb = ta.values[:, ia], tb.values[:, ib]
    only_a = only_b = 0
    if ta.deterministic and not tb.deterministic:
        va = np.repeat(va, tb.n_seeds, axis=0)
    elif tb.deterministic and not ta.deterministic:
        vb = np.repeat(vb, ta.n_seeds, axis=0)
    elif not ta.deterministic:
        in_sb = {s: k for k, s in enumerate(tb.seeds)}
        sa = [k for k, s in enumerate(ta.seeds) if s in in_sb]
        if not sa:
            raise ValueError(f"a and b share no seed (a: {list(ta.seeds)}, b: {list(tb.seeds)}); a seed-independent "
                             "run (e.g. the base model) should be a ScoreTable.from_deterministic(...)")
        sb = [in_sb[ta.seeds[k]] for k in sa]
        va, vb = va[sa], vb[sb]
        only_a, only_b = ta.n_seeds - len(sa), tb.n_seeds - len(sb)
    counts = dict(seeds_only_in_a=only_a, seeds_only_in_b=only_b,
                  ids_only_in_a=ta.n_examples - len(ids), ids_only_in_b=tb.n_examples - len(ids))
    return np.ascontiguousarray(va), np.ascontiguousarray(vb), counts


def _permutation_p(va: np.ndarray, vb: np.ndarray, statistic: Statistic, observed: float, n_permutations: int,
                   rng: np.random.Generator) -> tuple[float, int, bool]:
    """Two-sided paired permutation p-value: swap a and b on random subsets of examples (same in every seed)."""
    S, N, K = va.shape
    exact = N <= 20 and 2**N <= n_permutations
    if exact:
        masks = ((np.arange(2**N, dtype=np.int64)[:, None] >> np.arange(N)) & 1).astype(bool)
    else:
        masks = rng.random((n_permutations, N)) < 0.5
    P = masks.shape[0]
    null = np.empty(P)
    step = max(1, _CHUNK_ELEMENTS // (S * N * K))
    for lo in range(0, P, step):
        m = masks[lo : lo + step, None, :, None]  # (b, 1, N, 1) against (S, N, K)
        swapped_a, swapped_b = np.where(m, vb, va), np.where(m, va, vb)
        null[lo : lo + step] = (_apply(statistic, swapped_a) - _apply(statistic, swapped_b)).mean(axis=1)
    tol = 1e-9 * max(1.0, abs(observed))
    hits = int(np.count_nonzero(np.abs(null) >= abs(observed) - tol))
    p = hits / P if exact else (hits + 1) / (P + 1)  # the identity is among the exact masks, not among random ones
    return min(1.0, p), P, exact


def _verdict(lo: float, hi: float, p: float, alpha: float, tie_margin: float, higher_is_better: bool,
             degenerate: bool) -> Verdict:
    if degenerate:
        return "not enough evidence"
    if tie_margin > 0 and -tie_margin <= lo and hi <= tie_margin:
        return "tied"
    if p < alpha and (lo > 0 or hi < 0):
        return "better" if (lo > 0) == higher_is_better else "worse"
    return "not enough evidence"


def _projected(comps: VarianceComponents, n_seeds: int, n_examples: int) -> _Var:
    """The variance terms of the estimate at another size, from the per-unit components."""
    seed, ex, res = comps.seed or 0.0, comps.example, comps.residual
    A = (seed + res / n_examples) / n_seeds  # seed mean square / (S N)
    E = (ex + res / n_seeds) / n_examples  # example mean square / (S N)
    R = res / (n_seeds * n_examples)  # residual mean square / (S N)
    return _variance(n_seeds, n_examples, A, E, R)


def _smallest(ok: Callable[[int], bool], start: int, cap: int) -> int | None:
    """Smallest n in [start, cap] with ok(n), assuming ok is monotone; None if even cap is not enough."""
    if not ok(cap):
        return None
    lo, hi = start, start
    while not ok(hi):
        lo, hi = hi + 1, min(cap, 2 * hi)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return lo


_MAX_EXAMPLES, _MAX_SEEDS = 10_000_000, 10_000


def _resolve(diff: float, tie_margin: float, comps: VarianceComponents, alpha: float, seeds_can_vary: bool
             ) -> tuple[int | None, int | None, str]:
    """How many more examples (same seeds) or seeds (same examples) give 80 % power to settle the question.

    The effect to detect is the observed |difference| (to confirm it) or, with a tie margin larger than
    it, margin - |difference| (to confirm a tie), whichever needs the smaller sample. A size (S', N') is
    enough when its minimum detectable effect (interval half-width + the 80 % power margin, computed
    exactly as for the current size) is at most that effect, with the projected variance of
    :class:`VarianceComponents` ``V(S', N') = seed/S' + example/N' + residual/(S' N')`` split into its
    mean-square terms. We search the smallest N' > N at S seeds and the smallest S' > S at N
    examples. More examples cannot beat ``seed/S``; more seeds cannot beat ``example/N``: such a route
    gives None. With one stochastic seed the seed variance is unknown and taken as 0 (said in the text).
    """
    S, N = comps.n_seeds, comps.n_examples
    effect = max([abs(diff)] + ([tie_margin - abs(diff)] if tie_margin > abs(diff) else []))
    if effect <= 0:
        return None, None, "no difference was observed; only a tie margin (tie_margin > 0) could settle it"
    goal = (f"to confirm a tie within +-{tie_margin:g}" if effect != abs(diff)
            else f"to confirm a difference of {diff:+.3g}")

    def enough(n_seeds: int, n_examples: int) -> bool:
        terms = _projected(comps, n_seeds, n_examples)
        return _half_width(terms, 1 - alpha) + _half_width(terms, 2 * _Z_POWER - 1) <= effect

    n_new = _smallest(lambda n: enough(S, n), N + 1, max(_MAX_EXAMPLES, N + 1))
    more_examples = None if n_new is None else n_new - N
    more_seeds = None
    if seeds_can_vary and comps.seed is not None:
        s_new = _smallest(lambda s: enough(s, N), S + 1, max(_MAX_SEEDS, S + 1))
        more_seeds = None if s_new is None else s_new - S
    routes = []
    if more_examples is not None:
        routes.append(f"about {more_examples} more test examples (same {S} seed{'s' * (S != 1)})")
    if more_seeds is not None:
        routes.append(f"about {more_seeds} more seeds (same {N} examples)")
    text = "unresolved: " + (" or ".join(routes) + f" would give 80% power {goal}" if routes else f"no practical route {goal}")
    if more_examples is None:
        text += "; more test examples alone cannot do it (the seed-to-seed spread remains)"
    if more_seeds is None:
        if not seeds_can_vary:
            text += "; more seeds cannot help (both runs are deterministic)"
        elif comps.seed is None:
            text += "; run at least 2 seeds to measure seed variation (assumed 0 above)"
        else:
            text += "; more seeds alone cannot do it (the test set's own sampling remains)"
    return more_examples, more_seeds, text


def compare(a: Scores, b: Scores, *, higher_is_better: bool = True, tie_margin: float = 0.0,
            statistic: Statistic = mean, metric_range: tuple[float, float] | None = None, alpha: float = 0.05,
            n_resamples: int = 2000, n_permutations: int = 2000, random_seed: int | None = 0) -> Comparison:
    """Paired comparison of two configurations on their shared seeds and examples (``a - b``).

    A deterministic side (``ScoreTable.from_deterministic``) pairs with every seed of the other one.
    Raises ValueError when the two share no example id or no seed.
    """
    _check_alpha(alpha)
    if tie_margin < 0:
        raise ValueError("tie_margin must be >= 0")
    bounds = _check_range(metric_range)
    ta, tb = _table(a), _table(b)
    va, vb, counts = _pair(ta, tb)
    S, N, _ = va.shape
    both_deterministic = ta.deterministic and tb.deterministic
    rng = np.random.default_rng(random_seed)
    boot = _bootstrap([va, vb], statistic, both_deterministic, alpha, n_resamples, rng)
    a_value = float(_apply(statistic, va).mean())
    b_value = float(_apply(statistic, vb).mean())
    diff = boot.value

    half = _half_width(boot.terms, 1 - alpha)
    width_bounds = None if bounds is None else (-(bounds[1] - bounds[0]), bounds[1] - bounds[0])
    lo, hi = _clip(diff - half, diff + half, width_bounds)
    p_lo, p_hi = _clip(*boot.percentile, width_bounds)

    reasons = []
    if N < 2:
        reasons.append(f"only {N} shared example: at least 2 independent examples are needed")
    if np.array_equal(va, vb):
        reasons.append("a and b are identical on every shared example and seed")
    elif boot.se <= 1e-9 * max(1.0, abs(a_value), abs(b_value)):
        reasons.append(f"zero-width interval: the difference ({diff:+.4g}) is the same on every resample, "
                       "so there is no variation to measure uncertainty from")
    if N >= 2 and not np.array_equal(va, vb):
        p, n_perm, exact = _permutation_p(va, vb, statistic, diff, n_permutations, rng)
    else:
        p, n_perm, exact = 1.0, 0, False

    verdict = _verdict(lo, hi, p, alpha, tie_margin, higher_is_better, bool(reasons))
    mde = half + _half_width(boot.terms, 2 * _Z_POWER - 1)
    return Comparison(
        difference=diff, lo=lo, hi=hi, se=boot.se, df=boot.df, p_value=p, verdict=verdict, degenerate=tuple(reasons),
        a_value=a_value, b_value=b_value, n_seeds=S, n_examples=N, deterministic=both_deterministic, **counts, mde=mde,
        components=boot.components, percentile_lo=p_lo, percentile_hi=p_hi,
        higher_is_better=higher_is_better, tie_margin=tie_margin, alpha=alpha, n_permutations=n_perm, exact_p=exact,
    )


# ---------------------------------------------------------------------------------------------
# one winner against several others
# ---------------------------------------------------------------------------------------------


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order (family-wise error <= alpha when adjusted p < alpha).

    Sort p ascending, p_(1) <= ... <= p_(m); adjusted p_(j) = max over k <= j of min(1, (m - k + 1) p_(k)).
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError("pvalues must be a flat sequence")
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("p-values must be in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


@dataclass(frozen=True)
class FamilyRow:
    """The best configuration against one other: ``comparison`` is best - other; verdict uses the Holm p."""

    name: str
    comparison: Comparison
    p_adjusted: float
    verdict: Verdict  # what the best is relative to this one, after Holm
    family_size: int = 1

    @cached_property
    def advice(self) -> str:
        """What would resolve an unresolved row, planned at alpha / family size (Holm's strictest step)."""
        c = self.comparison
        if self.verdict != "not enough evidence" or c.degenerate:
            return ""
        return _resolve(c.difference, c.tie_margin, c.components, c.alpha / self.family_size, not c.deterministic)[2]


@dataclass(frozen=True)
class BestComparison:
    best: str
    estimates: dict[str, Estimate]
    rows: tuple[FamilyRow, ...]


def compare_to_best(configs: Mapping[str, Scores], *, higher_is_better: bool = True, tie_margin: float = 0.0,
                    statistic: Statistic = mean, metric_range: tuple[float, float] | None = None, alpha: float = 0.05,
                    n_resamples: int = 2000, n_permutations: int = 2000, random_seed: int | None = 0) -> BestComparison:
    """Pick the best configuration by point estimate (first on ties) and compare it with each other one.

    The p-values of the m - 1 comparisons are Holm-adjusted; a row's "better"/"worse" needs adjusted
    p < alpha and the interval excluding 0 ("tied" and the degenerate rules are as in :func:`compare`).
    Every comparison uses the same ``random_seed``, so a row does not depend on the others.
    """
    if not configs:
        raise ValueError("no configurations")
    opts: dict[str, Any] = dict(statistic=statistic, metric_range=metric_range, alpha=alpha,
                                n_resamples=n_resamples, random_seed=random_seed)
    estimates = {name: estimate(scores, **opts) for name, scores in configs.items()}
    sign = 1.0 if higher_is_better else -1.0
    best = max(estimates, key=lambda name: sign * estimates[name].value)  # max keeps the first of equals
    others = [name for name in configs if name != best]
    comparisons = [compare(configs[best], configs[name], higher_is_better=higher_is_better, tie_margin=tie_margin,
                           n_permutations=n_permutations, **opts) for name in others]
    adjusted = holm([c.p_value for c in comparisons])
    rows = tuple(
        FamilyRow(name, c, p_adj, _verdict(c.lo, c.hi, p_adj, alpha, tie_margin, higher_is_better, bool(c.degenerate)),
                  family_size=len(others))
        for name, c, p_adj in zip(others, comparisons, adjusted)
    )
    return BestComparison(best, estimates, rows)


# ---------------------------------------------------------------------------------------------
# degenerate runs
# ---------------------------------------------------------------------------------------------


def _per_seed(x: Any) -> dict[Any, Any] | None:
    """{seed: value} when x is a mapping of mappings/sequences keyed by seed, else None (one run)."""
    if isinstance(x, Mapping) and x and all(isinstance(v, (Mapping, list, tuple, np.ndarray)) for v in x.values()):
        return dict(x)
    return None


def degenerate_reasons(predictions: Mapping[Any, Any], base_predictions: Mapping[Any, Any] | None = None,
                       losses: Sequence[float] | Mapping[Any, Sequence[float]] | None = None) -> list[str]:
    """Plain-words reasons not to rank a run as if it were normal (empty list: nothing found).

    ``predictions``: ``{seed: {example_id: prediction}}`` (any hashable prediction) or ``{example_id:
    prediction}`` for one run; ``base_predictions``: the base model's ``{example_id: prediction}`` (or per
    seed); ``losses``: one training-loss curve, or ``{seed: curve}``. Flags constant predictions (one
    class, with >= 2 examples), predictions identical to the base on every shared example, and a loss
    that never fell below its first value or became non-finite.
    """
    reasons: list[str] = []
    runs = _per_seed(predictions) or {None: predictions}
    base_runs = _per_seed(base_predictions) if base_predictions is not None else None

    def tag(seed: Any) -> str:
        return "" if seed is None else f"seed {seed}: "

    for seed, preds in runs.items():
        values = list(preds.values())
        if len(values) >= 2 and all(v == values[0] for v in values[1:]):
            reasons.append(f"{tag(seed)}constant predictions (one class: {values[0]!r}) on all {len(values)} examples")
        if base_predictions is not None:
            base = base_runs.get(seed) if base_runs is not None else base_predictions
            if base:
                shared = [i for i in preds if i in base]
                if shared and all(preds[i] == base[i] for i in shared):
                    reasons.append(f"{tag(seed)}identical to base on every example ({len(shared)} of {len(shared)})")
    if losses is not None:
        curves = dict(losses) if isinstance(losses, Mapping) else {None: losses}
        for seed, curve in curves.items():
            c = np.asarray(list(curve), dtype=float)
            if c.size == 0:
                continue
            if not np.all(np.isfinite(c)):
                reasons.append(f"{tag(seed)}loss became non-finite ({c[~np.isfinite(c)][0]})")
            elif c.size >= 2 and np.min(c[1:]) >= c[0]:
                reasons.append(f"{tag(seed)}loss never fell below its start ({c[0]:.4g})")
    return reasons
