"""Final-answer extraction and comparison for generated text.

Math scoring follows the common two-track convention (as in lm-evaluation-harness's GSM8K
``strict-match`` / ``flexible-extract``):

* **strict**: the answer the model *declared*, after the last ``Final Answer:`` or ``####``
  delimiter or inside the last ``\\boxed{...}``. Missing declaration = format error, which is
  reported separately because it measures instruction following rather than arithmetic.
* **flexible**: the last number anywhere in the output, which forgives format slips and so
  isolates arithmetic ability.

All rates returned by :func:`score_math` are percentages (0-100), the same scale as the
official SQuAD script and every other corpus-level rate in :mod:`peftlab.evaluation.metrics`,
so one results table never mixes fractions and percentages.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import Sequence

from peftlab.numbers import canonical_number

__all__ = [
    "extract_strict",
    "extract_flexible",
    "extract_label",
    "normalize_number",
    "parse_number",
    "answers_match",
    "score_math",
]

# A number as models write it: optional sign, thousands groups or plain digits, optional
# decimals / exponent, or a bare ".5". The look-behind keeps digits glued to letters
# ("x2", "H2O") or to a previous number's decimal point from being read as numbers.
_NUMBER = (
    r"(?<![\w.])[-+]?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
)
# number, optionally "/ number" (a simple fraction) right after it
_FRACTION_RE = re.compile(rf"(?P<num>{_NUMBER})(?:\s*/\s*(?P<den>\d+(?:\.\d+)?)(?!\w|\.\d))?")
_MIXED_RE = re.compile(r"(?<![\w.])(?P<sign>[-+]?)(?P<whole>\d+)\s+(?P<num>\d+)\s*/\s*(?P<den>\d+)(?!\w|\.\d|/)")
_FINAL_DELIMITER_RE = re.compile(r"final\s+answer\s*(?:\*\*)?\s*:|####", re.IGNORECASE)
_CURRENCY_RE = re.compile(r"[$€£¥]|\\\$")
_REL_TOL = 1e-6
_ABS_TOL = 1e-9


# ---------------------------------------------------------------------------------------
# LaTeX clean-up shared by the extractors and the comparison
# ---------------------------------------------------------------------------------------


def _find_braced(text: str, open_index: int) -> int | None:
    """Index just past the brace group opening at ``open_index``; None if unbalanced.

    Answers such as ``\\boxed{\\frac{3}{4}}`` nest braces, so a regex cannot find the end.
    """
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _boxed_spans(text: str) -> list[tuple[int, str]]:
    """(start, content) of every balanced ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``."""
    spans = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        end = _find_braced(text, match.end() - 1)
        if end is not None:
            spans.append((match.start(), text[match.end() : end - 1]))
    return spans


def _unwrap_command(text: str, command: str, render) -> str:
    """Replace ``\\command{a}{b}...`` by ``render(a, b, ...)``, innermost groups included."""
    pattern = re.compile(rf"\\{command}\s*(?=\{{)")
    arity = render.__code__.co_argcount
    while True:
        match = pattern.search(text)
        if match is None:
            return text
        args, pos = [], match.end()
        for _ in range(arity):
            if pos >= len(text) or text[pos] != "{":
                break
            end = _find_braced(text, pos)
            if end is None:
                break
            args.append(text[pos + 1 : end - 1])
            pos = end
        if len(args) < arity:  # malformed: drop the command word, keep the rest
            text = text[: match.start()] + text[match.end() :]
            continue
        text = text[: match.start()] + render(*args) + text[pos:]


def _frac(num: str, den: str) -> str:
    """``\\frac{a}{b}`` -> ``a/b``; parenthesise non-trivial parts so structure survives."""
    num, den = num.strip(), den.strip()
    wrap = lambda s: s if re.fullmatch(r"[-+]?[\w.]+", s) else f"({s})"  # noqa: E731
    return f"{wrap(num)}/{wrap(den)}"


def _clean_latex(text: str) -> str:
    """Strip the LaTeX packaging models put around answers, keeping the mathematical content.

    Models trained on MATH-style data write ``$\\boxed{\\dfrac{3}{4}}$``, ``\\text{ cm}``,
    ``5\\%`` or ``90^\\circ``; none of that packaging changes the value.
    """
    text = text.replace("\u2212", "-").replace("\\!", "").replace("\\%", "%").replace("{,}", ",")
    text = re.sub(r"(\d)\\,(\d{3})(?!\d)", r"\1\2", text)  # 1\,000 (LaTeX thousands space)
    text = re.sub(r"\\(?:left|right)\b", "", text)
    text = re.sub(r"\\[,;: ]|\\q?quad\b", " ", text)
    text = re.sub(r"\^\s*\{?\\circ\}?|°", "", text)
    text = re.sub(r"\\[dt]?frac(\d)(\d)", r"\1/\2", text)  # \frac34
    text = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", text)  # \sqrt3 -> \sqrt{3}
    for command in ("boxed", "fbox", "text", "textbf", "mathrm", "mathbf", "mbox"):
        text = _unwrap_command(text, command, lambda a: a)
    for command in ("dfrac", "tfrac", "frac"):
        text = _unwrap_command(text, command, _frac)
    text = re.sub(r"\\[()\[\]]", " ", text)  # \( \) \[ \]
    return text.replace("\\$", "$").replace("$", "")


# ---------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------


def _first_nonempty_line(text: str) -> str:
    """The declared answer: the rest of the delimiter's line, or the next non-empty line."""
    for line in text.splitlines():
        line = line.strip().strip("*_").strip()
        if line:
            return line
    return ""


def extract_strict(text: str) -> str | None:
    """The answer the model explicitly declared, or None (a format error).

    Looks for the *last* of: a ``Final Answer:`` delimiter (case-insensitive), a ``####``
    delimiter (GSM8K's format), a balanced ``\\boxed{...}`` (MATH's format). The last one wins
    because models often restate intermediate results before committing to an answer; a box
    on the delimiter's own line is later than the delimiter, so it is what gets returned.
    """
    if not text:
        return None
    candidates: list[tuple[int, str]] = list(_boxed_spans(text))
    for match in _FINAL_DELIMITER_RE.finditer(text):
        candidates.append((match.start(), _first_nonempty_line(text[match.end() :])))
    if not candidates:
        return None
    answer = max(candidates, key=lambda c: c[0])[1].strip()
    return answer or None


def extract_flexible(text: str) -> str | None:
    """The last number in the text (as written, e.g. ``"1,200"`` or ``"3/4"``), or None.

    Models that ignore the answer format usually still end on the result, so the last number
    is a robust, format-agnostic reading of what they computed.
    """
    if not text:
        return None
    cleaned = _clean_latex(text)
    matches = list(_FRACTION_RE.finditer(cleaned)) + list(_MIXED_RE.finditer(cleaned))
    if not matches:
        return None
    # the number ending last; a mixed number "2 1/2" beats its own tail "1/2"
    last = max(matches, key=lambda m: (m.end(), m.end() - m.start()))
    return last.group(0).strip()


def extract_label(text: str, label_words: dict[str, int]) -> int | None:
    """The label of the first label word in ``text`` (case-insensitive, whole words), or None.

    The *first* mention is used because generations typically open with the verdict
    ("Positive. The review ...") and may mention the other label later while explaining.
    Whole-word matching stops "positive" from firing inside "positively-charged"-style
    compounds of other words; when two label words start at the same place (e.g. "pos" and
    "positive"), the longer one wins.
    """
    if not text:
        return None
    best: tuple[int, int, int] | None = None  # (start, -length, label)
    for word, label in label_words.items():
        match = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE)
        if match is not None:
            key = (match.start(), -len(word), label)
            best = key if best is None or key < best else best
    return None if best is None else best[2]


# ---------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------


def _to_fraction(number: str, denominator: str | None = None) -> Fraction:
    """Exact value of a matched number string (commas removed)."""
    value = Fraction(number.replace(",", ""))
    if denominator is not None:
        den = Fraction(denominator)
        if den == 0:
            raise ZeroDivisionError
        value /= den
    return value


def _last_top_level_equals(text: str) -> int:
    """Index of the last ``=`` outside any (), [] or {} group, or -1."""
    depth, last = 0, -1
    for i, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(depth - 1, 0)
        elif ch == "=" and depth == 0:
            last = i
    return last


def _prepare(text: str) -> str:
    """LaTeX clean-up, currency removal and keep only what follows the last top-level ``=``.

    "x = 5" and "(3 + 4) = 7" both declare the right-hand side as the answer; an ``=`` inside a
    parenthetical is working, not the answer: "15 apples (x = 5 per basket)" declares 15.
    """
    text = _CURRENCY_RE.sub("", _clean_latex(text))
    cut = _last_top_level_equals(text)
    if cut != -1:
        text = text[cut + 1:]
    return text.strip()


def parse_number(text: str | None, lenient: bool = True) -> Fraction | None:
    """The numeric value of an answer string as an exact Fraction, or None.

    ``lenient=True`` reads the first number in the (cleaned) text, so units and words around
    it ("18 dollars", "5 cm", "The final answer is $42$.") do not matter. ``lenient=False``
    accepts only strings that *are* a number (after removing currency, %, a trailing period
    and LaTeX packaging); it is used for gold answers so that e.g. ``\\frac{\\sqrt{3}}{2}`` is
    compared as an expression instead of being mistaken for the number 3.
    """
    if text is None:
        return None
    cleaned = _prepare(text)
    if not lenient:
        cleaned = cleaned.rstrip(".").rstrip("%").strip()
    mixed = _MIXED_RE.match(cleaned) if not lenient else _MIXED_RE.search(cleaned)
    match = _FRACTION_RE.search(cleaned)
    try:
        if mixed is not None and (match is None or mixed.start() <= match.start()):
            if lenient or mixed.end() == len(cleaned):
                whole = int(mixed.group("whole")) + _to_fraction(mixed.group("num"), mixed.group("den"))
                return -whole if mixed.group("sign") == "-" else whole
        if match is None or (not lenient and match.span() != (0, len(cleaned))):
            return None
        return _to_fraction(match.group("num"), match.group("den"))
    except (ValueError, ZeroDivisionError):
        return None


def normalize_number(s: str | None) -> str | None:
    """Canonical string for the number an answer states, or None when there is none.

    Handles thousands commas ("1,000"), currency ($, €, £), units/words after the number
    ("18 dollars", "5 cm"), percent ("12.5%" -> "12.5", matching GSM8K golds which store the
    number of percent), negatives (also the Unicode minus), decimals ("3.50" -> "3.5"),
    fractions ("3/4", ``\\frac{3}{4}``, ``\\dfrac``; printed as "0.75" when the decimal
    terminates, else "p/q"), mixed numbers ("2 1/2"), trailing periods and ``\\boxed{}``.
    Equal numbers map to the same string, so results can be compared or counted as text.
    """
    value = parse_number(s, lenient=True)
    return None if value is None else canonical_number(value)


def _normalize_text_answer(text: str) -> str:
    """Non-numeric answers: same LaTeX clean-up, lower case, no whitespace, no final period.

    Whitespace is dropped entirely because "x + 1" and "x+1" are the same expression.
    """
    text = _clean_latex(text).lower().strip().rstrip(".")
    return re.sub(r"\s+", "", text)


def answers_match(prediction: str | None, gold: str) -> bool:
    """Whether an extracted answer equals the gold answer.

    Numeric golds are compared as numbers with relative tolerance 1e-6 (so "1,000",
    "1000.0" and "1000" agree, and "3/4" equals "0.75"); everything else is compared as
    normalised text. ``None`` (nothing extracted) never matches.
    """
    if prediction is None:
        return False
    gold_value = parse_number(gold, lenient=False)
    if gold_value is not None:
        pred_value = parse_number(prediction, lenient=True)
        return pred_value is not None and math.isclose(
            float(pred_value), float(gold_value), rel_tol=_REL_TOL, abs_tol=_ABS_TOL
        )
    return _normalize_text_answer(prediction) == _normalize_text_answer(gold)


def score_math(predictions: Sequence[str], golds: Sequence[str]) -> dict[str, float]:
    """Corpus math scores, as percentages (0-100).

    Returns ``exact_match_strict`` (declared answer correct), ``exact_match_flexible`` (last
    number correct) and ``format_error_rate`` (no declared answer found; lower is better).
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold answers")
    if not predictions:
        raise ValueError("score_math needs at least one prediction")
    strict = [extract_strict(p) for p in predictions]
    n = len(predictions)
    return {
        "exact_match_strict": 100.0 * sum(answers_match(s, g) for s, g in zip(strict, golds)) / n,
        "exact_match_flexible": 100.0
        * sum(answers_match(extract_flexible(p), g) for p, g in zip(predictions, golds))
        / n,
        "format_error_rate": 100.0 * sum(s is None for s in strict) / n,
    }
