"""Batches without padding waste: packing for causal-LM text, length bucketing for examples.

Packing concatenates documents (separated by EOS) and cuts full windows, so every position in a
batch is a real token. Bucketing groups examples of similar length into a batch (shuffled in
large chunks first, then sorted inside each chunk, as Hugging Face's length-grouped sampler does),
so a batch pads to a length close to its longest member instead of to the data's longest.
"""

from __future__ import annotations

import random
from typing import Any

import torch


def pack_texts(tokenizer: Any, texts: list[str], block: int) -> list[dict[str, list[int]]]:
    """Concatenate `texts` with EOS between them and cut into blocks of `block` tokens."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            stream.append(eos)
    blocks = [stream[i:i + block] for i in range(0, len(stream), block)]
    if len(blocks) > 1 and len(blocks[-1]) < block // 4:
        blocks.pop()  # a short tail would be a mostly-padding batch row
    return [{"input_ids": b, "labels": list(b)} for b in blocks]


def bucket_batches(lengths: list[int], batch_size: int, seed: int, shuffle: bool = True,
                   bucketing: bool = True, chunk_batches: int = 50) -> list[list[int]]:
    """Index batches: shuffled, then length-sorted within chunks of `chunk_batches` batches."""
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    if bucketing:
        chunk = batch_size * chunk_batches
        order = [i for s in range(0, len(order), chunk)
                 for i in sorted(order[s:s + chunk], key=lambda j: -lengths[j])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle and bucketing:
        rng.shuffle(batches)
    return batches


def collate(examples: list[dict[str, list[int]]], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest member; labels pad with -100 so padding never enters the loss.

    Labels pad to the longest labels: a causal LM's are as long as its input_ids, an encoder-decoder
    model's decoder targets have their own length (right padding then: the decoder reads them in order).
    """
    width = max(len(e["input_ids"]) for e in examples)
    label_width = max(len(e.get("labels", e["input_ids"])) for e in examples)
    ids, labels, mask = [], [], []
    for e in examples:
        n = len(e["input_ids"])
        pad = width - n
        lab = e.get("labels", e["input_ids"])
        lab_pad = label_width - len(lab)
        if padding_side == "left":
            ids.append([pad_id] * pad + e["input_ids"])
            labels.append([-100] * lab_pad + lab)
            mask.append([0] * pad + [1] * n)
        else:
            ids.append(e["input_ids"] + [pad_id] * pad)
            labels.append(lab + [-100] * lab_pad)
            mask.append([1] * n + [0] * pad)
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def make_batches(examples: list[dict[str, list[int]]], batch_size: int, pad_id: int, seed: int,
                 shuffle: bool = True, bucketing: bool = True) -> list[dict[str, torch.Tensor]]:
    lengths = [len(e["input_ids"]) for e in examples]
    return [collate([examples[i] for i in idx], pad_id)
            for idx in bucket_batches(lengths, batch_size, seed, shuffle, bucketing)]
