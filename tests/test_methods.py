"""Every method: trains, freezes what it should, counts parameters by the formulas, round-trips."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_model, build_tokenizer

from peftlab.adapters import load_adapter, save_adapter
from peftlab.config import TrainConfig
from peftlab.measure import count_parameters
from peftlab.methods import ApplyContext, get_method
from peftlab.train import train

TRAINABLE = ["full", "lora", "dora", "ia3", "prompt", "prefix", "lora+prompt", "vera", "loha", "lokr"]
TOK = build_tokenizer()
# tiny Llama: hidden 64, 4 heads (head dim 16), 2 KV heads → k/v projections are 64 → 32; 2 layers
D, D_KV, LAYERS = 64, 32, 2


def adapted(name: str, kind: str = "llama", **args):
    method = get_method(name)
    model = build_model(kind, len(TOK))
    return method.apply(model, method.resolve_args(args), ApplyContext(tokenizer=TOK))


def memorise_examples(n: int = 8) -> list[dict]:
    ids = TOK("the quick brown fox jumps over the lazy dog")["input_ids"]
    return [{"input_ids": ids, "labels": list(ids)} for _ in range(n)]


def run_steps(model, steps: int = 4, lr: float = 1e-2, seed: int = 0):
    cfg = TrainConfig(lr=lr, max_steps=steps, batch_size=4, warmup_steps=0, schedule="constant")
    return train(model, memorise_examples(), [], cfg, seed=seed, pad_id=TOK.pad_token_id, device="cpu")


def base_weight_snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("name", TRAINABLE)
def test_method_trains_and_freezes_base(name: str, kind: str) -> None:
    if kind == "gpt2" and name in ("loha", "lokr"):
        with pytest.raises(TypeError, match="Conv1D"):  # peft's LyCORIS layers refuse GPT-2's Conv1D
            adapted(name, kind)
        return
    model = adapted(name, kind)
    frozen = base_weight_snapshot(model)
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, f"{name} has no trainable parameters"
    outcome = run_steps(model)
    assert outcome.steps == 4 and outcome.tokens > 0
    after = dict(model.named_parameters())
    for n, before in frozen.items():
        assert torch.equal(after[n].detach(), before), f"{name}: frozen {n} changed"
    changed = [n for n, before in trainable.items() if not torch.equal(after[n].detach(), before)]
    assert changed, f"{name}: no trainable tensor changed"
    if name == "full":
        assert not frozen


@pytest.mark.parametrize(("name", "lr"), [("lora", 5e-2), ("prompt", 0.3), ("prefix", 0.1), ("lora+prompt", 5e-2),
                                          ("ia3", 0.3), ("full", 3e-3)])
def test_loss_falls_on_memorisable_batch(name: str, lr: float) -> None:
    # A random tiny model starts near log(vocab) ≈ 5.8 nats; small adapters move it slowly, so the
    # bar is a clear absolute drop over 30 steps on one repeated sentence.
    outcome = run_steps(adapted(name), steps=30, lr=lr)
    losses = [loss for _, loss in outcome.curves["train_loss"]]
    assert losses[-1] < losses[0] - 0.15, losses


def test_hybrid_trains_prompt_and_lora() -> None:
    model = adapted("lora+prompt")
    prompt_before = model.soft_prompt.detach().clone()
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    run_steps(model)
    assert not torch.equal(model.soft_prompt.detach(), prompt_before)
    params = dict(model.named_parameters())
    assert all(not torch.equal(params[n].detach(), b) for n, b in lora_before.items())


def test_base_has_nothing_to_train() -> None:
    model = adapted("base")
    assert count_parameters(model)["trainable_params"] == 0
    assert not get_method("base").trains


@pytest.mark.parametrize("r", [4, 8])
def test_lora_count_matches_formula(r: int) -> None:
    # r·(d_in + d_out) per adapted matrix: q is 64→64, v is 64→32, in each of 2 layers
    expected = LAYERS * (r * (D + D) + r * (D + D_KV))
    assert count_parameters(adapted("lora", r=r))["trainable_params"] == expected


def test_lora_count_gpt2_fused_c_attn() -> None:
    # GPT-2's c_attn is one 64 → 192 matrix (q, k, v fused)
    assert count_parameters(adapted("lora", "gpt2", r=8))["trainable_params"] == LAYERS * 8 * (D + 3 * D)


def test_prompt_and_prefix_counts_match_formulas() -> None:
    assert count_parameters(adapted("prompt", num_virtual_tokens=8))["trainable_params"] == 8 * D
    # prefix: 2 (key and value) · layers · n_tokens · d_kv
    assert count_parameters(adapted("prefix", num_virtual_tokens=10))["trainable_params"] == 2 * LAYERS * 10 * D_KV


def test_hybrid_count_is_lora_plus_prompt() -> None:
    counts = count_parameters(adapted("lora+prompt", r=8, num_virtual_tokens=8))
    assert counts["trainable_params"] == LAYERS * (8 * (D + D) + 8 * (D + D_KV)) + 8 * D


def test_total_counts_soft_prompt_and_trainable_pct() -> None:
    base_total = count_parameters(build_model("llama", len(TOK)))["total_params"]
    counts = count_parameters(adapted("prompt", num_virtual_tokens=8))
    assert counts["total_params"] == base_total + 8 * D
    assert counts["trainable_pct"] == pytest.approx(100 * 8 * D / (base_total + 8 * D))


def test_qlora_counts_logical_parameters_under_4bit_packing(tiny_llama_dir) -> None:
    from peftlab.models import load_model

    plain = count_parameters(load_model(str(tiny_llama_dir), device="cpu"))["total_params"]
    method = get_method("qlora")
    model = load_model(str(tiny_llama_dir), load_in_4bit=True, device="cpu")
    assert any(p.__class__.__name__ == "Params4bit" for p in model.parameters()), "base is not 4-bit"
    model = method.apply(model, method.resolve_args({}), ApplyContext(tokenizer=TOK))
    counts = count_parameters(model)
    assert counts["total_params"] == plain + LAYERS * (8 * (D + D) + 8 * (D + D_KV))
    run_steps(model, steps=2, lr=1e-3)


@pytest.mark.parametrize("name", ["lora", "dora", "ia3", "prompt", "prefix", "lora+prompt", "full", "loha"])
def test_save_load_reproduces_logits(name: str, tmp_path, tiny_llama_dir) -> None:
    from peftlab.models import load_model

    method = get_method(name)
    model = method.apply(load_model(str(tiny_llama_dir), device="cpu"), method.resolve_args({}),
                         ApplyContext(tokenizer=TOK))
    run_steps(model, steps=3)
    model.eval()
    ids = torch.tensor([TOK("the lazy dog jumps")["input_ids"]])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    size = save_adapter(model, name, tmp_path / "adapter", {"model": {"name": str(tiny_llama_dir), "dtype": "float32"}})
    assert size > 0
    loaded = load_adapter(tmp_path / "adapter", device="cpu")
    with torch.no_grad():
        after = loaded(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_unknown_method_names_choices() -> None:
    with pytest.raises(ValueError, match="unknown method 'lorra'.*did you mean 'lora'.*registered: .*prefix"):
        get_method("lorra")


def test_unknown_method_argument_names_choices() -> None:
    with pytest.raises(ValueError, match="unknown argument.*'rank'.*valid: .*'r'"):
        get_method("lora").resolve_args({"rank": 4})


def test_generic_peft_method_bad_argument_is_clear() -> None:
    method = get_method("vera")
    with pytest.raises(ValueError, match="method 'vera'.*valid arguments"):
        method.apply(build_model("llama", len(TOK)), {"bogus": 1}, ApplyContext())


def test_training_is_deterministic_for_a_seed() -> None:
    losses = []
    for _ in range(2):
        torch.manual_seed(0)
        model = adapted("lora")
        outcome = run_steps(copy.deepcopy(model), steps=3, seed=7)
        losses.append([loss for _, loss in outcome.curves["train_loss"]])
    assert losses[0] == losses[1]


def test_adalora_budget_update_runs_with_the_gradients():
    """AdaLoRA's per-step callback (update_and_allocate) needs the step's gradients: it must run before
    they are cleared (it crashed when it ran after zero_grad)."""
    from peftlab.methods import get_method

    model = adapted("adalora")
    cfg = TrainConfig(lr=1e-2, max_steps=3, batch_size=4, warmup_steps=0, schedule="constant")
    outcome = train(model, memorise_examples(), [], cfg, seed=0, pad_id=TOK.pad_token_id, device="cpu",
                    on_step=get_method("adalora").on_step)
    assert outcome.steps == 3
