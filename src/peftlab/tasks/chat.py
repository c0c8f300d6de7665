"""Render a chat (system/user/assistant) into token ids with loss on the assistant tokens only.

The model's own chat template is used when it has one, so fine-tuning sees the format the model
was instruction-tuned on; base models without a template get a plain, readable one. The prompt
and the completion are tokenized separately and concatenated, so the loss mask falls exactly on
the assistant's tokens whatever the tokenizer does at the boundary.

An encoder-decoder (seq2seq) model (`encoder_decoder=True`) gets no template: its encoder reads the
plain prompt (the system and user contents, a blank line between them, tokenized with the tokenizer's
own special tokens, e.g. T5's closing `</s>`) and its decoder is trained on the answer alone (ending
in the end-of-sequence token), so `render` returns the prompt as `input_ids` and the answer as
`labels`, two sequences of their own lengths.
"""

from __future__ import annotations

from typing import Any

PLAIN_HEADERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer: Any, messages: list[dict], encoder_decoder: bool = False) -> str:
    """The text before the assistant's answer, ending where generation should start; for an encoder-decoder
    model the plain prompt its encoder reads (no template, no assistant header)."""
    context = [m for m in messages if m["role"] != "assistant"]
    if encoder_decoder:
        return "\n\n".join(m["content"].strip() for m in context)
    if has_template(tokenizer):
        return tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    parts = [PLAIN_HEADERS[m["role"]] + m["content"].strip() + "\n\n" for m in context]
    return "".join(parts) + PLAIN_HEADERS["assistant"]


def completion_text(tokenizer: Any, messages: list[dict]) -> str:
    """The assistant's answer as the template writes it, end-of-turn marker included."""
    answer = next(m["content"] for m in messages if m["role"] == "assistant")
    if has_template(tokenizer):
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = prompt_text(tokenizer, messages)
        if full.startswith(prompt):
            return full[len(prompt):].rstrip("\n")
        return answer + (tokenizer.eos_token or "")
    return answer.strip() + (tokenizer.eos_token or "")


def render(tokenizer: Any, messages: list[dict], max_length: int, encoder_decoder: bool = False
           ) -> dict[str, list[int]]:
    """input_ids and labels (-100 on prompt tokens); long prompts are cut from the left.

    `encoder_decoder`: input_ids = the plain prompt for the encoder, labels = the answer for the decoder
    (each at most `max_length` tokens, the prompt cut from the left)."""
    if encoder_decoder:
        answer = next(m["content"] for m in messages if m["role"] == "assistant").strip()
        return {"input_ids": render_prompt(tokenizer, messages, max_length, encoder_decoder=True),
                "labels": _target_ids(tokenizer, answer, max_length)}
    prompt_ids = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(completion_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids[: max(1, max_length // 2)] if len(answer_ids) > max_length // 2 else answer_ids
    keep = max_length - len(answer_ids)
    prompt_ids = prompt_ids[-keep:] if keep > 0 else []
    return {"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids}


def render_prompt(tokenizer: Any, messages: list[dict], max_length: int, encoder_decoder: bool = False) -> list[int]:
    """Token ids of the prompt alone (for generation and scoring), cut from the left if long; an encoder-decoder
    model's plain prompt keeps the special tokens its tokenizer adds (T5: `</s>` at the end)."""
    text = prompt_text(tokenizer, messages, encoder_decoder)
    ids = tokenizer(text, add_special_tokens=encoder_decoder)["input_ids"]
    return ids[-max_length:]


def _target_ids(tokenizer: Any, answer: str, max_length: int) -> list[int]:
    """An encoder-decoder model's decoder target: the answer ending in end-of-sequence, so the model learns to stop
    (T5's tokenizer adds it itself), at most `max_length` tokens."""
    ids = list(tokenizer(answer)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is None or (ids and ids[-1] == eos and len(ids) <= max_length):
        return ids[:max_length]
    return [*ids[:max(max_length - 1, 0)], eos]


def build_messages(system: str, user: str, assistant: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return messages
