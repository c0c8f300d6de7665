"""Slow: download the real pinned packages (~430 MB) and check the counts the task YAMLs declare.

Uses the real cache (`$PEFTLAB_CACHE` or ~/.cache/peftlab) on purpose, so a run leaves it warm
for everything else on the machine. Run with `python -m pytest tests/test_data_slow.py -m slow -s`
to see the timings.
"""

from __future__ import annotations

import collections
import time

import pytest

from peftlab.data import TASK_SPLITS, archives, load_records, offline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared() -> dict[str, float]:
    """Prepare every task once (downloading what is missing); return seconds per task."""
    timings = {}
    for task in TASK_SPLITS:
        start = time.perf_counter()
        offline.prepare(task)
        timings[task] = time.perf_counter() - start
    print("\nprepare seconds:", {k: round(v, 1) for k, v in timings.items()})
    return timings


def _records(task: str, split: str) -> list[dict]:
    return load_records(task, split, source="offline")[0]


def _counts(task: str) -> dict[str, int]:
    manifest = offline.read_manifest(task)
    assert manifest is not None
    return {split: entry["count"] for split, entry in manifest["splits"].items()}


def test_archives_match_pins(prepared):
    for task in TASK_SPLITS:  # each task's pin: its YAML's own, or a shared one (offline.PINS)
        pin = offline.package_pin(task)
        path = archives.find_archive(pin)
        assert path is not None, (task, pin.spec)
        assert archives.sha256_file(path) == pin.sha256


def test_lm_1000_paragraphs(prepared):
    assert _counts("lm") == {"train": 800, "validation": 100, "test": 100}
    words = sum(len(r["text"].split()) for s in TASK_SPLITS["lm"] for r in _records("lm", s))
    assert 95_000 < words < 105_000  # "~99k words"


def test_sentiment_2000_2000_and_750_750(prepared):
    sentences = _records("sentiment", "train") + _records("sentiment", "validation")
    assert collections.Counter(r["label"] for r in sentences) == {1: 2000, 0: 2000}
    assert collections.Counter(r["label"] for r in _records("sentiment", "validation")) == {1: 200, 0: 200}
    reviews = _records("sentiment", "test")
    assert collections.Counter(r["label"] for r in reviews) == {1: 750, 0: 750}
    assert sum(len(r["text"].split()) for r in reviews) / len(reviews) > 600  # full reviews


def test_qa_squad_dev_10565(prepared):
    assert _counts("qa") == {"train": 7936 + 10056 + 9767 + 9877, "test": 10565}
    test = _records("qa", "test")
    assert all(r["answers"] and all(isinstance(a, str) for a in r["answers"]) for r in test)
    assert sum(len(r["answers"]) for r in test) > 30_000  # ~3 gold texts per question


def test_math_numeric_items(prepared):
    notes = offline.read_manifest("math")["notes"]
    assert notes["total_items"] == 7688
    counts = _counts("math")
    assert counts["train"] + counts["test"] == notes["numeric_items"] > 5000
    assert counts["test"] == round(notes["numeric_items"] * 0.2)
    print("\nmath:", notes, counts)


def test_code_humaneval_164_and_stdlib(prepared):
    counts = _counts("code")
    assert counts["test"] == 164
    assert counts["train"] > 300
    assert {r["task_id"] for r in _records("code", "test")} == {f"HumanEval/{i}" for i in range(164)}


def test_instruct_193250_in_61_subtasks(prepared):
    notes = offline.read_manifest("instruct")["notes"]
    assert notes["subtasks"] == 61 and notes["total"] == 193_250
    counts = _counts("instruct")
    assert counts["train"] + counts["test"] == 193_250
    expected_test = sum(min(max(round(n * 0.05), 1), n - 1) for n in notes["per_subtask"].values())
    assert counts["test"] == expected_test


def test_second_prepare_is_fast_noop(prepared):
    start = time.perf_counter()
    for task in TASK_SPLITS:
        offline.prepare(task)
    elapsed = time.perf_counter() - start
    print(f"\nno-op prepare of all tasks: {elapsed:.2f} s")
    assert elapsed < 10


def test_subsample_is_deterministic_on_real_data(prepared):
    a, info_a = load_records("instruct", "train", source="offline", limit=500, seed=7)
    b, info_b = load_records("instruct", "train", source="offline", limit=500, seed=7)
    assert a == b and info_a == info_b and info_a["count"] == 500
