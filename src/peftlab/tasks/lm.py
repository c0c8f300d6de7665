"""Hooks of the `lm` task: raw text in, perplexity out.

The test texts are joined (blank line between them) and scored with a strided window, as
`peftlab.evaluation.scoring.strided_perplexity` does; every scored token's NLL is also credited
to the text it starts in (the joining blank line counts as part of the text after it), so the run keeps, per
text, `[nll, tokens]`, `[nll, words]` and `[nll / ln 2, bytes]`: the totals of those give the
token perplexity, the word perplexity and the bits per byte exactly (score set `loglik`).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import torch

from peftlab.evaluation import metrics as M
from peftlab.evaluation.progress import EvalProgress
from peftlab.evaluation.scoring import aligned_logits, strided_windows
from peftlab.tasks.api import EvalContext
from peftlab.tasks.common import LOGLIK, example_ids, link, score_set
from peftlab.tasks.registry import TaskSpec

SEPARATOR = "\n\n"


def record_text(record: dict) -> str:
    return record["text"]


def causal_only(trains: bool) -> str:
    """Perplexity is a decoder-only measure: an encoder-decoder model gets none (`TaskSpec.causal_only`)."""
    return ("its perplexity scores every token of a text given the tokens before it, in one causal pass that an "
            "encoder-decoder model does not compute")


def _token_documents(tokenizer: Any, text: str, starts: list[int]) -> tuple[list[int], list[int]]:
    """Token ids of `text` and, per token, the index of the document (by character start) it starts in."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        ids = list(enc["input_ids"])
        return ids, [max(bisect.bisect_right(starts, int(o[0])) - 1, 0) for o in offsets]
    except (NotImplementedError, KeyError, TypeError, ValueError):  # slow tokenizers have no offsets
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        bounds = [min(len(tokenizer(text[:s], add_special_tokens=False)["input_ids"]), len(ids)) for s in starts[1:]]
        docs, d = [], 0
        for i in range(len(ids)):
            while d < len(bounds) and i >= bounds[d]:
                d += 1
            docs.append(d)
        return ids, docs


@torch.no_grad()
def strided_document_nll(model: Any, tokenizer: Any, texts: list[str], window: int, stride: int,
                         device: Any, max_tokens: int | None = None, progress: EvalProgress | None = None
                         ) -> tuple[list[float], list[int]]:
    """(NLL in nats, scored tokens) per text, from one strided pass over the joined texts.

    Same windows as `strided_perplexity`: each advances by `stride`, only tokens no earlier window
    scored count, each with up to `window - stride` tokens of left context. Windows of equal length
    go through the model together, `max_tokens // window` at a time (all but the last are full).
    """
    starts, pos = [], 0  # where each text's part begins: the blank line before it belongs to it
    for t in texts:
        starts.append(max(pos - len(SEPARATOR), 0))
        pos += len(t) + len(SEPARATOR)
    ids_list, docs = _token_documents(tokenizer, SEPARATOR.join(texts), starts)
    ids = torch.tensor(ids_list, dtype=torch.long)
    nll = [0.0] * len(texts)
    count = [0] * len(texts)
    windows = strided_windows(len(ids_list), window, stride)
    per_batch = max(1, (max_tokens or window) // window)
    if progress is not None:
        progress.phase("windows", len(windows))
    s = 0
    while s < len(windows):
        group = [windows[s]]
        while (len(group) < per_batch and s + len(group) < len(windows)
               and windows[s + len(group)][1] - windows[s + len(group)][0] == group[0][1] - group[0][0]):
            group.append(windows[s + len(group)])
        chunk = torch.stack([ids[b:e] for b, e, _ in group]).to(device)
        logits = aligned_logits(model, chunk, torch.ones_like(chunk))
        for row, (begin, end, first) in enumerate(group):
            logp = torch.log_softmax(logits[row, first - 1:-1].float(), dim=-1)
            picked = logp.gather(-1, chunk[row, first:].unsqueeze(-1)).squeeze(-1)
            for j, value in zip(range(begin + first, end), (-picked).double().tolist()):
                nll[docs[j]] += value
                count[docs[j]] += 1
        if progress is not None:
            progress.advance(len(group))
        s += len(group)
    return nll, count


def evaluate(spec: TaskSpec, ctx: EvalContext) -> dict:
    """Token- and word-level perplexity and bits per byte of the test split (strided window), per text too."""
    window = ctx.args.get("window") or ctx.max_length
    stride = ctx.args.get("stride") or max(1, window // 2)
    texts = [record_text(r) for r in ctx.records]
    nll, tokens = strided_document_nll(ctx.model, ctx.tokenizer, texts, window, stride, ctx.device,
                                       max_tokens=ctx.max_batch_tokens, progress=ctx.progress)
    words = [len(t.split()) for t in texts]
    n_bytes = [len(t.encode("utf-8")) + (len(SEPARATOR.encode("utf-8")) if i else 0) for i, t in enumerate(texts)]
    total, scored = sum(nll), sum(tokens)
    metrics = {
        "perplexity": M.perplexity_from_nll(total, max(scored, 1)),
        "word_perplexity": M.perplexity_from_nll(total, max(sum(words), 1)),
        "bits_per_byte": total / max(sum(n_bytes), 1) / math.log(2),
    }
    scores = score_set(LOGLIK, example_ids(ctx.records), {
        "perplexity": ("perplexity", [[v, n] for v, n in zip(nll, tokens)]),
        "word_perplexity": ("perplexity", [[v, n] for v, n in zip(nll, words)]),
        "bits_per_byte": ("ratio", [[v / math.log(2), n] for v, n in zip(nll, n_bytes)]),
    })
    result = {"metrics": metrics, "eval_tokens": scored, "examples": len(texts), "scores": [scores]}
    link(result, scores)
    return result
