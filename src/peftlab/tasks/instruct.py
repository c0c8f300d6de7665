"""Hooks of the `instruct` task: follow an instruction (Alpaca / Natural Instructions).

Chat: system = the task's instruction (`instruction`), user = its input (`input`; "(no
input)" when empty, since a chat turn cannot be blank), assistant = the reference `output`.

Metrics on the test split:

* `loss` / `perplexity`: teacher-forced mean negative log-likelihood (nats per token) of the
  reference answer's tokens, exactly the tokens training puts the loss on (`chat.render`
  labels: answer + end-of-turn marker), and its exponential. Both measure how well the model
  fits held-out answers and need no decoding choices.
* `rouge_l`: ROUGE-L F (rouge-score's tokenizer, no stemming, 0-100) of the generated answer
  against the reference, for each decoding strategy of the experiment (default: greedy, 64 new
  tokens, `args.max_new_tokens` overrides).

Length: Natural Instructions instructions are long (median ~180 tokens, 10 % over ~630). Both
in training and evaluation, an instruction longer than `args.max_instruction_chars` and an input
longer than `args.max_input_chars` are cut in the middle (head + tail joined by " ... "; half
and half for instructions, so the "Definition:" opening and the closing "Prompt:" summary
survive; a quarter and three quarters for inputs, whose end often holds the question). Evaluation prompts that
still exceed the run's `max_length` are fitted exactly in tokens the same way; training examples
are cut from the left by `chat.render`.
"""

from __future__ import annotations

from typing import Any

from peftlab.evaluation import metrics as M
from peftlab.evaluation.scoring import row_nll
from peftlab.tasks.api import EvalContext
from peftlab.tasks.chat import build_messages, render, render_prompt
from peftlab.tasks.common import LOGLIK, example_ids, fit_text, generation_eval, link, n_tokens, prompt_overhead, score_set
from peftlab.tasks.registry import TaskSpec

EMPTY_INPUT = "(no input)"
SLACK = 4


def cut_middle_chars(text: str, limit: int | None, head_fraction: float = 0.25, marker: str = " ... ") -> str:
    """`text` with its middle removed so it is at most about `limit` characters."""
    if not limit or len(text) <= limit:
        return text
    keep = max(limit - len(marker), 2)
    head = int(keep * head_fraction)
    tail = keep - head
    return text[:head].rstrip() + marker + text[-tail:].lstrip()


def fields(record: dict, args: dict) -> tuple[str, str]:
    instruction = cut_middle_chars(record["instruction"].strip(), args.get("max_instruction_chars"), 0.5)
    user = cut_middle_chars(record.get("input", "").strip(), args.get("max_input_chars")) or EMPTY_INPUT
    return instruction, user


def to_messages(spec: TaskSpec, record: dict, args: dict, train: bool = True) -> list[dict]:
    instruction, user = fields(record, args)
    return build_messages(instruction, user, record["output"] if train else None)


def prompt_ids(spec: TaskSpec, record: dict, args: dict, tokenizer: Any, max_length: int,
               encoder_decoder: bool = False) -> list[int]:
    """Prompt ids; if too long, instruction and input are cut in the middle to fit exactly (`encoder_decoder`: the
    plain prompt an encoder-decoder model's encoder reads)."""
    instruction, user = fields(record, args)
    messages = build_messages(instruction, user)
    if prompt_overhead(tokenizer, messages, encoder_decoder) <= max_length:
        return render_prompt(tokenizer, messages, max_length, encoder_decoder)
    budget = max_length - prompt_overhead(tokenizer, build_messages("x", "x"), encoder_decoder) - SLACK
    user_len = n_tokens(tokenizer, user)
    instruction = fit_text(tokenizer, instruction, max(budget - user_len, budget // 2), side="middle")
    user = fit_text(tokenizer, user, max(budget - n_tokens(tokenizer, instruction), 1), side="middle")
    return render_prompt(tokenizer, build_messages(instruction, user), max_length, encoder_decoder)


def answer_nll(spec: TaskSpec, ctx: EvalContext) -> tuple[float, int]:
    """Total NLL (nats) and count of the reference answers' labelled tokens, teacher-forced."""
    nll, count = answer_nll_per_example(spec, ctx)
    return float(sum(nll)), int(sum(count))


def answer_nll_per_example(spec: TaskSpec, ctx: EvalContext) -> tuple[list[float], list[int]]:
    """NLL (nats) and count of each reference answer's labelled tokens, teacher-forced (in record order); an
    encoder-decoder model's: the answer as its decoder's output given the prompt in its encoder."""
    tok = ctx.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    examples = [render(tok, to_messages(spec, r, ctx.args, train=True), ctx.max_length, ctx.encoder_decoder)
                for r in ctx.records]
    return row_nll(ctx.model, [e["input_ids"] for e in examples], [e["labels"] for e in examples], pad, ctx.device,
                   ctx.max_batch_tokens, ctx.progress.phase("answer loss", len(examples)),
                   encoder_decoder=ctx.encoder_decoder)


def evaluate(spec: TaskSpec, ctx: EvalContext) -> dict:
    records = ctx.records
    if not records:
        raise ValueError("instruct: no test records to evaluate (check limit_eval)")
    nlls, counts = answer_nll_per_example(spec, ctx)
    total_nll, n_answer_tokens = float(sum(nlls)), int(sum(counts))
    loss = total_nll / max(n_answer_tokens, 1)
    teacher_forced = {"loss": loss, "perplexity": M.perplexity_from_nll(total_nll, max(n_answer_tokens, 1))}
    ctx.log(f"instruct: held-out answer loss {loss:.4f} over {n_answer_tokens} tokens")
    refs = [r["output"] for r in records]
    prompts = [prompt_ids(spec, r, ctx.args, ctx.tokenizer, ctx.max_length, ctx.encoder_decoder) for r in records]

    def score(texts: list[list[str]], decoding: Any) -> tuple[dict, list[dict], dict]:
        preds = [outs[0].strip() for outs in texts]
        per = [{"rouge_l": 100.0 * M.rouge_l(p, ref)} for p, ref in zip(preds, refs)]
        return {"rouge_l": M.mean_rouge_l(preds, refs)}, per, {"rouge_l": ("mean", [r["rouge_l"] for r in per])}

    ids = example_ids(records)
    sample_fields = [{"id": r.get("id"), "reference": ref} for r, ref in zip(records, refs)]
    result = generation_eval(spec, ctx, prompts, score, sample_fields=sample_fields, ids=ids)
    result["metrics"] = {**result["metrics"], **teacher_forced}
    pairs = [[v, c] for v, c in zip(nlls, counts)]
    forced = score_set(LOGLIK, ids, {"loss": ("ratio", pairs), "perplexity": ("perplexity", pairs)})
    link(result, forced)
    result["scores"] = [*result.get("scores", []), forced]
    result["eval_tokens"] = int(result.get("eval_tokens") or 0) + n_answer_tokens
    return result
