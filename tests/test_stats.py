"""peftlab.report.stats: hand-worked cases, the issue's degenerate cases, and simulations that can fail.

The simulations draw per-example scores with a known truth (seed effects, example effects, method x
example effects), run the real public functions, and check the 95 % intervals' coverage (93-97 %) and
the false-positive rate of "better"/"worse" (<= 5 %). The truth is the expectation over training seeds
and over the example population (the estimand of stats.py), so a fresh test set and fresh seed
effects are drawn for every simulated experiment. Fixed RNG seeds make every number deterministic.
To fit the time budget the simulations use 400 bootstrap resamples and 400 permutations per
experiment (the defaults are 2000 / 2000).

For the record, a wider grid run the same way outside the test (1000 experiments per cell, Monte
Carlo error ~ +-0.7 points; binary: seed shift sd 0 / 0.15 / 0.3 on the logit scale, continuous: seed
sd 0 / 1 / 3 against noise sd 10; "percentile" is the plain two-level bootstrap percentile interval):

    3 seeds x 200 examples  difference 94.7-96.9 %  (percentile 81.5-99.3)  one config 93.9-96.4 %
                            (percentile 87.4-98.3)  "better"/"worse" with no true difference 0.9-4.3 %
    2 seeds x 200           difference 94.5-97.8 %  one config 91.9-96.3 %  false calls 0.5-5.6 %
    5 seeds x 200           difference 94.8-95.9 %  one config 94.0-95.8 %  false calls 1.5-5.0 %
    3 seeds x 40            difference 96.7-98.7 %  one config 95.7-96.6 %  false calls 0.6-4.0 %
    1 seed (t, N - 1 d.f.)  95 % without seed effects; 48-91 % with them (seed variation is unmeasurable)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.special import expit

from peftlab.report import stats as st

# ---------------------------------------------------------------------------------------------
# hand-worked cases
# ---------------------------------------------------------------------------------------------

# 2 seeds x 4 examples. By hand: seed means 3, 4 (grand mean 3.5); example means 2, 2, 4, 6.
#   MS_seed    = N * sum (seed mean - 3.5)^2 / (S - 1)      = 4 * 0.5 / 1        = 2
#   MS_example = S * sum (example mean - 3.5)^2 / (N - 1)   = 2 * 11 / 3         = 22/3
#   residuals y - example mean - seed mean + 3.5 are +-0.5  -> SS = 2, d.f. 3  -> MS_res = 2/3
#   Var(grand mean) = (MS_seed + MS_example - MS_res) / (S N) = (2 + 22/3 - 2/3) / 8 = 13/12
#   Satterthwaite: A = 2/8 (1 d.f.), E = (22/3)/8 (3 d.f.), R = (2/3)/8 (3 d.f.)
#                  nu = (13/12)^2 / (A^2/1 + E^2/3 + R^2/3) = 3.403
HAND = np.array([[1.0, 2.0, 3.0, 6.0], [3.0, 2.0, 5.0, 6.0]])
HAND_VAR = 13 / 12
HAND_DF = (13 / 12) ** 2 / ((2 / 8) ** 2 + (22 / 24) ** 2 / 3 + (2 / 24) ** 2 / 3)


def test_estimate_matches_the_hand_computed_two_way_anova():
    est = st.estimate(HAND, n_resamples=20000)
    assert est.value == 3.5
    assert est.per_seed == (3.0, 4.0)
    assert (est.n_seeds, est.n_examples) == (2, 4)
    assert HAND_DF == pytest.approx(3.403, abs=1e-3)
    # the example part comes from the bootstrap (Monte Carlo error ~1 % at 20000 resamples)
    assert est.se == pytest.approx(math.sqrt(HAND_VAR), rel=0.03)
    assert est.df == pytest.approx(HAND_DF, rel=0.05)
    # half-width = w * fiducial + (1 - w) * Satterthwaite-t, w = seed share A / SE^2 = (2/8) / (13/12);
    # the fiducial (generalized pivot) part checked by a plain Monte Carlo of |Z| sqrt(A/U1 + E/U3 - R/U3'),
    # U_d = chi2_d / d
    rng = np.random.default_rng(0)
    u = [rng.chisquare(d, 400_000) / d for d in (1, 3, 3)]
    pivot = np.abs(rng.standard_normal(400_000)) * np.sqrt(np.maximum(2 / 8 / u[0] + 22 / 24 / u[1] - 2 / 24 / u[2], 0))
    w = (2 / 8) / HAND_VAR
    half = w * np.quantile(pivot, 0.95) + (1 - w) * sps.t.ppf(0.975, HAND_DF) * math.sqrt(HAND_VAR)
    assert est.hi - est.value == pytest.approx(half, rel=0.04)
    assert est.value - est.lo == pytest.approx(est.hi - est.value)
    # the components reproduce the variance they were taken from: seed/S + example/N + residual/(S N)
    c = est.components
    assert c.variance() == pytest.approx(est.se**2, rel=1e-9)
    assert c.residual == pytest.approx(2 / 3, rel=0.05)  # = MS_res
    assert c.seed == pytest.approx((2 - 2 / 3) / 4, rel=0.1)  # (MS_seed - MS_res) / N
    assert c.example == pytest.approx((22 / 3 - 2 / 3) / 2, rel=0.05)  # (MS_example - MS_res) / S


def test_interval_is_clipped_to_the_metric_range_and_percentile_stays_inside():
    scores = (np.random.default_rng(1).random((3, 30)) < 0.95) * 100.0
    free = st.estimate(scores)
    clipped = st.estimate(scores, metric_range=(0, 100))
    assert free.hi > 100  # a t interval can leave the range ...
    assert clipped.hi == 100 and clipped.lo == free.lo > 0  # ... so it is clipped
    assert 0 <= clipped.percentile_lo <= clipped.percentile_hi <= 100
    diff = st.compare(scores, 100 - scores, metric_range=(0, 100))
    assert -100 <= diff.lo <= diff.hi <= 100


def test_deterministic_run_gets_an_example_level_interval_not_zero():
    # the issue's base row: 62.5 % on 40 reviews was reported as "+- 0"
    correct = np.array([1.0] * 25 + [0.0] * 15) * 100
    base = st.ScoreTable.from_deterministic({f"r{i}": x for i, x in enumerate(correct)})
    est = st.estimate(base, metric_range=(0, 100), n_resamples=20000)
    assert est.value == 62.5 and est.deterministic and est.sample_size == "deterministic x 40 examples"
    # binomial standard error with the unbiased (n - 1) variance: sd(scores, ddof=1) / sqrt(40) = 7.75 points
    assert est.se == pytest.approx(np.std(correct, ddof=1) / math.sqrt(40), rel=0.03)
    assert est.df == 39 and est.components.seed == 0
    assert est.hi - est.lo > 25  # +- ~15.7 points, not +- 0
    assert est.notes == ()
    single = st.estimate({7: {f"r{i}": x for i, x in enumerate(correct)}})  # one *stochastic* seed
    assert single.components.seed is None and "seed-to-seed variation is not measured" in single.notes[0]


def test_ids_missing_from_a_seed_are_dropped_and_counted():
    est = st.estimate({0: {"a": 1.0, "b": 0.0, "c": 1.0}, 1: {"a": 1.0, "b": 1.0}})
    assert est.n_examples == 2 and est.value == 0.75
    assert any("1 example ids" in n for n in est.notes)


def test_paired_difference_uses_shared_seeds_and_ids_and_says_so():
    a = {0: {"x": 1.0, "y": 1.0, "z": 0.0, "w": 1.0}, 1: {"x": 1.0, "y": 0.0, "z": 1.0, "w": 0.0}, 2: {"x": 0.0}}
    b = {1: {"x": 0.0, "y": 0.0, "z": 0.0, "v": 1.0}, 0: {"x": 0.0, "y": 1.0, "z": 0.0, "v": 1.0}}
    c = st.compare(a, b)
    # a keeps only the ids all its seeds share (x: seed 2 has no other), so one example is paired
    assert c.n_seeds == 2 and c.seeds_only_in_a == 1 and c.seeds_only_in_b == 0
    assert c.n_examples == 1 and c.ids_only_in_b == 3
    a = {0: {"x": 1.0, "y": 1.0, "z": 0.0, "w": 1.0}, 1: {"x": 1.0, "y": 0.0, "z": 1.0, "w": 0.0}}
    c = st.compare(a, b)
    assert (c.n_seeds, c.n_examples, c.ids_only_in_a, c.ids_only_in_b) == (2, 3, 1, 1)
    # by hand on x, y, z: seed 0: a 2/3, b 1/3; seed 1: a 2/3, b 0 -> difference (1/3 + 2/3) / 2 = 0.5
    assert c.difference == pytest.approx(0.5)
    assert (c.a_value, c.b_value) == pytest.approx((2 / 3, 1 / 6))
    with pytest.raises(ValueError, match="share no example"):
        st.compare({0: {"p": 1.0}}, {0: {"q": 1.0}})
    with pytest.raises(ValueError, match="share no seed"):
        st.compare({0: {"p": 1.0, "q": 0.0}}, {1: {"p": 1.0, "q": 0.0}})


def test_deterministic_side_pairs_with_every_seed():
    rng = np.random.default_rng(3)
    lora = (rng.random((3, 60)) < 0.8) * 100.0
    base_scores = (rng.random(60) < 0.6) * 100.0
    base = st.ScoreTable.from_array(base_scores[None], deterministic=True)
    c = st.compare(lora, base, metric_range=(0, 100))
    assert c.n_seeds == 3 and c.n_examples == 60 and c.seeds_only_in_a == c.seeds_only_in_b == 0
    assert c.difference == pytest.approx(lora.mean() - base_scores.mean())
    assert not c.deterministic and c.components.seed is not None


def test_permutation_p_value_by_hand():
    # one seed, differences 1, 2, 3: the 8 sign flips give sums 6, 4, 2, 0, 0, -2, -4, -6;
    # |sum| >= 6 for 2 of them -> p = 2/8 (exact enumeration)
    c = st.compare(np.array([[1.0, 2.0, 3.0]]), np.zeros((1, 3)))
    assert c.exact_p and c.n_permutations == 8 and c.p_value == 0.25
    # 5 examples, all better: the smallest two-sided p is 2/32 > 0.05, so never "better"
    c = st.compare(np.array([[1.0, 2.0, 3.0, 4.0, 5.0]]), np.zeros((1, 5)))
    assert c.p_value == 2 / 32 and c.verdict == "not enough evidence"


def test_holm_by_hand():
    # sorted: .005 (x4) .01 (x3) .03 (x2) .04 (x1) -> .02, .03, .06, max(.06, .04) = .06
    assert st.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert st.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, monotone
    assert st.holm([0.02]) == [0.02] and st.holm([]) == []
    assert st.holm([0.01, 0.01, 0.5]) == pytest.approx([0.03, 0.03, 0.5])
    with pytest.raises(ValueError):
        st.holm([0.5, 1.5])
    with pytest.raises(ValueError):
        st.holm([float("nan")])


def test_non_mean_statistics_go_through_the_same_path():
    rng = np.random.default_rng(5)
    # perplexity from (nll_sum, n_tokens): exp(total nll / total tokens), per seed, then averaged
    tokens = rng.integers(5, 30, size=(2, 50)).astype(float)
    nll = tokens * rng.uniform(1.5, 2.5, size=(2, 50))
    table = np.stack([nll, tokens], axis=-1)
    est = st.estimate(table, statistic=st.perplexity)
    by_hand = np.mean([math.exp(nll[s].sum() / tokens[s].sum()) for s in range(2)])
    assert est.value == pytest.approx(by_hand)
    assert est.lo < est.value < est.hi
    # F1 from (pred, gold): by hand on 6 examples: TP = 2, FP = 1, FN = 1 -> F1 = 4 / 6
    pred, gold = [1, 1, 1, 0, 0, 0], [1, 1, 0, 1, 0, 0]
    records = np.array([[pred, gold]]).transpose(0, 2, 1)  # (1 seed, 6 examples, 2 columns)
    assert st.estimate(records, statistic=st.f1()).value == pytest.approx(100 * 4 / 6)
    assert st.estimate(records, statistic=st.precision()).value == pytest.approx(100 * 2 / 3)
    assert st.estimate(records, statistic=st.recall()).value == pytest.approx(100 * 2 / 3)
    assert st.estimate(np.array([[[0, 1], [0, 0]]]), statistic=st.f1()).value == 0  # 0/0 -> 0
    # a plain per-row metric gives the same answer as the vectorised one (same resamples)
    gold = rng.integers(0, 2, size=(3, 80))
    pa = np.where(rng.random((3, 80)) < 0.8, gold, 1 - gold)
    pb = np.where(rng.random((3, 80)) < 0.7, gold, 1 - gold)
    ra, rb = np.stack([pa, gold], -1), np.stack([pb, gold], -1)

    def f1_rows(rows):
        tp = np.sum((rows[:, 0] == 1) & (rows[:, 1] == 1))
        return 100 * 2 * tp / (np.sum(rows[:, 0] == 1) + np.sum(rows[:, 1] == 1))

    fast = st.compare(ra, rb, statistic=st.f1(), n_resamples=200, n_permutations=200)
    slow = st.compare(ra, rb, statistic=st.per_row(f1_rows), n_resamples=200, n_permutations=200)
    assert (slow.difference, slow.lo, slow.hi, slow.p_value) == pytest.approx((fast.difference, fast.lo, fast.hi, fast.p_value))
    assert 0 < fast.p_value < 1


def test_results_are_reproducible_and_random_seed_matters():
    rng = np.random.default_rng(11)
    a, b = rng.normal(1, 3, (3, 100)), rng.normal(0, 3, (3, 100))
    assert st.compare(a, b) == st.compare(a, b)
    assert st.compare(a, b).percentile_lo != st.compare(a, b, random_seed=1).percentile_lo


# ---------------------------------------------------------------------------------------------
# verdicts, and the issue's degenerate cases
# ---------------------------------------------------------------------------------------------


def test_issue_case_identical_per_example_differences_is_never_better():
    # per-seed means A = [81, 83], B = [80, 82]; every per-example difference is exactly +1
    rng = np.random.default_rng(0)
    b = rng.normal(0, 5, size=(2, 50))
    b = b - b.mean(axis=1, keepdims=True) + np.array([[80.0], [82.0]])
    a = b + 1.0
    assert a.mean(axis=1) == pytest.approx([81, 83])
    c = st.compare(a, b)
    assert c.difference == pytest.approx(1.0)
    assert c.verdict == "not enough evidence"
    assert c.degenerate and "zero-width" in c.degenerate[0]
    assert c.more_examples is None and c.more_seeds is None
    # the old data: only per-seed means (one "example" per seed)
    c = st.compare({0: {"mean": 81.0}, 1: {"mean": 83.0}}, {0: {"mean": 80.0}, 1: {"mean": 82.0}})
    assert c.verdict == "not enough evidence" and "at least 2" in c.degenerate[0]
    # and inside a family with Holm
    fam = st.compare_to_best({"A": a, "B": b, "C": b - 5})
    assert fam.best == "A"
    assert [r.verdict for r in fam.rows if r.name == "B"] == ["not enough evidence"]
    # identical runs are never "tied" by accident of a zero-width interval either
    c = st.compare(a, a.copy(), tie_margin=1.0)
    assert c.verdict == "not enough evidence" and "identical" in c.degenerate[0]


def test_verdict_words_and_direction():
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 1, (3, 300))
    base = rng.normal(0, 1, (3, 300))
    good = st.compare(base + 2 + noise, base)
    assert good.verdict == "better" and good.lo > 0 and good.p_value < 0.05 and good.advice == ""
    assert st.compare(base, base + 2 + noise).verdict == "worse"
    # lower is better (e.g. perplexity): a lower a is "better"
    assert st.compare(base, base + 2 + noise, higher_is_better=False).verdict == "better"
    # tiny difference, tight interval inside +-0.5 -> "tied"
    tied = st.compare(base + 0.01 * noise, base, tie_margin=0.5)
    assert tied.verdict == "tied" and -0.5 <= tied.lo <= tied.hi <= 0.5
    # same data without a margin: no tie can be declared
    assert st.compare(base + 0.01 * noise, base).verdict in ("not enough evidence", "better", "worse")


def test_power_and_what_would_resolve_it():
    rng = np.random.default_rng(4)
    S, N = 3, 100
    # example-dominated: the methods differ example by example (the same in every seed), no seed effect
    b = rng.normal(0, 0.1, (S, N))
    a = 0.1 + rng.normal(0, 3, (1, N)) + rng.normal(0, 0.1, (S, N))
    c = st.compare(a, b)
    assert c.verdict == "not enough evidence"
    assert c.mde > (c.hi - c.lo) / 2 > 0
    assert c.mde > abs(c.difference)  # consistent: an effect below the MDE is not resolved
    assert c.more_examples is not None and c.more_examples > 0 and "more test examples" in c.advice
    assert c.more_seeds is None and "more seeds alone cannot" in c.advice  # a fixed test set stays fixed
    # seed-dominated: large seed effects, almost no example noise -> more examples cannot help
    seeds = rng.normal(0, 3, (S, 1))
    c = st.compare(0.5 + seeds + rng.normal(0, 0.01, (S, N)), rng.normal(0, 0.01, (S, N)))
    assert c.verdict == "not enough evidence"
    assert c.more_examples is None and c.more_seeds is not None and c.more_seeds > 0
    assert "more test examples alone cannot" in c.advice
    # both deterministic: more seeds cannot help
    da = st.ScoreTable.from_array(rng.normal(0.2, 3, (1, N)), deterministic=True)
    db = st.ScoreTable.from_array(rng.normal(0.0, 3, (1, N)), deterministic=True)
    c = st.compare(da, db)
    assert c.deterministic and c.more_seeds is None and "deterministic" in c.advice
    # one source of variation with N - 1 d.f.: the MDE is the textbook (t(0.975) + t(0.8)) * SE
    assert c.mde == pytest.approx((sps.t.ppf(0.975, N - 1) + sps.t.ppf(0.8, N - 1)) * c.se, rel=0.01)
    # the projection reproduces the current variance and shrinks the right parts
    comp = c.components
    assert comp.variance() == pytest.approx(c.se**2)
    assert comp.variance(n_examples=4 * N) == pytest.approx(c.se**2 / 4)


def test_compare_to_best_applies_holm():
    rng = np.random.default_rng(8)
    base = rng.normal(0, 1, (3, 200))
    configs = {"weak": base + rng.normal(0, 1, (3, 200)), "best": base + 0.6 + rng.normal(0, 1, (3, 200)),
               "close": base + 0.5 + rng.normal(0, 1, (3, 200)), "bad": base - 1 + rng.normal(0, 1, (3, 200))}
    fam = st.compare_to_best(configs, n_resamples=500, n_permutations=500)
    assert fam.best == "best" and [r.name for r in fam.rows] == ["weak", "close", "bad"]
    raw = [r.comparison.p_value for r in fam.rows]
    assert [r.p_adjusted for r in fam.rows] == pytest.approx(st.holm(raw))
    for r in fam.rows:
        expected_better = r.p_adjusted < 0.05 and r.comparison.lo > 0
        assert (r.verdict == "better") == expected_better
        assert r.p_adjusted >= r.comparison.p_value
    assert {r.name: r.verdict for r in fam.rows}["bad"] == "better"
    # lower is better: the smallest value wins
    low = st.compare_to_best(configs, higher_is_better=False, n_resamples=200, n_permutations=200)
    assert low.best == "bad"
    assert st.compare_to_best({"only": base}).rows == ()


def test_degenerate_reasons():
    preds = {0: {"a": "pos", "b": "pos", "c": "pos"}, 1: {"a": "pos", "b": "neg", "c": "pos"}}
    base = {"a": "pos", "b": "neg", "c": "pos"}
    reasons = st.degenerate_reasons(preds, base, losses=[2.0, 2.1, 2.05])
    assert reasons == [
        "seed 0: constant predictions (one class: 'pos') on all 3 examples",
        "seed 1: identical to base on every example (3 of 3)",
        "loss never fell below its start (2)",
    ]
    assert st.degenerate_reasons({"a": 1, "b": 0}, {"a": 1, "b": 1}, losses=[2.0, 1.5]) == []
    assert st.degenerate_reasons({"a": 1}) == []  # one example is not "constant"
    assert "non-finite" in st.degenerate_reasons({"a": 1, "b": 0}, losses={3: [2.0, float("nan")]})[0]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="non-finite"):
        st.estimate(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="metric_range"):
        st.estimate(np.ones((1, 3)), metric_range=(1, 0))
    with pytest.raises(ValueError, match="columns"):
        st.estimate({0: {"a": 1.0, "b": (1.0, 2.0)}})
    with pytest.raises(ValueError, match="statistic returned shape"):
        st.estimate(np.ones((2, 3)), statistic=lambda x: np.mean(x))
    with pytest.raises(TypeError):
        st.estimate([[1.0, 2.0]])


# ---------------------------------------------------------------------------------------------
# simulation: coverage and false positives with a known truth
# ---------------------------------------------------------------------------------------------

S_SIM, N_SIM, REPS, B_SIM = 3, 200, 500, 400
REPS_ESTIMATE = 1000  # estimate() is cheaper; more experiments narrow the Monte Carlo error (+-0.7 points)
GH_X, GH_W = np.polynomial.hermite_e.hermegauss(80)


def _binary_truth(beta: float, sd: float) -> float:
    """E over seeds and examples of P(correct) = E[expit(beta + sd Z)], Z ~ N(0, 1), in points."""
    return 100 * float(np.sum(GH_W * expit(beta + sd * GH_X)) / np.sum(GH_W))


def _binary(rng, betas, sd_example=1.5, sd_method_example=0.5, sd_seed=0.15):
    """Correct (100) / wrong (0) per seed x example for each method: logit = beta + difficulty_i +
    method-specific example effect + seed shift (fresh seed shifts per method and per experiment)."""
    difficulty = rng.normal(0, sd_example, N_SIM)
    out = []
    for beta in betas:
        logit = (beta + difficulty + rng.normal(0, sd_method_example, N_SIM))[None] + rng.normal(0, sd_seed, (S_SIM, 1))
        out.append((rng.random((S_SIM, N_SIM)) < expit(logit)) * 100.0)
    sd = math.sqrt(sd_example**2 + sd_method_example**2 + sd_seed**2)
    return out, [_binary_truth(beta, sd) for beta in betas]


def _continuous(rng, means, sd_example=10.0, sd_method_example=3.0, sd_seed=1.0, sd_noise=10.0):
    """A continuous score (e.g. a per-example F1 or BLEU) = mean + example effect + method x example
    effect + seed effect + noise."""
    example = rng.normal(0, sd_example, N_SIM)
    out = [m + example + rng.normal(0, sd_method_example, N_SIM) + rng.normal(0, sd_seed, (S_SIM, 1))
           + rng.normal(0, sd_noise, (S_SIM, N_SIM)) for m in means]
    return out, list(means)


def _simulate(draw, params, seed):
    rng = np.random.default_rng(seed)
    covered = called = 0
    for k in range(REPS):
        (a, b), (ta, tb) = draw(rng, params)
        c = st.compare(a, b, n_resamples=B_SIM, n_permutations=B_SIM, random_seed=k)
        covered += c.lo <= ta - tb <= c.hi
        called += c.verdict in ("better", "worse")
    return 100 * covered / REPS, 100 * called / REPS


SCENARIOS = {
    # name: (draw, parameters with a true difference, parameters with none)
    "binary": (_binary, (1.2, 1.0), (1.1, 1.1)),  # ~73 % vs ~70 % accuracy: +3 points
    "continuous": (_continuous, (2.0, 0.0), (0.0, 0.0)),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_simulated_difference_interval_covers_the_truth(name):
    draw, params, _ = SCENARIOS[name]
    coverage, _ = _simulate(draw, params, seed=100)
    print(f"{name}: coverage of the difference {coverage:.1f}% over {REPS} experiments")
    assert 93.0 <= coverage <= 97.0


@pytest.mark.parametrize("name", SCENARIOS)
def test_simulated_zero_difference_rarely_called(name):
    draw, _, null = SCENARIOS[name]
    coverage, called = _simulate(draw, null, seed=200)
    print(f"{name}: 'better'/'worse' with no true difference {called:.1f}%, coverage {coverage:.1f}%")
    assert called <= 5.0
    assert coverage >= 93.0  # under the null only the liberal side matters


@pytest.mark.parametrize("name", SCENARIOS)
def test_simulated_single_configuration_interval_covers_the_truth(name):
    draw, params, _ = SCENARIOS[name]
    rng = np.random.default_rng(300)
    covered = 0
    for k in range(REPS_ESTIMATE):
        (a, _), (truth, _) = draw(rng, params)
        est = st.estimate(a, n_resamples=B_SIM, random_seed=k, metric_range=(0, 100) if name == "binary" else None)
        covered += est.lo <= truth <= est.hi
    coverage = 100 * covered / REPS_ESTIMATE
    print(f"{name}: coverage of one configuration {coverage:.1f}%")
    assert 93.0 <= coverage <= 97.0


# ---------------------------------------------------------------------------------- named statistics


def test_ratio_and_named_statistics_of_per_example_values():
    """The names a result's `per_example` mapping uses (docs/contracts.md, "Per-example scores")."""
    from peftlab.report import stats as st

    pairs = np.array([[[3.0, 2.0], [1.0, 2.0], [0.0, 0.0]]])  # (seeds, examples, [num, den])
    assert st.ratio(pairs)[0] == pytest.approx(1.0)
    assert st.named_statistic("ratio")(pairs)[0] == pytest.approx(1.0)
    assert st.named_statistic("perplexity")(pairs)[0] == pytest.approx(np.e)
    labels = np.array([[[1, 1], [1, 0], [0, 1], [0, 0]]], dtype=float)  # [pred, gold]
    assert st.named_statistic("f1")(labels)[0] == pytest.approx(50.0)
    assert st.named_statistic("precision")(labels)[0] == pytest.approx(50.0)
    assert st.named_statistic("recall")(labels)[0] == pytest.approx(50.0)
    assert st.named_statistic("mean")(np.array([[[100.0], [0.0]]]))[0] == 50.0
    with pytest.raises(ValueError, match="unknown statistic 'median'"):
        st.named_statistic("median")
