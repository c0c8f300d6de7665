"""Helpers shared by the task hooks: decoding defaults, prompt fitting, the generation loop.

* `resolve_decodings` merges a task's `generation:` defaults into the experiment's decoding
  strategies (a task knows that QA answers end at a newline; the experiment knows whether to
  decode greedily or sample).
* `fit_text` / `truncate_ids` cut one *field* of a prompt (a review, a context) to a token
  budget, so the system prompt and the question are never the part that is lost.
* `generation_eval` runs every decoding strategy over one set of prompts and builds the
  `evaluations` list of the result schema; the first strategy's metrics are the run's metrics.
* `example_ids`, `score_set` and `link` keep per-example scores (docs/contracts.md, "Per-example
  scores"): a hook returns `scores`, a list of score sets `{"evaluation", "ids", "values":
  {metric: [value per example]}, "statistics": {metric: stats.py statistic}}`, and every
  evaluation entry (and the hook's result, for the run's metrics) says in `per_example` /
  `per_example_source` which statistic reproduces each metric and which score set holds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from peftlab.config import DecodingConfig
from peftlab.tasks.api import EvalContext
from peftlab.tasks.chat import prompt_text

log = logging.getLogger("peftlab")

DECODING_FIELDS = {f.name for f in dataclasses.fields(DecodingConfig)}
_DEFAULT = DecodingConfig()

# score(texts_per_prompt, decoding) -> (metrics, per-example sample fields[, per-example scores])
# per-example scores: {metric: (statistic name, [value per prompt])}, see `score_set`
Scorer = Callable[[list[list[str]], DecodingConfig], tuple]

#: The score set of scoring without decoding (label log-likelihoods, teacher-forced loss, perplexity).
LOGLIK = "loglik"
#: Suffix of the score set of a second example set scored alongside (sentiment's in-domain sentences).
IN_DOMAIN = ":in_domain"


# ------------------------------------------------------------------------------ per-example scores


def example_id(record: dict) -> str:
    """A stable id of a test record: its own `id` / `task_id` when it has one, else a hash of its content.

    The same record gets the same id in every run (any method, any seed), so per-example scores pair up.
    """
    for key in ("id", "task_id"):
        value = record.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) != "":
            return str(value)
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
    return "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def example_ids(records: Sequence[dict]) -> list[str]:
    """`example_id` of each record; a repeated id gets `#2`, `#3`... in order (still stable)."""
    seen: dict[str, int] = {}
    out = []
    for record in records:
        base = example_id(record)
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return out


def _value(v: Any) -> float | list[float]:
    if isinstance(v, (list, tuple)):
        return [float(x) for x in v]
    return float(v)


def score_set(evaluation: str, ids: Sequence[str], scores: dict[str, tuple[str, Sequence[Any]]]) -> dict:
    """A score set: `scores` = {metric: (statistic name, [value per example])}, values aligned with `ids`."""
    values = {}
    for metric, (_, column) in scores.items():
        if len(column) != len(ids):
            raise ValueError(f"{evaluation}: {len(column)} per-example values of {metric} for {len(ids)} examples")
        values[metric] = [_value(v) for v in column]
    return {"evaluation": evaluation, "ids": list(ids), "values": values,
            "statistics": {metric: stat for metric, (stat, _) in scores.items()}}


def link(target: dict, scores: dict) -> None:
    """Record in `target` (an evaluation entry, or a hook's result for the run's metrics) that those of its
    `metrics` the score set `scores` holds are reproduced from it: `per_example` {metric: statistic} and
    `per_example_source` {metric: score set name}."""
    metrics = target.get("metrics") or {}
    for metric, stat in scores["statistics"].items():
        if metric in metrics:
            target.setdefault("per_example", {})[metric] = stat
            target.setdefault("per_example_source", {})[metric] = scores["evaluation"]


def example_lines(score_sets: Sequence[dict]) -> list[dict]:
    """The lines of examples.jsonl for these score sets: {"evaluation", "id", "values": {metric: value}}."""
    lines = []
    for ss in score_sets:
        for i, id_ in enumerate(ss["ids"]):
            lines.append({"evaluation": ss["evaluation"], "id": id_,
                          "values": {m: column[i] for m, column in ss["values"].items()}})
    return lines


# ------------------------------------------------------------------------------ decoding


def resolve_decodings(spec: Any, decodings: Sequence[DecodingConfig], args: dict) -> list[DecodingConfig]:
    """The experiment's decoding strategies with the task's `generation` defaults filled in.

    Precedence, per field: `task.args.max_new_tokens` (when the task has that knob and it is
    set) > a value the experiment's decoding changed from DecodingConfig's default > the
    task's `generation` default > DecodingConfig's default. Stop strings are the union of the
    task's (part of its answer format, e.g. a newline after a QA span) and the experiment's.
    A decoding that leaves a field at its class default is read as "no opinion", so an
    experiment that must force e.g. `max_new_tokens: 64` on a task whose default is 32 sets
    it through `task.args.max_new_tokens` instead.
    """
    generation = dict(spec.generation or {})
    unknown = set(generation) - DECODING_FIELDS - {"stop"}
    if unknown:
        raise ValueError(f"task {spec.name!r}: generation has unknown key(s) {sorted(unknown)}; "
                         f"valid: {', '.join(sorted(DECODING_FIELDS - {'name'}))}")
    task_stops = list(generation.pop("stop", None) or [])
    out = []
    for decoding in decodings:
        changes: dict[str, Any] = {k: v for k, v in generation.items()
                                   if getattr(decoding, k) == getattr(_DEFAULT, k)}
        changes["stop"] = list(dict.fromkeys([*task_stops, *decoding.stop]))
        if args.get("max_new_tokens"):
            changes["max_new_tokens"] = int(args["max_new_tokens"])
        out.append(dataclasses.replace(decoding, **changes))
    return out


# ------------------------------------------------------------------------------ truncation


def truncate_ids(ids: list[int], budget: int, side: str = "left", head_fraction: float = 0.25) -> list[int]:
    """Keep at most `budget` ids.

    side="left": drop the beginning (keep the end); "right": drop the end; "middle": keep the
    first `head_fraction` of the budget and the last rest (head + tail, Sun et al. 2019, "How
    to fine-tune BERT for text classification": the best cut for long reviews).
    """
    if budget <= 0:
        return []
    if len(ids) <= budget:
        return list(ids)
    if side == "left":
        return list(ids[-budget:])
    if side == "right":
        return list(ids[:budget])
    if side == "middle":
        head = int(budget * head_fraction)
        tail = budget - head
        return list(ids[:head]) + (list(ids[-tail:]) if tail else [])
    raise ValueError(f"truncation side must be left, right or middle, got {side!r}")


def n_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_text(tokenizer: Any, text: str, budget: int, side: str = "left", marker: str = " ... ") -> str:
    """`text` cut to at most `budget` tokens (decoded back to text); unchanged when it fits.

    A middle cut joins head and tail with `marker`, so a reader (and the model) sees that
    something was left out. Decoded pieces can re-tokenize into a few more tokens than were
    kept, so the cut is repeated, tighter by the overshoot, until the text fits.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return text
    target = budget
    for _ in range(8):
        out = _cut(tokenizer, ids, max(target, 0), side, marker)
        over = n_tokens(tokenizer, out) - budget
        if over <= 0:
            return out
        target -= over
    return _cut(tokenizer, ids, max(target, 0), side, marker) if target > 0 else ""


def _cut(tokenizer: Any, ids: list[int], budget: int, side: str, marker: str) -> str:
    if side == "middle":
        kept = max(budget - n_tokens(tokenizer, marker), 1)
        head = int(kept * 0.25)
        tail = kept - head
        head_text = tokenizer.decode(ids[:head]) if head else ""
        tail_text = tokenizer.decode(ids[-tail:]) if tail else ""
        return head_text.rstrip() + marker + tail_text.lstrip()
    return tokenizer.decode(truncate_ids(ids, budget, side)).strip()


def prompt_overhead(tokenizer: Any, messages: list[dict], encoder_decoder: bool = False) -> int:
    """Tokens the prompt takes besides the field left empty in `messages` (an encoder-decoder model's plain prompt
    with the special tokens its tokenizer adds)."""
    if encoder_decoder:
        return len(tokenizer(prompt_text(tokenizer, messages, encoder_decoder=True))["input_ids"])
    return n_tokens(tokenizer, prompt_text(tokenizer, messages))


# ------------------------------------------------------------------------------ generation


def _throughput(out: Any, n_prompts: int) -> dict[str, float]:
    return {"tokens_per_s": float(out.tokens_per_s),
            "s_per_example": float(out.seconds) / max(n_prompts, 1)}


def generation_eval(spec: Any, ctx: EvalContext, prompts: list[list[int]], score: Scorer,
                    sample_fields: list[dict] | None = None,
                    decodings: list[DecodingConfig] | None = None,
                    extra: Callable[[DecodingConfig], dict] | None = None,
                    ids: Sequence[str] | None = None) -> dict:
    """Generate with every decoding strategy, score each, and build the evaluation dict.

    Returns `{"metrics", "evaluations", "examples", "eval_tokens", "samples", "scores"}`: one entry of
    `evaluations` per strategy (`name`, `decoding` as a dict, `metrics`, `throughput`, plus
    whatever `extra(decoding)` adds), the first strategy's metrics as the run's `metrics`,
    per-example samples (the first strategy's outputs joined with `sample_fields`) and, when the
    scorer returns per-example scores, one score set per strategy named like it (`ids`: the
    examples' ids, one per prompt), linked from its entry and from the run's metrics.
    """
    from peftlab.evaluation import generate as gen

    if not prompts:
        raise ValueError(f"task {spec.name}: no test records to evaluate (check limit_eval)")
    decodings = decodings if decodings is not None else resolve_decodings(spec, ctx.eval.decoding, ctx.args)
    evaluations, samples, new_tokens, score_sets = [], [], 0, []
    for i, decoding in enumerate(decodings):
        ctx.log(f"{spec.name}: generating {len(prompts)} x {decoding.num_return_sequences} "
                f"with {decoding.name} (max_new_tokens={decoding.max_new_tokens})")
        out = gen.generate(ctx.model, ctx.tokenizer, prompts, decoding, batch_size=ctx.eval.batch_size,
                           device=ctx.device, progress=ctx.progress.phase(decoding.name, len(prompts)))
        scored = score(out.texts, decoding)
        metrics, per_example = scored[0], scored[1]
        entry = {"name": decoding.name, "decoding": dataclasses.asdict(decoding), "metrics": metrics,
                 "throughput": _throughput(out, len(prompts))}
        if extra is not None:
            entry.update(extra(decoding))
        if len(scored) > 2 and scored[2]:
            if ids is None:
                raise ValueError(f"task {spec.name}: per-example scores need the examples' ids")
            ss = score_set(decoding.name, ids, scored[2])
            link(entry, ss)
            score_sets.append(ss)
        evaluations.append(entry)
        new_tokens += int(out.new_tokens)
        if i == 0:
            fields = sample_fields or [{} for _ in prompts]
            samples = [{**f, "outputs": texts, **pe} for f, texts, pe in zip(fields, out.texts, per_example)]
    result = {"metrics": dict(evaluations[0]["metrics"]), "evaluations": evaluations, "examples": len(prompts),
              "eval_tokens": new_tokens, "samples": samples, "scores": score_sets}
    for key in ("per_example", "per_example_source"):
        if key in evaluations[0]:
            result[key] = dict(evaluations[0][key])
    return result
