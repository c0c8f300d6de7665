"""Hooks of the `math` task: word problems with a verifiable final answer.

Chat: system = "solve, end with 'Final Answer: <number>'", user = the problem, assistant = the
worked solution when the source has one (GSM8K does, the offline MathQA substitute does not)
followed by "Final Answer: X".

Scoring (percentages, `peftlab.evaluation.answers`):

* `exact_match`: the *declared* answer (after the last "Final Answer:" / "####" / inside
  the last \\boxed{}) equals the gold answer numerically; no declaration counts as wrong.
* `exact_match_flexible`: the last number in the output is right (forgives format slips, so it
  isolates arithmetic from instruction following).
* `format_error_rate`: outputs with no declared answer (lower is better).
* `exact_match_majority` (self-consistency, Wang et al. 2023), only for decoding strategies
  that return several sequences per problem (`n=K`): the most frequent declared answer (strict
  extraction, compared by value; ties go to the answer seen first) is the prediction. With several
  sequences, the three metrics above average over all sequences (the expected score of one
  sample).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from peftlab.evaluation.answers import answers_match, extract_flexible, extract_strict, normalize_number
from peftlab.tasks.api import EvalContext
from peftlab.tasks.chat import build_messages, render_prompt
from peftlab.tasks.common import example_ids, generation_eval
from peftlab.tasks.registry import TaskSpec


def target(record: dict) -> str:
    solution = (record.get("solution") or "").strip()
    return (solution + "\n" if solution else "") + f"Final Answer: {record['answer']}"


def to_messages(spec: TaskSpec, record: dict, args: dict, train: bool = True) -> list[dict]:
    return build_messages(spec.system, record["question"].strip(), target(record) if train else None)


def majority_answer(texts: list[str]) -> str | None:
    """The most frequent declared answer (numbers compared by value), or None if none declared."""
    votes: Counter[str] = Counter()
    first_text: dict[str, str] = {}
    for text in texts:
        answer = extract_strict(text)
        if answer is None:
            continue
        key = normalize_number(answer) or answer.strip().lower()
        votes[key] += 1
        first_text.setdefault(key, answer)
    if not votes:
        return None
    best = max(votes.values())
    key = next(k for k in votes if votes[k] == best)  # Counter keeps first-seen order
    return first_text[key]


def score_outputs(texts: list[list[str]], golds: list[str]) -> tuple[dict[str, float], list[dict]]:
    """Metrics over all sequences, plus majority vote when there are several per problem."""
    metrics, per, _ = score_outputs_per_example(texts, golds)
    return metrics, per


def score_outputs_per_example(texts: list[list[str]], golds: list[str]) -> tuple[dict[str, float], list[dict], dict]:
    """`score_outputs` plus per-problem scores {metric: ("mean", [percent per problem])}: the share of a
    problem's sequences that are right (every problem has the same number), the majority vote's 100/0."""
    strict_ok = flexible_ok = errors = total = 0
    per = []
    several = any(len(outs) > 1 for outs in texts)
    majority_ok = 0
    columns: dict[str, list[float]] = {"exact_match": [], "exact_match_flexible": [], "format_error_rate": []}
    if several:
        columns["exact_match_majority"] = []
    for outs, gold in zip(texts, golds):
        declared = [extract_strict(t) for t in outs]
        ok = [answers_match(d, gold) for d in declared]
        flexible = sum(answers_match(extract_flexible(t), gold) for t in outs)
        missing = sum(d is None for d in declared)
        strict_ok += sum(ok)
        flexible_ok += flexible
        errors += missing
        total += len(outs)
        n = max(len(outs), 1)
        columns["exact_match"].append(100.0 * sum(ok) / n)
        columns["exact_match_flexible"].append(100.0 * flexible / n)
        columns["format_error_rate"].append(100.0 * missing / n)
        row = {"extracted": declared[0] if len(declared) == 1 else declared,
               "correct": ok[0] if len(ok) == 1 else ok}
        if several:
            vote = majority_answer(outs)
            row["majority"] = vote
            row["majority_correct"] = answers_match(vote, gold)
            majority_ok += row["majority_correct"]
            columns["exact_match_majority"].append(100.0 * row["majority_correct"])
        per.append(row)
    total = max(total, 1)
    metrics = {"exact_match": 100.0 * strict_ok / total, "exact_match_flexible": 100.0 * flexible_ok / total,
               "format_error_rate": 100.0 * errors / total}
    if several:
        metrics["exact_match_majority"] = 100.0 * majority_ok / max(len(golds), 1)
    return metrics, per, {m: ("mean", column) for m, column in columns.items()}


def evaluate(spec: TaskSpec, ctx: EvalContext) -> dict:
    records = ctx.records
    golds = [str(r["answer"]) for r in records]
    prompts = [render_prompt(ctx.tokenizer, to_messages(spec, r, ctx.args, train=False), ctx.max_length,
                             ctx.encoder_decoder)
               for r in records]

    def score(texts: list[list[str]], decoding: Any) -> tuple[dict, list[dict]]:
        return score_outputs_per_example(texts, golds)

    fields = [{"id": r.get("id"), "question": r["question"], "answer": g} for r, g in zip(records, golds)]
    return generation_eval(spec, ctx, prompts, score, sample_fields=fields, ids=example_ids(records))
