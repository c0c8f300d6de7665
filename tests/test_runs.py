"""Runs end to end through the store: statuses, atomic writes, provenance and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from peftlab.cli import main
from peftlab.config import parse_experiment
from peftlab.plan import expand
from peftlab.runner import execute_run
from peftlab.store import Store


def experiment(model_dir, store, methods=("lora",), **train):
    return parse_experiment({
        "name": "t", "model": str(model_dir), "methods": list(methods), "output_dir": str(store),
        "task": {"lm": {"limit_train": 16, "limit_eval": 4, "max_length": 32}},
        "train": {"max_steps": 3, "batch_size": 4, "warmup_steps": 1, **train},
    })


def test_ok_run_records_everything(tiny_llama_dir, tmp_path, fake_records) -> None:
    store = Store(tmp_path / "runs")
    rc = expand(experiment(tiny_llama_dir, store.root))[0]
    result = execute_run(rc, store)
    assert result["status"] == "ok", result["error"]
    on_disk = json.loads((store.run_dir(rc.run_id()) / "result.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["schema_version"] == 1
    assert set(on_disk["metrics"]) == {"perplexity", "word_perplexity", "bits_per_byte"}
    assert on_disk["metric_directions"]["perplexity"] == "lower"
    cost = on_disk["cost"]
    for key in ("trainable_params", "total_params", "trainable_pct", "adapter_bytes", "train_time_s", "eval_time_s",
                "tokens_per_s", "peak_memory_bytes", "train_flops", "mfu", "memory_breakdown", "epoch_times_s"):
        assert cost.get(key) is not None, key
    assert cost["steps"] == 3 and cost["tokens_trained"] > 0
    assert len(on_disk["curves"]["train_loss"]) == 3 and on_disk["curves"]["val_loss"]
    prov = on_disk["provenance"]
    assert prov["packages"]["torch"] and "git_commit" in prov and prov["hardware"]["cpu_count"]
    assert on_disk["data"]["train"]["fingerprint"]
    assert (store.run_dir(rc.run_id()) / "adapter" / "adapter_config.json").exists()
    assert (store.run_dir(rc.run_id()) / "config.yaml").exists()
    assert "step 1 loss" in (store.run_dir(rc.run_id()) / "log.txt").read_text()
    assert [r["run_id"] for r in store.results(status="ok")] == [rc.run_id()]


def test_nan_loss_is_recorded_as_diverged(tiny_llama_dir, tmp_path, fake_records) -> None:
    store = Store(tmp_path / "runs")
    rc = expand(experiment(tiny_llama_dir, store.root, lr=1e30, max_grad_norm=None))[0]
    result = execute_run(rc, store)
    assert result["status"] == "diverged" and "loss became" in result["error"]
    assert store.status(rc.run_id()) == "diverged"


def test_exception_is_recorded_as_failed_with_traceback(tiny_llama_dir, tmp_path, fake_records, monkeypatch) -> None:
    import peftlab.tasks.lm as lm

    def boom(spec, ctx):
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(lm, "evaluate", boom)
    store = Store(tmp_path / "runs")
    rc = expand(experiment(tiny_llama_dir, store.root))[0]
    result = execute_run(rc, store)
    assert result["status"] == "failed" and "evaluation exploded" in result["error"]
    assert "Traceback" in store.read_result(rc.run_id())["error"]


def test_ctrl_c_is_recorded_as_cancelled(tiny_llama_dir, tmp_path, fake_records, monkeypatch) -> None:
    import peftlab.runner as runner

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train", interrupt)
    store = Store(tmp_path / "runs")
    rc = expand(experiment(tiny_llama_dir, store.root))[0]
    with pytest.raises(KeyboardInterrupt):
        execute_run(rc, store)
    assert store.status(rc.run_id()) == "cancelled"
    assert store.results()[0]["status"] == "cancelled"


def test_crash_during_write_keeps_the_finished_result(tmp_path, monkeypatch) -> None:
    store = Store(tmp_path / "runs")
    store.write_result({"run_id": "r1", "status": "ok", "metrics": {"x": 1.0}, "primary_metric": "x"})

    def crash(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.write_result({"run_id": "r1", "status": "running", "metrics": {}})
    monkeypatch.undo()
    assert store.read_result("r1")["status"] == "ok"
    assert not [p for p in store.run_dir("r1").iterdir() if p.name.endswith(".tmp")]
    assert store.results()[0]["metrics"] == {"x": 1.0}


def test_killed_process_reads_as_interrupted_and_index_rebuilds(tmp_path) -> None:
    store = Store(tmp_path / "runs")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    store.write_result({"run_id": "r2", "status": "running", "pid": child.pid})
    assert store.status("r2") == "running"
    child.kill()
    child.wait()
    assert store.status("r2") == "interrupted"
    assert store.results()[0]["status"] == "interrupted"
    (store.root / "index.sqlite").unlink()
    assert Store(store.root).rebuild_index() == 1


def test_cli_run_ls_validate(tiny_llama_dir, tmp_path, fake_records, capsys) -> None:
    cfg = tmp_path / "e.yaml"
    cfg.write_text(
        f"name: cli\nmodel: {tiny_llama_dir}\nmethods: [base, lora, prompt]\n"
        "task: {lm: {limit_train: 16, limit_eval: 4, max_length: 32}}\n"
        "train: {max_steps: 2, batch_size: 4, warmup_steps: 1}\n"
    )
    store = tmp_path / "runs"
    assert main(["validate", str(cfg)]) == 0
    assert "3 run(s)" in capsys.readouterr().out
    assert main(["run", str(cfg), "--store", str(store), "--set", "method=lora,prompt", "--set", "lora.r=4"]) == 0
    out = capsys.readouterr().out
    assert "2 ok, 0 not ok" in out
    assert main(["run", str(cfg), "--store", str(store), "--set", "method=lora,prompt", "--set", "lora.r=4"]) == 0
    assert "already done" in capsys.readouterr().out
    assert main(["ls", "runs", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "perplexity=" in out and "2 run(s)" in out
    lora = [r for r in Store(store).results() if r["label"] == "lora"][0]
    assert lora["method_args"]["r"] == 4


def test_cli_errors_are_one_sentence(tmp_path, capsys) -> None:
    cfg = tmp_path / "e.yaml"
    cfg.write_text("methods: [lorra]\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: methods: unknown method 'lorra'") and "Traceback" not in err
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "no such experiment file" in capsys.readouterr().err


def test_unknown_model_name_is_one_sentence() -> None:
    from peftlab.models import ModelResolutionError, resolve_path

    with pytest.raises(ModelResolutionError, match="neither an offline alias .* a local directory, nor a hub id"):
        resolve_path("not-a-model")


def test_hub_unreachable_is_one_sentence(monkeypatch) -> None:
    from peftlab.models import ModelResolutionError, load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelResolutionError, match="hub is unreachable or offline mode is on"):
        load_model("someone/does-not-exist-model", device="cpu")


def test_same_seed_same_losses(tiny_llama_dir, tmp_path, fake_records) -> None:
    curves = []
    for i in range(2):
        store = Store(tmp_path / f"runs{i}")
        rc = expand(experiment(tiny_llama_dir, store.root, max_steps=4))[0]
        curves.append(execute_run(rc, store)["curves"]["train_loss"])
    assert curves[0] == curves[1]
    torch.use_deterministic_algorithms(False)


def test_absurd_evaluation_checks() -> None:
    from peftlab.runner import check_evaluation

    assert check_evaluation({"perplexity": 21.3, "word_perplexity": 9e6, "bits_per_byte": 1.2}, [], 320) is None
    assert check_evaluation({"perplexity": 320.0}, [], 320) is None  # a uniform guess is bad, not absurd
    assert check_evaluation({"perplexity": 1.1e10}, [], 49152) == (
        "evaluation diverged: metric perplexity is 1.1e+10, above the vocabulary size (49152) that a uniform "
        "guess scores")
    assert "metric loss is nan" in check_evaluation({"loss": float("nan"), "perplexity": 3.0}, [], 320)
    assert "metric accuracy is inf" in check_evaluation({"accuracy": float("inf")}, [], None)
    assert "metric rouge_l (evaluation greedy) is nan" in check_evaluation(
        {"rouge_l": 0.3}, [{"name": "greedy", "metrics": {"rouge_l": float("nan")}}], 320)
    assert check_evaluation({"perplexity": 1e12, "note": "text", "flag": True}, [], None) is None  # no vocab known


def test_vocab_size_comes_from_the_model(tiny_llama_dir) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftlab.methods import ApplyContext, get_method
    from peftlab.runner import vocab_size

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert vocab_size(model, tokenizer) == model.config.vocab_size == 320
    for name in ("lora", "prompt"):
        method = get_method(name)
        adapted = method.apply(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), method.resolve_args({}),
                               ApplyContext(tokenizer=tokenizer, model_path=str(tiny_llama_dir)))
        assert vocab_size(adapted, tokenizer) == 320, name


def test_absurd_perplexity_is_recorded_as_diverged_and_never_averaged(tiny_llama_dir, tmp_path, fake_records,
                                                                      monkeypatch) -> None:
    """lr=1e3 on `lm` once gave perplexity 1.1e10 recorded `ok` (and averaged in): now `diverged`."""
    import peftlab.tasks.lm as lm
    from peftlab.report.aggregate import aggregate

    real = lm.evaluate

    def blown_up(spec, ctx):
        out = real(spec, ctx)
        out["metrics"]["perplexity"] = 1.1e10
        return out

    monkeypatch.setattr(lm, "evaluate", blown_up)
    store = Store(tmp_path / "runs")
    rc = expand(experiment(tiny_llama_dir, store.root, max_steps=2))[0]
    result = execute_run(rc, store)
    assert result["status"] == "diverged"
    assert "metric perplexity is 1.1e+10, above the vocabulary size (320)" in result["error"]
    assert result["metrics"]["perplexity"] == 1.1e10  # kept, so the value can be seen
    assert store.status(rc.run_id()) == "diverged" and store.results(status="ok") == []

    ok = [{**result, "run_id": f"ok{seed}", "seed": seed, "status": "ok", "error": None,
           "metrics": {"perplexity": 20.0 + 2 * seed}} for seed in (1, 2)]
    running = {**result, "run_id": "live", "seed": 3, "status": "running", "metrics": {"perplexity": 5e9}}
    agg = aggregate([result, *ok, running])
    [group] = agg.groups
    stats = group.metrics["perplexity"]
    assert stats.n == 2 and stats.mean == pytest.approx(23.0) and max(stats.values) < 100
    assert group.seeds == [1, 2]
    assert [(f["run_id"], f["status"]) for f in agg.failures] == [(rc.run_id(), "diverged")]


# ------------------------------------------------------------------------------------------ the RunResult contract
def full_result() -> dict:
    """A result with every top-level key of docs/contracts.md (and one this version does not know)."""
    return {
        "schema_version": 1, "run_id": "lm-compare--lora--lm--s0--3f9a1c2b", "experiment": "lm-compare",
        "sweep_id": "sw1", "status": "ok", "error": None, "label": "lora", "method": "lora",
        "method_args": {"r": 8, "lora_alpha": 16}, "model": "smollm2-135m-instruct", "task": "lm", "seed": 0,
        "grid": {"lora.r": 8, "train.lr": 0.0005}, "train": {"lr": 0.0005, "max_steps": 3},
        "config_hash": "abc123", "metrics": {"perplexity": 21.3, "word_perplexity": 40.1},
        "metric_directions": {"perplexity": "lower", "word_perplexity": "lower"}, "primary_metric": "perplexity",
        "evaluations": [{"name": "greedy", "decoding": {"strategy": "greedy"}, "metrics": {"rouge_l": 0.3},
                         "throughput": {"tokens_per_s": 10.0, "s_per_example": 0.5}}],
        "cost": {"trainable_params": 10, "total_params": 100, "trainable_pct": 10.0, "adapter_bytes": 40,
                 "epoch_times_s": [1.5], "memory_breakdown": {"weights": 1}, "mfu": None},
        "curves": {"train_loss": [[1, 2.31]], "val_loss": [[50, 2.1]]},
        "data": {"train": {"fingerprint": "f00"}}, "provenance": {"git_commit": "deadbeef", "git_dirty": False},
        "started_at": "2026-11-22T08:30:00+00:00", "finished_at": "2026-11-22T08:31:00+00:00",
        "future_key": {"kept": [1, 2]},
    }


def test_run_result_round_trips_every_key(tmp_path) -> None:
    from peftlab.result import SCHEMA_VERSION, RunResult
    from peftlab.status import RunStatus

    data = full_result()
    result = RunResult.from_dict(data)
    assert result.status is RunStatus.OK and result.metrics["perplexity"] == 21.3
    assert result.extra == {"future_key": {"kept": [1, 2]}}
    assert result.to_dict() == data and list(result.to_dict()) == list(data)  # same keys, same order
    assert RunResult.from_json(result.to_json()) == result
    assert json.loads(result.to_json())["schema_version"] == SCHEMA_VERSION

    store = Store(tmp_path / "runs")
    store.write_result(result)
    on_disk = (store.run_dir(result.run_id) / "result.json").read_text()
    assert on_disk == result.to_json() and json.loads(on_disk) == data
    assert store.read_result(result.run_id) == data and store.results() == [data]
    assert store.read_run_result(result.run_id) == result
    store.write_result(data)  # a dict is read as a RunResult first: the same file
    assert (store.run_dir(result.run_id) / "result.json").read_text() == on_disk


def test_run_result_running_keeps_pid_and_finish_drops_it() -> None:
    from peftlab.result import RunResult
    from peftlab.status import RunStatus

    result = RunResult(run_id="r", status=RunStatus.RUNNING, pid=os.getpid())
    assert result.to_dict()["pid"] == os.getpid() and result.to_dict()["status"] == "running"
    result.finish(RunStatus.FAILED, "boom", "2026-01-01T00:00:00+00:00")
    assert "pid" not in result.to_dict()
    assert (result.status, result.error, result.finished_at) == (RunStatus.FAILED, "boom", "2026-01-01T00:00:00+00:00")


@pytest.mark.parametrize("data, problem", [
    ([1], "holds an array where a result object belongs"),
    ("ok", "holds a string where a result object belongs"),
    ({"status": "ok"}, "lacks the required field(s) run_id"),
    ({"run_id": "a", "status": "ok", "schema_version": 2}, "has schema_version 2; this peftlab reads schema_version 1"),
    ({"run_id": "", "status": "ok"}, "has run_id '', not a run id"),
    ({"run_id": "a", "status": "great"},
     "has status 'great', not one of ok, failed, diverged, cancelled, running"),
    ({"run_id": "a", "status": "interrupted"},
     "has status 'interrupted', not one of ok, failed, diverged, cancelled, running"),
    ({"run_id": "a", "status": "ok", "metrics": [1]}, "has a list in 'metrics' where an object belongs"),
    ({"run_id": "a", "status": "ok", "evaluations": {}}, "has evaluations that are not a list"),
])
def test_run_result_refuses_invalid_data_with_the_store_messages(tmp_path, data, problem) -> None:
    from peftlab.result import InvalidResult, RunResult
    from peftlab.store import validate_result

    assert validate_result(data) == problem
    with pytest.raises(InvalidResult) as info:
        RunResult.from_dict(data)
    assert info.value.problem == problem and isinstance(info.value, ValueError)
    if isinstance(data, dict) and "run_id" in data:
        with pytest.raises(ValueError, match=f"not writing the result of run {data['run_id']!r}: it "):
            Store(tmp_path / "s").write_result(data)
        assert not (tmp_path / "s" / str(data["run_id"]) / "result.json").exists()


def test_run_result_refuses_a_result_of_another_directory_and_invalid_changes(tmp_path) -> None:
    from peftlab.result import InvalidResult, RunResult

    with pytest.raises(InvalidResult, match="says run_id 'b', which is not its directory's name"):
        RunResult.from_dict({"run_id": "b", "status": "ok"}, run_id="a")
    with pytest.raises(InvalidResult, match="has status 'great'"):
        RunResult(run_id="a", status="great")
    result = RunResult(run_id="a", status="ok")
    result.metrics = [1]  # changed into something that is not a result: the store will not write it
    with pytest.raises(ValueError, match="not writing the result of run 'a': it has a list in 'metrics'"):
        Store(tmp_path / "s").write_result(result)


def test_only_the_store_writes_result_json() -> None:
    """No function in src/ but `Store.write_result` both names `result.json` and writes a file, and
    the runner, lifecycle and executors hand the store `RunResult`s (no result dicts built by hand)."""
    import ast
    from pathlib import Path

    import peftlab

    writes = {"write_text", "write_bytes", "atomic_write_text", "atomic_open", "replace", "rename", "dump",
              "copy", "copyfile", "move", "symlink_to", "link_to", "hardlink_to"}

    def opens_for_writing(call: ast.Call) -> bool:  # open(path, "w") / path.open("a") / os.open(path, O_WRONLY)
        name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        if name == "fdopen":
            return True
        if name != "open":
            return False
        modes = [a for a in [*call.args[1:], *(k.value for k in call.keywords if k.arg in ("mode", "flags"))]]
        return any((isinstance(m, ast.Constant) and isinstance(m.value, str) and set(m.value) & set("wax+"))
                   or any(isinstance(n, ast.Attribute) and n.attr in ("O_WRONLY", "O_RDWR", "O_CREAT")
                          for n in ast.walk(m)) for m in modes)

    src = Path(peftlab.__file__).parent
    writers = []
    for path in sorted(src.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            nodes = list(ast.walk(fn))
            names_file = any(isinstance(n, ast.Constant) and n.value == "result.json" for n in nodes)
            calls = [n for n in nodes if isinstance(n, ast.Call)]
            called = {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "") for c in calls}
            if names_file and (called & writes or any(opens_for_writing(c) for c in calls)):
                writers.append((str(path.relative_to(src)), fn.name))
    assert writers == [("store.py", "write_result")]

    for name in ("runner.py", "lifecycle.py", "executors/ray_executor.py"):
        text = (src / name).read_text()
        assert '"status": "' not in text and "status=\"" not in text, name  # statuses are RunStatus members
    assert "_initial_result" not in (src / "runner.py").read_text() + (src / "executors/ray_executor.py").read_text()
