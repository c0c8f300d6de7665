"""Metrics against hand-worked values and scikit-learn (no model, no network)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from peftlab.evaluation import metrics as M

# ---------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------

SKLEARN = {
    M.accuracy: accuracy_score,
    M.precision: lambda t, p: precision_score(t, p, zero_division=0),
    M.recall: lambda t, p: recall_score(t, p, zero_division=0),
    M.f1: lambda t, p: f1_score(t, p, zero_division=0),
}


@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, size=200)
    y_pred = rng.integers(0, 2, size=200)
    for ours, theirs in SKLEARN.items():
        assert ours(y_true.tolist(), y_pred.tolist()) == pytest.approx(100 * theirs(y_true, y_pred))


@pytest.mark.parametrize(
    "y_true, y_pred",
    [
        ([1] * 10, [1] * 10),  # all positive, all right
        ([0] * 10, [0] * 10),  # no positives at all: P, R, F1 are 0/0 -> 0
        ([1] * 10, [0] * 10),  # never predicts the positive class
        ([0] * 10, [1] * 10),  # only false positives
        ([0, 1, 0, 1], [0, 0, 0, 0]),
    ],
)
def test_classification_degenerate_cases_match_sklearn(y_true, y_pred):
    for ours, theirs in SKLEARN.items():
        assert ours(y_true, y_pred) == pytest.approx(100 * theirs(y_true, y_pred))


def test_unparseable_predictions_always_count_as_wrong():
    # gold [1, 0], predictions unreadable: scored as [0, 1] -> tp 0, fn 1, fp 1
    assert M.accuracy([1, 0], [None, -1]) == 0.0
    assert M.precision([1, 0], [None, -1]) == 0.0
    assert M.recall([1, 0], [None, -1]) == 0.0
    assert M.f1([1, 1, 0], [1, None, 0]) == pytest.approx(100 * 2 / 3)  # tp 1, fn 1


def test_classification_input_errors():
    with pytest.raises(ValueError):
        M.accuracy([1, 0], [1])
    with pytest.raises(ValueError):
        M.accuracy([], [])
    with pytest.raises(ValueError):
        M.f1([2, 0], [1, 0])


# ---------------------------------------------------------------------------------------
# SQuAD v1.1
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, normalized",
    [
        ("The  Cat, sat!", "cat sat"),
        ("An apple a day", "apple day"),
        ("  Denver\tBroncos\n", "denver broncos"),
        ("the-end", "theend"),  # punctuation goes first, so "the" is no longer a word
        ("Theatre", "theatre"),  # articles only as whole words
        ("A.B.C.", "abc"),
    ],
)
def test_squad_normalization(raw, normalized):
    assert M.normalize_squad_answer(raw) == normalized


def test_squad_exact_match_cases():
    assert M.squad_exact_match_single("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert M.squad_exact_match_single("Eiffel  tower", ["The eiffel tower"]) == 1.0
    assert M.squad_exact_match_single("Eiffel", ["Eiffel Tower"]) == 0.0
    # any of several gold answers counts
    assert M.squad_exact_match_single("Broncos", ["Denver Broncos", "The Broncos", "Broncos!"]) == 1.0


def test_squad_f1_partial_overlap():
    # pred "the big red dog" -> [big, red, dog]; gold "a red dog barked" -> [red, dog, barked]
    # overlap 2: P = 2/3, R = 2/3, F1 = 2/3
    assert M.squad_f1_single("the big red dog", ["a red dog barked"]) == pytest.approx(2 / 3)
    # multiset overlap: pred [dog, dog, dog], gold [dog, cat] -> overlap min(3, 1) = 1
    # P = 1/3, R = 1/2, F1 = 2 * (1/6) / (5/6) = 0.4
    assert M.squad_f1_single("dog dog dog", ["dog cat"]) == pytest.approx(0.4)
    # max over golds: vs "red cat": P = R = 1/2 -> 0.5; vs "dog": P = 1/2, R = 1 -> 2/3
    assert M.squad_f1_single("red dog", ["red cat", "dog"]) == pytest.approx(2 / 3)
    assert M.squad_f1_single("nothing shared", ["other words"]) == 0.0


def test_squad_empty_answers_follow_v11():
    # both normalise to "": strings are equal (EM 1) but there are no tokens to overlap (F1 0)
    assert M.squad_exact_match_single("", ["the"]) == 1.0
    assert M.squad_f1_single("", ["the"]) == 0.0


def test_squad_corpus_scores_are_percentages():
    preds = ["Denver Broncos", "the big red dog"]
    refs = [["Denver Broncos", "Broncos"], ["a red dog barked"]]
    assert M.squad_exact_match(preds, refs) == pytest.approx(50.0)
    assert M.squad_f1(preds, refs) == pytest.approx(100 * (1 + 2 / 3) / 2)
    with pytest.raises(ValueError):
        M.squad_f1(preds, refs[:1])
    with pytest.raises(ValueError):
        M.squad_f1_single("x", [])


# ---------------------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------------------


def _reference_pass_at_k(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


@pytest.mark.parametrize(
    "n, c, k",
    [
        (10, 0, 1), (10, 0, 10),  # nothing correct
        (10, 10, 1), (10, 10, 10),  # everything correct
        (10, 3, 1), (10, 3, 5), (10, 3, 7),  # n - c = 7 >= k
        (10, 3, 8), (5, 3, 3), (20, 19, 2),  # n - c < k: certain success
        (1, 1, 1), (1, 0, 1),
        (200, 17, 1), (200, 17, 10), (200, 17, 100), (200, 1, 100),
    ],
)
def test_pass_at_k_matches_binomial_formula(n, c, k):
    assert M.pass_at_k(n, c, k) == pytest.approx(_reference_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_hand_values():
    assert M.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert M.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # C(7,5)=21, C(10,5)=252
    assert M.pass_at_k(200, 1, 100) == pytest.approx(0.5)


def test_pass_at_k_errors():
    with pytest.raises(ValueError, match="at least 5 samples"):
        M.pass_at_k(3, 1, 5)
    with pytest.raises(ValueError):
        M.pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        M.pass_at_k(3, 1, 0)


def test_mean_pass_at_k_is_a_percentage():
    # per problem: 0.3, 0.0, 1.0 -> mean 1.3 / 3
    assert M.mean_pass_at_k(10, [3, 0, 10], 1) == pytest.approx(100 * 1.3 / 3)
    assert M.mean_pass_at_k([10, 5], [3, 5], 5) == pytest.approx(100 * ((1 - 21 / 252) + 1) / 2)


# ---------------------------------------------------------------------------------------
# token Jaccard
# ---------------------------------------------------------------------------------------


def test_code_tokens():
    assert M.code_tokens("s = 'a b'  # comment\n") == {"s", "=", "'a b'"}
    assert M.code_tokens("x **= 2") == {"x", "**=", "2"}
    # truncated code: tokens before the failure are kept ...
    assert M.code_tokens("def f(x):\n    return (x +\n") == {"def", "f", "(", "x", ")", ":", "return", "+"}
    # ... and the unreadable rest is split by the regex
    assert M.code_tokens("s = '''abc") == {"s", "=", "'", "abc"}
    assert M.code_tokens("if x:\n        a=1\n    b=2\n") == {"if", "x", ":", "a", "=", "1", "b", "2"}


def test_token_jaccard():
    assert M.token_jaccard("return a + b", "return a + b") == 1.0
    assert M.token_jaccard("", "") == 1.0
    assert M.token_jaccard("", "x") == 0.0
    # {return, a, +, b} vs {return, a, -, b}: 3 shared of 5
    assert M.token_jaccard("return a + b", "return a - b") == pytest.approx(0.6)
    # layout and comments do not count
    assert M.token_jaccard("x = 1  # set x\n\n", "x=1") == 1.0
    assert M.mean_token_jaccard(["a", "a"], ["a", "b"]) == pytest.approx(50.0)


# ---------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------


def test_rouge_tokenize_matches_rouge_score_default():
    assert M.rouge_tokenize("Hello, World! It's 2024.") == ["hello", "world", "it", "s", "2024"]


def test_rouge_l_hand_worked():
    # LCS(the cat sat on the mat, the cat is on the mat) = the cat on the mat = 5 of 6 and 6
    assert M.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # [a b c d] vs [a x c]: LCS 2 -> P = 2/4, R = 2/3 -> F = (2/3) / (7/6) = 4/7
    assert M.rouge_l("A B C D", "a x c") == pytest.approx(4 / 7)
    # order matters: LCS("b a", "a b") = 1 -> P = R = 1/2
    assert M.rouge_l("b a", "a b") == pytest.approx(0.5)
    assert M.rouge_l("Hello, world!", "hello world") == 1.0
    assert M.rouge_l("", "hello") == 0.0
    assert M.rouge_l("!!!", "hello") == 0.0  # no tokens left
    assert M.rouge_l("x y", "z") == 0.0


def test_rouge_l_multiple_references_and_mean():
    assert M.rouge_l("the cat", ["a dog", "the cat"]) == 1.0
    assert M.mean_rouge_l(["the cat", "b a"], ["the cat", "a b"]) == pytest.approx(75.0)


# ---------------------------------------------------------------------------------------
# perplexity, math
# ---------------------------------------------------------------------------------------


def test_perplexity_helpers():
    assert M.perplexity_from_nll(4 * math.log(10), 4) == pytest.approx(10.0)
    # same total NLL over 3 whitespace words: exp(6 log 2 / 3) = 4
    assert M.word_perplexity_from_nll(6 * math.log(2), ["a  b", "c\n"]) == pytest.approx(4.0)
    assert M.word_perplexity_from_nll(6 * math.log(2), 3) == pytest.approx(4.0)
    assert M.perplexity_from_nll(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        M.perplexity_from_nll(1.0, 0)


def test_math_exact_match():
    preds = ["1,000", "0.75", None, "x+1"]
    golds = ["1000.0", "3/4", "5", "x + 1"]
    assert M.math_exact_match(preds, golds) == pytest.approx(75.0)


# ---------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------


def test_registry_and_directions():
    assert M.get_metric("accuracy").higher_is_better
    assert not M.get_metric("perplexity").higher_is_better
    assert not M.get_metric("format_error_rate").higher_is_better
    assert M.get_metric("pass@5").fn(10, [3]) == pytest.approx(100 * (1 - 21 / 252))
    assert M.metric_directions(["perplexity", "f1", "pass@1"]) == {
        "perplexity": "lower", "f1": "higher", "pass@1": "higher"}
    for name, metric in M.METRICS.items():
        assert metric.name == name and metric.description and callable(metric.fn)
    with pytest.raises(ValueError, match="accuracy"):
        M.get_metric("acuracy")
    assert M.get_metric("exact_match_strict").fn(["#### 5", "no"], ["5", "5"]) == 50.0
