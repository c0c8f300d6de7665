"""Tuning as part of the experiment: search spaces and their draws, the sealed test split, selections
recorded and recomputed, final runs after every selection, resume at every stage, expected best vs budget.

Sweeps run the tiny random Llama of conftest.py on in-memory records (the data layer is replaced by a
recorder around `conftest.fake_load_records`, so every split a run reads is seen).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import yaml
from conftest import fake_load_records

from peftlab.config import ConfigError, parse_experiment


def tuned(model_dir, name: str = "tu", methods=("base", "lora", "ia3"), seeds=(0, 1), budget: int = 3,
          strategy: str = "random", task: str = "lm", space: dict | None = None, **tuning) -> dict:
    space = space or {
        "lora": {"lora.r": [2, 4], "train.lr": {"log_uniform": [1.0e-4, 5.0e-2]}},
        "ia3": {"train.lr": {"log_uniform": [1.0e-4, 5.0e-2]}},
    }
    return {
        "name": name, "model": str(model_dir),
        "tasks": [{task: {"limit_train": 8, "limit_eval": 4, "max_length": 32}}],
        "methods": list(methods), "seeds": list(seeds),
        "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0, "eval_batches": 1, "num_threads": 1},
        "tuning": {"budget": budget, "strategy": strategy, "space": {k: v for k, v in space.items() if k in methods},
                   **tuning},
    }


def experiment(raw: dict, store):
    import dataclasses

    return dataclasses.replace(parse_experiment(raw), output_dir=str(store))


class ReadLog:
    """The data layer, recording every (task, split) read and whether every selection was on disk then."""

    def __init__(self, store_root, exp):
        self.store_root, self.exp = store_root, exp
        self.reads: list[tuple[str, str, bool]] = []

    def all_selected(self) -> bool:
        from peftlab.tuning import selection_path, trial_groups

        return all(selection_path(self.store_root, self.exp.name, task, label).exists()
                   for task, label in trial_groups(self.exp))

    def __call__(self, task, split, source="auto", limit=None, seed=0):
        self.reads.append((task, split, self.all_selected()))
        return fake_load_records(task, split, source, limit, seed)


# ------------------------------------------------------------------------------------------ expected max
def test_expected_max_matches_a_hand_worked_case_and_brute_force() -> None:
    from peftlab.report.budget import expected_max, expected_max_curve

    # v = 1, 2, 3 and n = 2: P(max=1) = 1/9, P(max=2) = 4/9 - 1/9 = 3/9, P(max=3) = 1 - 4/9 = 5/9
    mean, sd = expected_max([3, 1, 2], 2)
    assert mean == pytest.approx((1 * 1 + 2 * 3 + 3 * 5) / 9)  # 22/9
    assert sd == pytest.approx(math.sqrt((1 * 1 + 4 * 3 + 9 * 5) / 9 - (22 / 9) ** 2))  # sqrt(38/81)
    assert expected_max([3, 1, 2], 1) == pytest.approx((2.0, math.sqrt(2 / 3)))  # one trial: the mean, the sd
    assert expected_max([3, 1, 2], 2, higher_is_better=False)[0] == pytest.approx(14 / 9)  # the best is the minimum
    # every n-tuple drawn with replacement, ties included: the formula is the exact distribution of the maximum
    values = [0.5, 2.0, 2.0, 7.0]
    for n in (1, 2, 3):
        maxima = [max(t) for t in itertools.product(values, repeat=n)]
        assert expected_max(values, n) == pytest.approx((np.mean(maxima), np.std(maxima)))
        minima = [min(t) for t in itertools.product(values, repeat=n)]
        assert expected_max(values, n, False) == pytest.approx((np.mean(minima), np.std(minima)))
    curve = expected_max_curve(values)
    assert [p.n for p in curve] == [1, 2, 3, 4]
    assert all(a.mean < b.mean for a, b in zip(curve, curve[1:]))  # more trials, a better expected best
    with pytest.raises(ValueError, match="no values"):
        expected_max([], 1)


def test_budget_curves_and_findings_from_trial_results(tmp_path) -> None:
    from peftlab.report.budget import budget_curves, budget_findings, write_budget_plots

    def trial(label, k, value, status="ok", space="a"):
        return {"run_id": f"{label}-{space}-{k}", "task": "lm", "label": label, "status": status,
                "primary_metric": "perplexity", "metrics": {"perplexity": value} if value is not None else {},
                "metric_directions": {"perplexity": "lower"}, "tuning": {"stage": "trial", "trial": k}}

    steady = [trial("lora", k, v) for k, v in enumerate([20.0, 21.0, 19.0, 20.5])]
    stale = [trial("lora", 0, 1.0, space="old")]  # a trial of an earlier search space, still in the store
    lucky = [trial("prompt", k, v) for k, v in enumerate([40.0, 5.0, 45.0])] + [trial("prompt", 3, None, "diverged")]
    final = {"task": "lm", "label": "lora", "status": "ok", "metrics": {"perplexity": 30.0}, "started_at": "2",
             "tuning": {"stage": "final", "metric": "perplexity", "trials": [r["run_id"] for r in steady]}}
    older = {**final, "started_at": "1", "tuning": {**final["tuning"], "trials": [stale[0]["run_id"]]}}
    curves = {c.label: c for c in budget_curves([*stale, *steady, *lucky, older, final])}
    assert curves["lora"].values == (20.0, 21.0, 19.0, 20.5) and curves["lora"].direction == "lower"
    assert curves["prompt"].values == (40.0, 5.0, 45.0) and curves["prompt"].failed == 1
    assert curves["prompt"].points[0].mean == pytest.approx(30.0)  # one trial: the mean of the ok trials
    # prompt is worse with one trial but better with three: the lead changes with the budget
    (finding,) = budget_findings(list(curves.values()))
    assert finding == ("lm: lora vs prompt: the lead changes with the budget: lora ahead at 1–2 trial(s), prompt ahead "
                       "at 3 trial(s) (expected best validation perplexity, 1 to 3 trials)")
    plots = write_budget_plots([*steady, *lucky, final], tmp_path)
    assert [p.name for p in plots] == ["budget_lm"] and plots[0].png.stat().st_size > 0 and plots[0].svg.exists()
    assert write_budget_plots([final], tmp_path / "none") == []


# ------------------------------------------------------------------------------------------ search spaces
def test_draws_are_seeded_prefix_stable_in_bounds_and_rounded() -> None:
    from peftlab.config import parse_axis
    from peftlab.tuning import sample

    axes = [parse_axis("train.lr", {"log_uniform": [1e-5, 1e-3]}, "s", True),
            parse_axis("lora.r", {"int_uniform": [2, 9]}, "s", True),
            parse_axis("rank", [{"lora.r": 4, "lora.lora_alpha": 8}, {"lora.r": 8, "lora.lora_alpha": 16}], "s", True),
            parse_axis("lora.lora_dropout", {"uniform": [0.0, 0.3]}, "s", True)]
    axes = [axes[0], axes[2], axes[3]]  # (lora.r is set by the tied axis; the int axis is checked below)
    for strategy in ("random", "sobol"):
        points = sample(axes, 16, strategy, seed=3)
        assert points == sample(axes, 16, strategy, seed=3) != sample(axes, 16, strategy, seed=4)
        assert sample(axes, 5, strategy, seed=3) == points[:5]  # a larger budget keeps the earlier trials
        for p in points:
            assert 1e-5 <= p["train.lr"] <= 1e-3 and p["train.lr"] == float(f"{p['train.lr']:.3g}")
            assert p["lora.lora_alpha"] == 2 * p["lora.r"] and 0.0 <= p["lora.lora_dropout"] <= 0.3
    ints = [p["lora.r"] for p in sample([parse_axis("lora.r", {"int_uniform": [2, 9]}, "s", True)], 64, "random", 0)]
    assert all(isinstance(r, int) for r in ints) and set(ints) == set(range(2, 10))

    # sobol: scipy's scrambled Sobol points, mapped through each axis (log scale for log_uniform)
    from scipy.stats import qmc

    lr_axis = [parse_axis("train.lr", {"log_uniform": [1e-5, 1e-3]}, "s", True)]
    u = qmc.Sobol(1, scramble=True, rng=np.random.default_rng(7)).random(8)[:, 0]
    expected = [float(f"{math.exp(math.log(1e-5) + x * (math.log(1e-3) - math.log(1e-5))):.3g}") for x in u]
    assert [p["train.lr"] for p in sample(lr_axis, 8, "sobol", 7)] == pytest.approx(expected)

    grid = [parse_axis("lora.r", [4, 8, 16], "s"), parse_axis("train.lr", [1e-4, 1e-3], "s")]
    every = sample(grid, 6, "grid", seed=0)
    assert sorted((p["lora.r"], p["train.lr"]) for p in every) == sorted(itertools.product([4, 8, 16], [1e-4, 1e-3]))
    assert sample(grid, 4, "grid", seed=0) == every[:4]
    with pytest.raises(ConfigError, match=r"the grid has 6 point\(s\), fewer than tuning.budget \(7\)"):
        sample(grid, 7, "grid", seed=0)


def test_every_trained_method_gets_the_same_budget_of_trials_on_validation(tmp_path, tiny_llama_dir) -> None:
    from peftlab.plan import expand, validate

    exp = experiment(tuned(tiny_llama_dir, budget=4, strategy="sobol"), tmp_path)
    runs = validate(exp)
    assert runs == expand(exp)
    assert [(r.method.label, r.trial) for r in runs] == [(m, k) for m in ("lora", "ia3") for k in range(4)]
    assert all(r.eval_split == "validation" and r.seed == 0 and r.holdout is None for r in runs)
    assert all("--t" in r.run_id() and r.tuning["stage"] == "trial" for r in runs)
    lora = [r for r in runs if r.method.label == "lora"]
    assert all(r.method.args["r"] == r.grid["lora.r"] and r.train.lr == r.grid["train.lr"] for r in lora)
    # the same seed gives both methods the same quantiles of their learning-rate range (common random numbers)
    ia3 = [r.train.lr for r in runs if r.method.label == "ia3"]
    assert len(set(ia3)) == 4 and all(1e-4 <= lr <= 5e-2 for lr in ia3)


@pytest.mark.parametrize(("change", "message"), [
    ({"budget": None}, r"tuning.budget: required"),
    ({"budget": 0}, r"tuning.budget: must be > 0"),
    ({"strategy": "sobel"}, r"tuning.strategy: 'sobel' is not valid \(did you mean 'sobol'\?\)"),
    ({"holdout": 1.5}, r"tuning.holdout: the fraction of train held out must be in \(0, 1\)"),
    ({"seed": -1}, r"tuning.seed: -1 is out of range"),
    ({"budgit": 3}, r"tuning: unknown key 'budgit' \(did you mean 'budget'\?\)"),
    ({"space": {}}, r"tuning.space: give every trained method a search space"),
    ({"space": {"lora": {"train.lr": {"log_uniform": [0, 1e-3]}}}}, r"log_uniform needs low > 0"),
    ({"space": {"lora": {"train.lr": {"uniform": [1e-3, 1e-4]}}}}, r"uniform needs low < high"),
    ({"space": {"lora": {"train.lr": {"normal": [0, 1]}}}}, r"expected a list of values or one of"),
    ({"space": {"lora": {"task.max_length": [16, 32]}}}, r"key 'task.max_length' must start with train., method. "
                                                         r"or lora."),
    ({"space": {"lora": {"lora.r": [4], "method.r": [8]}}}, r"'method.r' is set by two axes"),
    ({"space": {"lora": {"rank": [{"lora.r": 4}, {"lora.lora_alpha": 8}]}}}, r"every point of a tied axis sets the same"),
    ({"space": {"lora": {"lr": [1e-4]}}}, r"key 'lr' is not a dotted path .* names a tied axis"),
    ({"space": {"lroa": {"train.lr": [1e-4]}}}, r"tuning.space: 'lroa' is not a method label of the experiment "
                                               r"\(did you mean 'lora'\?\)"),
    ({"strategy": "grid"}, r"tuning.space.lora.train.lr: log_uniform is a distribution, which strategy grid cannot"),
])
def test_bad_tuning_sections_fail_with_one_sentence(tiny_llama_dir, change: dict, message: str) -> None:
    raw = tuned(tiny_llama_dir, methods=("lora",))
    raw["tuning"] = {k: v for k, v in {**raw["tuning"], **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=message):
        parse_experiment(raw)


def _with_prompt(raw: dict) -> None:
    raw["methods"].append("prompt")


def _base_only(raw: dict) -> None:
    raw["methods"] = ["base"]
    raw["tuning"]["space"] = {"base": {"train.lr": [1e-4]}}


def _base_space(raw: dict) -> None:
    raw["tuning"]["space"]["base"] = {"train.lr": [1e-4]}


def _code_task(raw: dict) -> None:
    raw["tasks"] = [{"code": {"limit_train": 8, "args": {"execute": False}}}]


@pytest.mark.parametrize(("change", "message"), [
    (_with_prompt, r"tuning.space: no search space for prompt; every trained method is tuned with the same budget"),
    (_base_space, r"tuning.space.base: 'base' trains nothing"),
    (_base_only, r"none of the methods \(base\) trains"),
    (lambda raw: raw["tuning"].update(metric="accuracy"),
     r"tuning.metric: 'accuracy' is not a metric of task 'lm'; valid: bits_per_byte"),
    (_code_task, r"task 'code' has no validation split, and its training records \(raw text\)"),
    (lambda raw: raw.update(grid={"lora.r": [4]}), r"grid and tuning: give one"),
])
def test_tuning_checks_that_need_the_methods_and_tasks(tiny_llama_dir, change, message: str) -> None:
    from peftlab.plan import validate

    raw = tuned(tiny_llama_dir, methods=("base", "lora"))
    change(raw)
    with pytest.raises(ConfigError, match=message):
        validate(parse_experiment(raw))


def test_cli_validate_names_the_tuning_problem_in_one_line(tmp_path, tiny_llama_dir, capsys) -> None:
    from peftlab.cli import main

    raw = tuned(tiny_llama_dir, methods=("lora",))
    raw["tuning"]["space"]["lora"]["train.lr"] = {"log_uniform": [1e-3, 1e-5]}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(path)]) != 0
    err = capsys.readouterr().err.strip()
    assert "tuning.space.lora.train.lr: log_uniform needs low < high" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_overrides_reach_the_search_space_and_dropped_methods_drop_theirs(tiny_llama_dir) -> None:
    from peftlab.config import apply_overrides

    raw = tuned(tiny_llama_dir)
    out = parse_experiment(apply_overrides(raw, ["tuning.budget=5", "tuning.space.lora.lora.r=4,8,16",
                                                 "method=base,lora"]))
    assert out.tuning.budget == 5 and list(out.tuning.space) == ["lora"]
    assert out.tuning.space["lora"]["lora.r"] == [4, 8, 16]


# ------------------------------------------------------------------------------------------ the sealed test split
def test_a_trial_is_refused_the_test_split(tmp_path, tiny_llama_dir, monkeypatch) -> None:
    import peftlab.data as data
    from peftlab.plan import expand
    from peftlab.runner import load_split
    from peftlab.tasks import get_task
    from peftlab.tuning import SealedSplitError, final_runs

    monkeypatch.setattr(data, "load_records", fake_load_records)
    exp = experiment(tuned(tiny_llama_dir), tmp_path)
    trial = expand(exp)[0]
    with pytest.raises(SealedSplitError, match="is a tuning trial, scored on the validation split: it never reads "
                                               "the test split"):
        load_split(trial, get_task("lm"), "test", 4)
    records, info = load_split(trial, get_task("lm"), "validation", 4)
    assert len(records) == 4 and info["split"] == "validation"
    with pytest.raises(SealedSplitError, match="not selected yet: lm/lora, lm/ia3"):
        final_runs(exp, {})


def test_holdout_is_seeded_disjoint_and_recorded_for_tasks_without_validation(tmp_path, monkeypatch) -> None:
    import dataclasses

    import peftlab.data as data
    from peftlab.config import RunConfig, TaskConfig
    from peftlab.tasks import get_task
    from peftlab.tuning import holdout_split

    seen: list[str] = []
    pool = [{"id": str(i), "question": f"q{i}", "answer": str(i), "solution": None} for i in range(50)]

    def loader(task, split, source="auto", limit=None, seed=0):
        seen.append(split)
        assert limit is None  # the hold-out is drawn from the whole train split
        return list(pool), {"task": task, "split": split, "source": "fake", "origin": "tests", "count": 50,
                            "fingerprint": "0" * 64}

    monkeypatch.setattr(data, "load_records", loader)
    spec = get_task("math")
    assert spec.splits.get("validation") is None
    raw = parse_experiment({"name": "h", "task": "math", "methods": ["lora"]})
    rc = RunConfig(experiment="h", model=raw.model, task=TaskConfig(name="math"), method=raw.methods[0],
                   train=raw.train, eval=raw.eval, seed=0, eval_split="validation", holdout=0.2, trial=0)
    train, train_info = holdout_split(rc, spec, "train", None)
    val, val_info = holdout_split(rc, spec, "validation", None)
    assert len(val) == 10 and len(train) == 40
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    assert holdout_split(rc, spec, "validation", None) == (val, val_info)  # deterministic
    assert val_info["holdout"] == {"role": "validation", "fraction": 0.2, "of": 50, "held_out": 10, "seed": 0}
    assert train_info["count"] == 40 and train_info["fingerprint"] != val_info["fingerprint"]
    small, _ = holdout_split(dataclasses.replace(rc, task=TaskConfig(name="math", limit_eval=3)), spec, "validation", 3)
    assert len(small) == 3 and {r["id"] for r in small} <= {r["id"] for r in val}
    assert set(seen) == {"train"}  # never the test split


# ------------------------------------------------------------------------------------------ the tuned sweep
def test_tuned_sweep_selects_on_validation_then_runs_the_test_split_once(tmp_path, tiny_llama_dir,
                                                                         monkeypatch) -> None:
    import peftlab.data as data
    from peftlab.executors import run_sweep
    from peftlab.plan import make_plan
    from peftlab.report.budget import budget_curves
    from peftlab.store import Store
    from peftlab.tuning import read_selection, selection_path

    store = Store(tmp_path / "s")
    exp = experiment(tuned(tiny_llama_dir), store.root)
    log = ReadLog(store.root, exp)
    monkeypatch.setattr(data, "load_records", log)

    plan = make_plan(exp, store.root)
    assert len(plan.runs) == 6 and plan.pending == 5  # 2 methods x 3 trials; then 2 x 2 seeds + base once

    # one trial is busy in another process: nothing may read the test split while it cannot be selected
    busy = plan.runs[4]
    holder = store.lock(busy.run_id)
    assert holder.acquire()
    try:
        first = run_sweep(exp, store)
    finally:
        holder.release()
    assert first.busy == [busy.run_id] and len(first.ran) == 5 and not first.ok
    assert first.pending == ["lm/ia3: trials not finished"]
    assert not any(split == "test" for _, split, _ in log.reads)
    assert read_selection(store.root, "tu", "lm", "lora") is not None  # lora's trials all finished
    assert read_selection(store.root, "tu", "lm", "ia3") is None

    second = run_sweep(exp, store)
    assert second.ok and second.ran[0] == busy.run_id and len(second.ran) == 6  # the trial, then 5 final runs
    tests = [(split, selected) for _, split, selected in log.reads if split == "test"]
    assert len(tests) == 5 and all(selected for _, selected in tests)  # every test read: after every selection

    results = store.results(experiment="tu")
    trials = [r for r in results if r["tuning"]["stage"] == "trial"]
    finals = [r for r in results if r["tuning"]["stage"] == "final"]
    assert len(trials) == 6 and len(finals) == 5
    assert all(set(r["data"]) == {"train", "validation"} for r in trials)  # scored on validation, test unread
    assert all("test" in r["data"] for r in finals)
    for label in ("lora", "ia3"):
        sel = read_selection(store.root, "tu", "lm", label)
        mine = sorted((r for r in trials if r["label"] == label), key=lambda r: r["tuning"]["trial"])
        values = [r["metrics"]["perplexity"] for r in mine]
        best = int(np.argmin(values))  # perplexity: lower is better
        assert sel["metric"] == "perplexity" and sel["direction"] == "lower" and sel["budget"] == 3
        assert [t["value"] for t in sel["trials"]] == values
        assert sel["selected"]["trial"] == best and sel["selected"]["run_id"] == mine[best]["run_id"]
        (curve,) = [c for c in budget_curves(results) if c.label == label]
        assert curve.values == tuple(values) and curve.direction == "lower" and len(curve.points) == 3
        assert curve.points[0].mean == pytest.approx(np.mean(values))  # one trial: expect the average trial
        seeds = sorted(r["seed"] for r in finals if r["label"] == label)
        assert seeds == [0, 1]
        for r in finals:
            if r["label"] == label:
                assert r["grid"] == mine[best]["grid"] and r["tuning"]["selected_trial"] == best
                assert r["tuning"]["validation_value"] == pytest.approx(values[best])
    assert [r["seed"] for r in finals if r["label"] == "base"] == [0]

    # resume: nothing runs again, the selections are recomputed to the same records and left as they were
    stamps = {label: selection_path(store.root, "tu", "lm", label).stat().st_mtime_ns for label in ("lora", "ia3")}
    reads = len(log.reads)
    third = run_sweep(exp, store)
    assert third.ran == [] and third.ok and len(third.already_ok) == 11 and len(log.reads) == reads
    assert stamps == {label: selection_path(store.root, "tu", "lm", label).stat().st_mtime_ns
                      for label in ("lora", "ia3")}
    plan = make_plan(exp, store.root)
    assert plan.pending == 0 and len(plan.runs) == 11 and not plan.to_run  # the dry run knows the final runs

    # resume mid-way: a cancelled trial re-runs, then the (same) selection, then only the cancelled final run
    a_trial = next(r for r in trials if r["label"] == "ia3")
    a_final = next(r for r in finals if r["label"] == "lora")
    for r in (a_trial, a_final):
        store.write_result({**r, "status": "cancelled"})
    fourth = run_sweep(exp, store)
    assert fourth.ran == [a_trial["run_id"], a_final["run_id"]] and fourth.ok


def test_a_method_whose_trials_all_fail_gets_no_test_runs(tmp_path, tiny_llama_dir, monkeypatch) -> None:
    import peftlab.data as data
    from peftlab.executors import run_sweep
    from peftlab.store import Store
    from peftlab.tuning import read_selection

    monkeypatch.setattr(data, "load_records", fake_load_records)
    store = Store(tmp_path / "s")
    raw = tuned(tiny_llama_dir, methods=("lora", "ia3"), seeds=(0,), budget=2,
                space={"lora": {"train.lr": [1e-3]}, "ia3": {"train.max_steps": [1000]}})
    raw["train"]["max_steps"] = 2
    exp = experiment(raw, store.root)
    import peftlab.train as train_module

    real = train_module.train

    def failing(model, examples, val_batches, cfg, *args, **kwargs):
        if cfg.max_steps == 1000:
            raise RuntimeError("boom")
        return real(model, examples, val_batches, cfg, *args, **kwargs)

    import peftlab.runner as runner

    monkeypatch.setattr(runner, "train", failing)
    summary = run_sweep(exp, store)
    assert not summary.ok and summary.pending == ["lm/ia3: no trial finished ok with a finite validation perplexity"]
    sel = read_selection(store.root, exp.name, "lm", "ia3")
    assert sel["selected"] is None and [t["status"] for t in sel["trials"]] == ["failed", "failed"]
    finals = [r for r in store.results() if r["tuning"]["stage"] == "final"]
    assert [r["label"] for r in finals] == ["lora"]


def test_tuned_sweep_on_a_task_without_validation_holds_out_train(tmp_path, tiny_llama_dir, monkeypatch) -> None:
    """A chat task with train and test only (sentiment's hooks, its validation split removed): trials train on
    the rest of train and are scored on the held-out part; the test split is read only by the final run."""
    import peftlab.data as data
    import peftlab.tasks.registry as registry
    from peftlab.executors import run_sweep
    from peftlab.store import Store

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    spec = yaml.safe_load((registry.TASK_DIR / "sentiment.yaml").read_text())
    spec.update(name="polarity", splits={"train": "train", "test": "test"})
    spec.pop("data")
    (tasks / "polarity.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(registry, "_EXTRA_PATHS", [])
    registry.add_task_path(tasks)
    reads: list[tuple[str, str]] = []

    def loader(task, split, source="auto", limit=None, seed=0):
        reads.append((task, split))
        return fake_load_records("sentiment" if task == "polarity" else task, split, source, limit, seed)

    monkeypatch.setattr(data, "load_records", loader)
    store = Store(tmp_path / "s")
    raw = tuned(tiny_llama_dir, methods=("lora",), seeds=(0,), budget=2, task="polarity", holdout=0.25,
                space={"lora": {"train.lr": [1e-3, 1e-2]}})
    summary = run_sweep(experiment(raw, store.root), store)
    assert summary.ok and len(summary.ran) == 3
    tests = [i for i, (_, split) in enumerate(reads) if split == "test"]
    assert reads[:6] == [("polarity", "train")] * 6  # 2 trials, then the final run: train and the held-out part
    assert min(tests) == 6 and [reads[i][0] for i in tests].count("polarity") == 1  # test: read once, last
    results = {r["tuning"]["stage"] + str(r["tuning"].get("trial", "")): r for r in store.results()}
    trial = results["trial0"]
    assert trial["data"]["validation"]["holdout"]["held_out"] == 16  # a quarter of the 64 train records
    assert trial["data"]["train"]["holdout"]["role"] == "train" and "test" not in trial["data"]
    assert results["final"]["data"]["train"]["holdout"]["fraction"] == 0.25  # the final run trains on the same rest
    assert set(json.loads(json.dumps(results["final"]["metrics"]))) >= {"accuracy"}


def test_peftlab_sweep_says_what_it_selected_and_exits_zero(tmp_path, tiny_llama_dir, monkeypatch, capsys) -> None:
    import peftlab.data as data
    from peftlab.cli import main

    monkeypatch.setattr(data, "load_records", fake_load_records)
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(tuned(tiny_llama_dir, methods=("lora",), seeds=(0,), budget=2,
                                         space={"lora": {"train.lr": [1e-3, 1e-2]}})))
    assert main(["sweep", str(path), "--store", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "selected lora on lm: trial " in out and "validation perplexity" in out and "best of 2 ok trial(s) of 2" in out
    assert "every method is selected: 1 final run(s) on the test split, 1 to run" in out
