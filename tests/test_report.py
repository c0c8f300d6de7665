"""Tests for peftlab.report on synthetic results that follow docs/contracts.md exactly."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest

from peftlab.report import aggregate, how_sure, pareto_front, summarize, winners, write_report
from peftlab.report.tables import (
    fmt_mean_pm,
    human_bytes,
    latex_escape,
    task_table,
    to_latex,
    to_markdown,
)

# ---------------------------------------------------------------------------------------------
# Synthetic results
# ---------------------------------------------------------------------------------------------

LM_PPL = {  # (label, r, lr) -> perplexity per seed 0, 1, 2  (lower is better)
    ("lora", 4, 1e-4): [26.0, 27.0, 28.0],
    ("lora", 4, 5e-4): [23.0, 24.0, 25.0],
    ("lora", 8, 1e-4): [24.0, 25.5, 26.0],
    ("lora", 8, 5e-4): [20.0, 21.0, 22.0],  # best: mean 21, std 1
    ("ia3", None, None): [23.0, 23.5, 25.0],
    ("full", None, None): [22.0, 23.0, 24.5],
}
SENT_ACC = {  # higher is better
    ("lora", 4, 1e-4): [0.80, 0.82, 0.81],
    ("lora", 4, 5e-4): [0.84, 0.85, 0.86],
    ("lora", 8, 1e-4): [0.83, 0.84, 0.82],
    ("lora", 8, 5e-4): [0.88, 0.90, 0.89],
    ("prompt_tuning", None, None): [0.70, 0.74, 0.72],
    ("full", None, None): [0.87, 0.88, 0.87],
}
METHOD = {"lora": "lora", "ia3": "ia3", "full": "full", "prompt_tuning": "prompt_tuning",
          "base": "base", "dora": "dora"}
PCT = {"lora": 0.5, "ia3": 0.02, "full": 100.0, "prompt_tuning": 0.01, "dora": 0.55, "base": 0.0}


def make_result(task: str, label: str, seed: int, metric_value: float | None, *, r: int | None = None,
                lr: float | None = None, status: str = "ok", error: str | None = None) -> dict:
    """A result dict exactly in the contracts.md schema."""
    is_base = label == "base"
    metric, direction = ("perplexity", "lower") if task == "lm" else ("accuracy", "higher")
    grid = {} if r is None else {"lora.r": r, "train.lr": lr}
    pct = PCT[label] * (r / 8 if r else 1)
    total = 135_000_000
    trainable = 0 if is_base else int(total * pct / 100)
    metrics = {} if metric_value is None else {metric: metric_value}
    if task == "lm" and metric_value is not None:
        metrics["word_perplexity"] = metric_value * 2
    curves: dict = {}
    if not is_base:
        last = 40 if seed == 2 else 50
        base_loss = 2.5 + 0.05 * seed + (0.2 if label == "prompt_tuning" else 0.0)
        curves = {
            "train_loss": [[s, base_loss * math.exp(-s / 30)] for s in range(1, last + 1)],
            "val_loss": [[s, base_loss * math.exp(-s / 35) + 0.1] for s in range(10, last + 1, 10)],
            "lr": [[s, 5e-4] for s in range(1, last + 1)],
        }
    grid_tag = f"--r{r}-lr{lr}" if r else ""
    return {
        "schema_version": 1,
        "run_id": f"cmp--{label}--{task}{grid_tag}--s{seed}--{status}",
        "experiment": "cmp",
        "sweep_id": "sw1" if r else None,
        "status": status,
        "error": error,
        "label": label,
        "method": METHOD[label],
        "method_args": {"r": r} if r else {},
        "model": "smollm2-135m-instruct",
        "task": task,
        "seed": seed,
        "grid": grid,
        "train": {"lr": lr or 1e-4, "epochs": 1},
        "metrics": metrics,
        "metric_directions": {metric: direction, **({"word_perplexity": "lower"} if task == "lm" else {})},
        "primary_metric": metric,
        "evaluations": [],
        "cost": {
            "trainable_params": trainable, "total_params": total, "trainable_pct": 0.0 if is_base else pct,
            "adapter_bytes": 0 if is_base else trainable * 2, "train_time_s": 0.0 if is_base else 100.0 + 10 * seed,
            "eval_time_s": 5.0, "epoch_times_s": [] if is_base else [100.0], "steps": 0 if is_base else 50,
            "tokens_trained": 0 if is_base else 100_000, "tokens_per_s": 0.0 if is_base else 1000.0 + seed,
            "peak_memory_bytes": int((1.0 + (2.0 if label == "full" else 0.0)) * 1024**3), "memory_kind": "rss",
            "cuda_max_allocated_bytes": None, "cuda_max_reserved_bytes": None,
            "memory_breakdown": {"weights": 0, "gradients": 0, "optimizer": 0, "activations_and_other": 0},
            "train_flops": 0.0, "mfu": None, "peak_flops": 0.0,
            "eval_tokens_per_s": None, "eval_s_per_example": None,
        },
        "curves": curves,
        "data": {"train": {"task": task, "split": "train", "source": "offline", "origin": "x==1",
                           "count": 100, "fingerprint": "ab" * 32},
                 "test": {"task": task, "split": "test", "source": "offline", "origin": "x==1",
                          "count": 50, "fingerprint": "cd" * 32}},
        "provenance": {"git_commit": "0123456789abcdef0123", "git_dirty": False,
                       "packages": {"torch": "2.4.0", "peft": "0.17.1"}, "hardware": {"cpu": "x86"},
                       "python": "3.11.7", "hostname": "box"},
        "started_at": f"2026-11-22T08:{seed:02d}:00+00:00",
        "finished_at": f"2026-11-22T09:{seed:02d}:00+00:00",
    }


FAILED_ID = "cmp--dora--lm--s2--failed"


def synthetic_results() -> list[dict]:
    out = []
    for task, table in (("lm", LM_PPL), ("sentiment", SENT_ACC)):
        for (label, r, lr), vals in table.items():
            for seed, v in enumerate(vals):
                out.append(make_result(task, label, seed, v, r=r, lr=lr))
    out.append(make_result("lm", "base", 0, 30.0))  # single seed, 0 trainable params, no curves
    for seed in range(3):
        out.append(make_result("sentiment", "base", seed, 0.5))
    out.append(make_result("lm", "dora", 0, 22.5))
    out.append(make_result("lm", "dora", 1, 23.5))
    # the failed run carries a absurd metric: it must never reach a mean
    out.append(make_result("lm", "dora", 2, 1e6, status="failed", error="CUDA out of memory\ntrace..."))
    return out


@pytest.fixture(scope="module")
def results() -> list[dict]:
    return synthetic_results()


@pytest.fixture(scope="module")
def agg(results):
    return aggregate(results)


@pytest.fixture(scope="module")
def report(tmp_path_factory, results) -> tuple[Path, dict[str, Path]]:
    out = tmp_path_factory.mktemp("report")
    return out, write_report(results, out, title="Synthetic comparison")


def group(agg, task, label, **grid):
    want = tuple(sorted(grid.items()))
    [g] = [g for g in agg.groups if g.task == task and g.label == label and g.grid == want]
    return g


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------


def test_no_hand_written_distributions():
    """The Student-t / incomplete-beta code is gone: intervals come from scipy (via report/stats.py)."""
    import peftlab.report.aggregate as agg_mod

    for name in ("betainc", "t_cdf", "t_ppf", "t_critical", "_betacf", "paired_compare", "Paired"):
        assert not hasattr(agg_mod, name), name


def test_summarize_hand_computed():
    st = summarize([20.0, 21.0, 22.0])
    assert (st.n, st.mean, st.std) == (3, 21.0, 1.0)
    hw = 4.302653 / math.sqrt(3)
    assert st.ci_low == pytest.approx(21 - hw, abs=1e-5)
    assert st.ci_high == pytest.approx(21 + hw, abs=1e-5)
    assert st.half_width == pytest.approx(2.484138, abs=1e-5)
    one = summarize([3.0])
    assert one.n == 1 and one.std is None and one.ci_low is None and one.half_width is None
    assert summarize([]) is None
    four = summarize([1.0, 2.0, 4.0, 7.0])  # mean 3.5, var = (6.25+2.25+0.25+12.25)/3 = 7
    assert four.std == pytest.approx(math.sqrt(7))
    assert four.half_width == pytest.approx(3.182446 * math.sqrt(7) / 2, abs=1e-5)


def test_group_stats_and_costs(agg):
    g = group(agg, "lm", "lora", **{"lora.r": 8, "train.lr": 5e-4})
    assert g.n_ok == 3 and g.seeds == [0, 1, 2]
    st = g.metrics["perplexity"]
    assert (st.mean, st.std) == (21.0, 1.0)
    assert st.half_width == pytest.approx(2.484138, abs=1e-5)
    assert g.metrics["word_perplexity"].mean == 42.0
    assert g.costs["train_time_s"].mean == pytest.approx(110.0)
    assert g.costs["train_time_s"].std == pytest.approx(10.0)
    base = group(agg, "lm", "base")
    assert base.metrics["perplexity"].n == 1 and base.metrics["perplexity"].ci_low is None
    assert agg.primary == {"lm": "perplexity", "sentiment": "accuracy"}
    assert agg.direction("lm", "perplexity") == "lower"
    assert agg.direction("sentiment", "accuracy") == "higher"
    # 2 tasks: lm has 4 lora + ia3 + full + base + dora, sentiment 4 lora + prompt + full + base
    assert len(agg.groups_for("lm")) == 8 and len(agg.groups_for("sentiment")) == 7


def test_failed_run_listed_not_aggregated(agg):
    dora = group(agg, "lm", "dora")
    assert dora.n_ok == 2 and dora.n_failed == 1
    assert dora.metrics["perplexity"].mean == pytest.approx(23.0)
    assert [f["run_id"] for f in agg.failures] == [FAILED_ID]
    assert agg.failures[0]["status"] == "failed"
    assert all(v < 1e5 for g in agg.groups for st in g.metrics.values() for v in st.values)


def test_duplicate_seed_keeps_latest():
    a = make_result("lm", "ia3", 0, 10.0)
    b = make_result("lm", "ia3", 0, 12.0)
    b["run_id"], b["finished_at"] = "rerun", "2027-01-01T00:00:00+00:00"
    agg = aggregate([b, a])
    [g] = agg.groups
    assert g.n_ok == 1 and g.metrics["perplexity"].mean == 12.0
    assert any("several ok runs" in n for n in agg.notes)


def test_seeds_only_comparisons(agg):
    """Without per-example scores the per-seed values are paired, labelled, and 3 seeds never decide."""
    ws = {w.task: w for w in winners(agg)}
    lm = ws["lm"]
    assert lm.best.label == "lora" and lm.best.grid_dict == {"lora.r": 8, "train.lr": 5e-4}
    assert not lm.per_example
    by = {v.other.label: v for v in lm.others}
    assert set(by) == {"dora", "full", "ia3", "base"}  # one comparison per other method, Holm over 4
    assert lm.runner_up.label == "full"  # the closest other method (Δ = -2.17)
    # dora shares seeds 0 and 1: per-seed differences [-2.5, -2.5] → zero width → no verdict
    dora = by["dora"].comparison
    assert dora.n_examples == 2 and dora.difference == pytest.approx(-2.5) and dora.degenerate
    assert by["dora"].verdict == "not enough evidence"
    # ia3: diffs [-3, -2.5, -3]; the t interval over 3 seeds excludes 0 but 3 seeds cannot give p < 0.05
    ia3 = by["ia3"].comparison
    assert ia3.difference == pytest.approx(-17 / 6) and ia3.hi < 0 and ia3.p_value >= 0.25
    assert all(v.verdict == "not enough evidence" for v in lm.others) and not lm.resolved
    # the deterministic base (one seed) is repeated on every seed of the family
    assert by["base"].comparison.n_examples == 3
    sent = ws["sentiment"]
    assert sent.best.label == "lora" and sent.runner_up.label == "full"
    assert sent.paired.comparison.difference == pytest.approx(0.05 / 3)
    text = how_sure(lm)
    assert "seeds only" in text and "3 seeds" in text


# ---------------------------------------------------------------------------------------------
# Pareto
# ---------------------------------------------------------------------------------------------


def test_pareto_front_hand_made():
    pts = [(0.0, 0.5), (1.0, 0.7), (2.0, 0.6), (3.0, 0.9), (3.0, 0.8), (10.0, 0.9), (None, 1.0),
           (0.5, float("nan"))]
    assert pareto_front(pts, "higher") == [0, 1, 3]
    assert pareto_front(pts, "lower") == [0]
    # lower-is-better quality (perplexity): cheap+good and expensive+best both survive
    ppl = [(0.1, 25.0), (0.5, 21.0), (100.0, 20.0), (0.5, 22.0), (50.0, 24.0)]
    assert pareto_front(ppl, "lower") == [0, 1, 2]
    assert pareto_front([(1.0, 1.0), (1.0, 1.0)], "higher") == [0, 1]  # duplicates: keep both
    assert pareto_front([], "higher") == []


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def test_formatting():
    st = summarize([20.0, 21.0, 22.0])
    assert fmt_mean_pm(st) == ("21.0", "2.5")
    assert fmt_mean_pm(summarize([0.88, 0.90, 0.89])) == ("0.890", "0.025")
    assert fmt_mean_pm(summarize([3.0])) == ("3.000", None)
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(3 * 1024**3) == "3 GiB"
    assert human_bytes(512) == "512 B"


def test_task_table_bold_best(agg):
    t = task_table(agg, "lm")
    md = to_markdown(t)
    assert "**21.0 ± 2.5**" in md  # lowest perplexity is the best
    assert "30.00 (det., seeds only)" in md  # base: one seed, no per-example scores: no interval
    assert "21.0 ± 2.5** (3 seeds only)" in md
    assert "+1 failed" in md
    titles = [c.title for c in t.columns]
    ppl = titles.index("perplexity ↓ (primary)")
    bold = [row[ppl].text for row in t.rows if row[ppl].bold]
    assert bold == ["21.0"]
    # cost columns: the base model's zero trainable params is not "best"; ia3 is
    tp = titles.index("Trainable params")
    best_rows = [row[0].text for row in t.rows if row[tp].bold]
    assert best_rows == ["ia3"]
    # tokens/s: higher is better
    tps = titles.index("Tokens/s")
    assert all(row[tps].value == max(r[tps].value for r in t.rows) for r in t.rows if r[tps].bold
               for row in [r])
    sent = to_markdown(task_table(agg, "sentiment"))
    assert "**0.890 ± 0.025**" in sent  # highest accuracy is the best


def test_latex_escaping(agg):
    assert latex_escape("a_b & 50% $x$ #1 {y} ~^\\") == (
        r"a\_b \& 50\% \$x\$ \#1 \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}")
    tex = to_latex(task_table(agg, "sentiment"))
    assert r"prompt\_tuning" in tex and "prompt_tuning" not in tex.replace(r"prompt\_tuning", "")
    assert r"\textbf{0.890 $\pm$ 0.025}" in tex
    assert r"Trainable \%" in tex
    assert r"\begin{tabular}" in tex and r"\bottomrule" in tex
    for line in tex.splitlines():
        if line.startswith("%"):
            continue
        # every % that isn't a comment start must be escaped
        assert not re.search(r"(?<!\\)%", line), line


# ---------------------------------------------------------------------------------------------
# Whole report
# ---------------------------------------------------------------------------------------------


def test_all_files_written(report):
    out, written = report
    for rel in ["summary.md", "report.html", "tables/task_lm.csv", "tables/task_lm.tex",
                "tables/task_sentiment.csv", "tables/task_sentiment.tex", "tables/winners.csv",
                "tables/winners.tex", "tables/method_by_task.csv", "tables/method_by_task.tex",
                "tables/failed_runs.csv", "tables/runs.csv",
                "plots/quality_vs_params_lm.png", "plots/quality_vs_params_lm.svg",
                "plots/quality_vs_time_lm.png", "plots/quality_vs_memory_lm.png",
                "plots/loss_curves_lm.png", "plots/loss_curves_sentiment.svg",
                "plots/heatmap_lm_lora.png", "plots/heatmap_sentiment_lora.svg"]:
        assert rel in written, rel
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    assert all(p.is_file() for p in written.values())
    assert (out / "plots/quality_vs_params_lm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # no heatmap for methods without a grid
    assert not any("heatmap_lm_ia3" in k for k in written)


def test_latex_files_are_ascii(report):
    """Arrows, ±, Δ and … must become LaTeX commands so plain pdflatex compiles the tables."""
    out, written = report
    for rel, path in written.items():
        if rel.endswith(".tex"):
            text = path.read_text()
            assert text.isascii(), (rel, sorted({ch for ch in text if not ch.isascii()}))


def test_csv_raw_numbers(report):
    out, _ = report
    rows = list(csv.DictReader((out / "tables/task_lm.csv").open()))
    [row] = [r for r in rows if r["label"] == "lora" and r["lora.r"] == "8" and r["train.lr"] == "0.0005"]
    assert float(row["perplexity_mean"]) == 21.0 and float(row["perplexity_std"]) == 1.0
    assert float(row["perplexity_ci_low"]) == pytest.approx(21 - 2.484138, abs=1e-5)
    assert row["seeds"] == "0 1 2" and row["n_failed"] == "0"
    runs = list(csv.DictReader((out / "tables/runs.csv").open()))
    assert len(runs) == len(synthetic_results())
    assert any(r["status"] == "failed" for r in runs)


def test_failed_run_in_outputs(report):
    out, _ = report
    summary = (out / "summary.md").read_text()
    page = (out / "report.html").read_text()
    assert FAILED_ID in summary and FAILED_ID in page
    assert "CUDA out of memory" in page
    assert "1000000" not in page and "1e+06" not in page  # its metric never shows up


def test_html_self_contained(report):
    out, written = report
    page = (out / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert refs, "expected links and images"
    assert all(r.startswith(("data:", "#")) for r in refs), [r for r in refs if not r.startswith(("data:", "#"))]
    assert "<link" not in page and "<script" not in page and "@import" not in page
    n_png = sum(1 for k in written if k.endswith(".png"))
    assert page.count('src="data:image/png;base64,') == n_png
    for heading in ("Summary", "Task: lm", "Task: sentiment", "Failed runs", "Provenance"):
        assert heading in page
    assert "0123456789ab" in page and "peft" in page  # commit and packages in provenance


def test_summary_markdown(report):
    out, _ = report
    s = (out / "summary.md").read_text()
    assert s.startswith("# Synthetic comparison")
    assert "## How sure?" in s and "significant" not in s.lower()
    assert "seeds only (no per-example scores)" in s
    assert "**21.0 ± 2.5**" in s


def test_rerun_overwrites_and_clears_stale(tmp_path, results):
    small = [r for r in results if r["label"] in ("ia3", "prompt_tuning")]  # one task each
    first = write_report(small, tmp_path)
    only_lm = [r for r in small if r["task"] == "lm"]
    second = write_report(only_lm, tmp_path)
    assert "tables/task_sentiment.csv" in first and "tables/task_sentiment.csv" not in second
    assert not (tmp_path / "tables/task_sentiment.csv").exists()
    assert not (tmp_path / "plots/loss_curves_sentiment.png").exists()


def test_robust_to_partial_and_odd_results(tmp_path):
    odd = [
        {"status": "ok", "task": "qa", "label": "base", "seed": 0, "metrics": {"f1": 0.4},
         "metric_directions": {"f1": "higher"}, "primary_metric": "f1"},  # no cost, grid, curves
        {"status": "ok", "task": "qa", "method": "lora", "seed": 0, "grid": None,
         "metrics": {"f1": float("nan"), "em": 0.2}, "cost": {"trainable_pct": 0.3},
         "curves": {"train_loss": [[1, 2.0], [2, "bad"], [3, 1.0]], "val_loss": []}},
        {"status": "diverged", "task": "qa", "label": "lora", "seed": 1, "error": {"message": "nan loss"}},
        {"status": "interrupted", "task": "qa", "label": "lora", "seed": 2},  # store's dead "running"
        {"status": "running", "task": "qa", "label": "ia3", "seed": 0},
        "not a dict",
    ]
    written = write_report(odd, tmp_path / "odd")
    page = (tmp_path / "odd" / "report.html").read_text()
    assert "nan loss" in page and "still marked" in page
    assert "not a finite number" in page  # the NaN is reported, not averaged
    assert "em" in page and "assuming" in page  # undeclared direction is flagged
    agg = aggregate(odd)
    lora = [g for g in agg.groups if g.label == "lora"][0]
    assert lora.n_ok == 1 and lora.n_failed == 2
    assert {f["status"] for f in agg.failures} == {"diverged", "interrupted"}
    assert "report.html" in written
    empty = write_report([], tmp_path / "empty")
    assert (tmp_path / "empty" / "report.html").is_file() and "summary.md" in empty


def test_only_base_runs_on_log_axis(tmp_path):
    """Every point has 0 trainable params: the log axis must fall back, not crash."""
    res = [make_result("lm", "base", s, 30.0 + s) for s in range(3)]
    written = write_report(res, tmp_path)
    assert "plots/quality_vs_params_lm.png" in written
    assert not any("loss_curves" in k for k in written)


def test_write_report_from_store(tmp_path, monkeypatch, results):
    calls = {}

    class FakeStore:
        def __init__(self, root, readonly=False):
            calls["root"] = root

        def results(self, **filters):
            calls["filters"] = filters
            return [r for r in results if r["label"] == "full" and r["task"] == "lm"]

    monkeypatch.setitem(sys.modules, "peftlab.store", types.SimpleNamespace(Store=FakeStore))
    from peftlab.report import write_report_from_store

    written = write_report_from_store(tmp_path / "store", tmp_path / "out", experiment="cmp")
    assert calls == {"root": tmp_path / "store", "filters": {"experiment": "cmp"}}
    assert (tmp_path / "out" / "report.html").is_file() and "summary.md" in written


def test_with_real_store(tmp_path, results):
    """End to end through peftlab.store when that module is present."""
    store_mod = pytest.importorskip("peftlab.store")
    store = store_mod.Store(tmp_path / "runs")
    subset = [r for r in results if r["label"] in ("full", "ia3") and r["task"] == "lm"]
    for r in subset:
        store.write_result(r)
    from peftlab.report import write_report_from_store

    written = write_report_from_store(tmp_path / "runs", tmp_path / "out")
    rows = list(csv.DictReader(written["tables/runs.csv"].open()))
    assert len(rows) == len(subset)
    assert "ia3" in (tmp_path / "out" / "summary.md").read_text()


# ---------------------------------------------------------------------------------------------
# Per-example scores (examples.jsonl): two-level intervals, paired comparisons, verdicts
# ---------------------------------------------------------------------------------------------

N_EX = 200


def _accuracy_run(label: str, seed: int, correct: list[int], *, task: str = "sentiment",
                  preds: list[int] | None = None, golds: list[int] | None = None) -> tuple[dict, list[dict]]:
    """A result whose accuracy (percent) is the mean of per-example 0/100 scores, plus its example lines."""
    values = [100.0 * c for c in correct]
    acc = sum(values) / len(values)
    r = make_result(task, label, seed, acc)
    per_example = {"accuracy": "mean"}
    lines = []
    for i, v in enumerate(values):
        vals: dict = {"accuracy": v}
        if preds is not None:
            vals["f1"] = [preds[i], golds[i]]
        lines.append({"evaluation": "greedy", "id": f"ex{i}", "values": vals})
    metrics = {"accuracy": acc}
    if preds is not None:
        tp = sum(1 for p, g in zip(preds, golds) if p == 1 and g == 1)
        fp = sum(1 for p, g in zip(preds, golds) if p == 1 and g == 0)
        fn = sum(1 for p, g in zip(preds, golds) if p == 0 and g == 1)
        metrics["f1"] = 100.0 * 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
        per_example["f1"] = "f1"
        r["metrics"]["f1"] = metrics["f1"]
        r["metric_directions"]["f1"] = "higher"
    r["per_example"] = dict(per_example)
    r["evaluations"] = [{"name": "greedy", "metrics": metrics, "per_example": per_example}]
    return r, lines


def _draw(rng, p: float, n: int = N_EX) -> list[int]:
    return [int(x) for x in (rng.random(n) < p)]


def _write_store(root: Path, runs: list[tuple[dict, list[dict]]]) -> Path:
    """A run store on disk: <root>/<run_id>/result.json and examples.jsonl, read through peftlab.store."""
    store_mod = pytest.importorskip("peftlab.store")
    store = store_mod.Store(root)
    for r, lines in runs:
        store.write_result(r)
        (root / r["run_id"] / "examples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def _clear_store_runs() -> list[tuple[dict, list[dict]]]:
    """lora clearly better than base (deterministic, run once) on 200 examples x 3 seeds."""
    import numpy as np

    rng = np.random.default_rng(7)
    golds = [int(x) for x in rng.random(N_EX) < 0.5]
    runs = []
    base_correct = _draw(rng, 0.6)
    base_preds = [g if c else 1 - g for g, c in zip(golds, base_correct)]
    runs.append(_accuracy_run("base", 0, base_correct, preds=base_preds, golds=golds))
    for seed in range(3):
        c = _draw(rng, 0.85)
        runs.append(_accuracy_run("lora", seed, c, preds=[g if k else 1 - g for g, k in zip(golds, c)], golds=golds))
    for seed in range(3):  # prefix: predicts one class only (degenerate)
        preds = [0] * N_EX
        runs.append(_accuracy_run("prompt_tuning", seed, [int(p == g) for p, g in zip(preds, golds)],
                                  preds=preds, golds=golds))
    return runs


@pytest.fixture(scope="module")
def clear_store(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = _write_store(tmp_path_factory.mktemp("store"), _clear_store_runs())
    from peftlab.report import write_report_from_store

    out = root.parent / "out"
    return out, write_report_from_store(root, out)


def _examples_of(runs):
    ex: dict = {}
    for r, lines in runs:
        for x in lines:
            ex.setdefault(r["run_id"], {}).setdefault(x["evaluation"], {})[x["id"]] = x["values"]
    return ex


def test_clear_winner_is_better_with_holm(clear_store):
    runs = _clear_store_runs()
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    [w] = winners(agg)
    assert w.best.label == "lora" and w.per_example
    by = {v.other.label: v for v in w.others}
    assert by["base"].verdict == "better" and by["base"].p_adjusted < 0.05
    assert by["base"].comparison.n_seeds == 3 and by["base"].comparison.n_examples == N_EX
    assert len(w.others) == 2  # Holm over the family of two comparisons
    out, written = clear_store
    rows = list(csv.DictReader((out / "tables/winners.csv").open()))
    [row] = [r for r in rows if r["other"] == "base"]
    assert row["verdict"] == "better" and float(row["p_holm"]) < 0.05 and row["pairing"] == "per-example"
    assert float(row["diff_ci_low"]) > 0
    page = (out / "report.html").read_text()
    assert "significant" not in page.lower() and "significant" not in (out / "summary.md").read_text().lower()
    assert "How sure?" in page and "3 seeds × 200 examples" in page


def test_base_is_deterministic_with_example_interval(clear_store):
    runs = _clear_store_runs()
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    base = group(agg, "sentiment", "base")
    st = base.metrics["accuracy"]
    assert st.deterministic and st.n == 1 and st.n_examples == N_EX
    assert st.half_width > 3  # binomial SE at p=0.6, n=200 is ~3.5 points: not "± 0"
    assert 0 <= st.ci_low < st.mean < st.ci_high <= 100
    md = (clear_store[0] / "summary.md").read_text()
    assert "det.×200" in md and "3×200" in md
    # the same base under three seeds with identical per-example values stays deterministic
    [(b, lines)] = [x for x in runs if x[0]["label"] == "base"]
    more = []
    for seed in range(3):
        r = dict(b, seed=seed, run_id=f"base-s{seed}")
        more.append((r, lines))
    agg3 = aggregate([r for r, _ in more], _examples_of(more))
    st3 = agg3.groups[0].metrics["accuracy"]
    assert st3.deterministic and st3.n == 1 and st3.half_width == pytest.approx(st.half_width)


def test_equal_pair_is_never_better_or_worse():
    import numpy as np

    rng = np.random.default_rng(3)
    runs = [_accuracy_run(label, s, _draw(rng, 0.7)) for label in ("lora", "ia3") for s in range(3)]
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    [w] = winners(agg)
    [v] = w.others
    assert v.verdict == "not enough evidence"
    text = how_sure(w)
    assert "3 seeds × 200 examples" in text and "Not resolved" in text
    assert "more test examples" in text or "more seeds" in text or "tie margin" in text


def test_issue_degenerate_case_is_never_better():
    """A = [81, 83], B = [80, 82] with identical per-example differences: no verdict."""
    runs = []
    for seed, (a, b) in enumerate([(81.0, 80.0), (83.0, 82.0)]):
        for label, m in (("lora", a), ("ia3", b)):
            spread = [m - 10 + 20 * (i % 2) for i in range(N_EX)]  # mean m, differences all +1
            r = make_result("sentiment", label, seed, m)
            r["metrics"] = {"accuracy": m}
            r["per_example"] = {"accuracy": "mean"}
            r["evaluations"] = [{"name": "greedy", "metrics": {"accuracy": m}, "per_example": {"accuracy": "mean"}}]
            runs.append((r, [{"evaluation": "greedy", "id": i, "values": {"accuracy": v}} for i, v in enumerate(spread)]))
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    [w] = winners(agg)
    assert w.per_example and w.others[0].verdict == "not enough evidence" and w.others[0].comparison.degenerate
    # seeds only (no per-example scores): still never "better"
    agg0 = aggregate([r for r, _ in runs])
    [w0] = winners(agg0)
    assert not w0.per_example and w0.others[0].verdict == "not enough evidence"
    assert "seeds only" in how_sure(w0)


def test_degenerate_runs_flagged(clear_store):
    runs = _clear_store_runs()
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    pt = group(agg, "sentiment", "prompt_tuning")
    assert any("constant predictions" in x for x in pt.degenerate)
    assert not group(agg, "sentiment", "lora").degenerate
    md = to_markdown(task_table(agg, "sentiment"))
    assert "⚠ degenerate" in md
    # identical to base on every per-example score
    [(b, lines)] = [x for x in runs if x[0]["label"] == "base"]
    twin = dict(b, label="ia3", method="ia3", run_id="ia3-twin", curves={})
    agg2 = aggregate([b, twin], {b["run_id"]: _examples_of([(b, lines)])[b["run_id"]],
                                 "ia3-twin": _examples_of([(b, lines)])[b["run_id"]]})
    assert any("identical to base" in x for x in group(agg2, "sentiment", "ia3").degenerate)
    # loss never fell
    flat = dict(make_result("lm", "ia3", 0, 20.0), curves={"train_loss": [[1, 2.0], [2, 2.1], [3, 2.05]]})
    assert any("loss never fell" in x for x in aggregate([flat]).groups[0].degenerate)
    page = (clear_store[0] / "report.html").read_text()
    assert "degenerate" in page


def test_intervals_and_error_bars_stay_in_range():
    from peftlab.report.plots import yerr

    runs = [_accuracy_run("lora", s, [1] * (N_EX - 1) + [0]) for s in range(3)]  # 99.5 %
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    st = agg.groups[0].metrics["accuracy"]
    assert st.ci_high <= 100 and st.ci_low >= 0 and st.n_examples == N_EX
    below, above = yerr(st)
    assert st.mean + above[0] <= 100 + 1e-9 and st.mean - below[0] >= -1e-9
    # seeds only: a t interval over two seeds that would leave [0, 100] is clipped too
    far = [make_result("sentiment", "lora", s, v) for s, v in enumerate([60.0, 99.0])]
    st2 = aggregate(far).groups[0].metrics["accuracy"]
    assert st2.n_examples is None and st2.ci_high <= 100 and "seeds only" in st2.sample_size


def test_how_sure_paragraph_names_sample_sizes(clear_store):
    runs = _clear_store_runs()
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    [w] = winners(agg)
    text = how_sure(w)
    assert "3 seeds × 200 examples" in text and "better than base" in text and "Holm p" in text
    s = (clear_store[0] / "summary.md").read_text()
    assert "## How sure?" in s and "3 seeds × 200 examples" in s


def test_perplexity_from_per_example_nll():
    """[nll_sum, n_tokens] per example, statistic "perplexity": lower is better, interval stays >= 1."""
    import numpy as np

    rng = np.random.default_rng(5)
    runs = []
    for label, scale in (("lora", 0.9), ("base", 1.2)):
        for seed in range(3 if label == "lora" else 1):
            toks = rng.integers(20, 60, N_EX)
            nll = toks * (scale + 0.1 * rng.standard_normal(N_EX))
            ppl = float(np.exp(nll.sum() / toks.sum()))
            r = make_result("lm", label, seed, ppl)
            r["metrics"] = {"perplexity": ppl}
            r["per_example"] = {"perplexity": "perplexity"}
            r["evaluations"] = [{"name": "loglik", "metrics": {"perplexity": ppl}, "per_example": {"perplexity": "perplexity"}}]
            lines = [{"evaluation": "loglik", "id": i, "values": {"perplexity": [float(a), float(b)]}}
                     for i, (a, b) in enumerate(zip(nll, toks))]
            runs.append((r, lines))
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    st = group(agg, "lm", "base").metrics["perplexity"]
    assert st.deterministic and st.n_examples == N_EX and st.ci_low >= 1 and st.half_width > 0
    [w] = winners(agg)
    assert w.best.label == "lora" and w.others[0].verdict == "better"


# ---------------------------------------------------------------------------------------------
# Acting on the report: configurations, samples, per-example view, recommendation, errors, plots
# ---------------------------------------------------------------------------------------------

TRACEBACK = ('Traceback (most recent call last):\n  File "runner.py", line 83, in run\n    _execute(rc)\n'
             'KeyError: \'q_proj\'\n\nDuring handling of the above exception, another exception occurred:\n\n'
             'Traceback (most recent call last):\n  File "train.py", line 201, in train\n    loss.backward()\n'
             'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n')


def test_error_line_is_the_exception_not_the_traceback_header():
    from peftlab.report.aggregate import error_line

    assert error_line(TRACEBACK) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert error_line("evaluation diverged: metric perplexity is inf") == "evaluation diverged: metric perplexity is inf"
    assert error_line("\n  CUDA out of memory\ntrace...") == "CUDA out of memory"
    assert error_line({"message": "nan loss"}) == "nan loss" and error_line(None) == ""
    # a multi-line exception message: its first line, not the frames above it
    assert error_line('Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad\nmore text') == \
        "ValueError: bad"


def test_failed_run_shows_its_exception(tmp_path):
    runs = [make_result("lm", "ia3", s, 20.0 + s) for s in range(2)]
    runs.append(make_result("lm", "ia3", 2, None, status="failed", error=TRACEBACK))
    write_report(runs, tmp_path)
    page = (tmp_path / "report.html").read_text()
    err = re.search(r'<td class="err">(.*?)<details>', page, re.S).group(1)
    assert err == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "Traceback (most recent call last):" in page.split('<td class="err">', 1)[1].split("</details>", 1)[0]
    [row] = list(csv.DictReader((tmp_path / "tables/failed_runs.csv").open()))
    assert row["message"] == err and row["error"].startswith("Traceback")
    assert "torch.OutOfMemoryError: CUDA out of memory" in (tmp_path / "summary.md").read_text()


def _config_runs() -> list[dict]:
    runs = []
    for label, lr in (("lora", 5e-4), ("full", 1e-4), ("ia3", 5e-4)):
        for seed in range(2):
            r = make_result("lm", label, seed, 20.0 + seed + (label == "full"))
            r["train"] = {"lr": lr, "epochs": 1, "batch_size": 8}
            r["method_args"] = {"r": 8, "lora_alpha": 16} if label == "lora" else {}
            runs.append(r)
    runs.append(make_result("lm", "base", 0, 30.0))
    return runs


def test_configurations_common_once_differences_per_row(tmp_path):
    runs = _config_runs()
    configs = {r["run_id"]: {"task": {"name": "lm", "limit_train": 400, "max_length": 256, "args": {"stride": 128}},
                             "seed": r["seed"], "output_dir": "/somewhere"} for r in runs}
    agg = aggregate(runs, configs=configs)
    lora = group(agg, "lm", "lora")
    assert lora.config["train.lr"] == 5e-4 and lora.config["method.r"] == 8
    assert lora.config["task.limit_train"] == 400 and lora.config["task.args.stride"] == 128
    assert "seed" not in lora.config and "output_dir" not in lora.config  # what varies / where, not what
    assert not any(k.startswith("train.") for k in group(agg, "lm", "base").config)  # base does not train
    from peftlab.report.tables import config_common_table, config_table

    common, diff = config_common_table(agg, "lm"), config_table(agg, "lm")
    titles = [c.title for c in diff.columns]
    assert "train.lr" in titles and "train.epochs" not in titles  # only what differs, per row
    [epochs] = [row for row in common.rows if row[0].text == "train"]
    assert "epochs=1" in epochs[1].text and "batch_size=8" in epochs[1].text and epochs[2].text == "base"
    lr = {row[0].text: row[titles.index("train.lr")].text for row in diff.rows}
    assert lr == {"lora": "0.0005", "full": "0.0001", "ia3": "0.0005", "base": "—"}
    write_report(runs, tmp_path, configs=configs)
    page = (tmp_path / "report.html").read_text()
    assert "train.lr" in page and "0.0001" in page and "limit_train=400" in page
    # every link of a table row lands on a row of the configuration table
    targets = set(re.findall(r'<tr id="([^"]+)"', page))
    links = set(re.findall(r'href="#(cfg-[^"]+)"', page))
    assert links and links <= targets and len(targets) == 4
    # a field that differs between the seeds of one configuration is said to
    odd = [dict(r) for r in runs if r["label"] == "ia3"]
    odd[1]["train"] = {"lr": 1e-3, "epochs": 1, "batch_size": 8}
    assert "differs between seeds" in str(aggregate(odd).groups[0].config["train.lr"])


def _qa_runs(n: int = 30) -> tuple[list[dict], dict, dict]:
    """qa-like runs with exact_match 0/100 per example and samples: lora right on 0..21, prompt on 12..29
    (seed 1 also on 5), base on 0..9 (deterministic)."""
    right = {"lora": [set(range(22)), set(range(22))],
             "prompt_tuning": [set(range(12, 30)), set(range(12, 30)) | {5}], "base": [set(range(10))]}
    runs, examples, samples = [], {}, {}
    for label, per_seed in right.items():
        for seed, ok in enumerate(per_seed):
            em = [100.0 * (i in ok) for i in range(n)]
            r = make_result("qa", label, seed, sum(em) / n)
            r["task"], r["primary_metric"] = "qa", "exact_match"
            r["metrics"] = {"exact_match": sum(em) / n}
            r["metric_directions"] = {"exact_match": "higher"}
            r["per_example"], r["per_example_source"] = {"exact_match": "mean"}, {"exact_match": "greedy"}
            r["run_id"] = f"qa-{label}-s{seed}"
            ids = [f"id{i:03d}" for i in range(n)]
            examples[r["run_id"]] = {"greedy": {ids[i]: {"exact_match": em[i]} for i in range(n)}}
            samples[r["run_id"]] = [{"id": ids[i], "question": f"Question {i}?", "answers": [f"gold {i}", f"gold {i}"],
                                     "outputs": [f"gold {i}" if i in ok else f"{label} says {i}"]} for i in range(n)]
            runs.append(r)
    return runs, examples, samples


def test_samples_side_by_side_same_examples(tmp_path):
    from peftlab.report.tables import samples_table

    runs, examples, samples = _qa_runs()
    del samples["qa-prompt_tuning-s0"]  # the lowest seed that has samples is shown
    samples["qa-base-s0"] = samples["qa-base-s0"][3:]  # ids 0..2 are missing for base: not shown for anyone
    agg = aggregate(runs, examples, samples)
    t = samples_table(agg, "qa", k=4)
    assert [row[0].text for row in t.rows] == ["id003", "id004", "id005", "id006"]
    assert [c.title for c in t.columns] == ["Example", "Input", "Gold", "lora (seed 0)", "prompt_tuning (seed 1)",
                                            "base (seed 0)"]
    first = t.rows[0]
    assert first[1].text == "Question 3?" and first[2].text == "gold 3"  # repeated gold answers said once
    assert (first[3].text, first[3].note) == ("gold 3", "✓")
    assert (first[4].text, first[4].note) == ("prompt_tuning says 3", "✗")
    assert t.rows[2][4].note == "✓"  # id005: right on seed 1, whose output is shown
    write_report(runs, tmp_path, examples=examples, samples=samples)
    page = (tmp_path / "report.html").read_text()
    assert "Samples" in page and "prompt_tuning says 3" in page and "Question 6?" in page


def test_samples_without_ids_follow_the_score_set_order():
    from peftlab.report.aggregate import samples_by_id

    lines = [{"index": 1, "label": 1, "prediction": 0, "logprob": {"negative": -0.1, "positive": -2.0}},
             {"index": 0, "label": 0, "prediction": 0, "logprob": {"negative": -0.2, "positive": -1.5}}]
    keyed = samples_by_id(lines, ["sha1:aa", "sha1:bb"])
    assert keyed["sha1:bb"]["index"] == 1 and keyed["sha1:aa"]["index"] == 0
    from peftlab.report.aggregate import sample_gold, sample_output

    assert sample_gold(keyed["sha1:bb"]) == "positive" and sample_output(keyed["sha1:bb"]) == ("negative", 1)
    assert samples_by_id([{"index": 5}], ["a"]) == {}  # cannot be placed: left out, not guessed
    assert list(samples_by_id([{"id": "x"}, {"id": "x"}, {"task_id": 7}])) == ["x", "x#2", "7"]


def test_example_view_counts_by_hand():
    from peftlab.report.aggregate import example_view
    from peftlab.report.tables import disagreement_table, head_to_head_table

    runs, examples, samples = _qa_runs()
    agg = aggregate(runs, examples, samples)
    v = example_view(agg, "qa", max_rows=6)
    assert [g.label for g in v.configs] == ["lora", "prompt_tuning", "base"] and v.binary == 100.0
    by = {h.other.label: h for h in v.head_to_head}
    # lora (0..21) vs prompt (12..29, + 5 on one seed): lora ahead on 0..11 (5: 1 vs 0.5), prompt on 22..29
    assert (by["prompt_tuning"].shared, by["prompt_tuning"].best_ahead, by["prompt_tuning"].other_ahead) == (30, 12, 8)
    assert (by["base"].best_ahead, by["base"].other_ahead, by["base"].even) == (12, 0, 18)
    assert v.uniquely_best == {"lora": 2, "prompt_tuning": 8, "base": 0}  # 10, 11 | 22..29
    assert v.n_shared == 30 and v.n_disagree == 30
    # behind (prompt ahead: 22..29) first, half the rows; then lora alone (10, 11); then lora leading with others
    assert v.disagreements == ("id022", "id023", "id024", "id010", "id011", "id000")
    t = disagreement_table(agg, "qa", v)
    row = {r[0].text: r for r in t.rows}["id022"]
    assert [c.text for c in row[3:]] == ["✗", "✓", "✗"] and row[1].text == "Question 22?"
    h = head_to_head_table(agg, "qa", v)
    assert [r[0].text for r in h.rows] == ["lora", "prompt_tuning", "base"]


def test_recommendation_cheapest_not_shown_worse(tmp_path):
    """Two methods the data cannot tell apart: the one with fewer trainable parameters is the budget pick."""
    import numpy as np

    from peftlab.report.pareto import recommend, recommendation_text

    rng = np.random.default_rng(3)
    runs = []
    for label in ("lora", "ia3"):
        for s in range(3):
            r, lines = _accuracy_run(label, s, _draw(rng, 0.7))
            r["cost"]["train_time_s"] = 100.0 if label == "lora" else 300.0
            runs.append((r, lines))
    base = _accuracy_run("base", 0, _draw(rng, 0.3))
    runs.append(base)
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    [w] = winners(agg)
    rec = recommend(agg, w)
    other = "ia3" if w.best.label == "lora" else "lora"
    assert [v.other.label for v in rec.band] == [other] and [v.other.label for v in rec.worse] == ["base"]
    picks = {p.budget.field: p for p in rec.picks}
    assert picks["trainable_pct"].group.label == "ia3"  # 0.02 % against lora's 0.5 %
    assert picks["train_time_s"].group.label == "lora"  # 100 s against 300 s
    assert picks["train_time_s"].cheapest.label == "base"  # cheaper still, but resolved worse
    text = recommendation_text(agg, rec)
    assert "not told apart" in text.lower() and "not evidence of equality" in text
    assert f"{w.best.label} has the best estimate" in text and "use " not in text  # unresolved: no "use X"
    assert "3 seeds × 200 examples" in text and "Holm p" in text and "significant" not in text.lower()
    gain = w.best.mean("metric", "accuracy") - group(agg, "sentiment", "base").mean("metric", "accuracy")
    assert f"{w.best.mean('cost', 'train_time_s') / gain:.3g} s of training per point" in text


def test_recommendation_never_picks_degenerate(clear_store):
    from peftlab.report.pareto import recommend, recommendation_text

    runs = _clear_store_runs()
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    [w] = winners(agg)
    rec = recommend(agg, w)
    assert [g.label for g in rec.excluded] == ["prompt_tuning"]
    assert all(p.group.label != "prompt_tuning" and (p.cheapest is None or p.cheapest.label != "prompt_tuning")
               for p in rec.picks)
    assert all("prompt_tuning" not in [g.label for g in front] for front in rec.fronts.values())
    text = recommendation_text(agg, rec)
    assert "use lora" in text and "resolved better than the base model" in text and "Never recommended" in text
    page = (clear_store[0] / "report.html").read_text()
    assert "What to use" in page and "the best accuracy at each budget" in page


def test_a_degenerate_method_left_out_is_not_called_resolved_worse() -> None:
    """The best's only rival is degenerate (one class) and not told apart from it: excluded from the picks,
    yet the text must not claim the best was resolved better than every other method."""
    import numpy as np

    from peftlab.report.pareto import recommend, recommendation_text

    rng = np.random.default_rng(11)
    golds = [i % 2 for i in range(N_EX)]
    base_correct = _draw(rng, 0.5)
    runs = [_accuracy_run("base", 0, base_correct, preds=[g if c else 1 - g for g, c in zip(golds, base_correct)],
                          golds=golds)]
    for seed in range(3):  # predicts class 0 only: right on exactly half, like the base model
        runs.append(_accuracy_run("prompt_tuning", seed, [int(g == 0) for g in golds], preds=[0] * N_EX, golds=golds))
    agg = aggregate([r for r, _ in runs], _examples_of(runs))
    [w] = winners(agg)
    rec = recommend(agg, w)
    assert w.best.label == "base" and [g.label for g in rec.excluded] == ["prompt_tuning"]
    assert [v.verdict for v in w.others] != ["better"]
    text = recommendation_text(agg, rec)
    assert "resolved better than every other method" not in text and "Never recommended" in text


def test_cost_per_point_column(report):
    out, _ = report
    rows = list(csv.DictReader((out / "tables/task_sentiment.csv").open()))
    [full] = [r for r in rows if r["label"] == "full"]
    gain = (0.87 + 0.88 + 0.87) / 3 - 0.5  # over the base model's 0.5
    assert float(full["gain_over_base"]) == pytest.approx(gain)
    assert float(full["train_s_per_point"]) == pytest.approx(110.0 / gain)
    assert float(full["peak_gib_per_point"]) == pytest.approx(3.0 / gain)
    [base] = [r for r in rows if r["label"] == "base"]
    assert base["train_s_per_point"] == ""
    md = (out / "summary.md").read_text()
    assert "Train time / point" in md and "over base" in md


def test_spread_keeps_error_bars_apart():
    from peftlab.report.plots import spread_x

    xs = [0.34, 0.345, 100.0, 0.0007]  # lora and lora+prompt sit on the same x
    out = spread_x(xs, log=True)
    assert out[2] == 100.0 and out[3] == pytest.approx(0.0007)  # far points do not move
    step = math.log10(out[1]) - math.log10(out[0])
    assert step == pytest.approx(0.025 * (2 - math.log10(0.0007)))  # 2.5 % of the decades shown
    lin = spread_x([0.0, 0.0, 5.0], log=False)
    assert lin[0] == 0.0 and lin[1] == pytest.approx(0.125) and lin[2] == 5.0  # never left of 0
    assert spread_x([3.0], log=False) == [3.0]


def test_cost_axes_from_zero_base_included_loss_log_scale():
    from peftlab.report.aggregate import aggregate as agg_of
    from peftlab.report.plots import COST_AXES, Palette, log_scale_needed, loss_curves, quality_vs_cost

    runs = [make_result("lm", "lora", s, 21.0 + s) for s in range(2)] + [make_result("lm", "base", 0, 30.0)]
    for r in runs:
        r["cost"]["peak_memory_bytes"] = int((2.85 + 0.1 * (r["label"] == "lora")) * 1024**3)
    del runs[-1]["cost"]["peak_memory_bytes"]  # the base model's memory is not recorded
    prefix = [make_result("lm", "ia3", s, 25.0) for s in range(2)]
    for r in prefix:
        r["curves"]["train_loss"] = [[p[0], 12.0 + p[1]] for p in r["curves"]["train_loss"]]
    agg = agg_of(runs + prefix)
    pal = Palette(["lora", "base", "ia3"])
    axes = {a.slug: a for a in COST_AXES}
    fig = quality_vs_cost(agg, "lm", axes["memory"], pal)
    ax = fig.axes[0]
    left, right = ax.get_xlim()
    assert ax.get_xscale() == "linear" and -0.05 * right <= left <= 0  # from 0, not from 2.85 GiB
    assert any("base" in str(line.get_label()) for line in ax.get_lines())  # base drawn as a reference line
    fig = quality_vs_cost(agg, "lm", axes["time"], pal)
    assert fig.axes[0].get_xlim()[0] <= 0  # base's 0 s of training is on the axis
    assert log_scale_needed([[12.5, 12.3], [1.9, 1.2]]) and not log_scale_needed([[2.5, 1.0], [2.0, 0.9]])
    assert all(ax.get_yscale() == "log" for ax in loss_curves(agg, "lm", pal).axes[:1])


def test_write_report_from_store_reads_samples_and_configs(tmp_path, monkeypatch):
    runs, examples, samples = _qa_runs(12)

    class FakeStore:
        def __init__(self, root, readonly=False):
            pass

        def results(self, **filters):
            return runs

        def read_examples(self, run_id):
            return examples.get(run_id, {})

        def read_samples(self, run_id):
            return samples.get(run_id, [])

        def read_config(self, run_id):
            return {"task": {"name": "qa", "limit_eval": 12}}

    monkeypatch.setitem(sys.modules, "peftlab.store", types.SimpleNamespace(Store=FakeStore))
    from peftlab.report import write_report_from_store

    write_report_from_store(tmp_path / "store", tmp_path / "out")
    page = (tmp_path / "out" / "report.html").read_text()
    assert "prompt_tuning says 0" in page and "limit_eval=12" in page


def test_unreadable_samples_and_configs_become_notes(tmp_path):
    runs, examples, _ = _qa_runs(10)

    def broken(run_id):
        raise OSError(f"disk gone under {run_id}")

    written = write_report(runs, tmp_path, examples=examples, samples=broken, configs=lambda run_id: ["not", "a map"])
    page = (tmp_path / "report.html").read_text()
    assert "samples.jsonl of qa-lora-s0 unreadable (disk gone under qa-lora-s0)" in page
    assert "tables/samples_qa.csv" not in written and '<h3 id="samples-qa">' not in page
    assert "lr=0.0001" in page  # the configuration still comes from result.json
