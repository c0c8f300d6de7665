"""Encoder-decoder (seq2seq) models on a tiny random T5: loading, methods, training, scoring, generation, refusals."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import build_tokenizer, perturb

from peftlab.config import ConfigError, DecodingConfig, EvalConfig, parse_experiment
from peftlab.models import ModelArchitecture, load_model, local_architecture, model_architecture
from peftlab.plan import expand, validate
from peftlab.runner import execute_run
from peftlab.store import Store

TRAINED_METHODS = ("lora", "dora", "qlora", "ia3", "prompt", "prefix", "full")


def t5_tokenizer():
    """The tests' BPE tokenizer without a chat template (T5 has none), its end-of-sequence apart from padding."""
    tok = build_tokenizer(chat_template=False)
    tok.eos_token = "<|im_end|>"
    return tok


def build_t5(tok, seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
                   decoder_start_token_id=tok.pad_token_id, pad_token_id=tok.pad_token_id,
                   eos_token_id=tok.eos_token_id)
    return T5ForConditionalGeneration(cfg).eval()


@pytest.fixture(scope="module")
def tiny_t5_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-t5")
    tok = t5_tokenizer()
    build_t5(tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def t5(tiny_t5_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_t5_dir)
    return perturb(build_t5(tok)), tok


def experiment(model_dir, store, methods=("lora",), task=None, **extra):
    return parse_experiment({
        "name": "s2s", "model": str(model_dir), "methods": list(methods), "output_dir": str(store),
        "task": task or {"sentiment": {"limit_train": 16, "limit_eval": 6, "max_length": 48}},
        "train": {"max_steps": 3, "batch_size": 4, "warmup_steps": 1, "lr": 1e-2, "eval_batches": 1},
        **extra,
    })


# ------------------------------------------------------------------------------------------------ loading
def test_the_config_says_encoder_decoder_and_loading_picks_seq2seq(tiny_t5_dir, tiny_llama_dir) -> None:
    from transformers import T5ForConditionalGeneration

    t5 = ModelArchitecture(model_type="t5", encoder_decoder=True)
    assert local_architecture(str(tiny_t5_dir)) == t5 == model_architecture(str(tiny_t5_dir))
    assert t5.task_type == "SEQ_2_SEQ_LM"
    assert model_architecture(str(tiny_llama_dir)) == ModelArchitecture(model_type="llama", encoder_decoder=False)
    model = load_model(str(tiny_t5_dir), dtype="float32", device="cpu")
    assert isinstance(model, T5ForConditionalGeneration)
    assert ModelArchitecture.of(model) == t5


# ------------------------------------------------------------------------------------------------ methods
@pytest.mark.parametrize("name, targets", [("lora", {"q", "v"}), ("dora", {"q", "v"}), ("ia3", {"k", "v", "wo"}),
                                          ("prompt", None), ("prefix", None),
                                          ("vera", {"q", "v"})])
def test_peft_methods_get_seq2seq_peft_models_on_t5_defaults(t5, name, targets) -> None:
    import copy

    from peft import PeftModelForSeq2SeqLM

    from peftlab.methods import ApplyContext, get_method
    from peftlab.methods.registry import check_task_type

    model, tok = t5
    method = get_method(name)
    ctx = ApplyContext(tokenizer=tok, architecture=ModelArchitecture.of(model))
    adapted = check_task_type(name, method.apply(copy.deepcopy(model), method.resolve_args({}), ctx), ctx)
    assert isinstance(adapted, PeftModelForSeq2SeqLM)
    if targets is not None:
        assert set(adapted.active_peft_config.target_modules) == targets


@pytest.mark.parametrize("name", TRAINED_METHODS)
def test_each_method_trains_and_scores_sentiment_on_t5(tiny_t5_dir, tmp_path, fake_records, one_thread, name) -> None:
    store = Store(tmp_path / "runs")
    rc = expand(experiment(tiny_t5_dir, store.root, methods=(name,)))[0]
    result = execute_run(rc, store)
    assert result["status"] == "ok", result["error"]
    losses = [loss for _, loss in result["curves"]["train_loss"]]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert all(math.isfinite(v) for _, v in result["curves"]["val_loss"])
    cost = result["cost"]
    assert cost["batch_layout"] == "padded" and "encoder-decoder" in cost["batch_layout_reason"]
    assert 0 <= result["metrics"]["accuracy"] <= 100
    assert result["retention"]["forgetting"]["skipped"].startswith("not measured")


def test_training_lowers_the_loss_on_repeated_batches(tiny_t5_dir, tmp_path, fake_records, one_thread) -> None:
    store = Store(tmp_path / "runs")
    exp = experiment(tiny_t5_dir, store.root, task={"sentiment": {"limit_train": 4, "limit_eval": 4, "max_length": 48}})
    rc = expand(exp)[0]
    import dataclasses

    rc = dataclasses.replace(rc, train=dataclasses.replace(rc.train, max_steps=8, lr=3e-2, warmup_steps=1))
    result = execute_run(rc, store)
    assert result["status"] == "ok", result["error"]
    losses = [loss for _, loss in result["curves"]["train_loss"]]
    assert losses[-1] < losses[0]


# ------------------------------------------------------------------------------------------------ tasks
def test_seq2seq_examples_are_the_plain_prompt_and_the_target_alone() -> None:
    from peftlab.tasks.chat import build_messages, render, render_prompt

    tok = build_tokenizer(chat_template=True)  # a template would frame a causal LM's chat, not an encoder's input
    messages = build_messages("Say the sentiment.", "a good film", "positive")
    example = render(tok, messages, 64, encoder_decoder=True)
    assert example["input_ids"] == tok("Say the sentiment.\n\na good film")["input_ids"]
    assert example["input_ids"] == render_prompt(tok, messages, 64, encoder_decoder=True)
    assert example["labels"] == tok("positive", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    causal = render(tok, messages, 64)
    assert len(causal["input_ids"]) == len(causal["labels"]) and causal["labels"][0] == -100


def test_label_scoring_is_the_decoder_log_likelihood(t5) -> None:
    from peftlab.evaluation.progress import EvalProgress
    from peftlab.tasks import get_task
    from peftlab.tasks.api import EvalContext
    from peftlab.tasks.sentiment import loglik_predictions

    model, tok = t5
    spec = get_task("sentiment")
    args = spec.resolve_args({})
    records = [{"text": "a movie that is good and fun to watch", "label": 1},
               {"text": "a film that is bad and boring", "label": 0}, {"text": "the lazy dog", "label": 1}]
    ctx = EvalContext(model=model, tokenizer=tok, records=records, args=args, max_length=256, device="cpu",
                      eval=EvalConfig(batch_size=2), spec=spec, method="base", progress=EvalProgress(),
                      encoder_decoder=True)
    preds, scores, _ = loglik_predictions(spec, ctx, records)

    def by_hand(prompt: str, word: str) -> float:
        source = torch.tensor([tok(prompt)["input_ids"]])
        target = tok(word, add_special_tokens=False)["input_ids"]
        decoder_in = torch.tensor([[model.config.decoder_start_token_id] + target[:-1]])
        with torch.no_grad():
            logits = model(input_ids=source, decoder_input_ids=decoder_in).logits[0].log_softmax(-1)
        return sum(float(logits[i, t]) for i, t in enumerate(target))

    for record, row, pred in zip(records, scores, preds):
        expected = [by_hand(f"{spec.system.strip()}\n\n{record['text']}", w) for w in ("negative", "positive")]
        assert row == pytest.approx(expected, abs=1e-4)
        assert pred == int(expected[1] > expected[0])


def test_generation_returns_the_decoder_tokens(t5) -> None:
    import copy

    from peftlab.evaluation.generate import generate
    from peftlab.methods import ApplyContext, get_method

    model, tok = t5
    prompts = [tok("what is the capital of france ? paris and the quick brown fox")["input_ids"],
               tok("a film")["input_ids"]]
    decoding = DecodingConfig(max_new_tokens=6)
    ctx = ApplyContext(tokenizer=tok, architecture=ModelArchitecture.of(model))
    for name in ("base", "lora", "ia3", "prompt"):
        method = get_method(name)
        adapted = perturb(method.apply(copy.deepcopy(model), method.resolve_args({}), ctx), seed=3)
        out = generate(adapted, tok, prompts, decoding, batch_size=2, device="cpu")
        for prompt, ids in zip(prompts, out.token_ids):
            alone = adapted.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False)[0].tolist()
            assert alone[0] == model.config.decoder_start_token_id
            new = alone[1:]
            cut = new.index(tok.eos_token_id) if tok.eos_token_id in new else len(new)
            assert ids[0] == new[:cut], name
            assert len(ids[0]) <= 6


# ------------------------------------------------------------------------------------------------ refusals
@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything loads model weights."""
    import peftlab.models
    import peftlab.runner

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    for module in (peftlab.models, peftlab.runner):
        monkeypatch.setattr(module, "load_model", refuse)


@pytest.mark.parametrize("methods, task, extra, message", [
    (["lora+prompt"], None, {},
     "method 'lora+prompt' cannot adapt '{model}' (an encoder-decoder t5) because peftlab's own wrapper puts its soft "
     "prompt in front of a decoder-only model's sequence"),
    ([{"label": "prefix-text", "method": "prefix", "prefix_init": "text", "prefix_init_text": "Classify it."}], None, {},
     "method 'prefix-text' (prefix) cannot adapt '{model}' (an encoder-decoder t5) because prefix_init TEXT copies a "
     "decoder-only model's cache"),
    (["base"], {"lm": {"limit_eval": 4}}, {},
     "task 'lm' cannot run on '{model}' (an encoder-decoder t5) because its perplexity scores every token of a text "
     "given the tokens before it"),
    (["lora"], {"code": {"args": {"execute": False}}}, {},
     "task 'code' with method 'lora' cannot run on '{model}' (an encoder-decoder t5) because it trains by causal "
     "language modelling on raw text"),
    (["lora"], None, {"eval": {"retention_tasks": ["lm"]}},
     "retention task 'lm' cannot run on '{model}' (an encoder-decoder t5) because its perplexity"),
])
def test_inapplicable_methods_and_tasks_are_refused_before_any_model_loads(tiny_t5_dir, tmp_path, fake_records,
                                                                           no_model_load, methods, task, extra,
                                                                           message) -> None:
    store = Store(tmp_path / "runs")
    exp = experiment(tiny_t5_dir, store.root, methods=methods, task=task, **extra)
    expected = message.format(model=str(tiny_t5_dir))
    with pytest.raises(ConfigError) as caught:
        validate(exp)
    assert str(caught.value).startswith(expected)
    assert str(caught.value).count(". ") == 0  # one sentence
    result = execute_run(expand(exp)[0], store)  # a run that skipped validation stops before loading too
    assert result["status"] == "failed" and expected in result["error"]
    assert "the model was loaded" not in result["error"]


def test_a_refusal_that_only_a_grid_point_reaches_is_caught_by_validate(tiny_t5_dir, tmp_path, no_model_load) -> None:
    exp = experiment(tiny_t5_dir, tmp_path / "runs", methods=[{"prefix": {"prefix_init_text": "Classify it."}}],
                     grid={"prefix.prefix_init": ["RANDOM", "TEXT"]})
    with pytest.raises(ConfigError, match="method 'prefix' cannot adapt .* because prefix_init TEXT"):
        validate(exp)


def test_prompt_tuning_on_t5_has_n_virtual_tokens_not_two_sets() -> None:
    from peftlab.measure import count_parameters
    from peftlab.methods import ApplyContext, get_method

    tok = t5_tokenizer()
    method = get_method("prompt")
    ctx = ApplyContext(tokenizer=tok, architecture=ModelArchitecture(model_type="t5", encoder_decoder=True))
    model = method.apply(build_t5(tok), method.resolve_args({"num_virtual_tokens": 8}), ctx)
    assert count_parameters(model)["trainable_params"] == 8 * 32  # n tokens x d_model, every one of them trained


def test_a_decoder_only_model_is_refused_nothing(tiny_llama_dir, tmp_path) -> None:
    validate(experiment(tiny_llama_dir, tmp_path / "runs", methods=["lora+prompt"], task={"lm": {"limit_eval": 4}}))


# ------------------------------------------------------------------------------------------------ end to end
def test_cli_run_sentiment_lora_on_t5(tiny_t5_dir, tmp_path, fake_records, one_thread, capsys) -> None:
    from peftlab.cli import main

    cfg = tmp_path / "t5.yaml"
    cfg.write_text(
        f"name: t5\nmodel: {tiny_t5_dir}\nmethods: [base, lora]\n"
        "task: {sentiment: {limit_train: 16, limit_eval: 6, max_length: 48}}\n"
        "train: {max_steps: 2, batch_size: 4, warmup_steps: 1}\n"
    )
    store = tmp_path / "runs"
    assert main(["validate", str(cfg)]) == 0
    assert main(["run", str(cfg), "--store", str(store)]) == 0
    assert "2 ok, 0 not ok" in capsys.readouterr().out
    results = {r["label"]: r for r in Store(store).results()}
    assert set(results) == {"base", "lora"}
    assert all(r["status"] == "ok" and "accuracy" in r["metrics"] for r in results.values())
    run_id = results["lora"]["run_id"]
    assert main(["generate", run_id, "a film that is good", "--store", str(store), "--max-new-tokens", "4"]) == 0
    assert "tokens in" in capsys.readouterr().err  # the saved T5 adapter loads back and generates


def test_generation_scoring_runs_on_t5(tiny_t5_dir, tmp_path, fake_records, one_thread) -> None:
    store = Store(tmp_path / "runs")
    exp = experiment(tiny_t5_dir, store.root, methods=("lora",),
                     task={"sentiment": {"limit_train": 8, "limit_eval": 4, "max_length": 48,
                                         "args": {"scoring": "generate", "in_domain": False}}},
                     eval={"decoding": ["greedy"]})
    result = execute_run(expand(exp)[0], store)
    assert result["status"] == "ok", result["error"]
    assert "format_error_rate" in result["metrics"]
    assert result["evaluations"][0]["name"] == "greedy"


# ------------------------------------------------------------------------------------------------ merge / export
def _t5_run(root: Path, model_dir: Path, name: str) -> tuple[torch.nn.Module, Path]:
    """A perturbed adapter of `name` on the tiny T5, saved as a run directory (adapter + minimal result.json)."""
    import json

    from peftlab.adapters import save_adapter
    from peftlab.methods import ApplyContext, get_method

    method = get_method(name)
    args = method.resolve_args({})
    base = load_model(str(model_dir), "float32", device="cpu")
    ctx = ApplyContext(model_path=str(model_dir), architecture=ModelArchitecture.of(base))
    torch.manual_seed(0)
    model = perturb(method.apply(base, args, ctx)).eval()
    with torch.no_grad():  # conftest's LoRA noise makes ΔW several times T5's tiny W: scale it to a trained size,
        for key, p in model.named_parameters():  # or float32 rounding of W + ΔW alone nears the check's tolerance
            if "lora_B" in key:
                p.mul_(0.25)
    run_dir = root / f"s2s--{name}--sentiment--s0--0123456789"
    meta = {"args": args, "model": {"name": str(model_dir), "dtype": "float32"}, "task": "sentiment", "seed": 0}
    size = save_adapter(model, name, run_dir / "adapter", meta)
    (run_dir / "result.json").write_text(json.dumps({
        "run_id": run_dir.name, "status": "ok", "method": name, "label": name, "experiment": "s2s",
        "cost": {"trainable_params": 1, "total_params": 9, "trainable_pct": 11.1, "adapter_bytes": size},
        "metrics": {"accuracy": 50.0}, "evaluations": []}))
    return model, run_dir


def _decoder_logits(model, ids: torch.Tensor, soft: torch.Tensor | None = None) -> torch.Tensor:
    """The decoder's logits with `ids` in the encoder (after `soft`, by hand) and as the decoder's target."""
    with torch.no_grad():
        if soft is not None:
            embeds = torch.cat([soft[None], model.get_input_embeddings()(ids)], dim=1)
            return model(inputs_embeds=embeds, labels=ids).logits
        return model(input_ids=ids, labels=ids).logits


T5_IDS = torch.tensor([[5, 60, 7, 81, 9, 100, 11, 12]])


@pytest.mark.parametrize("name", ["lora", "ia3", "prompt", "full"])
def test_t5_runs_merge_into_a_plain_seq2seq_model(tiny_t5_dir, tmp_path, one_thread, name) -> None:
    from transformers import AutoModelForSeq2SeqLM

    from peftlab.adapters import merge

    model, run_dir = _t5_run(tmp_path, tiny_t5_dir, name)
    out = tmp_path / "merged"
    report = merge(run_dir, out, log=lambda s: None)
    assert report.ok and report.max_abs_diff <= report.atol, (report.max_abs_diff, report.atol, report.max_abs_logit)
    assert report.merged == (name in ("lora", "ia3")), report
    plain = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    assert type(plain).__name__ == "T5ForConditionalGeneration" and "peft" not in type(plain).__module__
    soft = None
    if name == "prompt":  # the exported soft prompt, prepended to the encoder's input by hand as the note shows
        from safetensors.torch import load_file

        soft = load_file(str(out / "soft_prompt.safetensors"))["soft_prompt"]
        note = (out / "SOFT_PROMPT.md").read_text()
        assert "AutoModelForSeq2SeqLM.from_pretrained" in note and "labels=answer" in note
    difference = (_decoder_logits(plain, T5_IDS, soft) - _decoder_logits(model, T5_IDS)).abs().max()
    assert difference <= report.atol
    if name in ("lora", "ia3"):  # and the merge changed what the model computes
        assert (_decoder_logits(plain, T5_IDS) - _decoder_logits(build_t5(t5_tokenizer()), T5_IDS)).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["lora", "prompt", "prefix", "full"])
def test_t5_runs_export_what_plain_peft_loads(tiny_t5_dir, tmp_path, one_thread, name) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    from peftlab.adapters import export

    model, run_dir = _t5_run(tmp_path, tiny_t5_dir, name)
    out = tmp_path / "exported"
    report = export(run_dir, out)
    assert report.ok and report.max_abs_diff <= report.atol, (report.max_abs_diff, report.atol, report.max_abs_logit)
    card = (out / "README.md").read_text()
    assert "AutoModelForSeq2SeqLM.from_pretrained" in card and "AutoModelForCausalLM" not in card
    if name == "full":
        plain = AutoModelForSeq2SeqLM.from_pretrained(out).eval()
    else:
        plain = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5_dir), out).eval()
    assert (_decoder_logits(plain, T5_IDS) - _decoder_logits(model, T5_IDS)).abs().max() <= report.atol


def test_t5_prefix_merge_is_refused_before_any_model_loads(tiny_t5_dir, tmp_path, one_thread, monkeypatch) -> None:
    import peftlab.adapters
    from peftlab.adapters import merge

    _, run_dir = _t5_run(tmp_path, tiny_t5_dir, "prefix")
    monkeypatch.setattr(peftlab.adapters, "load_adapter", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ValueError, match=r"a prefix-tuned encoder-decoder model cannot be merged: .* `peftlab "
                                         r"adapters export` writes it as a directory plain peft loads"):
        merge(run_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_a_plain_peft_t5_adapter_is_evaluated_and_refused_a_causal_task(tiny_t5_dir, tmp_path, fake_records,
                                                                       one_thread) -> None:
    from peftlab.adapters import export
    from peftlab.lifecycle import evaluate_run

    _, run_dir = _t5_run(tmp_path, tiny_t5_dir, "lora")
    plain_dir = tmp_path / "plain-lora"
    assert export(run_dir, plain_dir).ok  # adapter_config.json (task_type SEQ_2_SEQ_LM) and weights, no peftlab file
    with pytest.raises(ValueError, match=r"task 'lm' cannot score the adapter's encoder-decoder base .* because its "
                                         r"perplexity scores every token"):
        evaluate_run(str(plain_dir), task="lm", store=tmp_path / "runs")
    outcome = evaluate_run(str(plain_dir), task="sentiment", store=tmp_path / "runs", limit_eval=4)
    assert outcome.created and 0 <= outcome.metrics["accuracy"] <= 100


def test_a_saved_qlora_t5_run_reloads_on_a_4bit_base(tiny_t5_dir, tmp_path, fake_records, one_thread) -> None:
    import bitsandbytes as bnb

    from peftlab.adapters import load_adapter

    store = Store(tmp_path / "runs")
    result = execute_run(expand(experiment(tiny_t5_dir, store.root, methods=("qlora",)))[0], store)
    assert result["status"] == "ok", result["error"]
    model = load_adapter(store.root / result["run_id"] / "adapter", device="cpu")
    assert ModelArchitecture.of(model).encoder_decoder
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # the base it trained on, not a float copy
