"""Metrics, implemented from their definitions, and a registry that records their direction.

Scale convention: per-example helpers return fractions or probabilities in [0, 1]; every
corpus-level rate that ends up in a result (accuracy, F1, SQuAD EM/F1, pass@k, ROUGE-L,
token Jaccard, math exact match, format-error rate) is a **percentage (0-100)**, the scale of
the official SQuAD script and of the papers these numbers are compared with, so a results
table never mixes 0.87 and 87.0. Perplexities are plain positive numbers (lower is better).

Directions ("higher" or "lower" is better) have one source each: a task's YAML declares the
direction of every metric it reports (`metrics:`); the registry here (:data:`METRICS`,
:data:`DIRECTIONS`, :func:`direction_of`) gives it for any other metric name a result or a report
meets. Nothing guesses a direction from a metric's name.
"""

from __future__ import annotations

import io
import math
import re
import string
import tokenize
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from peftlab.evaluation.answers import answers_match, score_math

__all__ = [
    "Metric",
    "METRICS",
    "get_metric",
    "metric_directions",
    "DIRECTIONS",
    "direction_of",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "normalize_squad_answer",
    "squad_exact_match_single",
    "squad_f1_single",
    "squad_exact_match",
    "squad_f1",
    "pass_at_k",
    "mean_pass_at_k",
    "code_tokens",
    "token_jaccard",
    "mean_token_jaccard",
    "rouge_tokenize",
    "rouge_l",
    "mean_rouge_l",
    "perplexity_from_nll",
    "count_words",
    "word_perplexity_from_nll",
    "math_exact_match",
]


@dataclass(frozen=True)
class Metric:
    """A named metric: how to compute it and which direction is better."""

    name: str
    higher_is_better: bool
    fn: Callable
    description: str = ""

    @property
    def direction(self) -> str:
        """``"higher"`` or ``"lower"``, the spelling stored in ``result.json``."""
        return "higher" if self.higher_is_better else "lower"


# ---------------------------------------------------------------------------------------
# Binary classification
# ---------------------------------------------------------------------------------------


def _confusion(y_true: Sequence[int], y_pred: Sequence[int | None]) -> tuple[int, int, int, int]:
    """(tp, fp, fn, tn) with positive class 1.

    Gold labels must be 0/1. A prediction that is not 0 or 1 (``None`` or -1 for a
    generation no label word could be read from) is scored as the *wrong* class for its
    example, so an unparseable output can never help any of the four metrics.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if len(y_true) == 0:
        raise ValueError("classification metrics need at least one example")
    true = np.asarray(y_true)
    if not np.isin(true, (0, 1)).all():
        raise ValueError("gold labels must be 0 or 1 (binary, positive class 1)")
    true = true.astype(np.int64)
    pred_raw = np.asarray([-1 if p is None else p for p in y_pred])
    valid = np.isin(pred_raw, (0, 1))
    pred = np.where(valid, pred_raw, 1 - true).astype(np.int64)
    tp = int(np.sum((pred == 1) & (true == 1)))
    fp = int(np.sum((pred == 1) & (true == 0)))
    fn = int(np.sum((pred == 0) & (true == 1)))
    tn = int(np.sum((pred == 0) & (true == 0)))
    return tp, fp, fn, tn


def _ratio(num: int, den: int) -> float:
    """num/den with 0.0 for 0/0 (scikit-learn's ``zero_division=0``)."""
    return num / den if den else 0.0


def accuracy(y_true: Sequence[int], y_pred: Sequence[int | None]) -> float:
    """Percentage of examples whose prediction equals the gold label.

    Counted from the confusion matrix so that invalid predictions are wrong by construction.
    """
    tp, fp, fn, tn = _confusion(y_true, y_pred)
    return 100.0 * (tp + tn) / (tp + fp + fn + tn)


def precision(y_true: Sequence[int], y_pred: Sequence[int | None]) -> float:
    """Percentage of positive predictions that are positive: tp / (tp + fp); 0 if none."""
    tp, fp, _, _ = _confusion(y_true, y_pred)
    return 100.0 * _ratio(tp, tp + fp)


def recall(y_true: Sequence[int], y_pred: Sequence[int | None]) -> float:
    """Percentage of positive examples predicted positive: tp / (tp + fn); 0 if none."""
    tp, _, fn, _ = _confusion(y_true, y_pred)
    return 100.0 * _ratio(tp, tp + fn)


def f1(y_true: Sequence[int], y_pred: Sequence[int | None]) -> float:
    """Binary F1 of the positive class, as a percentage.

    Written as 2tp / (2tp + fp + fn), which equals the harmonic mean of precision and recall
    whenever that is defined and gives 0 (scikit-learn's ``zero_division=0``) when it is not.
    """
    tp, fp, fn, _ = _confusion(y_true, y_pred)
    return 100.0 * _ratio(2 * tp, 2 * tp + fp + fn)


# ---------------------------------------------------------------------------------------
# SQuAD v1.1
# ---------------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES_RE = re.compile(r"\b(a|an|the)\b")


def normalize_squad_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation, in its order.

    Lower-case, drop every ``string.punctuation`` character, replace the whole words
    a/an/the by a space, collapse whitespace. Following the official order matters: the
    article regex runs *after* punctuation removal, so "the-end" becomes "theend" and keeps
    its "the". Scores are only comparable with published numbers under this exact recipe.
    """
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES_RE.sub(" ", text)
    return " ".join(text.split())


def _check_golds(golds: Sequence[str]) -> None:
    if isinstance(golds, str) or len(golds) == 0:
        raise ValueError("gold answers must be a non-empty list of strings")


def squad_exact_match_single(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0.

    The max over golds is how SQuAD credits any of the several annotator answers.
    """
    _check_golds(golds)
    pred = normalize_squad_answer(prediction)
    return float(any(pred == normalize_squad_answer(g) for g in golds))


def _token_f1(prediction: str, gold: str) -> float:
    """Token-level F1 over normalised tokens with multiset (Counter) overlap.

    As in SQuAD v1.1, no overlap - including both sides empty - scores 0.
    """
    pred_tokens = normalize_squad_answer(prediction).split()
    gold_tokens = normalize_squad_answer(gold).split()
    overlap = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    p = overlap / len(pred_tokens)
    r = overlap / len(gold_tokens)
    return 2 * p * r / (p + r)


def squad_f1_single(prediction: str, golds: Sequence[str]) -> float:
    """Best token F1 (in [0, 1]) of the prediction against any gold answer."""
    _check_golds(golds)
    return max(_token_f1(prediction, g) for g in golds)


def _mean_percent(values: Iterable[float]) -> float:
    values = list(values)
    if not values:
        raise ValueError("need at least one example")
    return 100.0 * sum(values) / len(values)


def squad_exact_match(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus exact match: mean per-question EM x 100, as the official script reports it."""
    _check_lengths(predictions, references)
    return _mean_percent(squad_exact_match_single(p, g) for p, g in zip(predictions, references))


def squad_f1(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus F1: mean per-question best-gold token F1 x 100, as the official script."""
    _check_lengths(predictions, references)
    return _mean_percent(squad_f1_single(p, g) for p, g in zip(predictions, references))


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


# ---------------------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased probability that at least one of k samples (of n, c correct) passes.

    1 - C(n-c, k) / C(n, k), evaluated as 1 - prod_{i=n-c+1}^{n} (1 - k/i) (Chen et al.,
    2021, "Evaluating Large Language Models Trained on Code"): the binomials overflow
    floats for realistic n, the product does not. If fewer than k samples are wrong
    (n - c < k) every k-subset contains a correct one, so the value is exactly 1.
    """
    if not (isinstance(n, (int, np.integer)) and isinstance(c, (int, np.integer)) and isinstance(k, (int, np.integer))):
        raise TypeError("n, c and k must be integers")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(num_samples: Sequence[int] | int, num_correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems, as a percentage.

    ``num_samples`` may be one n for all problems or one per problem.
    """
    if isinstance(num_samples, (int, np.integer)):
        num_samples = [int(num_samples)] * len(num_correct)
    _check_lengths(num_samples, num_correct)
    return _mean_percent(pass_at_k(int(n), int(c), k) for n, c in zip(num_samples, num_correct))


# ---------------------------------------------------------------------------------------
# Code token Jaccard
# ---------------------------------------------------------------------------------------

_SKIP_TOKENS = {
    tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT,
    tokenize.ENDMARKER, tokenize.COMMENT, tokenize.ENCODING,
}
_FALLBACK_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def code_tokens(code: str) -> set[str]:
    """The set of Python token strings in ``code`` (comments and layout tokens excluded).

    Uses :mod:`tokenize` so that ``'a b'`` is one string token and ``**=`` one operator.
    Generated code is often truncated mid-statement, which makes tokenize fail; then the
    tokens read before the failure are kept and the rest of the text is split with the
    regex ``\\w+|[^\\w\\s]``, so one broken line does not change how the whole file is
    tokenized. Comments are dropped because they are prose, not code.
    """
    tokens: set[str] = set()
    line_starts = [0]  # character offset of each line, to turn (row, col) into an index
    for line in io.StringIO(code):
        line_starts.append(line_starts[-1] + len(line))
    consumed = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type not in _SKIP_TOKENS and tok.string.strip():
                tokens.add(tok.string)
            row, col = tok.end
            consumed = line_starts[min(row - 1, len(line_starts) - 1)] + col
    except (tokenize.TokenError, SyntaxError):  # IndentationError is a SyntaxError
        tokens.update(_FALLBACK_TOKEN_RE.findall(code[consumed:]))
    return tokens


def token_jaccard(generated: str, reference: str) -> float:
    """|A & B| / |A | B| over code token sets, in [0, 1].

    Two empty programs are identical, hence 1.0; one empty side gives 0.0.
    """
    a, b = code_tokens(generated), code_tokens(reference)
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def mean_token_jaccard(generated: Sequence[str], references: Sequence[str]) -> float:
    """Mean token Jaccard over pairs, as a percentage."""
    _check_lengths(generated, references)
    return _mean_percent(token_jaccard(g, r) for g, r in zip(generated, references))


# ---------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------

_NON_ALNUM_RE = re.compile(r"[^a-z0-9]+")


def rouge_tokenize(text: str) -> list[str]:
    """rouge-score's default tokenizer without stemming.

    Lower-case, turn every run of characters outside [a-z0-9] into a space, split. (So
    punctuation disappears and, as in rouge-score, non-ASCII letters act as separators.)
    """
    return _NON_ALNUM_RE.sub(" ", text.lower()).split()


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, O(len(a) * len(b)) time, O(len(b)) memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str | Sequence[str]) -> float:
    """ROUGE-L F-measure (beta = 1) in [0, 1], as rouge-score's ``rougeL`` without stemmer.

    precision = LCS / len(prediction), recall = LCS / len(reference), F = 2PR / (P + R).
    Sentence-level (no summary-level ``rougeLsum`` splitting). Either side empty -> 0, as in
    rouge-score. With several references the best F is taken, like ``score_multi``.
    """
    if not isinstance(reference, str):
        if len(reference) == 0:
            raise ValueError("need at least one reference")
        return max(rouge_l(prediction, r) for r in reference)
    pred, ref = rouge_tokenize(prediction), rouge_tokenize(reference)
    if not pred or not ref:
        return 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(ref)
    return 2 * p * r / (p + r)


def mean_rouge_l(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Mean sentence-level ROUGE-L F over pairs, as a percentage."""
    _check_lengths(predictions, references)
    return _mean_percent(rouge_l(p, r) for p, r in zip(predictions, references))


# ---------------------------------------------------------------------------------------
# Perplexity
# ---------------------------------------------------------------------------------------


def perplexity_from_nll(total_nll: float, count: int) -> float:
    """exp(total negative log-likelihood / count), the per-unit perplexity.

    Callers sum the NLL (in nats) over all scored tokens and pass the token count, so long
    and short documents are weighted by length, exactly like a corpus-level cross-entropy.
    Returns ``inf`` instead of raising when the exponent overflows (diverged models).
    """
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    try:
        return math.exp(total_nll / count)
    except OverflowError:
        return math.inf


def count_words(texts: str | Iterable[str]) -> int:
    """Number of whitespace-separated words."""
    if isinstance(texts, str):
        texts = [texts]
    return sum(len(t.split()) for t in texts)


def word_perplexity_from_nll(total_nll: float, texts_or_word_count: str | Iterable[str] | int) -> float:
    """Word-level perplexity: the same total NLL divided by the number of whitespace words.

    Token perplexity depends on the tokenizer (more, shorter tokens -> lower perplexity), so
    models with different vocabularies are only comparable per word of the same text.
    """
    words = (
        texts_or_word_count
        if isinstance(texts_or_word_count, (int, np.integer))
        else count_words(texts_or_word_count)
    )
    return perplexity_from_nll(total_nll, int(words))


# ---------------------------------------------------------------------------------------
# Math
# ---------------------------------------------------------------------------------------


def math_exact_match(predictions: Sequence[str | None], golds: Sequence[str]) -> float:
    """Percentage of extracted answers equal to the gold answer.

    Numbers are compared as numbers ("1,000" == "1000.0", "3/4" == "0.75", relative
    tolerance 1e-6); other answers after normalising LaTeX wrappers, case and whitespace
    (see :func:`peftlab.evaluation.answers.answers_match`). ``None`` counts as wrong.
    """
    _check_lengths(predictions, golds)
    return _mean_percent(float(answers_match(p, g)) for p, g in zip(predictions, golds))


# ---------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------


def _pass_at_k_metric(k: int) -> Metric:
    return Metric(
        name=f"pass@{k}",
        higher_is_better=True,
        fn=lambda num_samples, num_correct: mean_pass_at_k(num_samples, num_correct, k),
        description=f"unbiased pass@{k} (Chen et al. 2021), mean over problems, percent",
    )


def _register(*metrics: Metric) -> dict[str, Metric]:
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _register(
    Metric("accuracy", True, accuracy, "fraction of correct labels, percent"),
    Metric("precision", True, precision, "binary precision of class 1, percent"),
    Metric("recall", True, recall, "binary recall of class 1, percent"),
    Metric("f1", True, f1, "binary F1 of class 1, percent"),
    Metric("squad_exact_match", True, squad_exact_match, "SQuAD v1.1 exact match, percent"),
    Metric("squad_f1", True, squad_f1, "SQuAD v1.1 token F1, percent"),
    _pass_at_k_metric(1),
    _pass_at_k_metric(10),
    Metric("token_jaccard", True, mean_token_jaccard, "code token-set Jaccard vs canonical, percent"),
    Metric("rougeL", True, mean_rouge_l, "ROUGE-L F (no stemming), percent"),
    Metric("perplexity", False, perplexity_from_nll, "exp(total NLL / tokens)"),
    Metric("word_perplexity", False, word_perplexity_from_nll, "exp(total NLL / whitespace words)"),
    Metric("math_exact_match", True, math_exact_match, "numeric-aware exact match, percent"),
    Metric(
        "exact_match_strict", True,
        lambda preds, golds: _score_math_key(preds, golds, "exact_match_strict"),
        "declared math answer (Final Answer / #### / boxed) correct, percent",
    ),
    Metric(
        "exact_match_flexible", True,
        lambda preds, golds: _score_math_key(preds, golds, "exact_match_flexible"),
        "last number in the output correct, percent",
    ),
    Metric(
        "format_error_rate", False,
        lambda preds, golds: _score_math_key(preds, golds, "format_error_rate"),
        "outputs with no declared final answer, percent",
    ),
)


def _score_math_key(predictions: Sequence[str], golds: Sequence[str], key: str) -> float:
    return score_math(predictions, golds)[key]


_PASS_AT_K_RE = re.compile(r"pass@([1-9]\d*)")


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``; any ``pass@k`` is built on demand.

    Raises ValueError listing the valid names, so a typo in a config fails loudly.
    """
    if name in METRICS:
        return METRICS[name]
    match = _PASS_AT_K_RE.fullmatch(name)
    if match:
        return _pass_at_k_metric(int(match.group(1)))
    valid = ", ".join(sorted(METRICS)) + ", pass@<k>"
    raise ValueError(f"unknown metric {name!r}; valid names: {valid}")


#: Directions of metric names that tasks report under their own names (not a `Metric` above).
DIRECTIONS: dict[str, str] = {
    **{name: m.direction for name, m in METRICS.items()},
    "exact_match": "higher",  # qa (SQuAD EM) and math (strict) report it under this name
    "exact_match_majority": "higher",
    "in_domain_accuracy": "higher",
    "rouge_l": "higher",
    "loss": "lower",
    "general_loss": "lower",  # forgetting: held-out general-text cross-entropy (evaluation.forgetting)
    "token_perplexity": "lower",
    "bits_per_byte": "lower",
}


def direction_of(name: str, declared: dict | None = None) -> str | None:
    """"higher" or "lower": as `declared` (a task's `metrics:`) says, else the registry; None if neither knows."""
    if declared and declared.get(name) in ("higher", "lower"):
        return declared[name]
    if name in DIRECTIONS:
        return DIRECTIONS[name]
    if _PASS_AT_K_RE.fullmatch(name):
        return "higher"
    return None


def metric_directions(names: Iterable[str]) -> dict[str, str]:
    """``{name: "higher"|"lower"}`` for the names of a result's metrics (contract field)."""
    return {name: get_metric(name).direction for name in names}
