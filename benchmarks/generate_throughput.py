"""Generation throughput: peftlab's batched path against a per-example `model.generate` loop.

Both sides run in the same process on the same model, the same prompts (real-looking questions
rendered with the model's chat template) and the same greedy settings (peftlab's
`generation_kwargs`: max new tokens, EOS ids, no sampling), measured side by side and alternating
(loop, batched, loop, batched, …) so machine load hits both alike:

* loop: `model.generate(input_ids=[1, L], attention_mask=ones)` once per prompt (no padding);
* peftlab: `peftlab.evaluation.generate.generate(model, tokenizer, prompts, decoding, batch_size)`
  (prompts sorted by length, left-padded, KV cache, EOS per row).

tokens/s = generated tokens (up to and including EOS) / wall time of the side (tokenization
excluded, decoding to text included on peftlab's side). The outputs are compared token for token;
`agree` is the fraction of prompts whose greedy completions are identical (fp32 left padding can
flip a near-tie argmax; the first divergence is printed when it happens).

    HF_HUB_OFFLINE=1 python benchmarks/generate_throughput.py                       # SmolLM2-135M-Instruct
    HF_HUB_OFFLINE=1 python benchmarks/generate_throughput.py --prompts 16 --max-new-tokens 32 --threads 1
    HF_HUB_OFFLINE=1 python benchmarks/generate_throughput.py --model path/to/tiny --method lora
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

DEFAULT_MODEL = "smollm2-135m-instruct"

QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Explain in one sentence why the sky is blue.",
    "What is 17 times 3?",
    "Who wrote the play Romeo and Juliet?",
    "Give me a synonym for the word 'happy'.",
    "Translate 'good morning' into Spanish.",
    "What is the boiling point of water at sea level in Celsius?",
    "Write a haiku about autumn leaves.",
    "What does a Python list comprehension do? Answer briefly.",
    "If a train travels 60 km in 45 minutes, what is its average speed in km/h?",
    "Summarize the plot of Cinderella in two sentences.",
    "What is the largest planet in our solar system?",
    "List two benefits of regular exercise.",
    "What is the chemical symbol for gold?",
    "Context: The Amazon is the largest rainforest on Earth, spanning nine countries. Question: How many "
    "countries does the Amazon span?",
    "Sara has 12 apples. She gives 5 to Tom and buys 8 more. How many apples does she have now?",
    "Write a Python function that returns the square of a number.",
    "Why do we have seasons on Earth?",
    "What is the difference between weather and climate?",
    "Name a mammal that can fly.",
    "How many continents are there, and which is the largest?",
    "Review: 'The film was a delight from start to finish, with wonderful acting.' Is this review positive "
    "or negative?",
    "What year did the first person walk on the Moon?",
    "Give a one-line definition of photosynthesis.",
    "What is the square root of 144?",
    "Suggest a name for a small bakery.",
    "Context: Marie Curie was the first woman to win a Nobel Prize and the only person to win Nobel Prizes in "
    "two different sciences. Question: In how many different sciences did Marie Curie win Nobel Prizes?",
    "What is the opposite of 'ancient'?",
    "Describe the color of a ripe banana.",
    "Which gas do plants absorb from the air?",
    "Convert 5 kilometers to meters.",
]


def build_prompts(tokenizer: Any, n: int) -> list[list[int]]:
    from peftlab.tasks.chat import build_messages, has_template, prompt_text

    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    out = []
    for q in questions:
        if has_template(tokenizer):
            text = prompt_text(tokenizer, build_messages("You are a helpful assistant.", q))
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        else:
            out.append(tokenizer(q)["input_ids"])
    return out


def load(model_name: str, method: str) -> tuple[Any, Any]:
    from peftlab.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, "float32", device="cpu")
    if method != "base":
        from peftlab.methods import ApplyContext, get_method

        m = get_method(method)
        model = m.apply(model, m.resolve_args({}), ApplyContext(tokenizer=tokenizer, model_name=model_name))
    return model.eval(), tokenizer


def loop_generate(model: Any, tokenizer: Any, prompts: list[list[int]], decoding: Any) -> tuple[list[list[int]], int, float]:
    """The baseline: one `generate` call per prompt, same greedy settings."""
    import torch

    from peftlab.evaluation.generate import _completion_ids, generation_kwargs

    kwargs = generation_kwargs(decoding, tokenizer, model)
    eos = set(kwargs["eos_token_id"] or [])
    outs, tokens = [], 0
    t0 = time.perf_counter()
    for p in prompts:
        ids = torch.tensor([p])
        with torch.no_grad():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kwargs)
        completion, count = _completion_ids(gen[0, len(p):].tolist(), eos, kwargs["pad_token_id"])
        outs.append(completion)
        tokens += count
    return outs, tokens, time.perf_counter() - t0


def batched_generate(model: Any, tokenizer: Any, prompts: list[list[int]], decoding: Any,
                     batch_size: int) -> tuple[list[list[int]], int, float]:
    from peftlab.evaluation.generate import generate

    out = generate(model, tokenizer, prompts, decoding, batch_size=batch_size)
    return [s[0] for s in out.token_ids], out.new_tokens, out.seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="alias, local dir or hub id")
    parser.add_argument("--method", default="base", help="apply this method (untrained) first, e.g. lora, prompt")
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements per side")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)

    import torch

    from peftlab.config import DecodingConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tokenizer = load(args.model, args.method)
    prompts = build_prompts(tokenizer, args.prompts)
    decoding = DecodingConfig(max_new_tokens=args.max_new_tokens)
    lengths = [len(p) for p in prompts]
    print(f"model {args.model} ({args.method}), {len(prompts)} prompts of {min(lengths)}–{max(lengths)} tokens, "
          f"greedy, max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}, "
          f"threads={torch.get_num_threads()} (loaded in {time.perf_counter() - t0:.1f}s)")
    warm = prompts[:2]
    loop_generate(model, tokenizer, warm, DecodingConfig(max_new_tokens=2))
    batched_generate(model, tokenizer, warm, DecodingConfig(max_new_tokens=2), args.batch_size)

    rates: dict[str, list[float]] = {"loop": [], "peftlab": []}
    seconds: dict[str, list[float]] = {"loop": [], "peftlab": []}
    outputs: dict[str, list[list[int]]] = {}
    tokens: dict[str, int] = {}
    for r in range(args.repeats):
        order = ("loop", "peftlab") if r % 2 == 0 else ("peftlab", "loop")
        for side in order:
            if side == "loop":
                ids, n, s = loop_generate(model, tokenizer, prompts, decoding)
            else:
                ids, n, s = batched_generate(model, tokenizer, prompts, decoding, args.batch_size)
            rates[side].append(n / s)
            seconds[side].append(s)
            outputs[side], tokens[side] = ids, n
            print(f"  repeat {r + 1} {side:<8} {n:>5} tokens in {s:7.2f}s = {n / s:8.1f} tokens/s, "
                  f"{s / len(prompts):.3f} s/example")

    same = [a == b for a, b in zip(outputs["loop"], outputs["peftlab"])]
    for i, ok in enumerate(same):
        if not ok:
            a, b = outputs["loop"][i], outputs["peftlab"][i]
            at = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            print(f"  prompt {i}: outputs diverge at new token {at} (loop {len(a)} tokens, batched {len(b)})")
    loop_rate, batched_rate = statistics.median(rates["loop"]), statistics.median(rates["peftlab"])
    report = {
        "model": args.model, "method": args.method, "prompts": len(prompts), "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "loop_tokens_per_s": loop_rate, "peftlab_tokens_per_s": batched_rate,
        "loop_s_per_example": statistics.median(seconds["loop"]) / len(prompts),
        "peftlab_s_per_example": statistics.median(seconds["peftlab"]) / len(prompts),
        "loop_tokens": tokens["loop"], "peftlab_tokens": tokens["peftlab"],
        "ratio": batched_rate / loop_rate if loop_rate else 0.0, "agree": sum(same) / len(same),
    }
    print(f"per-example loop: {loop_rate:.1f} tokens/s ({report['loop_s_per_example']:.3f} s/example)")
    print(f"peftlab batched : {batched_rate:.1f} tokens/s ({report['peftlab_s_per_example']:.3f} s/example)")
    print(f"ratio (peftlab / loop): {report['ratio']:.2f}x; identical outputs on {sum(same)}/{len(same)} prompts")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
