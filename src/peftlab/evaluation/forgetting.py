"""Forgetting and retention: what fine-tuning cost the model outside the task it was trained on.

**Forgetting** (on by default, `eval.forgetting_texts`): every run, base included, scores the same
held-out paragraphs of general text — the test split of the `lm` task (Wikipedia paragraphs, offline
by default), drawn with the fixed data seed — each cut to its first `TOKENS` tokens. Per paragraph
it keeps the summed NLL and the number of scored tokens (score set `forgetting`, metric
`general_loss`, statistic "ratio": total NLL / total tokens, nats per token). The report pairs each
run with base on the same paragraphs: forgetting = general_loss(run) − general_loss(base), with the
interval and verdict of any paired difference. This is a language-modelling retention measure (the
change of held-out cross-entropy on general text), not a capability benchmark; **retention tasks**
(`eval.retention_tasks: [qa, ...]`, scored by the runner with each task's own evaluation) measure
capabilities.

A run of the `lm` task itself skips it: its test split is that text, so its own metric is the
measure. A run of an encoder-decoder model skips it too, with the reason recorded
(`retention.forgetting.skipped`): the loss of each token given the text before it is a causal-LM
measure, which such a model does not compute.
"""

from __future__ import annotations

from typing import Any

from peftlab.evaluation.progress import EvalProgress
from peftlab.evaluation.scoring import row_nll

GENERAL_TASK = "lm"  # whose test split is the general text
TOKENS = 128  # each paragraph's first tokens are scored
EVALUATION = "forgetting"  # the score set's and the result entry's name
METRIC = "general_loss"
#: Why an encoder-decoder model's run has no forgetting measure (`retention.forgetting.skipped`).
SKIPPED_ENCODER_DECODER = ("not measured: general-text loss scores each token given the text before it, a causal-LM "
                           "measure that an encoder-decoder model does not compute")


def general_texts(n: int, source: str, seed: int) -> tuple[list[dict], dict]:
    """The first `n` held-out general-text records (seeded subsample) and where they came from."""
    from peftlab.data import load_records
    from peftlab.tasks import get_task

    spec = get_task(GENERAL_TASK)
    return load_records(GENERAL_TASK, spec.splits["test"], source=source, limit=n, seed=seed)


def score_general_text(model: Any, tokenizer: Any, records: list[dict], ids: list[str], device: Any,
                       max_tokens: int, progress: EvalProgress | None = None) -> dict:
    """`{"metrics": {general_loss}, "per_example", "per_example_source", "scores": [score set]}` for `records`."""
    rows = [list(tokenizer(r["text"], add_special_tokens=False)["input_ids"])[:TOKENS] for r in records]
    keep = [i for i, r in enumerate(rows) if len(r) >= 2]  # one token predicts nothing
    rows = [rows[i] for i in keep]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    labels = [[-100] + r[1:] for r in rows]  # every token after the first is predicted from those before it
    if progress is not None:
        progress.phase("general text", len(rows))
    nll, count = row_nll(model, rows, labels, pad, device, max(max_tokens, TOKENS), progress)
    total, tokens = sum(nll), sum(count)
    values = {METRIC: [[v, c] for v, c in zip(nll, count)]}
    score_set = {"evaluation": EVALUATION, "ids": [ids[i] for i in keep], "values": values,
                 "statistics": {METRIC: "ratio"}}
    return {"metrics": {METRIC: total / max(tokens, 1)}, "per_example": {METRIC: "ratio"},
            "per_example_source": {METRIC: EVALUATION}, "examples": len(rows), "eval_tokens": tokens,
            "scores": [score_set]}
