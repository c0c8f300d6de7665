"""Hooks of the `code` task: train on Python source, evaluate on HumanEval.

Training is plain causal language modelling on source files (`kind: lm`: `record_text` is the
file, packed into full windows, loss on every token), as CodeParrot-style code models are
trained; there is no chat to build.

Evaluation is HumanEval as its authors run it: the raw `prompt` (signature + docstring) is given
without any chat template (completion style; cut from the left only beyond
`args.max_prompt_tokens`, default 1024, which no HumanEval prompt reaches with common
tokenizers: the run's `max_length` sizes training windows, not the benchmark), the model
continues it, and the completion is cut at the first stop string ("\\ndef ", "\\nclass ",
"\\nif __name__", "\\nprint(", "\\n#"), i.e. where the function body ends. Each problem gets
`args.n_samples` completions (default 1, greedy); for pass@k with k > 1 use n >= k samples: if
the decoding strategy is greedy and n > 1, sampling at `args.temperature` / `args.top_p`
(0.8 / 0.95, Chen et al. 2021) is used instead, because n greedy completions would be identical.
Metrics: pass@k for every k in `args.k` with k <= n (the unbiased estimator), and token Jaccard
between the first completion and the canonical solution (a similarity signal that needs no
execution).

Executing completions runs model-written code on this machine (in `peftlab.evaluation.sandbox`):
it needs the user's opt-in (`--allow-code-execution`, `eval.allow_code_execution: true` in the
experiment being run, or `PEFTLAB_ALLOW_CODE_EXECUTION=1`), checked *before* any generation so a
missing opt-in fails in seconds, not after minutes of decoding. Re-evaluating a finished run
(`peftlab evaluate`) never reuses the opt-in stored in the run's config: it asks
`executes_code` before loading anything and needs the flag or the environment variable on that
command. `args.execute: false` skips execution: only token_jaccard is reported. Every evaluation
entry records `executed` (true/false).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from peftlab.evaluation import metrics as M
from peftlab.evaluation import sandbox
from peftlab.tasks.api import EvalContext
from peftlab.tasks.common import example_ids, generation_eval, resolve_decodings, truncate_ids
from peftlab.tasks.registry import TaskSpec


def record_text(record: dict) -> str:
    return record["text"]


def sample_counts(args: dict, decoding: Any) -> int:
    return max(int(args.get("n_samples") or 1), decoding.num_return_sequences)


def code_decodings(spec: TaskSpec, ctx: EvalContext) -> list[Any]:
    """The experiment's strategies with n samples each; greedy with n > 1 becomes sampling."""
    out = []
    for decoding in resolve_decodings(spec, ctx.eval.decoding, ctx.args):
        n = sample_counts(ctx.args, decoding)
        changes: dict[str, Any] = {"num_return_sequences": n}
        if n > 1 and decoding.strategy == "greedy":
            temperature, top_p = float(ctx.args.get("temperature", 0.8)), float(ctx.args.get("top_p", 0.95))
            changes.update(strategy="sample", temperature=temperature, top_p=top_p,
                           name=f"sample:t={temperature:g}:p={top_p:g}:n={n}")
            ctx.log(f"code: {n} samples per problem need sampling; using temperature={temperature:g}, "
                    f"top_p={top_p:g} instead of greedy")
        out.append(dataclasses.replace(decoding, **changes))
    return out


def executes_code(args: dict) -> bool:
    """Whether evaluating with these (resolved) task arguments runs model-written code."""
    return bool(args.get("execute", True))


def evaluate(spec: TaskSpec, ctx: EvalContext) -> dict:
    execute = executes_code(ctx.args)
    if execute:  # refuse before spending minutes generating
        sandbox.require_opt_in(ctx.eval.allow_code_execution)
    problems = ctx.records
    if not problems:
        raise ValueError("code: no test problems to evaluate (check limit_eval)")
    tok = ctx.tokenizer
    prompt_limit = int(ctx.args.get("max_prompt_tokens") or ctx.max_length)
    prompts = [truncate_ids(tok(p["prompt"], add_special_tokens=ctx.encoder_decoder)["input_ids"], prompt_limit, "left")
               for p in problems]
    ks = sorted({int(k) for k in (ctx.args.get("k") or [1])})
    timeout = float(ctx.args.get("timeout_s") or 10.0)

    def score(texts: list[list[str]], decoding: Any) -> tuple[dict, list[dict], dict]:
        n = len(texts[0]) if texts else 1
        metrics: dict[str, float] = {
            "token_jaccard": M.mean_token_jaccard([outs[0] for outs in texts],
                                                  [p["canonical_solution"] for p in problems]),
        }
        per = [{"token_jaccard": M.token_jaccard(outs[0], p["canonical_solution"])}
               for outs, p in zip(texts, problems)]
        scores = {"token_jaccard": ("mean", [100.0 * r["token_jaccard"] for r in per])}
        if not execute:
            return metrics, per, scores
        pairs = [(p, c) for p, outs in zip(problems, texts) for c in outs]
        results = sandbox.check_many(pairs, timeout_s=timeout)
        correct, pos = [], 0
        for outs, row in zip(texts, per):
            mine = results[pos:pos + len(outs)]
            pos += len(outs)
            correct.append(sum(r.passed for r in mine))
            row["passed"] = [r.passed for r in mine]
            row["status"] = [r.status if r.passed else f"{r.status}: {r.detail}" for r in mine]
        counts = [len(outs) for outs in texts]
        for k in ks:
            if k <= n:
                metrics[f"pass@{k}"] = M.mean_pass_at_k(counts, correct, k)
                # the unbiased estimate per problem, in percent: its mean is the metric
                scores[f"pass@{k}"] = ("mean", [100.0 * M.pass_at_k(c_n, c, k) for c_n, c in zip(counts, correct)])
        skipped = [k for k in ks if k > n]
        if skipped:
            ctx.log(f"code: pass@{skipped} need at least that many samples per problem (n={n}); not reported")
        return metrics, per, scores

    fields = [{"task_id": p.get("task_id")} for p in problems]
    return generation_eval(spec, ctx, prompts, score, sample_fields=fields, decodings=code_decodings(spec, ctx),
                           extra=lambda decoding: {"executed": execute}, ids=example_ids(problems))
