"""Scoring without generation: log-likelihoods, validation loss and strided perplexity.

Encoder-decoder (seq2seq) models (`encoder_decoder=True`): the rows are the encoder's input and the
labels are the decoder's target, two sequences of their own lengths; the model is called with
`labels` (it builds its decoder input by shifting them right) and logit i scores label i, with no
shift. Everything below that is causal-only says so (`strided_perplexity`, `last_token_logits`).

Prompt-learning models (prompt tuning, the LoRA+prompt hybrid) return logits for their virtual
tokens too; `aligned_logits` drops those so position i always predicts input token i+1,
whichever method produced the model.

Batches are sized by a token budget, not a row count (`token_batches`): rows are sorted longest
first and a batch takes rows while rows x its longest row fits the budget, so short examples
(sentences) share a forward pass in dozens while long ones (reviews) come a few at a time, with
little padding either way. Scoring only the last position (`last_token_logits`) skips the output
layer everywhere else: with a 49k vocabulary that layer is about a fifth of the forward pass,
and its full logits tensor the largest allocation.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from peftlab.evaluation.progress import EvalProgress


def token_batches(lengths: Sequence[int], max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices grouped into batches, longest rows first, each with rows x longest <= `max_tokens`
    (a row longer than the budget gets a batch of its own) and at most `max_rows` rows."""
    if max_tokens < 1:
        raise ValueError(f"token_batches: max_tokens must be >= 1, got {max_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches:
            batch = batches[-1]
            width = max(lengths[batch[0]], 1)
            if (len(batch) + 1) * width <= max_tokens and (max_rows is None or len(batch) < max_rows):
                batch.append(i)
                continue
        batches.append([i])
    return batches


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, labels: Sequence[Sequence[int]] | None = None
             ) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids` and `attention_mask` (and `labels`, -100 on padding) for token-id rows.

    Labels pad to the longest labels: a causal LM's are as long as its rows, an encoder-decoder's decoder
    targets have their own length."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        out["labels"] = torch.full((len(rows), max(len(lab) for lab in labels)), -100, dtype=torch.long)
    for row, seq in enumerate(rows):
        ids[row, :len(seq)] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, :len(seq)] = 1
        if labels is not None:
            out["labels"][row, :len(labels[row])] = torch.tensor(list(labels[row]), dtype=torch.long)
    return out


def aligned_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    logits = out.logits
    if logits.shape[1] > input_ids.shape[1]:
        logits = logits[:, -input_ids.shape[1]:]
    return logits


@torch.no_grad()
def nll_sum(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            labels: torch.Tensor, encoder_decoder: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row summed negative log-likelihood of the labelled tokens, and their count.

    Causal: labels align with `input_ids` and position t predicts label t+1. `encoder_decoder`: `input_ids`
    is the encoder input, labels the decoder target (-100: not scored), and logit t predicts label t."""
    if encoder_decoder:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).logits.float()
        target = labels
        logp = F.log_softmax(logits, dim=-1)
    else:
        logits = aligned_logits(model, input_ids, attention_mask).float()
        target = labels[:, 1:]
        logp = F.log_softmax(logits[:, :-1], dim=-1)
    mask = target != -100
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum(dim=1), mask.sum(dim=1)


@torch.no_grad()
def mean_loss(model: Any, batches: list[dict[str, torch.Tensor]], device: Any, encoder_decoder: bool = False) -> float:
    """Token-weighted mean loss over batches (the validation loss curve); `encoder_decoder` as in `nll_sum`."""
    total, count = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        nll, n = nll_sum(model, batch["input_ids"], batch["attention_mask"], batch["labels"], encoder_decoder)
        total += float(nll.sum())
        count += int(n.sum())
    return total / max(count, 1)


def strided_windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position in the window) of each strided window over `n_tokens` tokens: each
    advances by `stride` and scores only the tokens no earlier window scored (position 0 never: it has no
    context within the window)."""
    out, prev_end = [], 0
    for begin in range(0, n_tokens, stride):
        end = min(begin + window, n_tokens)
        out.append((begin, end, max((end - begin) - (end - prev_end), 1)))
        prev_end = end
        if end == n_tokens:
            break
    return out


@torch.no_grad()
def strided_perplexity(model: Any, tokenizer: Any, texts: list[str], window: int, stride: int,
                       device: Any) -> dict[str, float]:
    """Perplexity of the concatenated texts with a sliding window (Hugging Face's recipe); causal LMs only.

    Each window of `window` tokens advances by `stride`; only tokens not scored by an earlier
    window count, and each is scored with up to `window - stride` tokens of left context, which
    is closer to the model's true perplexity than disjoint chunks. Word-level perplexity divides
    the same total NLL by the number of whitespace words, so tokenizers can be compared.
    """
    text = "\n\n".join(texts)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]).unsqueeze(0)
    total_nll, scored = 0.0, 0
    for begin, end, first in strided_windows(ids.shape[1], window, stride):
        chunk = ids[:, begin:end].to(device)
        labels = chunk.clone()
        labels[:, :first] = -100
        nll, count = nll_sum(model, chunk, torch.ones_like(chunk), labels)
        total_nll += float(nll.sum())
        scored += int(count.sum())
    words = len(text.split())
    n_bytes = len(text.encode("utf-8"))
    return {
        "perplexity": math.exp(total_nll / max(scored, 1)),
        "word_perplexity": math.exp(total_nll / max(words, 1)),
        "bits_per_byte": total_nll / max(n_bytes, 1) / math.log(2),
        "eval_tokens": scored,
    }


@torch.no_grad()
def row_nll(model: Any, rows: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int, device: Any,
            max_tokens: int, progress: EvalProgress | None = None, per_item: int = 1,
            encoder_decoder: bool = False) -> tuple[list[float], list[int]]:
    """Summed NLL (nats) of each row's labelled tokens (-100: not scored) and their count, in row order.

    `encoder_decoder`: each row is the encoder's input and its labels the decoder's target (see `nll_sum`).
    Batched by `token_batches(max_tokens)` (over the longer of row and target); `progress` advances by one per
    `per_item` rows (several rows can make up one example, e.g. its label choices)."""
    nll_out, count_out = [0.0] * len(rows), [0] * len(rows)
    for idx in token_batches([max(len(r), len(lab)) for r, lab in zip(rows, labels)], max_tokens):
        batch = pad_rows([rows[i] for i in idx], pad_id, [labels[i] for i in idx])
        nll, count = nll_sum(model, *(batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")),
                             encoder_decoder=encoder_decoder)
        for i, v, c in zip(idx, nll.double().tolist(), count.tolist()):
            nll_out[i], count_out[i] = float(v), int(c)
        if progress is not None:
            progress.advance(len(idx) / per_item)
    return nll_out, count_out


@torch.no_grad()
def choice_logprobs(model: Any, prompts: list[list[int]], choices: list[list[int]], pad_id: int,
                    device: Any, max_tokens: int = 2048, progress: EvalProgress | None = None,
                    encoder_decoder: bool = False) -> torch.Tensor:
    """Log-likelihood of each choice continuation after each prompt: shape (prompts, choices).

    One forward pass per (prompt, choice) pair, batched by token budget; classification by
    comparing these needs no generation and no answer parsing. `encoder_decoder`: the choice's
    log-likelihood as the decoder's output given the prompt in the encoder.
    """
    if encoder_decoder:
        rows = [list(p) for p in prompts for _ in choices]
        labels = [list(c) for _ in prompts for c in choices]
    else:
        rows = [p + c for p in prompts for c in choices]
        labels = [[-100] * len(p) + list(c) for p in prompts for c in choices]
    nll, _ = row_nll(model, rows, labels, pad_id, device, max_tokens, progress, per_item=len(choices),
                     encoder_decoder=encoder_decoder)
    return torch.tensor([-v for v in nll]).view(len(prompts), len(choices))


@contextlib.contextmanager
def _only_positions(model: Any, positions: torch.Tensor, n_inputs: int) -> Iterator[None]:
    """While active, the output layer sees one position per row (`positions`, counted in the inputs): a
    pre-hook picks those hidden states, so the logits come out (rows, 1, vocab). Anything a method
    prepends to the inputs (virtual tokens) sits before them, as `aligned_logits` assumes."""
    head = model.get_output_embeddings()

    def pick(_module: Any, args: tuple) -> tuple:
        hidden = args[0]
        offset = hidden.shape[1] - n_inputs
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return (hidden[rows, positions.to(hidden.device) + offset].unsqueeze(1), *args[1:])

    handle = head.register_forward_pre_hook(pick)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def last_token_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The logits after each row's last real token of a right-padded batch: (rows, vocab); causal LMs only.

    The output layer runs on those positions only (see `_only_positions`); a model whose output layer
    can't be found (no `get_output_embeddings`) gets the full forward pass instead, same result."""
    last = attention_mask.sum(dim=1) - 1
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is None:
        logits = aligned_logits(model, input_ids, attention_mask)
        return logits[torch.arange(input_ids.shape[0], device=logits.device), last.to(logits.device)]
    with _only_positions(model, last, input_ids.shape[1]):
        out = model(input_ids=input_ids, attention_mask=attention_mask)
    return out.logits[:, -1]
