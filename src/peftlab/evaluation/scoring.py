"""Scoring without generation: log-likelihoods, validation loss and strided perplexity.

Prompt-learning models (prompt tuning, the LoRA+prompt hybrid) return logits for their virtual
tokens too; `aligned_logits` drops those so position i always predicts input token i+1,
whichever method produced the model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F


def aligned_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    logits = out.logits
    if logits.shape[1] > input_ids.shape[1]:
        logits = logits[:, -input_ids.shape[1]:]
    return logits


@torch.no_grad()
def nll_sum(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed negative log-likelihood of the labelled tokens, and their count."""
    logits = aligned_logits(model, input_ids, attention_mask).float()
    target = labels[:, 1:]
    logp = F.log_softmax(logits[:, :-1], dim=-1)
    mask = target != -100
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum(dim=1), mask.sum(dim=1)


@torch.no_grad()
def mean_loss(model: Any, batches: list[dict[str, torch.Tensor]], device: Any) -> float:
    """Token-weighted mean loss over batches (the validation loss curve)."""
    total, count = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        nll, n = nll_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        total += float(nll.sum())
        count += int(n.sum())
    return total / max(count, 1)


@torch.no_grad()
def strided_perplexity(model: Any, tokenizer: Any, texts: list[str], window: int, stride: int,
                       device: Any) -> dict[str, float]:
    """Perplexity of the concatenated texts with a sliding window (Hugging Face's recipe).

    Each window of `window` tokens advances by `stride`; only tokens not scored by an earlier
    window count, and each is scored with up to `window - stride` tokens of left context, which
    is closer to the model's true perplexity than disjoint chunks. Word-level perplexity divides
    the same total NLL by the number of whitespace words, so tokenizers can be compared.
    """
    text = "\n\n".join(texts)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]).unsqueeze(0)
    n_tokens = ids.shape[1]
    total_nll, scored, prev_end = 0.0, 0, 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        chunk = ids[:, begin:end].to(device)
        labels = chunk.clone()
        labels[:, : chunk.shape[1] - (end - prev_end)] = -100
        nll, count = nll_sum(model, chunk, torch.ones_like(chunk), labels)
        total_nll += float(nll.sum())
        scored += int(count.sum())
        prev_end = end
        if end == n_tokens:
            break
    words = len(text.split())
    n_bytes = len(text.encode("utf-8"))
    return {
        "perplexity": math.exp(total_nll / max(scored, 1)),
        "word_perplexity": math.exp(total_nll / max(words, 1)),
        "bits_per_byte": total_nll / max(n_bytes, 1) / math.log(2),
        "eval_tokens": scored,
    }


@torch.no_grad()
def choice_logprobs(model: Any, prompts: list[list[int]], choices: list[list[int]], pad_id: int,
                    device: Any, batch_size: int = 8) -> torch.Tensor:
    """Log-likelihood of each choice continuation after each prompt: shape (prompts, choices).

    One forward pass per (prompt, choice) pair, batched; classification by comparing these needs
    no generation and no answer parsing.
    """
    pairs = [(p, c) for p in prompts for c in choices]
    scores: list[float] = []
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s:s + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        ids = torch.full((len(chunk), width), pad_id)
        labels = torch.full((len(chunk), width), -100)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (p, c) in enumerate(chunk):
            seq = p + c
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            labels[row, len(p): len(seq)] = torch.tensor(c)
        nll, _ = nll_sum(model, ids.to(device), mask.to(device), labels.to(device))
        scores.extend((-nll).tolist())
    return torch.tensor(scores).view(len(prompts), len(choices))
