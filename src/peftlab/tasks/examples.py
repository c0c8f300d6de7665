"""Turn a task's records into training examples (token ids + loss mask)."""

from __future__ import annotations

from typing import Any

from peftlab.data.batching import pack_texts
from peftlab.tasks.chat import render
from peftlab.tasks.registry import TaskSpec


def training_examples(spec: TaskSpec, tokenizer: Any, records: list[dict], max_length: int,
                      packing: bool, args: dict) -> list[dict[str, list[int]]]:
    """`lm` tasks: packed text windows, loss on all tokens; chat tasks: loss on the assistant."""
    module = spec.module
    if spec.kind == "lm":
        texts = [module.record_text(r) for r in records]
        if packing:
            return pack_texts(tokenizer, texts, max_length)
        out = []
        for text in texts:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
            out.append({"input_ids": ids, "labels": list(ids)})
        return out
    return [render(tokenizer, module.to_messages(spec, r, args, train=True), max_length) for r in records]
