"""Forgetting beside gain: every run scores held-out general text, the report pairs it with base."""

from __future__ import annotations

import pytest
from test_per_example import check_run, experiment

from peftlab.config import ConfigError, parse_experiment
from peftlab.plan import expand, validate
from peftlab.runner import execute_run
from peftlab.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


def test_runs_record_forgetting_and_the_report_pairs_it_with_base(tiny_llama_dir, tmp_path, fake_records):
    from peftlab.report import build
    from peftlab.report.aggregate import aggregate
    from peftlab.report.forgetting import retained
    from peftlab.report.tables import forgetting_table

    store = Store(tmp_path / "runs")
    exp = experiment(tiny_llama_dir, store.root, task="sentiment", seeds=(0, 1))
    results = [execute_run(rc, store) for rc in expand(exp)]  # base once, lora x 2 seeds
    losses = {}
    for r in results:
        values = check_run(store, r)  # general_loss is reproduced from its per-paragraph [nll, tokens]
        entry = r["retention"]["forgetting"]
        assert entry["examples"] == 32 and entry["data"]["task"] == "lm"
        nll, tokens = zip(*[v["general_loss"] for v in values["forgetting"].values()])
        assert entry["metrics"]["general_loss"] == pytest.approx(sum(nll) / sum(tokens))
        losses[(r["label"], r["seed"])] = entry["metrics"]["general_loss"]

    agg = aggregate(store.results(), examples=store.read_examples)
    (row,) = retained(agg, "sentiment")
    want = (losses[("lora", 0)] + losses[("lora", 1)]) / 2 - losses[("base", 0)]
    assert row.name == "forgetting" and row.vs_base.difference == pytest.approx(want, rel=1e-6)
    assert row.vs_base.n_seeds == 2 and row.vs_base.n_examples == 32  # base pairs with both seeds
    assert row.vs_base.lo <= row.vs_base.difference <= row.vs_base.hi
    assert row.words in ("forgot", "improved", "no change", "not enough evidence")
    table = forgetting_table(agg, "sentiment")
    assert table is not None and table.rows[0][0].text == "lora" and "general text" in table.rows[0][1].text

    out = tmp_path / "report"
    build.write_report_from_store(store.root, out)
    html = (out / "report.html").read_text()
    assert "Forgetting and retention" in html and "gain vs forgetting" in html
    assert (out / "gain_vs_forgetting_sentiment.png").exists() or list(out.rglob("gain_vs_forgetting_*.png"))


def test_forgetting_can_be_switched_off_and_lm_runs_skip_it(tiny_llama_dir, tmp_path, fake_records):
    store = Store(tmp_path / "runs")
    exp = experiment(tiny_llama_dir, store.root, task="sentiment", methods=("base",), seeds=(0,))
    import dataclasses

    (rc,) = expand(exp)
    off = dataclasses.replace(rc, eval=dataclasses.replace(rc.eval, forgetting_texts=0))
    assert off.run_id() != rc.run_id()  # a different measurement is a different run
    assert "retention" not in execute_run(off, store)
    (lm_rc,) = expand(experiment(tiny_llama_dir, store.root, task="lm", methods=("base",), seeds=(0,)))
    assert "retention" not in execute_run(lm_rc, store)


def test_retention_tasks_are_checked_before_any_work(tiny_llama_dir, tmp_path):
    def exp(tasks):
        return parse_experiment({"name": "t", "model": {"name": str(tiny_llama_dir)}, "methods": ["lora"],
                                 "task": "sentiment", "eval": {"retention_tasks": tasks},
                                 "output_dir": str(tmp_path)})

    with pytest.raises(ConfigError, match=r"eval.retention_tasks\[0\].*'nope'"):
        validate(exp(["nope"]))
    with pytest.raises(ConfigError, match=r"eval.retention_tasks\[0\]: 'sentiment' is a task of the experiment"):
        validate(exp(["sentiment"]))
    assert validate(exp(["lm"]))
