"""Grid axes: plain axes multiply, tied axes (a key without a dot, values that are mappings) move several
keys together, and the ablation config does what its comment says (alpha = 2r)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from peftlab.config import ConfigError, apply_overrides, load_experiment, parse_experiment
from peftlab.plan import expand

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RANKS = [{"lora.r": r, "lora.lora_alpha": 2 * r} for r in (4, 8, 16)]


def exp(**raw):
    return parse_experiment({"name": "g", **raw})


def test_a_tied_axis_is_one_axis_whose_keys_move_together() -> None:
    runs = expand(exp(methods=["base", "lora", "prompt"], grid={"rank": RANKS, "train.lr": [1e-4, 1e-3]}))
    lora = [r for r in runs if r.method.label == "lora"]
    assert len(lora) == 3 * 2  # 3 tied points x 2 learning rates, not 3 x 3 x 2
    assert {(r.method.args["r"], r.method.args["lora_alpha"]) for r in lora} == {(4, 8), (8, 16), (16, 32)}
    assert all(r.grid == {"lora.r": r.method.args["r"], "lora.lora_alpha": r.method.args["lora_alpha"],
                          "train.lr": r.train.lr} for r in lora)  # each key recorded on its own (heatmaps read lora.r)
    assert len([r for r in runs if r.method.label == "prompt"]) == 2  # the tied lora axis is not prompt's
    assert len([r for r in runs if r.method.label == "base"]) == 1
    assert "--lora_alpha16--r8--lr0.001--" in next(r.run_id() for r in lora if r.grid["lora.r"] == 8
                                                   and r.train.lr == 1e-3)


def test_tied_axis_with_train_keys_multiplies_only_methods_that_take_every_key() -> None:
    schedule = [{"lora.r": 4, "train.lr": 1e-3}, {"lora.r": 64, "train.lr": 1e-4}]
    runs = expand(exp(methods=["lora", "ia3"], grid={"pairs": schedule}))
    assert [(r.method.label, r.grid) for r in runs] == [("lora", schedule[0]), ("lora", schedule[1]), ("ia3", {})]
    assert [r.train.lr for r in runs[:2]] == [1e-3, 1e-4]


@pytest.mark.parametrize(("grid", "message"), [
    ({"rank": [{"lora.r": 4, "lora.lora_alpha": 8}, {"lora.r": 8}]},
     r"grid.rank\[1\]: every point of a tied axis sets the same keys \(lora.r, lora.lora_alpha\); got lora.r"),
    ({"rank": [4, 8]}, r"grid: key 'rank' is not a dotted path .* names a tied axis, whose values are mappings"),
    ({"rank": [{"r": 4}]}, r"grid.rank: key 'r' must be a dotted path such as lora.r"),
    ({"rank": RANKS, "lora.r": [2]}, r"grid: lora.r is set by two axes \(rank and lora.r\); give it once"),
    ({"both": [{"lora.r": 4, "prompt.num_virtual_tokens": 4}]}, r"grid.both: no method takes all of its keys"),
    ({"train.lr": {"log_uniform": [1e-5, 1e-3]}}, r"grid.train.lr: \{log_uniform: \.\.\.\} is a distribution, which "
                                                  r"only a tuning search space takes"),
    ({"lora.r": []}, r"grid: lora.r has no values"),
])
def test_bad_tied_axes_fail_with_one_sentence(grid: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        expand(exp(methods=["lora", "prompt"], grid=grid))


def test_plain_axes_still_multiply_and_keep_their_run_ids() -> None:
    runs = expand(exp(methods=["lora"], grid={"lora.r": [4, 8], "lora.target_modules": [["q_proj"], ["q_proj", "v_proj"]]}))
    assert len(runs) == 4 and runs[0].grid == {"lora.r": 4, "lora.target_modules": ["q_proj"]}
    # the tuning fields RunConfig gained count only when set; the tuning stage's notes never do
    (rc,) = expand(exp(methods=["lora"], seeds=[1], grid={"lora.r": [4], "train.lr": [1e-4]}))
    assert rc.eval_split == "test" and rc.trial is None and rc.holdout is None
    assert rc.run_id().startswith("g--lora--lm--r4--lr0.0001--s1--")
    assert dataclasses.replace(rc, tuning={"stage": "final"}).run_id() == rc.run_id()
    trial = dataclasses.replace(rc, eval_split="validation", trial=0)
    assert trial.config_hash() != rc.config_hash() and "--t0--s1--" in trial.run_id()
    assert dataclasses.replace(rc, holdout=0.1).config_hash() != rc.config_hash()
    with pytest.raises(ConfigError, match="run.eval_split: 'dev' is not valid"):
        dataclasses.replace(rc, eval_split="dev")


def test_ablation_config_ties_alpha_to_twice_the_rank() -> None:
    e = load_experiment(CONFIGS / "ablation-rank-lr.yaml")
    lora = [r for r in expand(e) if r.method.label == "lora"]
    assert len(lora) == 5 * 3
    assert all(r.method.args["lora_alpha"] == 2 * r.method.args["r"] for r in lora)
    assert sorted({r.method.args["r"] for r in lora}) == [4, 8, 16, 32, 64]
    tuned = load_experiment(CONFIGS / "ablation-rank-lr.yaml", preset="tuned")
    trials = [r for r in expand(tuned) if r.method.label == "lora"]
    assert len(trials) == tuned.tuning.budget == 8 and not tuned.grid
    assert all(r.method.args["lora_alpha"] == 2 * r.method.args["r"] and 1e-4 <= r.train.lr <= 1e-3 for r in trials)


def test_set_overrides_a_tied_axis() -> None:
    raw = {"name": "g", "methods": ["lora"], "grid": {"rank": RANKS}}
    out = parse_experiment(apply_overrides(raw, ["grid.rank=[{lora.r: 2, lora.lora_alpha: 4}]"]))
    (rc,) = expand(out)
    assert (rc.method.args["r"], rc.method.args["lora_alpha"]) == (2, 4)
