"""Final-answer extraction on realistic model outputs."""

from __future__ import annotations

import pytest

from peftlab.evaluation.answers import (
    answers_match,
    extract_flexible,
    extract_label,
    extract_strict,
    normalize_number,
    score_math,
)

# (model output, normalised strict answer or None = format error, normalised flexible answer)
OUTPUTS = [
    ("Janet has 16 - 3 - 4 = 9 eggs. She makes 9 * 2 = $18 every day.\n#### 18", "18", "18"),
    ("The total cost is $1,200.\nFinal Answer: $1,200.", "1200", "1200"),
    ("Adding the parts gives 3/4 of the pie, so the answer is \\boxed{\\frac{3}{4}}.", "0.75", "0.75"),
    ("Final Answer: The final answer is $\\dfrac{14}{3}$. I hope it is correct.", "14/3", "14/3"),
    ("She earns 18 dollars per day.\nFinal Answer: 18 dollars", "18", "18"),
    ("The rectangle is 5 cm wide.\n\nfinal answer: 5 cm", "5", "5"),
    ("The temperature fell 12 degrees from 5, so it is now -7 degrees.\n#### -7", "-7", "-7"),
    ("Profit margin = 25/200 = 12.5%\nFinal Answer: 12.5%", "12.5", "12.5"),
    ("Let me compute: 48/2 = 24, then 24 + 48 = 72. The answer is 72.", None, "72"),
    ("I'm not sure how to solve this problem.", None, None),
    ("So the answer is \\boxed{42}.\n\nFinal Answer: \\boxed{42}", "42", "42"),
    ("First guess: \\boxed{10}. Wait, I forgot the tax. Corrected: \\boxed{12}", "12", "12"),
    ("There are 1,000 x 1,000 = 1,000,000 tiles.\n#### 1,000,000", "1000000", "1000000"),
    ("Half of it is 0.5.\nFinal Answer: 1/2", "0.5", "0.5"),
    ("Solving 2x = 14 gives x = 7.\nFinal Answer: x = 7", "7", "7"),
    ("**Final Answer:** 3.50", "3.5", "3.5"),
    ("Final Answer: \u22124", "-4", "-4"),
    ("The slope is \\boxed{-\\frac{1}{2}}", "-0.5", "-0.5"),
    ("She needs 2 1/2 cups of flour.\n#### 2 1/2", "2.5", "2.5"),
    ("Final Answer:\n\n150\n\nQuestion: what is 2 + 2?", "150", "2"),
    ("She paid \u20ac45 in total.\nFinal Answer: \u20ac45", "45", "45"),
    ("The cost is 3 * 15 = 45 dollars.\nFinal Answer:", None, "45"),  # truncated: nothing declared
    ("Therefore the answer is \\boxed{\\frac{3}{4}", None, "0.75"),  # unbalanced box: not declared
    ("The area is 1\\,024 square units.\n#### 1024", "1024", "1024"),
    ("#### 3 + 4 = 7", "7", "7"),
    ("Final Answer: The final answer is $25\\%$. I hope it is correct.", "25", "25"),
    ("He has \u00a3 7.50 left.\nFinal Answer: \u00a37.50.", "7.5", "7.5"),
]


@pytest.mark.parametrize("text, strict, flexible", OUTPUTS)
def test_extraction_table(text, strict, flexible):
    extracted = extract_strict(text)
    assert (None if extracted is None else normalize_number(extracted)) == strict
    assert normalize_number(extract_flexible(text)) == flexible


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1,000", "1000"), ("1000.0", "1000"), ("1000", "1000"), ("$18.00", "18"),
        ("18 dollars", "18"), ("5 cm", "5"), ("50%", "50"), ("-3.5", "-3.5"), ("-$5", "-5"),
        ("3/4", "0.75"), ("\\frac{3}{4}", "0.75"), ("\\dfrac{1}{3}", "1/3"), ("\\tfrac12", "0.5"),
        ("42.", "42"), ("\u00a37.50", "7.5"), (".5", "0.5"), ("1e3", "1000"), ("-2 1/2", "-2.5"),
        ("90^\\circ", "90"), ("abc", None), ("", None), (None, None), ("1/0", None),
    ],
)
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    "prediction, gold, expected",
    [
        ("1,000", "1000.0", True), ("1000", "1000", True), ("0.75", "3/4", True),
        ("3/4", "0.75", True), ("0.3333333", "1/3", True), ("0.33", "1/3", False),
        ("18 dollars", "18", True), ("1000.0000001", "1000", True), ("1001", "1000", False),
        ("0", "0", True), ("-0.0", "0", True),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),  # non-numeric: compared as text
        ("\\text{(A)}", "(a)", True), ("x + 1", "x+1", True), ("x + 2", "x+1", False),
        (None, "5", False), ("five", "5", False),
        # an "=" inside a parenthetical after the answer is working, not the answer
        ("15 apples (x = 5 per basket)", "15", True), ("15 apples (x = 5 per basket)", "5", False),
        ("(3 + 4) = 7", "7", True), ("x = 5 (apples)", "5", True), ("[a = 2] b = 9", "9", True),
    ],
)
def test_answers_match(prediction, gold, expected):
    assert answers_match(prediction, gold) is expected


def test_score_math_percentages():
    predictions = ["#### 18", "The answer is 7", "Final Answer: 3", "nothing"]
    golds = ["18", "7", "4", "1"]
    # strict: 18 right, none, 3 wrong, none -> 1/4; flexible: 18, 7 right -> 2/4
    assert score_math(predictions, golds) == {
        "exact_match_strict": 25.0,
        "exact_match_flexible": 50.0,
        "format_error_rate": 50.0,
    }
    with pytest.raises(ValueError):
        score_math(predictions, golds[:2])


LABELS = {"positive": 1, "negative": 0}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Positive", 1),
        ("The review is negative.", 0),
        ("NEGATIVE!", 0),
        ("Not positive - rather negative", 1),  # the first label word wins
        ("Sentiment: negative. A positive ending does not save it.", 0),
        ("neutral", None),
        ("It was positively awful", None),  # whole words only
        ("", None),
    ],
)
def test_extract_label(text, expected):
    assert extract_label(text, LABELS) == expected


def test_extract_label_prefers_longer_word_at_same_position():
    assert extract_label("positive", {"pos": 0, "positive": 1}) == 1
    assert extract_label("pos", {"pos": 0, "positive": 1}) == 0
