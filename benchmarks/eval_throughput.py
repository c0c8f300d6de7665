"""Evaluation throughput: peftlab's scoring against a per-example loop and against lm-evaluation-harness.

Two parts, each measured side by side in one process on the same model, alternating the sides
round by round so machine load hits them alike:

* `sentiment`: the demo's label scoring on N test reviews (default 200), with identical prompts
  (peftlab's `fitted_messages` + chat template, the run's `max_length`):
  - per-example: one forward pass per review, full logits, the last position's log-softmax;
  - peftlab: `sentiment.next_token_logprobs` (length-sorted batches sized by a token budget of
    `batch_size x max_length`, the output layer on the last position only);
  - lm-eval (when `lm_eval` imports): `HFLM(pretrained=<the same model object>).loglikelihood` on
    (prompt text, label word) requests, batch size `batch_size`.
  Printed: wall time per side (median over rounds), the ratio to the per-example loop, and the
  agreement of the decisions (the likelier label) with the per-example loop, which must be N/N in fp32.
* `lm`: strided perplexity of the `lm` test paragraphs (window `max_length`, stride half of it):
  one window per forward pass (what peftlab did before) vs windows batched `batch_size` at a time;
  printed: wall times, ratio and the largest per-paragraph NLL difference.

    HF_HUB_OFFLINE=1 python benchmarks/eval_throughput.py                      # 200 reviews + 64 paragraphs, 3 rounds
    PYTHONPATH=/path/to/lm-eval HF_HUB_OFFLINE=1 python benchmarks/eval_throughput.py --parts sentiment
    HF_HUB_OFFLINE=1 python benchmarks/eval_throughput.py --quick              # tiny random model: checks it runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Callable

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def load(args: argparse.Namespace) -> tuple[Any, Any]:
    if args.quick:
        sys.path.insert(0, "tests")
        from conftest import build_model, build_tokenizer

        tok = build_tokenizer()
        return build_model("llama", len(tok)).eval(), tok
    from peftlab.models import load_model, load_tokenizer

    return load_model(args.model, "auto", False, "cpu", None, False, None).eval(), load_tokenizer(args.model)


def sentiment_records(args: argparse.Namespace) -> list[dict]:
    if args.quick:
        return [{"text": f"review {i}: " + "a fine film, " * (i % 7 + 1), "label": i % 2} for i in range(args.n)]
    from peftlab.data import load_records
    from peftlab.tasks import get_task

    return load_records("sentiment", get_task("sentiment").splits["test"], limit=args.n, seed=0)[0]


def per_example_logprobs(model: Any, prompts: list[list[int]], token_ids: list[int]) -> torch.Tensor:
    out = torch.empty(len(prompts), len(token_ids))
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ids = torch.tensor([p])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
            out[i] = logits.float().log_softmax(-1)[token_ids]
    return out


def lm_eval_logprobs(model: Any, tok: Any, texts: list[str], words: list[str], batch_size: int) -> torch.Tensor | None:
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return None
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, device="cpu")
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=(t, w), idx=j)
                for t in texts for j, w in enumerate(words)]
    scores = [float(lp) for lp, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    return torch.tensor(scores).view(len(texts), len(words))


def bench_sentiment(model: Any, tok: Any, args: argparse.Namespace) -> dict:
    from peftlab.tasks import get_task
    from peftlab.tasks.chat import prompt_text
    from peftlab.tasks.sentiment import fitted_messages, label_words, next_token_logprobs

    spec = get_task("sentiment")
    task_args = spec.resolve_args({})
    words = label_words(task_args)
    token_ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]
    records = sentiment_records(args)
    messages = [fitted_messages(spec, r, task_args, tok, args.max_length, 1) for r in records]
    texts = [prompt_text(tok, m) for m in messages]
    prompts = [tok(t, add_special_tokens=False)["input_ids"][-args.max_length:] for t in texts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    sides: dict[str, Callable[[], Any]] = {
        "per-example": lambda: per_example_logprobs(model, prompts, token_ids),
        "peftlab": lambda: next_token_logprobs(model, prompts, token_ids, pad, "cpu",
                                               max_tokens=args.batch_size * args.max_length),
    }
    try:
        import lm_eval  # noqa: F401

        sides["lm-eval"] = lambda: lm_eval_logprobs(model, tok, texts, words, args.batch_size)
    except ImportError:
        print("lm-eval is not importable: its side is skipped (pip install lm-eval, or PYTHONPATH to it)")
    times: dict[str, list[float]] = {k: [] for k in sides}
    decisions: dict[str, list[int]] = {}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            scores, seconds = _timed(fn)
            times[name].append(seconds)
            decisions[name] = scores.argmax(dim=1).tolist()
    ref = decisions["per-example"]
    base = statistics.median(times["per-example"])
    print(f"\nsentiment: {len(prompts)} reviews, max_length {args.max_length}, "
          f"{sum(map(len, prompts))} prompt tokens, {args.rounds} rounds, threads {torch.get_num_threads()}")
    print(f"{'side':<12} {'median s':>9} {'rounds s':<28} {'speed-up':>9} {'agree':>9}")
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        agree = sum(a == b for a, b in zip(decisions[name], ref))
        print(f"{name:<12} {med:>9.2f} {', '.join(f'{t:.2f}' for t in ts):<28} {base / med:>8.2f}x "
              f"{agree:>4}/{len(ref)}")
        out[name] = {"seconds": ts, "median_s": med, "speedup": base / med, "agree": agree, "n": len(ref)}
    return out


def bench_lm(model: Any, tok: Any, args: argparse.Namespace) -> dict:
    from peftlab.tasks.lm import strided_document_nll

    if args.quick:
        texts = [("the cat sat on the mat and the dog ran " * (i + 3)).strip() for i in range(args.paragraphs)]
    else:
        from peftlab.data import load_records
        from peftlab.tasks import get_task

        texts = [r["text"] for r in load_records("lm", get_task("lm").splits["test"], limit=args.paragraphs,
                                                 seed=0)[0]]
    window, stride = args.max_length, max(1, args.max_length // 2)
    sides = {
        "one window": lambda: strided_document_nll(model, tok, texts, window, stride, "cpu", max_tokens=window),
        "batched": lambda: strided_document_nll(model, tok, texts, window, stride, "cpu",
                                                max_tokens=args.batch_size * window),
    }
    times: dict[str, list[float]] = {k: [] for k in sides}
    results: dict[str, Any] = {}
    for _ in range(args.rounds):
        for name, fn in sides.items():
            results[name], seconds = _timed(fn)
            times[name].append(seconds)
    diff = max(abs(a - b) for a, b in zip(results["one window"][0], results["batched"][0]))
    base = statistics.median(times["one window"])
    print(f"\nlm: {len(texts)} paragraphs, {sum(results['batched'][1])} scored tokens, window {window} stride {stride}")
    print(f"{'side':<12} {'median s':>9} {'rounds s':<28} {'speed-up':>9}")
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<12} {med:>9.2f} {', '.join(f'{t:.2f}' for t in ts):<28} {base / med:>8.2f}x")
        out[name] = {"seconds": ts, "median_s": med, "speedup": base / med}
    print(f"largest per-paragraph NLL difference: {diff:.2e} nats")
    out["max_nll_diff"] = diff
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default="sentiment,lm", help="comma-separated: sentiment, lm")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--n", type=int, default=200, help="test reviews (sentiment)")
    p.add_argument("--paragraphs", type=int, default=64, help="test paragraphs (lm)")
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="write every measurement here")
    p.add_argument("--quick", action="store_true", help="tiny random model and made-up texts: checks the script runs")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.paragraphs, args.rounds, args.max_length = min(args.n, 12), min(args.paragraphs, 6), 1, 48
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(parts) - {"sentiment", "lm"})
    if unknown:
        p.error(f"--parts: unknown part(s) {unknown}; valid: sentiment, lm")
    model, tok = load(args)
    report = {}
    if "sentiment" in parts:
        report["sentiment"] = bench_sentiment(model, tok, args)
    if "lm" in parts:
        report["lm"] = bench_lm(model, tok, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
