"""Tests for peftlab.report on synthetic results that follow docs/contracts.md exactly."""

from __future__ import annotations

import csv
import math
import re
import sys
import types
from pathlib import Path

import pytest

from peftlab.report import aggregate, paired_compare, pareto_front, summarize, t_critical, write_report
from peftlab.report.aggregate import betainc, t_cdf, winners
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


@pytest.mark.parametrize("df, expected", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045),
                                          (60, 2.000), (1000, 1.962)])
def test_t_quantiles(df, expected):
    assert t_critical(df) == pytest.approx(expected, abs=1e-3)


def test_t_cdf_and_betainc():
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(-2.0, 5) == pytest.approx(0.0509697, abs=1e-6)
    assert t_cdf(2.0, 5) + t_cdf(-2.0, 5) == pytest.approx(1.0)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-4)  # I_0.4(2,3) = 0.5248
    assert t_critical(4, 0.99) == pytest.approx(4.604, abs=1e-3)


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


def test_paired_comparison(agg):
    lora = group(agg, "lm", "lora", **{"lora.r": 8, "train.lr": 5e-4})
    ia3 = group(agg, "lm", "ia3")
    p = paired_compare(lora, ia3, "perplexity")
    # diffs = [-3, -2.5, -3]: mean -17/6, sd = sqrt(1/12)
    assert p.n == 3 and p.seeds == (0, 1, 2)
    assert p.mean_diff == pytest.approx(-17 / 6)
    hw = 4.302653 * math.sqrt(1 / 12) / math.sqrt(3)
    assert p.ci_low == pytest.approx(-17 / 6 - hw, abs=1e-5)
    assert p.ci_high == pytest.approx(-17 / 6 + hw, abs=1e-5)
    assert p.excludes_zero and p.direction == "lower" and p.verdict == "better"
    assert paired_compare(ia3, lora, "perplexity").verdict == "worse"
    # flipping the declared direction flips the verdict
    assert paired_compare(lora, ia3, "perplexity", direction="higher").verdict == "worse"
    # dora shares only seeds 0 and 1 with full
    full, dora = group(agg, "lm", "full"), group(agg, "lm", "dora")
    q = paired_compare(dora, full, "perplexity")  # diffs [0.5, 0.5] → sd 0 → CI [0.5, 0.5]
    assert q.n == 2 and q.mean_diff == pytest.approx(0.5) and q.verdict == "worse"
    # full vs lora (4, 5e-4): diffs [-1, -1, -0.5] → CI covers 0? mean -0.833, sd 0.2887
    r = paired_compare(full, group(agg, "lm", "lora", **{"lora.r": 4, "train.lr": 5e-4}), "perplexity")
    assert r.excludes_zero  # hw = 0.717 < 0.833
    base = group(agg, "lm", "base")
    assert paired_compare(base, full, "perplexity").verdict == "n<2"  # one shared seed


def test_paired_not_significant():
    a = [make_result("sentiment", "full", s, v) for s, v in enumerate([0.80, 0.90, 0.70])]
    b = [make_result("sentiment", "ia3", s, v) for s, v in enumerate([0.82, 0.85, 0.71])]
    agg = aggregate(a + b)
    p = paired_compare(group(agg, "sentiment", "full"), group(agg, "sentiment", "ia3"), "accuracy")
    assert not p.excludes_zero and p.verdict == "n.s."


def test_winners(agg):
    ws = {w.task: w for w in winners(agg)}
    lm = ws["lm"]
    assert lm.best.label == "lora" and lm.best.grid_dict == {"lora.r": 8, "train.lr": 5e-4}
    assert lm.runner_up.label == "dora"  # dora mean 23.0 is the best other method (full 23.17)
    assert lm.paired.n == 2 and lm.significant  # diffs [-2.5, -2.5] → zero-width CI below 0
    sent = ws["sentiment"]
    assert sent.best.label == "lora" and sent.runner_up.label == "full"
    # diffs [0.01, 0.02, 0.02]: mean 0.01667, hw = 4.303*0.005774/1.732 = 0.01434 → significant
    assert sent.paired.mean_diff == pytest.approx(0.05 / 3)
    assert sent.significant


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
    assert "30.00 (n=1)" in md  # base: one seed, no interval
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
    assert "## Findings" in s and "significantly better" in s
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
