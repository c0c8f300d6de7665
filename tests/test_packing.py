"""Padding-free packing and targets-only logits compute exactly the losses of unpacked, padded training.

The proof is per example: an example's mean next-token loss inside a packed row (several examples
back to back, position ids restarting at 0 for each, no attention mask) must equal its loss when
it is run alone. If attention crossed from one example into the next, the later examples' losses
would change; the tests also show the comparison is sharp enough to see that (a row whose
positions do not restart, or a forward with the cache on, does change them).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import build_model, build_tokenizer

from peftlab.config import TrainConfig
from peftlab.data.batching import collate, pack_texts
from peftlab.tasks.chat import build_messages, render
from peftlab.train import choose_layout, forward_loss, pack_batch, pack_rows, packed_collate, per_example_losses, train

QUESTIONS = ["the quick brown fox", "a movie that is good and fun to watch ? yes",
             "what is the capital of france ? paris", "def add(a, b):\n    return a + b",
             "once upon a time", "a film that is bad and boring"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def chat_examples(tok):
    """Chat examples of different lengths, loss on the assistant's answer only (what sentiment/instruct train on)."""
    answers = ["positive", "the answer is 42", "paris", "return a + b", "there was a model", "negative"]
    return [render(tok, build_messages("be brief", q, a), 64) for q, a in zip(QUESTIONS, answers)]


def _model(kind: str, tok, attn: str = "sdpa") -> nn.Module:
    model = build_model(kind, len(tok))
    model.config._attn_implementation = attn
    return model.eval()


def _alone(model: nn.Module, examples: list[dict]) -> torch.Tensor:
    """Each example's loss on its own: one sequence, no padding, logits everywhere."""
    with torch.no_grad():
        return torch.stack([per_example_losses(model, collate([e], 0), torch.zeros(1, len(e["input_ids"]),
                                                                                   dtype=torch.long), 1, False)[0]
                            for e in examples])


def _losses_from_logits(logits: torch.Tensor, labels: torch.Tensor, owner: torch.Tensor, count: int) -> torch.Tensor:
    targets, wanted = labels[:, 1:], labels[:, 1:] != -100
    nll = F.cross_entropy(logits[:, :-1][wanted].float(), targets[wanted], reduction="none")
    who = owner[:, 1:][wanted]
    return torch.zeros(count).index_add_(0, who, nll) / torch.bincount(who, minlength=count)


@pytest.mark.parametrize("kind,attn", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa")])
def test_packed_row_losses_equal_each_example_alone(kind, attn, tok, chat_examples, one_thread):
    model = _model(kind, tok, attn)
    alone = _alone(model, chat_examples)
    row, owner = pack_batch(chat_examples, tok.pad_token_id, width=10_000)  # all six in one row
    assert row["input_ids"].shape[0] == 1 and "attention_mask" not in row
    with torch.no_grad():
        packed = per_example_losses(model, row, owner, len(chat_examples), targets_only=True)
        packed_all_logits = per_example_losses(model, row, owner, len(chat_examples), targets_only=False)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed_all_logits, alone, atol=1e-5, rtol=1e-5)

    # the same comparison sees attention crossing examples: positions that do not restart ...
    flat = dict(row, position_ids=torch.arange(row["input_ids"].shape[1])[None])
    with torch.no_grad():
        crossing = per_example_losses(model, flat, owner, len(chat_examples), targets_only=True)
    assert (crossing - alone)[1:].abs().max() > 1e-3
    # ... and a forward with the cache on (the config's default): transformers then ignores the packing
    with torch.no_grad():
        logits = model(input_ids=row["input_ids"], position_ids=row["position_ids"]).logits
    cached = _losses_from_logits(logits, row["labels"], owner, len(chat_examples))
    assert (cached - alone)[1:].abs().max() > 1e-3


def test_default_rows_are_never_longer_than_the_longest_example(tok, chat_examples):
    lengths = [len(e["input_ids"]) for e in chat_examples] + [7, 5, 3]
    for width in (max(lengths), 80, 200):
        rows = pack_rows(lengths, width)
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in r) <= width for r in rows)
    examples = chat_examples + [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}]
    batch = packed_collate(examples, tok.pad_token_id)
    assert batch["input_ids"].shape[1] == max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape[0] < len(examples)  # the short example shares a row
    assert int(batch["num_tokens"]) == sum(len(e["input_ids"]) for e in examples)
    assert int(batch["num_positions"]) == batch["input_ids"].numel()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_training_loss_is_the_models_own(kind, tok, chat_examples, one_thread):
    """The loss a step backpropagates: packed + targets-only == padded + targets-only == the model's own loss."""
    model = _model(kind, tok)
    padded = collate(chat_examples, tok.pad_token_id)
    with torch.no_grad():
        own = model(**padded).loss
        trimmed = forward_loss(model, dict(padded), targets_only=True)
        packed = forward_loss(model, {k: v for k, v in packed_collate(chat_examples, tok.pad_token_id).items()
                                      if not k.startswith("num_")}, targets_only=True)
    torch.testing.assert_close(trimmed, own, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed, own, atol=1e-5, rtol=1e-5)


def test_full_finetuning_curve_packed_equals_padded(tok, chat_examples, one_thread):
    """Same init, same batches (one epoch), same optimizer: the loss curve does not depend on the layout."""
    base = _model("llama", tok).train()
    short = [render(tok, build_messages("", q, "yes"), 20) for q in QUESTIONS]  # room for two in a long row
    examples = chat_examples + short + chat_examples[::-1]
    outcomes = {}
    for packing in (True, False):
        torch.manual_seed(0)
        cfg = TrainConfig(lr=1e-3, warmup_steps=0, max_steps=5, batch_size=4, packing=packing,
                          bucketing=False, save_adapter=False)  # unsorted batches: room to share rows
        outcomes[packing] = train(copy.deepcopy(base), examples, [], cfg, 0, tok.pad_token_id, "cpu")
    packed, padded = outcomes[True], outcomes[False]
    assert packed.layout.packed and packed.layout.targets_only
    assert not padded.layout.packed and padded.layout.targets_only
    assert packed.tokens == padded.tokens == sum(len(e["input_ids"]) for e in examples)
    assert packed.positions < padded.positions
    for (s1, l1), (s2, l2) in zip(packed.curves["train_loss"], padded.curves["train_loss"], strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-4)
    record = packed.record()
    assert record["batch_layout"] == "padding-free" and record["logits"] == "targets-only"
    assert 0 <= record["padding_pct"] < padded.record()["padding_pct"]


class _DropsPositions(nn.Module):
    """A wrapper that loses the position ids (as some wrappers do): packed rows would attend across examples."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs):
        kwargs.pop("position_ids", None)
        return self.inner(**kwargs)


class _NoLogitsToKeep(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, logits_to_keep=None, **kwargs):
        if logits_to_keep is not None:
            raise TypeError("forward() got an unexpected keyword argument 'logits_to_keep'")
        return self.inner(**kwargs)


def test_layout_check_falls_back_with_the_reason(tok, chat_examples, one_thread):
    model = _model("llama", tok)
    ok = choose_layout(model, chat_examples, packing=True, pad_id=tok.pad_token_id)
    assert ok.packed and ok.targets_only and "match each example alone" in ok.reason
    assert model.training is False  # the check leaves the mode as it found it (eval here) ...
    model.train()
    choose_layout(model, chat_examples, packing=True, pad_id=tok.pad_token_id)
    assert model.training is True  # ... and train mode too
    off = choose_layout(model, chat_examples, packing=False, pad_id=tok.pad_token_id)
    assert not off.packed and off.targets_only and "train.packing is off" in off.reason

    leaky = choose_layout(_DropsPositions(model), chat_examples, packing=True, pad_id=tok.pad_token_id)
    assert not leaky.packed and leaky.targets_only
    assert "padding-free rows changed a per-example loss" in leaky.reason

    old = choose_layout(_NoLogitsToKeep(model), chat_examples, packing=True, pad_id=tok.pad_token_id)
    assert not old.packed and not old.targets_only
    assert "targets-only logits failed on this model (TypeError" in old.reason


def test_prompt_learning_keeps_padded_rows(tok, chat_examples, one_thread):
    from peft import PromptTuningConfig, get_peft_model

    model = get_peft_model(_model("llama", tok), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    layout = choose_layout(model, chat_examples, packing=True, pad_id=tok.pad_token_id)
    assert not layout.packed and not layout.targets_only and "virtual tokens" in layout.reason


def _documents(window: list[int], eos: int) -> list[list[int]]:
    """A packed text window cut after each EOS: the documents (or document pieces) it holds."""
    docs, current = [], []
    for t in window:
        current.append(t)
        if t == eos:
            docs.append(current)
            current = []
    return docs + ([current] if current else [])


def _window_and_documents(tok) -> tuple[dict, list[list[int]]]:
    texts = ["the quick brown fox jumps over the lazy dog", "a film that is bad and boring",
             "what is the capital of france ? paris"]
    window = pack_texts(tok, texts, 512)[0]  # all three documents in one window, EOS after each
    docs = _documents(window["input_ids"], tok.eos_token_id)
    assert len(docs) == 3
    return window, docs


def _assert_documents_score_as_alone(tok, with_segments: bool) -> None:
    """Each document of a packed text window (with or without its `segments`) scores as it would alone."""
    model = _model("llama", tok)
    window, docs = _window_and_documents(tok)
    example = dict(window, segments=[len(d) for d in docs]) if with_segments else window
    row, _ = pack_batch([example], tok.pad_token_id)
    owner = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    with torch.no_grad():
        in_window = per_example_losses(model, row, owner, len(docs), targets_only=True)
    alone = _alone(model, [{"input_ids": d, "labels": d} for d in docs])
    torch.testing.assert_close(in_window, alone, atol=1e-5, rtol=1e-5)


def test_document_segments_keep_documents_apart(tok, one_thread):
    """With `segments` (document lengths) on a packed text window, each document scores as it would alone."""
    _assert_documents_score_as_alone(tok, with_segments=True)


@pytest.mark.xfail(strict=True, reason="known: `pack_texts` windows carry no document boundaries, so lm training "
                                       "attends across documents; fixed when it records `segments`")
def test_lm_windows_keep_documents_apart(tok, one_thread):
    """The `lm` task's packed windows as `training_examples` builds them today, through the padding-free path."""
    _assert_documents_score_as_alone(tok, with_segments=False)
