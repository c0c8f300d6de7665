"""The adapter lifecycle: save → load round trips, merges checked by logits, exports, heads, CLI.

Adapters are built through peftlab's method registry on a tiny Llama trained a few steps, and
their trainable tensors perturbed with seeded noise, so a merge that lost anything would show.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import build_model, build_tokenizer, perturb, train_tiny

from peftlab.adapters import load, load_adapter, load_run, locate, merge, read_meta, save_adapter
from peftlab.methods import ApplyContext, get_method
from peftlab.models import load_model

IDS = torch.tensor([[5, 60, 7, 81, 9, 100, 11, 12, 200, 14]])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _saved_trained(tmp_path_factory, tok, kind: str):
    path = tmp_path_factory.mktemp(f"trained-{kind}")
    train_tiny(build_model(kind, len(tok)), tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    """A tiny Llama (tied embeddings, GQA) trained a few steps, saved with its tokenizer."""
    return _saved_trained(tmp_path_factory, tok, "llama")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tok):
    return _saved_trained(tmp_path_factory, tok, "gpt2")


def make_run(root: Path, model_dir: Path, name: str, args: dict | None = None, quantize: bool = False,
             result: bool = True):
    """An adapted model and a run directory holding its adapter (and a minimal result.json)."""
    method = get_method(name)
    resolved = method.resolve_args(args or {})
    torch.manual_seed(0)
    base = load_model(str(model_dir), "float32", load_in_4bit=quantize, device="cpu")
    model = perturb(method.apply(base, resolved, ApplyContext(model_path=str(model_dir))))
    run_dir = root / f"t--{name.replace('+', '-')}--lm--s0--0123456789"
    meta = {"args": resolved, "model": {"name": str(model_dir), "dtype": "float32"}, "task": "lm", "seed": 0}
    size = save_adapter(model, name, run_dir / "adapter", meta)
    if result:
        (run_dir / "result.json").write_text(json.dumps({
            "run_id": run_dir.name, "status": "ok", "method": name, "label": name, "experiment": "t",
            "cost": {"trainable_params": 1234, "total_params": 99999, "trainable_pct": 1.234, "adapter_bytes": size},
            "metrics": {"perplexity": 12.5}, "evaluations": []}))
    return model, run_dir


def logits(model, ids=IDS):
    with torch.no_grad():
        out = model(input_ids=ids).logits
    return out[:, -ids.shape[1]:].float()


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("name", ["lora", "dora", "ia3", "prompt", "prefix", "lora+prompt", "loha", "full"])
def test_save_load_round_trip(tmp_path, model_dir, name):
    model, run_dir = make_run(tmp_path, model_dir, name)
    meta = read_meta(run_dir / "adapter")
    assert meta["method"] == name and meta["model_class"] == "LlamaForCausalLM"
    for loaded in (load_adapter(run_dir / "adapter"), load(run_dir)[0], load(run_dir.name, store=tmp_path)[0]):
        assert torch.equal(logits(loaded), logits(model))
    assert load_run(run_dir).tokenizer.eos_token == "<|im_end|>"


def test_locate_explains_missing_runs(tmp_path, model_dir):
    _, run_dir = make_run(tmp_path, model_dir, "lora")
    assert locate(run_dir.name[:12], tmp_path).run_dir == run_dir  # a unique prefix is enough
    assert locate(run_dir / "adapter").run_dir == run_dir
    with pytest.raises(FileNotFoundError, match="no run 'nope'"):
        locate("nope", tmp_path)
    (tmp_path / "t--broken").mkdir()
    (tmp_path / "t--broken" / "result.json").write_text(json.dumps({"run_id": "t--broken", "status": "failed"}))
    with pytest.raises(FileNotFoundError, match="status is 'failed'"):
        locate("t--broken", tmp_path)


# ------------------------------------------------------------------------------------ merges
@pytest.mark.parametrize("name", ["lora", "dora", "ia3", "lora+prompt", "loha", "vera"])
def test_merge_equals_adapter_model(tmp_path, model_dir, name):
    from transformers import AutoModelForCausalLM

    model, run_dir = make_run(tmp_path, model_dir, name)
    out = tmp_path / "merged"
    report = merge(run_dir, out, log=lambda s: None)
    assert report.ok and report.merged and report.max_abs_diff <= 1e-4, report
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    assert (out / "tokenizer.json").exists() and (out / "peftlab_merge.json").exists()
    assert not (out / "adapter_config.json").exists()
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert "peft" not in type(plain).__module__
    if name == "lora+prompt":  # the soft prompt is exported, and applied by hand it reproduces the hybrid
        from safetensors.torch import load_file

        soft = load_file(str(out / "soft_prompt.safetensors"))["soft_prompt"]
        embeds = torch.cat([soft[None], plain.get_input_embeddings()(IDS)], dim=1)
        with torch.no_grad():
            got = plain(inputs_embeds=embeds).logits[:, soft.shape[0]:]
        assert "cannot be merged" in (out / "SOFT_PROMPT.md").read_text()
    else:
        got = logits(plain)
    assert (got - logits(model)).abs().max() <= 1e-4


def test_merge_gpt2_conv1d_lora(tmp_path, gpt2_dir):
    _, run_dir = make_run(tmp_path, gpt2_dir, "lora", {"target_modules": "attention+mlp"})
    report = merge(run_dir, tmp_path / "merged")
    assert report.ok and report.max_abs_diff <= 1e-4


@pytest.mark.parametrize("name,file,why", [("prompt", "soft_prompt.safetensors", "virtual-token"),
                                            ("prefix", "prefix_kv.safetensors", "attention cache")])
def test_prompt_methods_cannot_merge_and_export_instead(tmp_path, model_dir, name, file, why):
    _, run_dir = make_run(tmp_path, model_dir, name)
    out = tmp_path / "merged"
    report = merge(run_dir, out)
    assert not report.merged and any(why in n and "changes no weight" in n for n in report.notes)
    assert (out / file).exists() and str(out / file) in report.exported
    # the check applied the exported tensors to the plain model by hand and got the adapter's logits
    assert report.ok and report.max_abs_diff <= 1e-4
    base = load_model(str(model_dir), "float32", device="cpu")
    from safetensors.torch import load_file

    written = load_file(str(out / "model.safetensors"))
    for key, value in base.state_dict().items():
        if key in written:
            assert torch.equal(written[key], value), f"{name} must write the base weights unchanged ({key})"


def test_qlora_merges_into_a_dequantized_copy_and_reports_drift(tmp_path, model_dir, capsys):
    pytest.importorskip("bitsandbytes")
    from peftlab.cli import main

    _, run_dir = make_run(tmp_path, model_dir, "qlora", quantize=True)
    out = tmp_path / "merged"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["adapters", "merge", str(run_dir), "--out", str(out)]) == 0
    # peft's "Merge lora module to 4-bit linear" would contradict the note that nothing merged into 4-bit layers
    assert not [w for w in caught if "4-bit linear" in str(w.message)]
    text = capsys.readouterr().out
    assert "qlora drift" in text and "de-quantized" in text and "→ ok" in text
    report = json.loads((out / "peftlab_merge.json").read_text())
    q = report["qlora"]
    assert q["drift"] <= report["atol"] and report["ok"]
    assert q["drift_if_merged_into_4bit"] > q["drift"], "merging into the 4-bit layers should drift more"
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    with warnings.catch_warnings(record=True) as caught:  # -v lets peft's own warning through
        warnings.simplefilter("always")
        assert merge(run_dir, out, overwrite=True, verbose=True).ok
    assert [w for w in caught if "4-bit linear" in str(w.message)]


# ------------------------------------------------------------------------------------ heads
def test_modules_to_save_lm_head_survives_save_load_merge(tmp_path, model_dir):
    from transformers import AutoModelForCausalLM

    model, run_dir = make_run(tmp_path, model_dir, "lora", {"modules_to_save": ["lm_head"]})
    base = load_model(str(model_dir), "float32", device="cpu")
    assert base.lm_head.weight is base.model.embed_tokens.weight  # tied in the base model
    assert not torch.equal(logits(model), logits(base))
    assert torch.equal(logits(load_adapter(run_dir / "adapter")), logits(model))
    report = merge(run_dir, tmp_path / "merged")
    assert report.ok
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] is False
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (logits(plain) - logits(model)).abs().max() <= 1e-4


def test_classification_head_survives_save_load_merge(tmp_path, model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

    torch.manual_seed(0)
    base = LlamaForSequenceClassification.from_pretrained(model_dir, num_labels=3, dtype=torch.float32)
    model = perturb(get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"])))
    assert any("score" in n for n, p in model.named_parameters() if p.requires_grad)
    run_dir = tmp_path / "t--cls"
    save_adapter(model, "lora", run_dir / "adapter", {"args": {}, "model": {"name": str(model_dir), "dtype": "float32"}})
    meta = read_meta(run_dir / "adapter")
    assert meta["model_class"] == "LlamaForSequenceClassification" and meta["num_labels"] == 3
    with torch.no_grad():
        expected = model(input_ids=IDS).logits
    loaded = load_adapter(run_dir / "adapter")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=IDS).logits, expected)
    report = merge(run_dir, tmp_path / "merged")
    assert report.ok
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert (plain(input_ids=IDS).logits - expected).abs().max() <= 1e-4


# ------------------------------------------------------------------------------------ without peft
def test_merged_hybrid_loads_without_peftlab_or_peft(tmp_path, model_dir):
    model, run_dir = make_run(tmp_path, model_dir, "lora+prompt")
    out = tmp_path / "merged"
    assert merge(run_dir, out).ok
    torch.save({"ids": IDS, "logits": logits(model)}, tmp_path / "expected.pt")
    code = f"""
import sys
sys.modules["peft"] = None; sys.modules["peftlab"] = None   # importing either now fails
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()
soft = load_file({str(out / 'soft_prompt.safetensors')!r})["soft_prompt"]
exp = torch.load({str(tmp_path / 'expected.pt')!r})
embeds = torch.cat([soft[None], model.get_input_embeddings()(exp["ids"])], dim=1)
with torch.no_grad():
    got = model(inputs_embeds=embeds).logits[:, soft.shape[0]:]
diff = (got - exp["logits"]).abs().max().item()
print("maxdiff", diff)
sys.exit(0 if diff <= 1e-4 else 1)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ CLI on real runs
def _experiment(model_dir, store, task="lm", methods=("lora",), task_args=None):
    from peftlab.config import parse_experiment

    return parse_experiment({
        "name": "t", "model": {"name": str(model_dir), "dtype": "float32"}, "methods": list(methods),
        "output_dir": str(store),
        "task": {task: {"limit_train": 8, "limit_eval": 3, "max_length": 48, "args": task_args or {}}},
        "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0, "eval_batches": 1},
    })


@pytest.fixture
def lm_run(tmp_path, model_dir, fake_records):
    from peftlab.plan import expand
    from peftlab.runner import execute_run
    from peftlab.store import Store

    store = Store(tmp_path / "runs")
    rc = expand(_experiment(model_dir, store.root))[0]
    result = execute_run(rc, store)
    assert result["status"] == "ok", result["error"]
    return store, rc.run_id()


def test_show_prints_method_config_params_and_bytes(lm_run, capsys):
    from peftlab.cli import main

    store, run_id = lm_run
    assert main(["adapters", "show", run_id, "--store", str(store.root)]) == 0
    text = capsys.readouterr().out
    result = json.loads((store.run_dir(run_id) / "result.json").read_text())
    for needle in ("method", "lora", "(peft LORA)", "r=8", "base model", "trainable of", "on disk",
                   "adapter_model.safetensors", "values in", "mergeable", "yes", "perplexity"):
        assert needle in text, needle
    assert f"{result['cost']['trainable_params']:,} trainable" in text
    assert main(["adapters", "show", str(store.run_dir(run_id))]) == 0  # a run directory works too
    assert main(["adapters", "show", "missing-run", "--store", str(store.root)]) == 2


def test_generate_and_chat_commands(lm_run, capsys, model_dir):
    from peftlab.cli import main
    from peftlab.cli.lifecycle import chat_cmd

    store, run_id = lm_run
    argv = ["generate", run_id, "the quick brown", "a movie", "--store", str(store.root),
            "--decoding", "greedy,top_k=5:n=2", "--max-new-tokens", "5"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "### [greedy] the quick brown" in captured.out and "--- sample 2/2" in captured.out
    assert "tokens/s" in captured.err
    assert main(["generate", f"base:{model_dir}", "what is the capital of france ?", "--max-new-tokens", "4"]) == 0
    capsys.readouterr()

    import argparse

    lines = iter(["hello there", "/reset", "the answer is", "/exit", "never read"])
    out = io.StringIO()
    args = argparse.Namespace(run=run_id, store=str(store.root), decoding="greedy", max_new_tokens=6, system="")
    assert chat_cmd(args, input_fn=lambda prompt: next(lines), out=out) == 0
    text = out.getvalue()
    assert text.count("assistant> ") == 2 and "(history cleared)" in text

    def eof(prompt):
        raise EOFError

    assert chat_cmd(args, input_fn=eof, out=io.StringIO()) == 0


def test_stop_aware_streamer_hides_stop_strings():
    from peftlab.lifecycle import StopAwareStreamer

    out = io.StringIO()
    streamer = StopAwareStreamer(build_tokenizer(), ["\n### "], out)
    for piece in ["Paris is the", " capital.", "\n##", "# User: more"]:
        streamer.feed(piece, False)
    streamer.feed("", True)
    assert out.getvalue() == "Paris is the capital.\n"


def test_evaluate_appends_strategies_without_retraining(tmp_path, model_dir, fake_records, capsys):
    from peftlab.cli import main
    from peftlab.plan import expand
    from peftlab.runner import execute_run
    from peftlab.store import Store

    store = Store(tmp_path / "runs")
    rc = expand(_experiment(model_dir, store.root, task="sentiment", task_args={"scoring": "generate"}))[0]
    result = execute_run(rc, store)
    assert result["status"] == "ok", result["error"]
    adapter_mtime = (store.run_dir(rc.run_id()) / "adapter" / "adapter_model.safetensors").stat().st_mtime
    before = [e["name"] for e in result["evaluations"]]
    assert before == ["greedy"]
    argv = ["evaluate", rc.run_id(), "--store", str(store.root), "--decoding", "greedy,top_k=5:seed=1",
            "--limit-eval", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "recorded 1 evaluation(s)" in out and "skipped greedy: the run has this evaluation already" in out
    after = json.loads((store.run_dir(rc.run_id()) / "result.json").read_text())["evaluations"]
    assert [e["name"] for e in after] == ["greedy", "top_k=5:seed=1"]  # the run's greedy is not stored twice
    new = after[len(before):]
    assert all(e["source"] == "peftlab evaluate" and e["throughput"]["tokens_per_s"] >= 0 for e in new)
    assert main(argv) == 0  # both are there now: nothing to do
    assert "recorded 0 evaluation(s)" in capsys.readouterr().out
    again = json.loads((store.run_dir(rc.run_id()) / "result.json").read_text())["evaluations"]
    assert again == after
    indexed = store.results()[0]["evaluations"]
    assert len(indexed) == len(again), "the index row follows result.json"
    assert (store.run_dir(rc.run_id()) / "adapter" / "adapter_model.safetensors").stat().st_mtime == adapter_mtime


def test_evaluate_refuses_tasks_without_generation(lm_run, capsys):
    from peftlab.cli import main

    store, run_id = lm_run
    assert main(["evaluate", run_id, "--store", str(store.root), "--decoding", "greedy"]) == 2
    assert "scored without generation" in capsys.readouterr().err
