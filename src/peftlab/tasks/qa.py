"""Hooks of the `qa` task: extractive question answering (SQuAD v1.1) in chat form.

Chat: system = "answer with a span copied from the context", user = "Context: ...\\nQuestion:
...", assistant = the first gold answer. Evaluation generates with each decoding strategy of the
experiment (the task's defaults: 32 new tokens, stop at a newline) and scores the answer with
the official SQuAD v1.1 exact match and token F1 (normalised, max over all gold answers, 0-100).

Long contexts: the context is the only part of the prompt that is cut, so the system prompt and
the question always survive.

* Evaluation (exact, in tokens): the context is cut from the left (its beginning is dropped,
  `args.context_truncation: left`) so that the prompt fits the run's `max_length`.
* Training: `to_messages` gets no tokenizer, so the context is windowed in characters
  (`args.train_context_chars`, ~4 characters per token for English BPE vocabularies) around the
  first gold answer, so the target is always in what the model reads (a window that cut the
  answer out would teach it to invent spans). Anything still too long is cut by `chat.render`.
"""

from __future__ import annotations

from typing import Any

from peftlab.evaluation import metrics as M
from peftlab.tasks.api import EvalContext
from peftlab.tasks.chat import build_messages, render_prompt
from peftlab.tasks.common import example_ids, fit_text, generation_eval, prompt_overhead
from peftlab.tasks.registry import TaskSpec

SLACK = 4


def user_text(context: str, question: str) -> str:
    return f"Context: {context.strip()}\nQuestion: {question.strip()}"


def answer_window(context: str, answer: str, chars: int) -> str:
    """A window of about `chars` characters of `context` that contains `answer` when it occurs.

    The window is centred on the answer's first occurrence and widened to word boundaries;
    without an occurrence the context's end is kept (like the evaluation's left cut).
    """
    if not chars or len(context) <= chars:
        return context
    pos = context.find(answer) if answer else -1
    if pos < 0:
        start = len(context) - chars
    else:
        start = pos + len(answer) // 2 - chars // 2
        start = min(max(start, 0), len(context) - chars)
    end = start + chars
    while start > 0 and not context[start - 1].isspace():
        start -= 1
    while end < len(context) and not context[end].isspace():
        end += 1
    return context[start:end].strip()


def to_messages(spec: TaskSpec, record: dict, args: dict, train: bool = True) -> list[dict]:
    answer = record["answers"][0] if record.get("answers") else ""
    context = record["context"]
    if train:
        context = answer_window(context, answer, int(args.get("train_context_chars") or 0))
    return build_messages(spec.system, user_text(context, record["question"]), answer if train else None)


def prompt_ids(spec: TaskSpec, record: dict, args: dict, tokenizer: Any, max_length: int,
               encoder_decoder: bool = False) -> list[int]:
    """Prompt token ids with the context cut (never the question) to fit `max_length` (`encoder_decoder`: the
    plain prompt an encoder-decoder model's encoder reads)."""
    overhead = prompt_overhead(tokenizer, build_messages(spec.system, user_text("", record["question"])),
                               encoder_decoder)
    budget = max_length - overhead - SLACK
    context = fit_text(tokenizer, record["context"], budget, side=args.get("context_truncation", "left"))
    return render_prompt(tokenizer, build_messages(spec.system, user_text(context, record["question"])),
                         max_length, encoder_decoder)


def evaluate(spec: TaskSpec, ctx: EvalContext) -> dict:
    records = ctx.records
    golds = [list(r["answers"]) or [""] for r in records]
    prompts = [prompt_ids(spec, r, ctx.args, ctx.tokenizer, ctx.max_length, ctx.encoder_decoder) for r in records]

    def score(texts: list[list[str]], decoding: Any) -> tuple[dict, list[dict]]:
        preds = [outs[0].strip() for outs in texts]
        metrics = {"exact_match": M.squad_exact_match(preds, golds), "f1": M.squad_f1(preds, golds)}
        per = [{"prediction": p, "exact_match": M.squad_exact_match_single(p, g),
                "f1": M.squad_f1_single(p, g)} for p, g in zip(preds, golds)]
        scores = {"exact_match": ("mean", [100.0 * r["exact_match"] for r in per]),
                  "f1": ("mean", [100.0 * r["f1"] for r in per])}
        return metrics, per, scores

    fields = [{"id": r.get("id"), "question": r["question"], "answers": g} for r, g in zip(records, golds)]
    return generation_eval(spec, ctx, prompts, score, sample_fields=fields, ids=example_ids(records))
