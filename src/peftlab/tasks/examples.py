"""Turn a task's records into training examples (token ids + loss mask)."""

from __future__ import annotations

from typing import Any

from peftlab.data.batching import pack_texts
from peftlab.tasks.chat import render
from peftlab.tasks.registry import TaskSpec


def training_examples(spec: TaskSpec, tokenizer: Any, records: list[dict], max_length: int,
                      packing: bool, args: dict, encoder_decoder: bool = False) -> list[dict[str, list[int]]]:
    """`lm` tasks: packed text windows, loss on all tokens; chat tasks: loss on the assistant.

    `encoder_decoder`: chat tasks only (an `lm` task has no prompt/target split, `TaskSpec.causal_only`):
    input_ids = the plain prompt for the encoder, labels = the answer for the decoder (`chat.render`).
    """
    module = spec.module
    if encoder_decoder and spec.kind == "lm":
        raise ValueError(f"task {spec.name!r} cannot train an encoder-decoder model because {spec.causal_only(True)}")
    if spec.kind == "lm":
        texts = [module.record_text(r) for r in records]
        if packing:
            return pack_texts(tokenizer, texts, max_length)
        out = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
            out.append({"input_ids": ids, "labels": list(ids)})
        return out
    return [render(tokenizer, module.to_messages(spec, r, args, train=True), max_length, encoder_decoder)
            for r in records]
