"""Hooks of the `sentiment` task: a review in, "positive" / "negative" out.

Training: system = the task's instruction, user = the sentence, assistant = the label word;
the loss covers the label word (and the template's end-of-turn marker) only.

Evaluation, default `args.scoring: loglik`: the log-likelihood of each label word as the
assistant's answer is computed for every review, batched, and the likelier label is the
prediction. It is the default because it

* never fails to parse: every review gets a label, so accuracy measures sentiment, not
  whether the model followed the answer format;
* costs one forward pass per review when the label words are single tokens (the default
  words are for SmolLM2/Llama/GPT-2 vocabularies: both are read from one next-token
  distribution), one per (review, label) pair otherwise (`choice_logprobs`), never a decoding loop;
* is deterministic (no decoding choices, no sampling seed);
* works for the untrained `base` row, which answers in free prose ("The sentiment of this
  review is...") that a label parser would often count as wrong.

`args.scoring: generate` is the seeds' protocol: generate with each decoding strategy of the
experiment, read the first label word with `answers.extract_label`, count an unparseable
answer as wrong, and report `format_error_rate` beside the four classification metrics.

Test = the transfer set (full movie reviews, document level) while training is on sentences:
a review longer than the run's `max_length` is cut to fit, by default in the middle
(`args.truncation: middle` keeps the first quarter and the last three quarters of the token
budget, joined by " ... ": openings set up the film, endings usually give the verdict);
`left` keeps only the end. `in_domain_accuracy` is the accuracy on the held-out sentences of
the `validation` split, scored the same way.

An encoder-decoder model (`ctx.encoder_decoder`) reads the plain prompt in its encoder and each
label word is scored as the decoder's output: its log-likelihood given the encoder input
(`choice_logprobs(..., encoder_decoder=True)`, one pass per (review, label) pair).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from peftlab.evaluation import metrics as M
from peftlab.evaluation.answers import extract_label
from peftlab.evaluation.progress import EvalProgress
from peftlab.evaluation.scoring import choice_logprobs, last_token_logits, pad_rows, token_batches
from peftlab.tasks.api import EvalContext
from peftlab.tasks.chat import build_messages, render_prompt
from peftlab.tasks.common import (
    IN_DOMAIN,
    LOGLIK,
    example_ids,
    fit_text,
    generation_eval,
    link,
    prompt_overhead,
    resolve_decodings,
    score_set,
)
from peftlab.tasks.registry import TaskSpec

SLACK = 4  # tokens kept free for boundary merges when a field is re-tokenized inside the template


def label_words(args: dict) -> list[str]:
    """Label words indexed by label (0 negative, 1 positive)."""
    words = list(args.get("label_words") or ["negative", "positive"])
    if len(words) != 2 or len(set(words)) != 2:
        raise ValueError(f"sentiment: label_words must be two distinct words [negative, positive], got {words}")
    return words


def to_messages(spec: TaskSpec, record: dict, args: dict, train: bool = True) -> list[dict]:
    answer = label_words(args)[int(record["label"])] if train else None
    return build_messages(spec.system, record["text"], answer)


def fitted_messages(spec: TaskSpec, record: dict, args: dict, tokenizer: Any, max_length: int,
                    reserve: int, encoder_decoder: bool = False) -> list[dict]:
    """The prompt messages with the review cut so prompt + `reserve` answer tokens fit max_length."""
    overhead = prompt_overhead(tokenizer, build_messages(spec.system, ""), encoder_decoder)
    budget = max_length - overhead - reserve - SLACK
    text = fit_text(tokenizer, record["text"], budget, side=args.get("truncation", "middle"))
    return build_messages(spec.system, text)


def classification_metrics(golds: list[int], preds: list[int | None]) -> dict[str, float]:
    return {"accuracy": M.accuracy(golds, preds), "f1": M.f1(golds, preds),
            "precision": M.precision(golds, preds), "recall": M.recall(golds, preds)}


def classification_scores(golds: list[int], preds: list[int | None]) -> dict[str, tuple[str, list]]:
    """Per-example scores of `classification_metrics`: accuracy 100/0 ("mean"); f1/precision/recall from
    [prediction, gold] of label 1. An unreadable prediction counts as the wrong label, as in the metrics."""
    read = [p if p in (0, 1) else 1 - g for g, p in zip(golds, preds)]
    pairs = [[p, g] for g, p in zip(golds, read)]
    return {"accuracy": ("mean", [100.0 * (p == g) for g, p in zip(golds, read)]),
            "f1": ("f1", pairs), "precision": ("precision", pairs), "recall": ("recall", pairs)}


def in_domain_scores(golds: list[int], preds: list[int | None]) -> dict[str, tuple[str, list]]:
    return {"in_domain_accuracy": ("mean", [100.0 * (p == g) for g, p in zip(golds, preds)])}


@torch.no_grad()
def next_token_logprobs(model: Any, prompts: list[list[int]], token_ids: list[int], pad_id: int, device: Any,
                        max_tokens: int = 2048, progress: EvalProgress | None = None) -> torch.Tensor:
    """Log-probability of each single-token choice right after each prompt: (prompts, choices).

    One forward pass per prompt (both labels are read from the same next-token distribution), in
    right-padded batches sized by a token budget; only the last position reaches the output layer
    (`last_token_logits`, which also drops the virtual tokens of prompt-learning methods).
    """
    out = torch.empty(len(prompts), len(token_ids))
    for idx in token_batches([len(p) for p in prompts], max_tokens):
        batch = pad_rows([prompts[i] for i in idx], pad_id)
        logits = last_token_logits(model, batch["input_ids"].to(device), batch["attention_mask"].to(device))
        out[idx] = logits.float().log_softmax(-1)[:, token_ids].cpu()
        if progress is not None:
            progress.advance(len(idx))
    return out


def loglik_predictions(spec: TaskSpec, ctx: EvalContext, records: list[dict], phase: str = "test"
                       ) -> tuple[list[int], list[list[float]], int]:
    """(predicted labels, per-label log-likelihoods, tokens scored) by comparing label words.

    Label words that are single tokens (the default words are, in the SmolLM2, Llama and GPT-2
    vocabularies) are read from one forward pass per review; otherwise, and always for an
    encoder-decoder model (the label words are its decoder's output), `choice_logprobs` runs one
    pass per (review, label) pair.
    """
    tok = ctx.tokenizer
    seq2seq = ctx.encoder_decoder
    choices = [tok(w, add_special_tokens=False)["input_ids"] for w in label_words(ctx.args)]
    reserve = 0 if seq2seq else max(len(c) for c in choices)  # a decoder's output takes no room in the input
    prompts = [render_prompt(tok, fitted_messages(spec, r, ctx.args, tok, ctx.max_length, reserve, seq2seq),
                             ctx.max_length, seq2seq)
               for r in records]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    progress = ctx.progress.phase(phase, len(prompts))
    if all(len(c) == 1 for c in choices) and not seq2seq:
        scores = next_token_logprobs(ctx.model, prompts, [c[0] for c in choices], pad, ctx.device,
                                     max_tokens=ctx.max_batch_tokens, progress=progress)
        tokens = sum(len(p) for p in prompts)
    else:
        scores = choice_logprobs(ctx.model, prompts, choices, pad, ctx.device, max_tokens=ctx.max_batch_tokens,
                                 progress=progress, encoder_decoder=seq2seq)
        tokens = sum(len(p) + len(c) for p in prompts for c in choices)
    preds = scores.argmax(dim=1).tolist()
    return preds, scores.tolist(), tokens


def _parse(texts: list[list[str]], words: list[str]) -> list[list[int | None]]:
    mapping = {w: i for i, w in enumerate(words)}
    return [[extract_label(t, mapping) for t in outs] for outs in texts]


def _generation_prompts(spec: TaskSpec, ctx: EvalContext, records: list[dict]) -> list[list[int]]:
    tok = ctx.tokenizer
    seq2seq = ctx.encoder_decoder
    return [render_prompt(tok, fitted_messages(spec, r, ctx.args, tok, ctx.max_length, 0, seq2seq), ctx.max_length,
                          seq2seq)
            for r in records]


def _in_domain_records(spec: TaskSpec, ctx: EvalContext) -> list[dict]:
    """Held-out in-domain sentences (`validation` split), as many as the test split evaluates."""
    if not ctx.args.get("in_domain", True) or not spec.splits.get("validation"):
        return []
    from peftlab import data

    limit = ctx.args.get("in_domain_limit") or len(ctx.records)
    source = ctx.args.get("in_domain_source") or ctx.source or "auto"  # explicit arg, else the run's source
    records, _ = data.load_records(spec.name, spec.splits["validation"], source=source, limit=limit,
                                   seed=ctx.data_seed)
    return records


def uses_decoding(args: dict) -> bool:
    """Whether decoding strategies apply: only `scoring: generate` generates (loglik compares label words)."""
    return args.get("scoring", "loglik") == "generate"


def evaluate(spec: TaskSpec, ctx: EvalContext) -> dict:
    scoring = ctx.args.get("scoring", "loglik")
    if scoring not in ("loglik", "generate"):
        raise ValueError(f"sentiment: args.scoring must be 'loglik' or 'generate', got {scoring!r}")
    if not ctx.records:
        raise ValueError("sentiment: no test records to evaluate (check limit_eval)")
    golds = [int(r["label"]) for r in ctx.records]
    ids = example_ids(ctx.records)
    in_domain = _in_domain_records(spec, ctx)
    words = label_words(ctx.args)

    if scoring == "loglik":
        t0 = time.perf_counter()
        preds, scores, tokens = loglik_predictions(spec, ctx, ctx.records)
        metrics = classification_metrics(golds, preds)
        ctx.log(f"sentiment: scored {len(preds)} test reviews by label log-likelihood "
                f"in {time.perf_counter() - t0:.1f}s")
        score_sets = [score_set(LOGLIK, ids, classification_scores(golds, preds))]
        if in_domain:
            t0 = time.perf_counter()
            id_preds, _, id_tokens = loglik_predictions(spec, ctx, in_domain, phase="in-domain")
            id_golds = [int(r["label"]) for r in in_domain]
            metrics["in_domain_accuracy"] = M.accuracy(id_golds, id_preds)
            score_sets.append(score_set(LOGLIK + IN_DOMAIN, example_ids(in_domain), in_domain_scores(id_golds, id_preds)))
            tokens += id_tokens
            ctx.log(f"sentiment: scored {len(id_preds)} held-out sentences in {time.perf_counter() - t0:.1f}s")
        samples = [{"index": i, "label": g, "prediction": p, "logprob": dict(zip(words, s))}
                   for i, (g, p, s) in enumerate(zip(golds, preds, scores))]
        result = {"metrics": metrics, "evaluations": [], "examples": len(golds), "eval_tokens": tokens,
                  "samples": samples, "scores": score_sets}
        for ss in score_sets:
            link(result, ss)
        return result

    decodings = resolve_decodings(spec, ctx.eval.decoding, ctx.args)
    id_prompts = _generation_prompts(spec, ctx, in_domain) if in_domain else []
    id_golds = [int(r["label"]) for r in in_domain]

    def score(texts: list[list[str]], decoding: Any) -> tuple[dict, list[dict], dict]:
        parsed = _parse(texts, words)
        first = [p[0] for p in parsed]  # the first returned sequence is the answer
        metrics = classification_metrics(golds, first)
        metrics["format_error_rate"] = 100.0 * sum(p is None for p in first) / len(first)
        per = [{"label": g, "prediction": p} for g, p in zip(golds, first)]
        scores = classification_scores(golds, first)
        scores["format_error_rate"] = ("mean", [100.0 * (p is None) for p in first])
        return metrics, per, scores

    result = generation_eval(spec, ctx, _generation_prompts(spec, ctx, ctx.records), score,
                             sample_fields=[{"index": i} for i in range(len(golds))], decodings=decodings, ids=ids)
    if id_prompts:
        from peftlab.evaluation import generate as gen

        for entry, decoding in zip(result["evaluations"], decodings):
            out = gen.generate(ctx.model, ctx.tokenizer, id_prompts, decoding, batch_size=ctx.eval.batch_size,
                               device=ctx.device, progress=ctx.progress.phase(f"in-domain {decoding.name}",
                                                                              len(id_prompts)))
            first = [p[0] for p in _parse(out.texts, words)]
            entry["metrics"]["in_domain_accuracy"] = M.accuracy(id_golds, first)
            ss = score_set(decoding.name + IN_DOMAIN, example_ids(in_domain), in_domain_scores(id_golds, first))
            link(entry, ss)
            result["scores"].append(ss)
            result["eval_tokens"] += int(out.new_tokens)
        result["metrics"]["in_domain_accuracy"] = result["evaluations"][0]["metrics"]["in_domain_accuracy"]
        for key in ("per_example", "per_example_source"):
            result[key] = dict(result["evaluations"][0].get(key) or {})
    return result
