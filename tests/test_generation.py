"""One batched generation path for every method: cache equivalence, batching, decoding strategies.

The tiny models are trained a few dozen steps on the test corpus (so greedy outputs are varied
rather than one repeated token) and every adapter's trainable tensors are perturbed with seeded
noise (so each method really changes what is generated). Equality below is token for token.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from conftest import build_model, build_tokenizer, perturb, train_tiny

from peftlab.config import DecodingConfig, parse_decoding_spec
from peftlab.evaluation.generate import GenerationOutput, generate, hf_generate, left_pad
from peftlab.methods import ApplyContext, get_method

PROMPTS = ["the quick brown", "what is the capital of france ?", "a movie", "def add(a, b):",
           "once upon a time there was a small model that learned"]
NEW = 8
METHODS = ["base", "lora", "dora", "ia3", "prompt", "prefix", "lora+prompt", "loha"]


pytestmark = pytest.mark.usefixtures("one_thread")


def trained(kind: str, tok, steps: int = 40, seed: int = 0):
    return train_tiny(build_model(kind, len(tok), seed=seed), tok, steps=steps)


def adapt(base, name: str, tok, args: dict | None = None, seed: int = 1):
    """Apply a method through peftlab's registry, then perturb its trainable tensors (seeded)."""
    method = get_method(name)
    torch.manual_seed(seed)  # peft initializes some adapter tensors from the global generator
    model = method.apply(copy.deepcopy(base), method.resolve_args(args or {}), ApplyContext(tokenizer=tok))
    if name in ("base", "full"):
        return model.eval()
    return perturb(model, seed)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def bases(tok):
    return {"gpt2": trained("gpt2", tok), "llama": trained("llama", tok)}


@pytest.fixture(scope="module")
def prompt_ids(tok):
    return [tok(p)["input_ids"] for p in PROMPTS]


def reference_greedy(model, prompt: list[int], n: int, eos: set[int]) -> list[int]:
    """The definition: no cache, no padding, one full forward per new token (the training forward)."""
    seq = list(prompt)
    out: list[int] = []
    for _ in range(n):
        with torch.no_grad():
            token = int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax())
        if token in eos:
            break
        seq.append(token)
        out.append(token)
    return out


def ids_of(out: GenerationOutput) -> list[list[int]]:
    return [samples[0] for samples in out.token_ids]


GREEDY = DecodingConfig(max_new_tokens=NEW)


# ------------------------------------------------------------------------------------ cache equivalence
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("name", METHODS)
def test_cache_equivalence(bases, tok, prompt_ids, kind, name):
    if name == "loha" and kind == "gpt2":
        pytest.skip("peft's LoHa does not support GPT-2's Conv1D layers")
    model = adapt(bases[kind], name, tok)
    cached = generate(model, tok, prompt_ids, GREEDY, batch_size=8)
    uncached = generate(model, tok, prompt_ids, GREEDY, batch_size=8, use_cache=False)
    single = generate(model, tok, prompt_ids, GREEDY, batch_size=1)
    eos = {tok.eos_token_id}
    reference = [reference_greedy(model, p, NEW, eos) for p in prompt_ids]
    assert ids_of(cached) == ids_of(uncached), "KV cache changed the greedy output"
    assert ids_of(cached) == ids_of(single), "left-padded batching changed the greedy output"
    assert ids_of(cached) == reference, "generation differs from the model's own forward pass"
    assert any(len(set(ids)) > 2 for ids in ids_of(cached)), "degenerate outputs make equality meaningless"
    if name != "base":
        plain = ids_of(generate(bases[kind], tok, prompt_ids, GREEDY, batch_size=8))
        assert ids_of(cached) != plain, f"{name} adapter does not change the output; the test would prove nothing"


@pytest.mark.parametrize("name", ["prompt", "prefix", "lora+prompt"])
def test_virtual_token_generation_uses_no_deprecated_cache_argument(bases, tok, prompt_ids, name):
    """transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name goes in 5.40):
    peftlab's virtual-token path must pass whichever name the installed release takes, with no warning."""
    import warnings

    model = adapt(bases["llama"], name, tok)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generate(model, tok, prompt_ids, GREEDY, batch_size=8)
        generate(model, tok, prompt_ids, GREEDY, batch_size=8, use_cache=False)
    deprecated = [str(w.message) for w in caught if "past_key_values" in str(w.message)]
    assert not deprecated, deprecated


def test_cache_equivalence_qlora(tmp_path, bases, tok, prompt_ids):
    pytest.importorskip("bitsandbytes")
    from peftlab.models import load_model

    bases["llama"].save_pretrained(tmp_path)
    base4 = load_model(str(tmp_path), "float32", load_in_4bit=True, device="cpu")
    model = adapt(base4, "qlora", tok)
    cached = generate(model, tok, prompt_ids, GREEDY, batch_size=8)
    assert ids_of(cached) == ids_of(generate(model, tok, prompt_ids, GREEDY, batch_size=8, use_cache=False))
    assert ids_of(cached) == ids_of(generate(model, tok, prompt_ids, GREEDY, batch_size=1))
    assert ids_of(cached) == [reference_greedy(model, p, NEW, {tok.eos_token_id}) for p in prompt_ids]


def test_peft_prompt_tuning_generate_ignores_positions_under_left_padding(bases, tok, prompt_ids):
    """Why peftlab drives prompt tuning itself: peft drops the position ids `generate` computes."""
    model = adapt(bases["gpt2"], "prompt", tok)
    batch = left_pad(prompt_ids, tok.pad_token_id, "cpu")
    raw = model.generate(**batch, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    width = batch["input_ids"].shape[1]
    raw_ids = [row[width:].tolist()[:NEW] for row in raw]
    reference = [reference_greedy(model, p, NEW, {tok.eos_token_id}) for p in prompt_ids]
    ours = ids_of(generate(model, tok, prompt_ids, GREEDY, batch_size=8))
    assert ours == reference
    if all(r[:len(ref)] == ref for r, ref in zip(raw_ids, reference)):
        pytest.skip("this peft version generates prompt tuning correctly under left padding")


def test_beam_search_batched_equals_single(bases, tok, prompt_ids):
    beam = DecodingConfig(strategy="beam", num_beams=3, num_return_sequences=2, max_new_tokens=6)
    for name in ("lora", "prompt", "prefix", "lora+prompt"):
        model = adapt(bases["gpt2"], name, tok)
        batched = generate(model, tok, prompt_ids, beam, batch_size=8)
        single = generate(model, tok, prompt_ids, beam, batch_size=1)
        assert batched.token_ids == single.token_ids, name
        assert all(len(s) == 2 for s in batched.texts)


def test_hybrid_generate_method_returns_prompt_and_new_ids(bases, tok, prompt_ids):
    model = adapt(bases["llama"], "lora+prompt", tok)
    batch = left_pad(prompt_ids, tok.pad_token_id, "cpu")
    full = model.generate(**batch, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id)
    assert torch.equal(full[:, :batch["input_ids"].shape[1]], batch["input_ids"])
    no_cache = model.generate(**batch, max_new_tokens=NEW, do_sample=False, pad_token_id=tok.pad_token_id,
                              use_cache=False)
    assert torch.equal(full, no_cache)
    assert torch.equal(full, hf_generate(model, **batch, max_new_tokens=NEW, do_sample=False,
                                         pad_token_id=tok.pad_token_id))


def test_generation_ignores_train_mode_dropout(bases, tok, prompt_ids):
    model = adapt(bases["llama"], "lora", tok, {"lora_dropout": 0.9}).train()
    first = generate(model, tok, prompt_ids, GREEDY)
    assert first.token_ids == generate(model, tok, prompt_ids, GREEDY).token_ids
    assert model.training, "generate must restore the caller's train mode"


# ------------------------------------------------------------------------------------ decoding strategies
def _with(spec: str, **changes) -> DecodingConfig:
    return dataclasses.replace(parse_decoding_spec(spec), **{"max_new_tokens": NEW, **changes})


def test_sampling_is_reproducible_with_a_seed_and_n_samples(bases, tok, prompt_ids):
    model = adapt(bases["llama"], "lora", tok)
    spec = _with("temperature=1.5:top_k=50:n=4")
    a = generate(model, tok, prompt_ids, spec)
    b = generate(model, tok, prompt_ids, spec)
    c = generate(model, tok, prompt_ids, dataclasses.replace(spec, seed=7))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    assert all(len(s) == 4 for s in a.texts)
    assert any(len({tuple(x) for x in samples}) > 1 for samples in a.token_ids), "n samples should differ"


@pytest.mark.parametrize("spec", ["top_k=1", "top_p=0.001", "temperature=0.001"])
def test_degenerate_sampling_equals_greedy(bases, tok, prompt_ids, spec):
    """Each knob is really applied: top-1, a tiny nucleus and a near-zero temperature are greedy."""
    model = adapt(bases["gpt2"], "lora", tok)
    greedy = generate(model, tok, prompt_ids, GREEDY)
    assert generate(model, tok, prompt_ids, _with(spec)).token_ids == greedy.token_ids


def test_model_generation_config_does_not_leak(bases, tok, prompt_ids):
    """An instruct model's shipped `do_sample/temperature/top_p` must not turn greedy into sampling."""
    model = adapt(bases["llama"], "lora", tok)
    expected = generate(model, tok, prompt_ids, GREEDY).token_ids
    gen_config = model.get_base_model().generation_config
    gen_config.do_sample, gen_config.temperature, gen_config.top_p = True, 5.0, 0.5
    assert generate(model, tok, prompt_ids, GREEDY).token_ids == expected


def test_greedy_with_n_samples_is_an_error(bases, tok, prompt_ids):
    with pytest.raises(ValueError, match="n samples need sampling"):
        generate(bases["llama"], tok, prompt_ids, _with("greedy", num_return_sequences=3))


def test_stop_strings_cut_and_stop_early(bases, tok, prompt_ids):
    model = bases["llama"]
    long = dataclasses.replace(GREEDY, max_new_tokens=24)
    full = generate(model, tok, prompt_ids, long)
    text = max((t[0] for t in full.texts), key=len)
    stop = text[len(text) // 3: len(text) // 3 + 2]
    assert stop.strip(), text
    stopped = generate(model, tok, prompt_ids, dataclasses.replace(long, stop=[stop]))
    for before, after in zip(full.texts, stopped.texts):
        assert stop not in after[0]
        assert before[0].startswith(after[0])
    assert stopped.new_tokens < full.new_tokens, "rows that hit a stop string should stop generating"


def test_throughput_is_recorded_in_prompt_order(bases, tok, prompt_ids):
    out = generate(bases["llama"], tok, prompt_ids, GREEDY, batch_size=2)
    assert out.batches == 3
    assert out.new_tokens >= sum(len(s[0]) for s in out.token_ids)
    assert out.tokens_per_s == pytest.approx(out.new_tokens / out.seconds)
    assert out.s_per_example == pytest.approx(out.seconds / len(prompt_ids))
    assert len(out.per_prompt_s) == len(prompt_ids) and all(s > 0 for s in out.per_prompt_s)
    assert sum(out.per_prompt_s) <= out.seconds
    assert set(out.throughput()) >= {"tokens_per_s", "s_per_example"}
    # results come back in prompt order although batches are sorted by length
    singles = [generate(bases["llama"], tok, [p], GREEDY).texts[0] for p in prompt_ids]
    assert out.texts == singles


def test_streamer_sees_what_is_returned(bases, tok, prompt_ids):
    from transformers import TextStreamer

    seen: list[str] = []

    class Collect(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            seen.append(text)

    streamer = Collect(tok, skip_prompt=True, skip_special_tokens=True)
    model = adapt(bases["llama"], "lora+prompt", tok)
    out = generate(model, tok, prompt_ids[:1], GREEDY, batch_size=1, streamer=streamer)
    assert "".join(seen) == out.texts[0][0]
    with pytest.raises(ValueError, match="streamer"):
        generate(model, tok, prompt_ids, GREEDY, batch_size=8, streamer=streamer)


def test_benchmark_script_runs_on_a_tiny_model(tmp_path, bases, tok, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "generate_throughput.py"
    spec = importlib.util.spec_from_file_location("generate_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bases["llama"].save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    report = module.main(["--model", str(tmp_path), "--prompts", "6", "--max-new-tokens", "6",
                          "--batch-size", "4", "--repeats", "1", "--threads", "1"])
    assert report["agree"] == 1.0
    assert report["ratio"] > 0
    assert "ratio" in capsys.readouterr().out
