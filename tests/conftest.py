"""Shared fixtures: tiny random models built from configs and a tokenizer trained here (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CORPUS = [
    "the quick brown fox jumps over the lazy dog", "a movie that is good and fun to watch",
    "a film that is bad and boring", "what is the capital of france ? paris",
    "def add(a, b):\n    return a + b\n", "the answer is 42 . final answer : 42",
    "once upon a time there was a small model that learned to count 1 2 3 4 5 6 7 8 9 10",
] * 20
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(chat_template: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|im_start|>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(kind: str, vocab_size: int, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=True, pad_token_id=0)
        return LlamaForCausalLM(cfg)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=512, pad_token_id=0)
    return GPT2LMHeadModel(cfg)


def save_tiny(path: Path, kind: str, chat_template: bool = True) -> Path:
    tok = build_tokenizer(chat_template)
    model = build_model(kind, len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest (and steadiest on a shared machine) on one thread; restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", chat_template=False)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


def train_tiny(model, tok, steps: int = 30, lr: float = 3e-3):
    """Full-train a tiny model a few steps on the corpus so its outputs are not degenerate."""
    import torch

    texts = list(dict.fromkeys(CORPUS))
    batch = tok(texts, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        model(**batch, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def perturb(model, seed: int = 1):
    """Move every trainable tensor off its initialisation (seeded), as training would.

    Fresh adapters are identities (LoRA's B = 0, IA3 = 1), so equivalence tests on them would pass
    trivially; perturbed ones make the adapter change the outputs.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=gen)
            if "ia3" in name:
                p.mul_(1 + 0.5 * noise)
            elif "prompt" in name or "embedding" in name:
                p.copy_(noise)
            else:
                p.add_(0.3 * noise)
    return model.eval()


FAKE_TEXTS = [f"{CORPUS[i % 7]} number {i}" for i in range(64)]


def fake_load_records(task, split, source="auto", limit=None, seed=0):
    """The data layer, replaced: lm/sentiment records from a tiny in-memory corpus."""
    if task == "lm":
        records = [{"text": t} for t in FAKE_TEXTS]
    elif task == "sentiment":
        records = [{"text": t, "label": i % 2} for i, t in enumerate(FAKE_TEXTS)]
    else:
        raise AssertionError(f"fake data has no {task}")
    records = records[:limit] if limit else records
    return records, {"task": task, "split": split, "source": "fake", "origin": "tests", "count": len(records),
                     "fingerprint": "0" * 64}


@pytest.fixture
def fake_records(monkeypatch):
    """Replace the data layer with small in-memory records (the data layer has its own tests)."""
    import peftlab.data as data

    monkeypatch.setattr(data, "load_records", fake_load_records)
    return fake_load_records
