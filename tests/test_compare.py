"""`peftlab compare STORE A B`: any two methods, paired on the same seeds and examples."""

from __future__ import annotations

import json

import pytest
from test_report import make_result

from peftlab.cli import main
from peftlab.report.aggregate import aggregate
from peftlab.report.compare import CompareError, compare_labels
from peftlab.store import Store

N = 20
# Per seed, which of the N test examples each method gets right: A is right on 4 more examples than B.
RIGHT = {"lora": {0: set(range(14)), 1: set(range(15))}, "ia3": {0: set(range(10)), 1: set(range(11))}}


def store_with_runs(root) -> Store:
    store = Store(root)
    for label, by_seed in RIGHT.items():
        for seed, right in by_seed.items():
            result = {**make_result("sentiment", label, seed, 100.0 * len(right) / N),
                      "per_example": {"accuracy": "mean"}, "per_example_source": {"accuracy": "loglik"}}
            # a second scoring of the same runs ("generate"): right on one example fewer than "loglik"
            result["evaluations"] = [{"name": "loglik", "metrics": {"accuracy": 100.0 * len(right) / N},
                                      "per_example": {"accuracy": "mean"}},
                                     {"name": "generate", "metrics": {"accuracy": 100.0 * (len(right) - 1) / N},
                                      "per_example": {"accuracy": "mean"}}]
            store.write_result(result)
            store.write_examples(result["run_id"], [
                {"evaluation": ev, "id": f"ex{i}", "values": {"accuracy": 100.0 if i in right and not skip else 0.0}}
                for ev, drop in (("loglik", None), ("generate", min(right))) for i in range(N)
                for skip in [i == drop]])
    return store


def test_the_difference_is_the_hand_computed_paired_mean(tmp_path) -> None:
    store = store_with_runs(tmp_path / "runs")
    agg = aggregate(store.results(), store.read_examples)
    pairing = compare_labels(agg, "lora", "ia3")
    c = pairing.comparison
    assert pairing.task == "sentiment" and pairing.metric == "accuracy" and pairing.direction == "higher"
    assert c.difference == pytest.approx(100.0 * 4 / N)  # 4 more right examples of 20 on each seed
    assert (c.n_seeds, c.n_examples) == (2, N)
    assert c.lo < c.difference < c.hi
    reverse = compare_labels(agg, "ia3", "lora").comparison
    assert reverse.difference == pytest.approx(-c.difference)


def test_a_side_can_be_one_evaluation_of_its_runs(tmp_path) -> None:
    store = store_with_runs(tmp_path / "runs")
    agg = aggregate(store.results(), store.read_examples)
    pairing = compare_labels(agg, "lora@loglik", "lora@generate")
    assert pairing.comparison.difference == pytest.approx(100.0 / N)  # one example more on each seed
    assert pairing.text().startswith("lora@loglik − lora@generate on sentiment, accuracy")
    with pytest.raises(CompareError, match="'lora' has no evaluation 'beam' on 'sentiment'; it has: generate, loglik"):
        compare_labels(agg, "lora@beam", "ia3")


def test_identical_sides_get_no_verdict_and_no_detectable_difference(tmp_path) -> None:
    store = store_with_runs(tmp_path / "runs")
    agg = aggregate(store.results(), store.read_examples)
    text = compare_labels(agg, "lora@loglik", "lora@loglik").text()
    assert "Δ = 0 [0, 0]" in text and "no verdict possible: a and b are identical" in text
    assert "would probably go unnoticed" not in text  # no spread, so no size of difference to quote


def test_missing_labels_and_scores_are_one_sentence(tmp_path) -> None:
    store = store_with_runs(tmp_path / "runs")
    agg = aggregate(store.results(), store.read_examples)
    with pytest.raises(CompareError, match="no ok run of 'dora' on task 'sentiment'; labels there: ia3, lora"):
        compare_labels(agg, "lora", "dora")
    with pytest.raises(CompareError, match="--on 'forgetting': both sides have no retention scores"):
        compare_labels(agg, "lora", "ia3", on="forgetting")


def test_cli_prints_text_json_and_clear_errors(tmp_path, capsys) -> None:
    store_with_runs(tmp_path / "runs")
    assert main(["compare", str(tmp_path / "runs"), "lora", "ia3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lora − ia3 on sentiment, accuracy (higher is better):") and "Δ = +20 [" in out
    assert "2 seeds × 20 examples" in out
    assert main(["compare", str(tmp_path / "runs"), "lora", "ia3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["difference"] == pytest.approx(20.0) and doc["n_examples"] == N
    assert main(["compare", str(tmp_path / "runs"), "lora", "nope"]) != 0
    err = capsys.readouterr().err
    assert "no ok run of 'nope'" in err and "Traceback" not in err
