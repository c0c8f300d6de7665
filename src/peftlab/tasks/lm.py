"""Hooks of the `lm` task: raw text in, perplexity out."""

from __future__ import annotations

from peftlab.evaluation.scoring import strided_perplexity
from peftlab.tasks.api import EvalContext
from peftlab.tasks.registry import TaskSpec


def record_text(record: dict) -> str:
    return record["text"]


def evaluate(spec: TaskSpec, ctx: EvalContext) -> dict:
    """Token- and word-level perplexity of the test split (strided window)."""
    window = ctx.args.get("window") or ctx.max_length
    stride = ctx.args.get("stride") or max(1, window // 2)
    texts = [record_text(r) for r in ctx.records]
    scores = strided_perplexity(ctx.model, ctx.tokenizer, texts, window, stride, ctx.device)
    n_tokens = scores.pop("eval_tokens")
    return {"metrics": scores, "eval_tokens": n_tokens, "examples": len(texts)}
