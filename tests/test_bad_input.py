"""Malformed input, table-driven: every case is one sentence on stderr, a non-zero exit, no traceback,
no model loaded and nothing trained.

Each case writes an experiment to tmp_path (or uses a good one with bad `--set` overrides / CLI
flags), runs the CLI's `main()` in-process, and checks the message names the field or value. A few
cases run the CLI in a subprocess to check the real exit status and stderr. The model directory is
a bare config.json: nothing here may load it, and the loaders are replaced by tripwires.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from peftlab.cli import main

BASE_TRAIN = {"max_steps": 4, "warmup_steps": 1, "batch_size": 2}


def base_experiment(model_dir: Path) -> dict:
    return {
        "name": "bad", "model": str(model_dir),
        "task": {"lm": {"limit_train": 8, "limit_eval": 4, "max_length": 32}},
        "methods": ["lora"], "seeds": [0], "train": dict(BASE_TRAIN),
    }


def T(**train) -> dict:
    """A `train:` section: the base one with these fields changed."""
    return {"train": {**BASE_TRAIN, **train}}


def M(*methods) -> dict:
    return {"methods": list(methods)}


def D(*decoding) -> dict:
    return {"eval": {"decoding": list(decoding)}}


NAN, INF = float("nan"), float("inf")

# (id, config: dict of top-level changes | str text | bytes | None (the base file), argv after the
# command's file argument, expected text in the message). Placeholders in argv: {file} (an existing
# regular file), {tmp} (the test's directory), {store} (an existing run store), {cfg} (the config).
CASES = [
    # -- the file itself
    ("empty-file", "", ["validate", "{cfg}"], "is empty"),
    ("comments-only", "# nothing here\n", ["validate", "{cfg}"], "is empty"),
    ("top-level-list", "- lora\n- prompt\n", ["validate", "{cfg}"], "expected a mapping at the top level"),
    ("top-level-scalar", "hello\n", ["validate", "{cfg}"], "expected a mapping at the top level"),
    ("invalid-yaml", "methods: [lora\n", ["validate", "{cfg}"], "not valid YAML at line"),
    ("binary-file", b"\x89PNG\r\n\x1a\n\x00\xff\xfe", ["validate", "{cfg}"], "not a UTF-8 text file"),
    ("nul-character", "methods: [lora]\x00\n", ["validate", "{cfg}"], "not valid YAML"),
    ("directory-as-config", None, ["validate", "{tmp}"], "is a directory, not an experiment file"),
    ("missing-file", None, ["validate", "{tmp}/nope.yaml"], "no such experiment file"),
    ("unknown-top-level-key", {"modle": "x"}, ["validate", "{cfg}"], "unknown key 'modle' (did you mean 'model'?)"),
    ("presets-not-mapping", {"presets": 5}, ["validate", "{cfg}", "--preset", "demo"], "presets"),
    ("unknown-preset", {"presets": {"demo": {}}}, ["validate", "{cfg}", "--preset", "paper"], "unknown preset 'paper'"),
    # -- train
    ("max-steps-word", T(max_steps="ten"), ["validate", "{cfg}"], "train.max_steps: expected an integer, got 'ten'"),
    ("max-steps-fraction", T(max_steps=2.5), ["validate", "{cfg}"], "train.max_steps: expected an integer, got 2.5"),
    ("max-steps-bool", T(max_steps=True), ["validate", "{cfg}"], "train.max_steps: expected an integer, got True"),
    ("max-steps-1e29", "train: {max_steps: 1e29}\n", ["validate", "{cfg}"], "train.max_steps"),
    ("max-steps-1e12", T(max_steps=10**12), ["validate", "{cfg}"], "train.max_steps"),
    ("max-steps-zero", T(max_steps=0), ["validate", "{cfg}"], "train.max_steps: must be > 0"),
    ("max-steps-negative", T(max_steps=-3), ["validate", "{cfg}"], "train.max_steps: must be > 0, got -3"),
    ("max-steps-within-warmup", T(max_steps=4, warmup_steps=10), ["validate", "{cfg}"], "train.warmup_steps (10)"),
    ("lr-nan", T(lr=NAN), ["validate", "{cfg}"], "train.lr: expected a finite number"),
    ("lr-inf", T(lr=INF), ["validate", "{cfg}"], "train.lr: expected a finite number"),
    ("lr-word", T(lr="fast"), ["validate", "{cfg}"], "train.lr: expected a number, got 'fast'"),
    ("lr-zero", T(lr=0), ["validate", "{cfg}"], "train.lr: must be > 0"),
    ("lr-negative", T(lr=-1e-4), ["validate", "{cfg}"], "train.lr: must be > 0"),
    ("batch-size-zero", T(batch_size=0), ["validate", "{cfg}"], "train.batch_size: must be > 0"),
    ("batch-size-fraction", T(batch_size=1.5), ["validate", "{cfg}"], "train.batch_size: expected an integer"),
    ("grad-accum-negative", T(grad_accum=-1), ["validate", "{cfg}"], "train.grad_accum"),
    ("epochs-zero", T(epochs=0), ["validate", "{cfg}"], "train.epochs"),
    ("weight-decay-negative", T(weight_decay=-0.1), ["validate", "{cfg}"], "train.weight_decay"),
    ("eval-every-zero", T(eval_every=0), ["validate", "{cfg}"], "train.eval_every"),
    ("schedule-typo", T(schedule="cosin"), ["validate", "{cfg}"], "did you mean 'cosine'"),
    ("mixed-precision-bad", T(mixed_precision="fp8"), ["validate", "{cfg}"], "train.mixed_precision: 'fp8'"),
    ("train-unknown-key", T(learning_rate=1e-3), ["validate", "{cfg}"], "train: unknown key 'learning_rate'"),
    # -- lists
    ("methods-empty", M(), ["validate", "{cfg}"], "methods: the list is empty"),
    ("seeds-empty", {"seeds": []}, ["validate", "{cfg}"], "seeds: the list is empty"),
    ("tasks-empty", {"task": None, "tasks": []}, ["validate", "{cfg}"], "tasks: the list is empty"),
    ("seed-negative", {"seeds": [-1]}, ["validate", "{cfg}"], "seeds: -1 is out of range"),
    ("seed-word", {"seeds": ["a"]}, ["validate", "{cfg}"], "seeds[0]: expected an integer, got 'a'"),
    # -- methods and their arguments (checked before any model loads)
    ("method-unknown", M("lorra"), ["validate", "{cfg}"], "unknown method 'lorra' (did you mean 'lora'?)"),
    ("method-args-not-mapping", M({"lora": 3}), ["validate", "{cfg}"], "methods[0].lora: expected a mapping"),
    ("method-entry-number", M(5), ["validate", "{cfg}"], "methods[0]: expected a method name"),
    ("method-duplicate-labels", M("lora", "lora"), ["validate", "{cfg}"], "duplicate labels ['lora']"),
    ("lora-r-zero", M({"lora": {"r": 0}}), ["validate", "{cfg}"], "r must be between 1 and"),
    ("lora-r-negative", M({"lora": {"r": -4}}), ["validate", "{cfg}"], "got -4"),
    ("lora-r-word", M({"lora": {"r": "eight"}}), ["validate", "{cfg}"], "r must be an integer >= 1, got 'eight'"),
    ("lora-r-1e9", M({"lora": {"r": 1e9}}), ["validate", "{cfg}"], "r must be between 1 and 16,384"),
    ("lora-r-above-hidden", M({"lora": {"r": 128}}), ["validate", "{cfg}"], "exceeds the hidden size"),
    ("lora-dropout-above-one", M({"lora": {"lora_dropout": 1.5}}), ["validate", "{cfg}"], "lora_dropout must be in [0, 1)"),
    ("lora-alpha-zero", M({"lora": {"lora_alpha": 0}}), ["validate", "{cfg}"], "lora_alpha must be in (0"),
    ("lora-bias-bad", M({"lora": {"bias": "some"}}), ["validate", "{cfg}"], "bias: 'some' is not valid"),
    ("lora-targets-empty", M({"lora": {"target_modules": []}}), ["validate", "{cfg}"], "target_modules must be"),
    ("lora-unknown-arg", M({"lora": {"rank": 8}}), ["validate", "{cfg}"], "unknown argument(s) ['rank']"),
    ("labelled-entry-bad-r", M({"label": "lora-big", "method": "lora", "r": 0}), ["validate", "{cfg}"], "'lora-big'"),
    ("prompt-tokens-negative", M({"prompt": {"num_virtual_tokens": -1}}), ["validate", "{cfg}"],
     "num_virtual_tokens must be between 1 and"),
    ("prompt-tokens-zero", M({"prompt": {"num_virtual_tokens": 0}}), ["validate", "{cfg}"], "num_virtual_tokens"),
    ("prompt-text-init-without-text", M({"prompt": {"prompt_tuning_init": "text"}}), ["validate", "{cfg}"],
     "needs prompt_tuning_init_text"),
    ("prefix-projection-word", M({"prefix": {"prefix_projection": "yes"}}), ["validate", "{cfg}"],
     "prefix_projection must be true or false"),
    ("hybrid-prompt-init-bad", M({"lora+prompt": {"prompt_init": "zeros"}}), ["validate", "{cfg}"],
     "prompt_init: 'zeros' is not valid"),
    ("vera-unknown-arg", M({"vera": {"rank": 8}}), ["validate", "{cfg}"], "method 'vera': unknown argument(s) ['rank']"),
    ("vera-r-zero", M({"vera": {"r": 0}}), ["validate", "{cfg}"], "method 'vera': r must be between 1"),
    ("loha-r-word", M({"loha": {"r": "four"}}), ["validate", "{cfg}"], "method 'loha': r expects int, got 'four'"),
    ("lokr-dropout-two", M({"lokr": {"rank_dropout": 2}}), ["validate", "{cfg}"], "rank_dropout must be in [0, 1)"),
    # -- model
    ("model-unknown-alias", {"model": "smollm2-135m"}, ["validate", "{cfg}"], "did you mean 'smollm2-135m-instruct'"),
    ("model-unknown-name", {"model": "no-such-model"}, ["validate", "{cfg}"], "unknown model 'no-such-model'"),
    ("model-hub-id-not-cached", {"model": "nobody/nothing-here"}, ["validate", "{cfg}"],
     "'nobody/nothing-here' is not in the local Hugging Face cache"),
    ("model-dir-without-config", {"model": "{tmp}"}, ["validate", "{cfg}"], "holds no config.json"),
    ("model-dtype-bad", {"model": {"name": "{model}", "dtype": "fp8"}}, ["validate", "{cfg}"], "model.dtype: 'fp8'"),
    ("model-number", {"model": [1]}, ["validate", "{cfg}"], "model: expected a model name"),
    # -- tasks
    ("task-unknown", {"task": "lmm"}, ["validate", "{cfg}"], "unknown task 'lmm' (did you mean 'lm'?)"),
    ("task-limit-negative", {"task": {"lm": {"limit_train": -1}}}, ["validate", "{cfg}"], "limit_train: must be > 0"),
    ("task-limit-word", {"task": {"lm": {"limit_train": "all"}}}, ["validate", "{cfg}"],
     "limit_train: expected an integer, got 'all'"),
    ("task-max-length-zero", {"task": {"lm": {"max_length": 0}}}, ["validate", "{cfg}"], "max_length: must be > 0"),
    ("task-unknown-arg", {"task": {"lm": {"args": {"windw": 3}}}}, ["validate", "{cfg}"], "did you mean 'window'"),
    ("task-body-number", {"task": {"lm": 5}}, ["validate", "{cfg}"], "tasks[0].lm: expected a mapping"),
    ("code-without-opt-in", {"task": {"code": {"limit_train": 4}}}, ["validate", "{cfg}"], "--allow-code-execution"),
    # -- the experiment name becomes a directory name
    ("name-escapes-store", {"name": "../../escaped"}, ["validate", "{cfg}"], "'../../escaped' must not contain"),
    ("name-with-slash", {"name": "a/b"}, ["validate", "{cfg}"], "name: 'a/b' must not contain path separators"),
    ("name-control-char", {"name": "a\tb"}, ["validate", "{cfg}"], "must not contain control characters"),
    ("name-list", {"name": ["a"]}, ["validate", "{cfg}"], "name: expected a name"),
    # -- grid
    ("grid-unknown-method-arg", {"grid": {"lora.rank": [4, 8]}}, ["validate", "{cfg}"], "unknown argument(s) ['rank']"),
    ("grid-bad-rank-value", {"grid": {"lora.r": [4, 0]}}, ["validate", "{cfg}"], "grid lora.r=0"),
    ("grid-no-values", {"grid": {"lora.r": []}}, ["validate", "{cfg}"], "grid: lora.r has no values"),
    ("grid-unknown-head", {"grid": {"optim.lr": [1]}}, ["validate", "{cfg}"], "grid: key 'optim.lr' must start with"),
    ("grid-bad-lr", {"grid": {"train.lr": [0.1, -1]}}, ["validate", "{cfg}"], "train.lr: must be > 0"),
    ("grid-task-typo", {"grid": {"task.limit_tarin": [1]}}, ["validate", "{cfg}"], "did you mean 'limit_train'"),
    ("grid-not-mapping", {"grid": [1]}, ["validate", "{cfg}"], "grid: expected a mapping"),
    # -- eval and decoding
    ("top-k-negative", D("top_k=-5"), ["validate", "{cfg}"], "decoding.top_k: must be > 0, got -5"),
    ("top-k-zero", D("top_k=0"), ["validate", "{cfg}"], "decoding.top_k: must be > 0, got 0"),
    ("top-p-above-one", D("top_p=1.5"), ["validate", "{cfg}"], "top_p: must be in (0, 1]"),
    ("temperature-zero", D("temperature=0"), ["validate", "{cfg}"], "decoding.temperature: must be > 0"),
    ("temperature-nan", D("temperature=nan"), ["validate", "{cfg}"], "temperature: expected a finite number"),
    ("beams-zero", D("beam=0"), ["validate", "{cfg}"], "decoding.num_beams: must be > 0"),
    ("decoding-mapping-top-k", D({"strategy": "sample", "top_k": -1}), ["validate", "{cfg}"], "decoding.top_k"),
    ("decoding-number", D(5), ["validate", "{cfg}"], "eval.decoding[0]: expected a strategy"),
    ("eval-not-mapping", {"eval": 5}, ["validate", "{cfg}"], "eval: expected a mapping"),
    ("eval-batch-zero", {"eval": {"batch_size": 0}}, ["validate", "{cfg}"], "eval.batch_size: must be > 0"),
    ("output-dir-list", {"output_dir": [1]}, ["validate", "{cfg}"], "output_dir: expected a directory path"),
    # -- --set overrides
    ("set-max-steps-word", None, ["validate", "{cfg}", "--set", "train.max_steps=ten"], "train.max_steps"),
    ("set-method-empty", None, ["validate", "{cfg}", "--set", "method="], "--set method=: name at least one method"),
    ("set-dropped-method-arg", None, ["validate", "{cfg}", "--set", "method=lora,prompt", "--set", "method=lora",
                                      "--set", "prompt.num_virtual_tokens=4"],
     "method 'prompt' is not among the kept methods (lora)"),
    ("set-task-field-typo", None, ["validate", "{cfg}", "--set", "task.limit_tarin=3"],
     "(did you mean 'limit_train'?); valid: task fields source, limit_train"),
    ("set-seeds-list-negative", None, ["validate", "{cfg}", "--set", "seeds=0,-1"], "seeds: -1 is out of range"),
    ("set-no-value", None, ["validate", "{cfg}", "--set", "train.lr"], "expected KEY=VALUE"),
    ("set-unknown-head", None, ["validate", "{cfg}", "--set", "trian.lr=1e-4"], "did you mean 'train'"),
    ("set-lora-r-1e9", None, ["validate", "{cfg}", "--set", "lora.r=1e9"], "r must be between 1 and 16,384"),
    ("set-lora-rank", None, ["validate", "{cfg}", "--set", "lora.rank=4"], "unknown argument(s) ['rank']"),
    ("set-name-escape", None, ["validate", "{cfg}", "--set", "name=../../escaped"], "must not contain path separators"),
    ("set-model-not-cached", None, ["validate", "{cfg}", "--set", "model=nobody/nothing"], "not in the local Hugging Face"),
    ("set-task-empty", None, ["validate", "{cfg}", "--set", "task="], "--set task=: name at least one task"),
    ("set-grid-unknown-arg", None, ["validate", "{cfg}", "--set", "grid.lora.rank=4,8"], "unknown argument(s) ['rank']"),
    ("set-lr-nan", None, ["validate", "{cfg}", "--set", "train.lr=nan"], "train.lr: expected a finite number"),
    ("set-label-without-arg", None, ["validate", "{cfg}", "--set", "lora=5"], "use lora.ARG=VALUE"),
    ("set-code-task", None, ["run", "{cfg}", "--store", "{tmp}/s", "--set", "task=code"], "--allow-code-execution"),
    # -- CLI flags
    ("decoding-beam-word", None, ["run", "{cfg}", "--store", "{tmp}/s", "--decoding", "beam=abc"],
     "decoding 'beam=abc': beam: expected an integer, got 'abc'"),
    ("decoding-top-k-negative", None, ["run", "{cfg}", "--store", "{tmp}/s", "--decoding", "greedy,top_k=-5"], "top_k"),
    ("decoding-empty", None, ["run", "{cfg}", "--store", "{tmp}/s", "--decoding", ","], "--decoding ','"),
    ("decoding-unknown-part", None, ["run", "{cfg}", "--store", "{tmp}/s", "--decoding", "top_q=1"],
     "unknown part 'top_q' (did you mean 'top_p'?)"),
    ("run-store-is-file", None, ["run", "{cfg}", "--store", "{file}"], "--store {file}: is a file, not a directory"),
    ("run-store-under-file", None, ["run", "{cfg}", "--store", "{file}/sub"], "because {file} is a file"),
    ("sweep-store-is-file", None, ["sweep", "{cfg}", "--store", "{file}"], "is a file, not a directory"),
    ("dry-run-store-is-file", None, ["sweep", "{cfg}", "--dry-run", "--store", "{file}"], "is a file"),
    ("dry-run-bad-rank", M({"lora": {"r": 0}}), ["sweep", "{cfg}", "--dry-run", "--store", "{tmp}/s"], "r must be"),
    ("sweep-report-is-file", None, ["sweep", "{cfg}", "--store", "{tmp}/s", "--report", "{file}"], "--report {file}"),
    ("validate-store-is-file", None, ["validate", "{cfg}", "--store", "{file}"], "is a file, not a directory"),
    ("report-out-is-file", None, ["report", "{store}", "--out", "{file}"], "--out {file}: is a file"),
    ("ls-store-is-file", None, ["ls", "runs", "--store", "{file}"], "--store {file}: is a file"),
    ("generate-top-k-zero", None, ["generate", "some-run", "hi", "--decoding", "top_k=0"], "top_k: must be > 0"),
    ("generate-max-new-tokens-zero", None, ["generate", "some-run", "hi", "--max-new-tokens", "0"],
     "--max-new-tokens: expected a whole number >= 1"),
    ("evaluate-beam-word", None, ["evaluate", "some-run", "--decoding", "beam=abc"], "beam: expected an integer"),
    ("evaluate-limit-zero", None, ["evaluate", "some-run", "--decoding", "greedy", "--limit-eval", "0"], "--limit-eval"),
    ("data-show-negative-n", None, ["data", "show", "lm", "-n", "-1"], "-n: expected a whole number >= 0"),
    ("sweep-executor-bad", None, ["sweep", "{cfg}", "--executor", "slurm"], "invalid choice: 'slurm'"),
    ("merge-atol-nan", None, ["adapters", "merge", "some-run", "--out", "{tmp}/m", "--atol", "nan"], "--atol"),
    ("data-prepare-unknown-name", None, ["data", "prepare", "smollm2"], "unknown name 'smollm2'"),
    # -- found while fixing the above
    ("method-name-null", M({"method": None}), ["validate", "{cfg}"], "methods[0].method: expected a method name"),
    ("model-null", "model:\nmethods: [lora]\n", ["validate", "{cfg}"], "model: must not be empty"),
    ("tracker-unknown", {"trackers": ["tensorbored"]}, ["validate", "{cfg}"], "trackers: 'tensorbored'"),
    ("executor-negative-cpus", {"executor": {"num_cpus": -1}}, ["run", "{cfg}", "--store", "{tmp}/s"],
     "executor.num_cpus"),
    ("task-arg-count-word", {"task": {"lm": {"args": {"window": "wide"}}}}, ["validate", "{cfg}"],
     "window expects null or an integer >= 1, got 'wide'"),
    ("task-arg-bool-word", {"task": {"sentiment": {"args": {"in_domain": "yes"}}}}, ["validate", "{cfg}"],
     "in_domain expects true or false"),
    ("code-n-samples-zero", {"task": {"code": {"args": {"n_samples": 0, "execute": False}}}}, ["validate", "{cfg}"],
     "n_samples expects null or an integer >= 1, got 0"),
    ("allow-code-word", {"eval": {"allow_code_execution": "yes"}}, ["validate", "{cfg}"],
     "eval.allow_code_execution: expected true/false"),
]


@pytest.fixture()
def tripwires(monkeypatch) -> list:
    """Every way to load a model or train records itself here; a malformed input must leave it empty."""
    import peftlab.executors as executors
    import peftlab.lifecycle as lifecycle
    import peftlab.models as models
    import peftlab.runner as runner

    calls: list = []

    def trip(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise RuntimeError(f"tripwire: {name} was called")
        return record

    for module, names in ((models, ("load_model", "load_tokenizer", "prepare_alias")),
                          (runner, ("load_model", "load_tokenizer", "execute_run")),
                          (executors, ("run_sweep",)),  # run's claim_and_run goes on to runner.execute_run
                          (lifecycle, ("load_run", "evaluate_run"))):
        for name in names:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, trip(f"{module.__name__}.{name}"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("PEFTLAB_ALLOW_CODE_EXECUTION", raising=False)
    return calls


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    """A 'model' that is only a config.json: enough for name checks and the hidden size, never loadable."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    return path


def _fill(text: str, values: dict) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


def _fill_tree(obj, values: dict):
    if isinstance(obj, str):
        return _fill(obj, values)
    if isinstance(obj, list):
        return [_fill_tree(x, values) for x in obj]
    if isinstance(obj, dict):
        return {k: _fill_tree(v, values) for k, v in obj.items()}
    return obj


def write_case(tmp_path: Path, model_dir: Path, config) -> Path:
    path = tmp_path / "exp.yaml"
    if isinstance(config, bytes):
        path.write_bytes(config)
    elif isinstance(config, str):
        path.write_text(config)
    else:
        raw = base_experiment(model_dir)
        for key, value in (config or {}).items():
            if value is None:
                raw.pop(key, None)
            else:
                raw[key] = value
        raw = _fill_tree(raw, {"tmp": tmp_path, "model": model_dir})
        path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("config", "argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_input_is_one_sentence(config, argv, expected, tmp_path, model_dir, tripwires, capsys) -> None:
    cfg = write_case(tmp_path, model_dir, config)
    file = tmp_path / "a-file.txt"
    file.write_text("not a directory\n")
    from peftlab.store import Store

    store = Store(tmp_path / "store").root
    values = {"cfg": cfg, "tmp": tmp_path, "file": file, "store": store}
    before = set(tmp_path.parent.iterdir())
    code, out, err = run_main([_fill(a, values) for a in argv], capsys)
    lines = err.strip().splitlines()
    assert code not in (0, None), f"exit {code}; stdout: {out!r}"
    assert len(lines) == 1, f"expected one line on stderr, got: {err!r}"
    assert "Traceback" not in err and "a bug in peftlab" not in err, err
    assert _fill(expected, values) in lines[0], lines[0]
    assert not tripwires, f"a model was loaded or a run started: {tripwires}"
    assert set(tmp_path.parent.iterdir()) == before, "something was written outside the test directory"
    assert not (tmp_path / "s").exists(), "the run store was created for a refused experiment"


def test_the_table_is_large_enough() -> None:
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


# ------------------------------------------------------------------------------------------ controls
def test_good_experiment_passes_and_reaches_the_run(tmp_path, model_dir, tripwires, capsys) -> None:
    """The base experiment of the table is valid: the refusals above are the malformed parts only."""
    cfg = write_case(tmp_path, model_dir, None)
    code, out, err = run_main(["validate", str(cfg)], capsys)
    assert code == 0 and "1 run(s)" in out, err
    code, out, _ = run_main(["validate", str(cfg), "--set", "seeds=0,1", "--set", "method=lora,prompt"], capsys)
    assert code == 0 and "2 seed(s), 4 run(s)" in out
    code, out, _ = run_main(["validate", str(cfg), "--set", "seeds=[0, 1]", "--set", "grid.lora.r=4,8"], capsys)
    assert code == 0 and "4 run(s)" in out
    code, out, _ = run_main(["validate", str(cfg), "--set", "task=code", "--allow-code-execution"], capsys)
    assert code == 0, out
    code, out, _ = run_main(["validate", str(cfg), "--set", "task=code", "--set", "task.execute=false"], capsys)
    assert code == 0, out  # no execution, no opt-in needed
    code, out, err = run_main(["sweep", str(cfg), "--dry-run", "--store", str(tmp_path / "dry")], capsys)
    assert code == 0 and not (tmp_path / "dry").exists(), err
    assert not tripwires
    code, out, err = run_main(["run", str(cfg), "--store", str(tmp_path / "s")], capsys)
    assert tripwires == ["peftlab.runner.execute_run"]  # validation passed; the run itself is where a model loads


def test_name_with_dots_cannot_write_outside_the_store(tmp_path, model_dir, tripwires, capsys) -> None:
    cfg = write_case(tmp_path, model_dir, {"name": "../../escaped"})
    store = tmp_path / "deep" / "store"
    code, _, err = run_main(["run", str(cfg), "--store", str(store)], capsys)
    assert code == 2 and "name" in err
    assert not list(tmp_path.rglob("*escaped*")) and not (tmp_path.parent / "escaped").exists()


def test_grid_values_cannot_make_a_run_id_with_a_path(model_dir) -> None:
    from peftlab.config import parse_experiment
    from peftlab.plan import expand

    exp = parse_experiment({"name": "g", "model": str(model_dir), "methods": ["lora"],
                            "grid": {"lora.target_modules": ["../../x/q_proj"]}})
    (run,) = expand(exp)
    assert "/" not in run.run_id()


def test_read_only_store_is_refused_before_training(tmp_path, model_dir, tripwires, capsys, monkeypatch) -> None:
    cfg = write_case(tmp_path, model_dir, None)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access",
                        lambda p, mode, *a, **k: False if Path(p) == ro else real_access(p, mode, *a, **k))
    code, _, err = run_main(["run", str(cfg), "--store", str(ro / "runs")], capsys)
    assert code == 2 and err.strip() == f"error: --store {ro}/runs: {ro} is not writable (read-only or permission denied)"
    assert not tripwires
    code, _, err = run_main(["sweep", str(cfg), "--dry-run", "--store", str(ro / "runs")], capsys)
    assert code == 0, err  # a dry run writes nothing, so a read-only store is fine to plan from


@pytest.mark.parametrize(("exc", "expected"), [
    (OSError(errno.ENOSPC, "No space left on device", "{out}/report.html"),
     "{out}/report.html: no space left on device (disk full)"),
    (PermissionError(errno.EACCES, "Permission denied", "{out}"), "{out}: permission denied"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "{out}/summary.md"), "{out}/summary.md: is a directory"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "{out}/x"), "{out}/x: a part of this path is a file"),
    (OSError(errno.EROFS, "Read-only file system", "{out}"), "{out}: read-only file system"),
])
def test_file_system_errors_name_the_path(exc, expected, tmp_path, capsys, monkeypatch) -> None:
    """OSErrors deep inside a command (disk full, permissions) are one sentence naming the path."""
    import peftlab.report as report
    from peftlab.store import Store

    store = Store(tmp_path / "store").root
    out = tmp_path / "out"
    exc.filename = _fill(exc.filename, {"out": out})

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(report, "write_report", fail)
    code, _, err = run_main(["report", str(store), "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: " + _fill(expected, {"out": out})), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00binary", None])
def test_subprocess_exit_status_and_stderr(tmp_path, content) -> None:
    """The real process: exit status 2, one line on stderr, nothing on stdout, no traceback."""
    target = tmp_path if content is None else tmp_path / "exp.yaml"
    if content is not None:
        target.write_bytes(content)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "peftlab.cli", "validate", str(target)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert str(target) in proc.stderr
