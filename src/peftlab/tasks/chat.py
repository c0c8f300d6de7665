"""Render a chat (system/user/assistant) into token ids with loss on the assistant tokens only.

The model's own chat template is used when it has one, so fine-tuning sees the format the model
was instruction-tuned on; base models without a template get a plain, readable one. The prompt
and the completion are tokenized separately and concatenated, so the loss mask falls exactly on
the assistant's tokens whatever the tokenizer does at the boundary.
"""

from __future__ import annotations

from typing import Any

PLAIN_HEADERS = {"system": "### System:\n", "user": "### User:\n", "assistant": "### Assistant:\n"}


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer: Any, messages: list[dict]) -> str:
    """The text before the assistant's answer, ending where generation should start."""
    context = [m for m in messages if m["role"] != "assistant"]
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


def render(tokenizer: Any, messages: list[dict], max_length: int) -> dict[str, list[int]]:
    """input_ids and labels (-100 on prompt tokens); long prompts are cut from the left."""
    prompt_ids = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(completion_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids[: max(1, max_length // 2)] if len(answer_ids) > max_length // 2 else answer_ids
    keep = max_length - len(answer_ids)
    prompt_ids = prompt_ids[-keep:] if keep > 0 else []
    return {"input_ids": prompt_ids + answer_ids, "labels": [-100] * len(prompt_ids) + answer_ids}


def render_prompt(tokenizer: Any, messages: list[dict], max_length: int) -> list[int]:
    """Token ids of the prompt alone (for generation and scoring), cut from the left if long."""
    ids = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"]
    return ids[-max_length:]


def build_messages(system: str, user: str, assistant: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user})
    if assistant is not None:
        messages.append({"role": "assistant", "content": assistant})
    return messages
