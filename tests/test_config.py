"""Config validation: unknown keys, wrong types and bad names fail with the field named."""

from __future__ import annotations

import pytest

from peftlab.config import ConfigError, apply_overrides, load_experiment, parse_decoding_spec, parse_experiment
from peftlab.plan import expand, validate


def exp(**raw):
    return parse_experiment({"name": "t", **raw})


def test_defaults_follow_the_paper() -> None:
    e = exp()
    assert (e.train.lr, e.train.weight_decay, e.train.warmup_steps) == (5e-4, 0.01, 100)
    from peftlab.methods import get_method

    lora = get_method("lora").defaults
    assert (lora["r"], lora["lora_alpha"], lora["lora_dropout"]) == (8, 16, 0.1)
    assert get_method("prompt").defaults["num_virtual_tokens"] == 8
    assert get_method("prefix").defaults["num_virtual_tokens"] == 10
    assert get_method("prefix").defaults["prefix_projection"] is False


@pytest.mark.parametrize(("raw", "message"), [
    ({"train": {"learning_rate": 1}}, r"train: unknown key 'learning_rate'; valid: .*lr"),
    ({"train": {"lr": "fast"}}, r"train.lr: expected a number"),
    ({"train": {"batch_size": 0}}, r"train.batch_size: must be > 0"),
    ({"train": {"schedule": "cosin"}}, r"train.schedule: 'cosin' is not valid \(did you mean 'cosine'\?\)"),
    ({"modle": "x"}, r"unknown key 'modle' \(did you mean 'model'\?\)"),
    ({"model": {"dtype": "fp8"}}, r"model.dtype: 'fp8' is not valid"),
    ({"tasks": [{"lm": {"limit_train": -1}}]}, r"limit_train: must be > 0"),
    ({"methods": ["lora", "lora"]}, r"duplicate labels \['lora'\]"),
    ({"methods": [{"lora": 3}]}, r"methods\[0\].lora: expected a mapping"),
    ({"eval": {"decoding": ["top_q=1"]}}, r"unknown part 'top_q'"),
])
def test_bad_configs_name_the_field(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        exp(**raw)


def test_unknown_task_and_method_name_valid_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown task 'lmm'.*valid: .*lm"):
        validate(exp(task="lmm"))
    with pytest.raises(ConfigError, match=r"unknown method 'lorra'"):
        validate(exp(methods=["lorra"]))
    with pytest.raises(ConfigError, match=r"task 'lm': unknown argument"):
        validate(exp(task={"lm": {"args": {"windw": 3}}}))


def test_overrides_select_method_and_set_arguments() -> None:
    raw = {"name": "t", "methods": ["base", "lora", {"prompt": {"num_virtual_tokens": 4}}]}
    out = parse_experiment(apply_overrides(raw, ["method=lora", "method.r=16", "train.lr=1e-4", "seeds=[0, 1]"]))
    assert [m.label for m in out.methods] == ["lora"] and out.methods[0].args == {"r": 16}
    assert out.train.lr == 1e-4 and out.seeds == [0, 1]
    out = parse_experiment(apply_overrides(raw, ["prompt.num_virtual_tokens=20", "task=lm", "task.limit_train=5"]))
    assert out.methods[2].args == {"num_virtual_tokens": 20} and out.tasks[0].limit_train == 5


def test_override_needs_key_value() -> None:
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["train.lr"])


def test_presets_and_missing_file(tmp_path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("methods: [lora]\ntrain: {lr: 1.0e-3}\npresets:\n  demo: {train: {max_steps: 3}}\n")
    e = load_experiment(path, preset="demo")
    assert e.train.max_steps == 3 and e.train.lr == 1e-3 and e.name == "e"
    with pytest.raises(ConfigError, match="unknown preset 'paper'; valid: demo"):
        load_experiment(path, preset="paper")
    with pytest.raises(ConfigError, match="no such experiment file"):
        load_experiment(tmp_path / "nope.yaml")
    path.write_text("methods: [lora\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiment(path)


def test_grid_multiplies_only_the_methods_it_names() -> None:
    e = exp(methods=["base", "lora", "prompt"], seeds=[0, 1],
            grid={"lora.r": [4, 8, 16], "train.lr": [1e-4, 5e-4]})
    runs = expand(e)
    by_label = {}
    for r in runs:
        by_label.setdefault(r.method.label, []).append(r)
    assert len(by_label["base"]) == 1            # base never trains: no grid point, no seed changes it
    assert len(by_label["lora"]) == 3 * 2 * 2    # r × lr × seeds
    assert len(by_label["prompt"]) == 2 * 2      # lr × seeds
    assert {r.method.args["r"] for r in by_label["lora"]} == {4, 8, 16}
    assert len({r.run_id() for r in runs}) == len(runs)


def test_bad_grid_key() -> None:
    with pytest.raises(ConfigError, match="grid: key 'optim.lr' must start with"):
        expand(exp(methods=["lora"], grid={"optim.lr": [1]}))


def test_run_id_is_stable_and_config_sensitive() -> None:
    a = expand(exp(methods=["lora"]))[0]
    b = expand(exp(methods=["lora"]))[0]
    c = expand(exp(methods=["lora"], train={"lr": 1e-3}))[0]
    assert a.run_id() == b.run_id() != c.run_id()


def test_decoding_specs() -> None:
    assert parse_decoding_spec("greedy").strategy == "greedy"
    d = parse_decoding_spec("top_p=0.9:temperature=0.7:n=5")
    assert (d.strategy, d.top_p, d.temperature, d.num_return_sequences) == ("sample", 0.9, 0.7, 5)
    assert parse_decoding_spec("beam=4").num_beams == 4


def test_optional_fields_are_type_checked() -> None:
    """`int | None` fields were never checked (a UnionType is not a typing.Union)."""
    for bad in ("ten", 2.5, True, 1e29):
        with pytest.raises(ConfigError, match=r"train.max_steps"):
            exp(train={"max_steps": bad})
    assert exp(train={"max_steps": "1e3", "warmup_steps": 10}).train.max_steps == 1000  # YAML 1.1 reads 1e3 as text
    with pytest.raises(ConfigError, match=r"decoding.top_k: must be > 0"):
        parse_decoding_spec("top_k=0")
    with pytest.raises(ConfigError, match=r"beam: expected an integer, got 'abc'"):
        parse_decoding_spec("beam=abc")


def test_lists_read_alike_in_files_and_overrides() -> None:
    raw = {"name": "t", "methods": ["lora"]}
    a = parse_experiment(apply_overrides(raw, ["seeds=0,1", "method=lora,prompt"]))
    b = parse_experiment({"name": "t", "seeds": "0,1", "methods": "lora,prompt"})
    assert a.seeds == b.seeds == [0, 1] and [m.label for m in a.methods] == [m.label for m in b.methods]
    for empty in ({"methods": []}, {"seeds": []}, {"tasks": []}):
        with pytest.raises(ConfigError, match="the list is empty"):
            exp(**empty)


def test_empty_or_non_mapping_file_is_an_error(tmp_path) -> None:
    path = tmp_path / "e.yaml"
    path.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_experiment(path)
    path.write_text("- lora\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_experiment(path)
    with pytest.raises(ConfigError, match="is a directory"):
        load_experiment(tmp_path)


def test_warmup_longer_than_the_run_is_refused_by_validation() -> None:
    e = exp(methods=["base", "lora"], train={"max_steps": 3})  # parsing alone accepts it (presets may fix it)
    with pytest.raises(ConfigError, match=r"train.max_steps \(3\) must be greater than train.warmup_steps \(100\)"):
        validate(e)


def test_list_valued_task_args_read_the_same_in_every_spelling():
    """`k: 1,5`, `k: [1, 5]` and `--set task.k=1,5` are one list (code's k defaults to a list); a single
    value is a one-item list."""
    from peftlab.config import apply_overrides, parse_experiment

    def task(args):
        return parse_experiment({"name": "x", "task": {"code": {"args": args}}, "methods": ["lora"]}).tasks[0]

    assert task({"k": "1,5"}) == task({"k": [1, 5]}) and task({"k": 1}).args == {"k": [1]}
    raw = apply_overrides({"name": "x", "task": {"code": {}}, "methods": ["lora"]}, ["task.k=1,5"])
    assert parse_experiment(raw).tasks[0] == task({"k": [1, 5]})
