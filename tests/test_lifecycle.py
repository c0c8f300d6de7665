"""Adapters from anywhere, and `peftlab evaluate`/`generate`/`chat`/`adapters` keeping their promises.

A plain PEFT adapter (written here with peft alone, on a tiny Llama) is shown, loaded, generated
from, evaluated on two tasks into a run store beside a trained run and aggregated by the report;
re-evaluation skips what a run has, never stores a decoding twice and keeps every strategy's
outputs; options that cannot apply are refused before anything loads; merge and export write
complete directories with the user's umask, and refuse to overwrite unless told to.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from conftest import fake_load_records, perturb

from peftlab.adapters import locate, method_for_peft_type, read_meta, resolve_base
from peftlab.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = torch.tensor([[5, 60, 7, 81, 9, 100, 11, 12]])
QA = [{"id": f"q{i}", "title": "t", "context": f"the quick brown fox number {i} jumps over the lazy dog .",
       "question": "what does the fox do ?", "answers": ["jumps", "jumps over"]} for i in range(12)]


def fake_data(task, split, source="auto", limit=None, seed=0):
    """conftest's lm/sentiment records, plus extractive QA ones."""
    if task != "qa":
        return fake_load_records(task, split, source, limit, seed)
    records = QA[:limit] if limit else QA
    return records, {"task": task, "split": split, "source": "fake", "origin": "tests", "count": len(records),
                     "fingerprint": "1" * 64}


@pytest.fixture
def data(monkeypatch):
    import peftlab.data

    monkeypatch.setattr(peftlab.data, "load_records", fake_data)


def write_peft_adapter(path: Path, base_dir: Path, config=None, seed: int = 1):
    """A LoRA adapter saved by plain peft (`PeftModel.save_pretrained`), perturbed off the identity."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = config or LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = perturb(get_peft_model(base, config), seed)
    model.save_pretrained(path)
    return model


@pytest.fixture
def peft_dir(tmp_path, tiny_llama_dir):
    path = tmp_path / "my-lora"
    model = write_peft_adapter(path, tiny_llama_dir)
    return path, model


def logits(model, ids=IDS):
    """Logits of the text positions (a soft prompt's virtual positions dropped)."""
    with torch.no_grad():
        return model(input_ids=ids).logits[:, -ids.shape[1]:].float()


def experiment(model_dir, store, task, task_args=None, limit_eval=3):
    from peftlab.config import parse_experiment

    return parse_experiment({
        "name": "t", "model": {"name": str(model_dir), "dtype": "float32"}, "methods": ["lora"],
        "output_dir": str(store),
        "task": {task: {"limit_train": 8, "limit_eval": limit_eval, "max_length": 96, "args": task_args or {}}},
        "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0, "eval_batches": 1},
    })


def trained_run(model_dir, store: Store, task: str, task_args=None) -> str:
    from peftlab.plan import expand
    from peftlab.runner import execute_run

    [rc] = expand(experiment(model_dir, store.root, task, task_args))
    result = execute_run(rc, store)
    assert result["status"] == "ok", result["error"]
    return rc.run_id()


def nothing_loads(monkeypatch):
    """Loading a model, a tokenizer or test data fails loudly: what runs after this must refuse first."""
    import peftlab.data
    import peftlab.lifecycle
    import peftlab.models

    def trip(*args, **kwargs):
        raise AssertionError("something was loaded before the refusal")

    for module, name in ((peftlab.models, "load_model"), (peftlab.models, "load_tokenizer"),
                         (peftlab.lifecycle, "load_run"), (peftlab.data, "load_records")):
        monkeypatch.setattr(module, name, trip)


# ------------------------------------------------------------------------------------ plain PEFT directories
def test_plain_peft_directory_is_described_loaded_and_generated_from(peft_dir, tiny_llama_dir, capsys):
    from peftlab.adapters import load_run
    from peftlab.cli.lifecycle import generate_cmd, show_cmd

    path, model = peft_dir
    ref = locate(path)
    assert ref.plain and ref.run_dir is None
    meta = read_meta(path)
    assert meta["method"] == "lora" and meta["args"]["r"] == 4
    assert meta["model"]["name"] == str(tiny_llama_dir) and meta["source"]["peft_type"] == "LORA"
    assert torch.equal(logits(load_run(path, device="cpu").model), logits(model))

    assert show_cmd(argparse.Namespace(run=str(path), store="runs", base=None, json=False)) == 0
    text = capsys.readouterr().out
    for needle in ("a plain PEFT adapter directory", "lora  (peft LORA)", "r=4", str(tiny_llama_dir),
                   "1,792 in the adapter's weights", "adapter_model.safetensors", "mergeable"):
        assert needle in text, needle
    assert show_cmd(argparse.Namespace(run=str(path), store="runs", base=None, json=True)) == 0
    info = json.loads(capsys.readouterr().out)  # one document, nothing else on stdout
    assert info["kind"] == "peft" and info["method"] == "lora" and info["parameters"]["adapter_values"] == 1792
    assert info["peft_config"]["r"] == 4 and info["base_model"]["name"] == str(tiny_llama_dir)

    args = argparse.Namespace(run=str(path), prompts=["the quick brown"], store="runs", base=None,
                              decoding="greedy", max_new_tokens=4, system="")
    assert generate_cmd(args) == 0
    assert capsys.readouterr().out.strip()


@pytest.mark.parametrize("peft_type,config,method", [
    ("LORA", {}, "lora"), ("LORA", {"use_dora": True}, "dora"), ("IA3", {}, "ia3"),
    ("PROMPT_TUNING", {}, "prompt"), ("PREFIX_TUNING", {}, "prefix"), ("VERA", {}, "vera"), ("LOHA", {}, "loha")])
def test_peft_types_map_to_methods(peft_type, config, method):
    from peftlab.methods import get_method

    assert method_for_peft_type(peft_type, config) == method
    assert get_method(method).name == method


def test_unknown_peft_type_is_one_clear_sentence():
    with pytest.raises(ValueError, match=r"peft_type 'NOPE' is not a type peft .* knows; valid: .*LORA"):
        method_for_peft_type("NOPE", {}, "x/adapter_config.json")


def test_generic_peft_type_loads_through_peft(tmp_path, tiny_llama_dir):
    from peft import LoHaConfig

    from peftlab.adapters import load_run

    path = tmp_path / "loha"
    model = write_peft_adapter(path, tiny_llama_dir, LoHaConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    assert read_meta(path)["method"] == "loha"
    assert torch.allclose(logits(load_run(path, device="cpu").model), logits(model))


def test_base_model_resolution_is_checked_before_loading(peft_dir, tiny_llama_dir, monkeypatch):
    import peftlab.models

    path, _ = peft_dir
    nothing_loads(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(peftlab.models, "_in_hub_cache", lambda *args: False)
    config = json.loads((path / "adapter_config.json").read_text())

    def record(base):
        (path / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))

    # the hub id of an offline alias: the alias, with a note that it is a converted copy
    name, note = resolve_base("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert name == "smollm2-135m-instruct" and "not bit-identical" in note
    # a base that cannot be found: one sentence naming the recorded value and --base, before any load
    record("someone/missing-model")
    with pytest.raises(ValueError, match=r"base model 'someone/missing-model' \(adapter_config.json "
                                         r"base_model_name_or_path\) cannot be loaded here .*pass --base MODEL"):
        read_meta(path)
    from peftlab.lifecycle import evaluate_run

    with pytest.raises(ValueError, match="someone/missing-model"):
        evaluate_run(str(path), task="qa", store=path.parent / "runs")
    info = read_meta(path, strict=False)  # `adapters show` still describes it
    assert "pass --base" in info["source"]["base_problem"]
    assert read_meta(path, base=str(tiny_llama_dir))["model"]["name"] == str(tiny_llama_dir)
    with pytest.raises(ValueError, match="--base nope/nothing-here"):
        read_meta(path, base="nope/nothing-here", strict=False)
    record(None)
    with pytest.raises(ValueError, match="records no base_model_name_or_path.*pass --base"):
        read_meta(path)


# ------------------------------------------------------------------------------------ evaluate an adapter from elsewhere
def test_external_adapter_is_stored_like_a_run_and_reported_beside_trained_runs(peft_dir, tiny_llama_dir, tmp_path,
                                                                                 data, capsys):
    from peftlab.cli.lifecycle import evaluate_cmd
    from peftlab.lifecycle import EXTERNAL, evaluate_run
    from peftlab.report import aggregate

    path, _ = peft_dir
    store = Store(tmp_path / "runs")
    trained = {task: trained_run(tiny_llama_dir, store, task) for task in ("qa", "sentiment")}
    qa = evaluate_run(str(path), task="qa", store=store.root)
    args = argparse.Namespace(run=str(path), task="sentiment", decoding=None, store=str(store.root), limit_eval=None,
                              allow_code_execution=False, force=False, base=None, json=True)
    assert evaluate_cmd(args) == 0
    senti = json.loads(capsys.readouterr().out)  # --json: one document on stdout
    assert qa.created and senti["created"] and qa.label == senti["label"] == f"{EXTERNAL}:my-lora"
    for run_id, task in ((qa.run_id, "qa"), (senti["run_id"], "sentiment")):
        result = store.read_result(run_id)
        assert result["status"] == "ok" and result["method"] == "lora" and result["task"] == task
        assert result["experiment"] == EXTERNAL and result["external"]["peft_type"] == "LORA"
        assert result["cost"]["trainable_params"] == 1792 and result["metrics"]
        run_dir = store.run_dir(result["run_id"])
        assert (run_dir / "adapter" / "adapter_model.safetensors").exists()  # self-contained
        assert (run_dir / "samples.jsonl").exists() and result["examples_file"] == "examples.jsonl"
        # scored like the trained run of its task, so the examples pair up
        mine, theirs = store.read_examples(result["run_id"]), store.read_examples(trained[task])
        source = result["per_example_source"][result["primary_metric"]]
        assert set(mine[source]) == set(theirs[source]) and len(mine[source]) == 3
    assert [e["name"] for e in qa.evaluated] == ["greedy"] and senti["evaluated"] == []  # sentiment: log-likelihood

    agg = aggregate(store.results(), store.read_examples)
    for task in ("qa", "sentiment"):
        labels = {g.label: g for g in agg.groups_for(task, with_data=True)}
        assert set(labels) == {"lora", f"{EXTERNAL}:my-lora"}
        primary = agg.primary[task]
        assert labels[f"{EXTERNAL}:my-lora"].metrics[primary].n_examples == 3

    again = evaluate_run(str(path), task="qa", store=store.root)  # the same adapter and task: the same run
    assert not again.created and again.run_id == qa.run_id and again.skipped == ["greedy"]
    again = evaluate_run(str(path), task="sentiment", store=store.root)
    assert not again.created and again.run_id == senti["run_id"] and again.skipped == ["loglik"]
    assert len(store.results()) == 4


def test_adapter_directory_needs_a_task(peft_dir, tmp_path, monkeypatch):
    from peftlab.lifecycle import evaluate_run

    nothing_loads(monkeypatch)
    with pytest.raises(ValueError, match=r"has no task of its own; name the task .* --task \(valid: .*qa"):
        evaluate_run(str(peft_dir[0]), store=tmp_path / "runs")


# ------------------------------------------------------------------------------------ re-evaluating a run
def _names(store: Store, run_id: str) -> list[str]:
    return [e["name"] for e in store.read_result(run_id)["evaluations"]]


def test_reevaluation_skips_what_the_run_has_and_keeps_every_output(tiny_llama_dir, tmp_path, data, monkeypatch):
    from peftlab.lifecycle import evaluate_run

    store = Store(tmp_path / "runs")
    run_id = trained_run(tiny_llama_dir, store, "qa")
    out = evaluate_run(run_id, "greedy,top_k=5:seed=1", store=store.root)
    assert out.skipped == ["greedy"] and [e["name"] for e in out.evaluated] == ["top_k=5:seed=1"]
    assert _names(store, run_id) == ["greedy", "top_k=5:seed=1"]
    samples = [json.loads(line) for line in (store.run_dir(run_id) / "samples.jsonl").read_text().splitlines()]
    tagged = [s for s in samples if s.get("evaluation") == "top_k=5:seed=1"]
    assert len(tagged) == 3 and all("outputs" in s for s in tagged)
    assert len([s for s in samples if "evaluation" not in s]) == 3  # the training run's own lines stay
    assert len(store.read_examples(run_id)["top_k=5:seed=1"]) == 3

    with monkeypatch.context() as m:  # everything it asks for is there: nothing loads
        nothing_loads(m)
        out = evaluate_run(run_id, "top_k=5:seed=1,greedy,greedy", store=store.root)
        assert out.evaluated == [] and out.skipped == ["top_k=5:seed=1", "greedy"]

    forced = evaluate_run(run_id, "greedy", store=store.root, force=True, limit_eval=2)
    assert [e["name"] for e in forced.evaluated] == ["greedy"]
    result = store.read_result(run_id)
    assert [e["name"] for e in result["evaluations"]] == ["top_k=5:seed=1", "greedy"]  # greedy once, the new one
    renamed = result["evaluations"][-1]["per_example_source"]["f1"]
    examples = store.read_examples(run_id)
    assert renamed.startswith("greedy@") and len(examples[renamed]) == 2
    assert len(examples["greedy"]) == 3  # the run's own metrics still point at these
    lines = (store.run_dir(run_id) / "samples.jsonl").read_text().splitlines()
    assert len([line for line in lines if json.loads(line).get("evaluation") == "greedy"]) == 2


def test_a_result_with_a_duplicated_decoding_is_cleaned_up(tiny_llama_dir, tmp_path, data):
    from peftlab.lifecycle import evaluate_run

    store = Store(tmp_path / "runs")
    run_id = trained_run(tiny_llama_dir, store, "qa")
    result = store.read_run_result(run_id)
    result.evaluations = result.evaluations * 2  # as older versions could leave it: greedy, greedy
    store.write_result(result)
    evaluate_run(run_id, "greedy", store=store.root, force=True)
    assert _names(store, run_id) == ["greedy"]


def test_decoding_on_a_task_without_generation_is_refused_before_loading(tiny_llama_dir, tmp_path, data, monkeypatch,
                                                                          peft_dir):
    from peftlab.lifecycle import evaluate_run

    store = Store(tmp_path / "runs")
    run_id = trained_run(tiny_llama_dir, store, "sentiment")  # scored by label log-likelihood
    nothing_loads(monkeypatch)
    with pytest.raises(ValueError, match=r"task 'sentiment' is scored without generation \(its metrics: accuracy"):
        evaluate_run(run_id, "top_k=50", store=store.root)
    with pytest.raises(ValueError, match=r"task 'lm' is scored without generation.*drop --decoding"):
        evaluate_run(str(peft_dir[0]), "greedy", store=store.root, task="lm")
    assert not list(store.root.glob("external--*"))  # nothing was recorded


def test_a_task_hook_says_whether_decoding_applies(peft_dir, tmp_path, data, monkeypatch):
    """With the task's `uses_decoding(args)` hook the refusal comes before loading; without it (and
    without a run to tell) the evaluation finds out, scores once and says --decoding was not used."""
    import peftlab.tasks.sentiment as sentiment
    from peftlab.lifecycle import evaluate_run

    path, _ = peft_dir
    store = tmp_path / "runs"
    with monkeypatch.context() as m:
        m.setattr(sentiment, "uses_decoding", lambda args: args.get("scoring") == "generate", raising=False)
        nothing_loads(m)
        with pytest.raises(ValueError, match="task 'sentiment' is scored without generation.*drop --decoding"):
            evaluate_run(str(path), "greedy", store=store, task="sentiment")
    monkeypatch.delattr(sentiment, "uses_decoding", raising=False)
    import peftlab.runner

    calls = []
    step = peftlab.runner.evaluate_step
    monkeypatch.setattr(peftlab.runner, "evaluate_step", lambda *a, **k: calls.append(1) or step(*a, **k))
    out = evaluate_run(str(path), "greedy,top_k=5", store=store, task="sentiment")
    assert out.created and out.evaluated == [] and len(calls) == 1 and "accuracy" in out.metrics
    assert any("--decoding greedy,top_k=5 was not used" in note for note in out.notes)


def test_code_runs_still_need_this_commands_opt_in_for_new_decodings_only(tiny_llama_dir, tmp_path, data, monkeypatch):
    """Skipped decodings execute nothing, so they need no opt-in; new ones do (before anything loads)."""
    import yaml

    from peftlab.evaluation.sandbox import UnsafeCodeExecutionNotAllowed
    from peftlab.lifecycle import evaluate_run

    store = Store(tmp_path / "runs")
    run_id = trained_run(tiny_llama_dir, store, "qa")
    config_path = store.run_dir(run_id) / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    config["task"] = {**config["task"], "name": "code", "args": {}}
    config_path.write_text(yaml.safe_dump(config))
    result = store.read_run_result(run_id)
    result.task = "code"
    store.write_result(result)
    monkeypatch.delenv("PEFTLAB_ALLOW_CODE_EXECUTION", raising=False)
    nothing_loads(monkeypatch)
    assert evaluate_run(run_id, "greedy", store=store.root).skipped == ["greedy"]
    with pytest.raises(UnsafeCodeExecutionNotAllowed, match="--allow-code-execution"):
        evaluate_run(run_id, "top_k=5", store=store.root)


# ------------------------------------------------------------------------------------ merge and export
def _lora_run(tmp_path, model_dir, name="lora"):
    from peftlab.adapters import save_adapter
    from peftlab.methods import ApplyContext, get_method
    from peftlab.models import load_model

    method = get_method(name)
    args = method.resolve_args({})
    torch.manual_seed(0)
    model = perturb(method.apply(load_model(str(model_dir), "float32", device="cpu"), args,
                                 ApplyContext(model_path=str(model_dir))))
    run_dir = tmp_path / "store" / f"t--{name.replace('+', '-')}--lm--s0--0123456789"
    save_adapter(model, name, run_dir / "adapter", {"args": args, "model": {"name": str(model_dir), "dtype": "float32"},
                                                    "task": "lm", "seed": 0})
    (run_dir / "result.json").write_text(json.dumps({"run_id": run_dir.name, "status": "ok", "method": name,
                                                     "label": name, "metrics": {"perplexity": 12.5}}))
    return model, run_dir


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_merge_refuses_an_existing_out_unless_forced_and_follows_the_umask(tmp_path, tiny_llama_dir, umask_027,
                                                                           monkeypatch):
    from peftlab.adapters import merge

    _, run_dir = _lora_run(tmp_path, tiny_llama_dir)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with monkeypatch.context() as m:
        nothing_loads(m)
        with pytest.raises(FileExistsError, match="already exists and is not empty; pass --force"):
            merge(run_dir, out)
        with pytest.raises(FileExistsError, match="holds no earlier merge.*--force does not replace it"):
            merge(run_dir, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    fresh = tmp_path / "fresh"
    assert merge(run_dir, fresh).ok
    assert _mode(fresh) == 0o750 and all(_mode(p) == 0o640 for p in fresh.iterdir()), \
        {p.name: oct(_mode(p)) for p in [fresh, *fresh.iterdir()]}
    first = (fresh / "peftlab_merge.json").stat().st_ino
    assert merge(run_dir, fresh, overwrite=True).ok and (fresh / "peftlab_merge.json").stat().st_ino != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directory left behind


@pytest.mark.parametrize("name", ["lora", "lora+prompt"])
def test_export_writes_what_plain_peft_loads_with_a_model_card(tmp_path, tiny_llama_dir, name):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from peftlab.adapters import export

    model, run_dir = _lora_run(tmp_path, tiny_llama_dir, name)
    out = tmp_path / "exported"
    report = export(run_dir, out)
    assert report.ok and report.max_abs_diff <= 1e-5, report
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_llama_dir) and config["peft_type"] == "LORA"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n") and "perplexity = 12.5" in card
    assert "peftlab_adapter.json" not in os.listdir(out)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), out).eval()
    if name == "lora":
        assert f'PeftModel.from_pretrained(base, "{out}")' in card
        assert (logits(plain) - logits(model)).abs().max() <= 1e-5
    else:  # the LoRA half loads with plain peft; the soft prompt is prepended by hand, as the card shows
        from safetensors.torch import load_file

        assert "prepended to the input embeddings by hand" in card and "LoRA half alone" in card
        soft = load_file(str(out / "soft_prompt.safetensors"))["soft_prompt"]
        embeds = torch.cat([soft[None], plain.get_input_embeddings()(IDS)], dim=1)
        with torch.no_grad():
            got = plain(inputs_embeds=embeds).logits[:, soft.shape[0]:]
        assert (got - logits(model)).abs().max() <= 1e-5
    with pytest.raises(FileExistsError, match="pass --force"):
        export(run_dir, out)
    assert export(run_dir, out, overwrite=True).ok


def test_export_names_the_hub_id_of_an_offline_alias(tmp_path):
    from peftlab.adapters import _portable_base

    name, note = _portable_base({"model": {"name": "smollm2-135m-instruct"}})
    assert name == "HuggingFaceTB/SmolLM2-135M-Instruct" and "converted from a quantized GGUF" in note


# ------------------------------------------------------------------------------------ generate - and chat /help
def test_generate_reads_one_prompt_from_stdin():
    from peftlab.cli.lifecycle import read_prompts

    assert read_prompts(["-"], io.StringIO("Context: a b\nQuestion: c?\n")) == ["Context: a b\nQuestion: c?"]
    assert read_prompts(["x", "-"], io.StringIO("y")) == ["x", "y"]
    with pytest.raises(ValueError, match="standard input was empty"):
        read_prompts(["-"], io.StringIO("\n"))
    with pytest.raises(ValueError, match="may be given once"):
        read_prompts(["-", "-"], io.StringIO("y"))


def test_generate_dash_uses_stdin_and_refuses_empty_input_before_loading(peft_dir, capsys, monkeypatch):
    from peftlab.cli.lifecycle import generate_cmd

    args = argparse.Namespace(run=str(peft_dir[0]), prompts=["-"], store="runs", base=None, decoding="greedy",
                              max_new_tokens=3, system="")
    assert generate_cmd(args, stdin=io.StringIO("the quick brown\nfox")) == 0
    assert capsys.readouterr().out.strip()
    nothing_loads(monkeypatch)
    with pytest.raises(ValueError, match="standard input was empty"):
        generate_cmd(args, stdin=io.StringIO(""))


def test_chat_help_lists_commands_and_slash_words_never_reach_the_model(peft_dir):
    from peftlab.cli.lifecycle import CHAT_COMMANDS, chat_cmd

    sent = []
    lines = iter(["/help", "/nonsense", "//etc is a path", "/exit"])
    out = io.StringIO()
    args = argparse.Namespace(run=str(peft_dir[0]), store="runs", base=None, decoding="greedy", max_new_tokens=3,
                              system="")

    def fake_input(prompt):
        sent.append(prompt)
        return next(lines)

    assert chat_cmd(args, input_fn=fake_input, out=out) == 0
    text = out.getvalue()
    assert all(command in text for command in CHAT_COMMANDS) and "unknown command /nonsense" in text
    assert text.count("assistant> ") == 1  # only the // line went to the model


# ------------------------------------------------------------------------------------ the command line
def test_command_line_flags(peft_dir, tiny_llama_dir, tmp_path, data, capsys):
    """`--task`, `--json`, `--force`, `--base`, `adapters export` and `generate -` as the parser spells them."""
    from peftlab.cli import main

    path, _ = peft_dir
    store = tmp_path / "runs"
    assert main(["evaluate", str(path), "--task", "qa", "--store", str(store), "--limit-eval", "2", "--json",
                 "--decoding", "greedy,top_k=3"]) == 0
    captured = capsys.readouterr()
    document = json.loads(captured.out)  # stdout holds the JSON document and nothing else
    assert [e["name"] for e in document["evaluated"]] == ["greedy", "top_k=3"] and "[2/2] top_k=3" in captured.err
    assert main(["evaluate", document["run_id"], "--store", str(store), "--decoding", "greedy", "--force"]) == 0
    assert "recorded 1 evaluation(s)" in capsys.readouterr().out
    assert main(["evaluate", str(path), "--store", str(store)]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["adapters", "show", str(path), "--base", str(tiny_llama_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["base_model"]["name"] == str(tiny_llama_dir)

    out = tmp_path / "exported"
    assert main(["adapters", "export", str(path), "--out", str(out)]) == 0
    assert "→ ok" in capsys.readouterr().out and (out / "README.md").exists()
    assert main(["adapters", "export", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --force" in err and len(err.splitlines()) == 1
    assert main(["adapters", "merge", str(path), "--out", str(out), "--force"]) == 2  # an export is not a merge
    assert "holds no earlier merge" in capsys.readouterr().err
