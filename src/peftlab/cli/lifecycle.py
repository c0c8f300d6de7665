"""`peftlab adapters show|merge`, `generate`, `chat`, `evaluate`: after training, from the command line.

Each imports `peftlab.lifecycle` (and with it torch) only when called. The work is in
`peftlab.lifecycle` (describe, prompts, streaming, re-evaluation), `peftlab.adapters`
(load/merge/export) and `peftlab.evaluation.generate`; these functions parse nothing and print.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any, TextIO

from peftlab.config import parse_decodings
from peftlab.formatting import fmt_bytes, fmt_number


# ------------------------------------------------------------------------------------ show
def show_cmd(args: argparse.Namespace) -> int:
    """`peftlab adapters show RUN`: method, config, parameter counts, bytes on disk."""
    from peftlab import lifecycle

    ref = lifecycle.locate(args.run, getattr(args, "store", "runs"))
    print(lifecycle.describe(ref))
    return 0


# ------------------------------------------------------------------------------------ merge
def merge_cmd(args: argparse.Namespace) -> int:
    """`peftlab adapters merge RUN --out DIR`: merged plain HF model, checked against the adapter model."""
    from peftlab.adapters import merge

    t0 = time.perf_counter()
    report = merge(args.run, args.out, store=getattr(args, "store", "runs"), atol=getattr(args, "atol", None))
    for note in report.notes:
        print(f"note: {note}")
    if report.qlora:
        q = report.qlora
        print(f"qlora drift: merged (de-quantized base) vs 4-bit adapter model: max |Δlogit| = {q['drift']:.3g}; "
              f"the 4-bit kernel alone (same weights, no adapter): {q['kernel_noise']:.3g}; "
              f"merging into the 4-bit layers instead would drift {q['drift_if_merged_into_4bit']:.3g}")
    for path in report.exported:
        print(f"exported {path}")
    verdict = "ok" if report.ok else "MISMATCH"
    print(f"check: {report.out} loaded with plain transformers vs the adapter model on {report.samples} sample inputs: "
          f"max |Δlogit| = {report.max_abs_diff:.3g} (tolerance {report.atol:.3g}, logits up to "
          f"{report.max_abs_logit:.3g}) → {verdict}")
    size = sum(report.files.values())
    print(f"wrote {report.out} ({fmt_bytes(size)}: {', '.join(report.files)}) in {time.perf_counter() - t0:.1f}s")
    if report.ok:
        print(f"load it without peftlab or peft: AutoModelForCausalLM.from_pretrained({report.out!r})")
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------ generate
def generate_cmd(args: argparse.Namespace) -> int:
    """`peftlab generate RUN "prompt" ["prompt" …]`: batched generation under one or more strategies."""
    from peftlab import lifecycle
    from peftlab.evaluation.generate import generate
    from peftlab.tasks.chat import build_messages

    loaded = lifecycle.load_run(args.run, getattr(args, "store", "runs"))
    chat = lifecycle.uses_chat(loaded)
    system = lifecycle.default_system(loaded, getattr(args, "system", ""))
    decodings = parse_decodings(getattr(args, "decoding", "greedy"), getattr(args, "max_new_tokens", None))
    prompts = [lifecycle.prompt_ids(loaded, build_messages(system, p) if chat else [{"role": "user", "content": p}],
                                    chat)
               for p in args.prompts]
    stops = lifecycle.stop_strings(loaded, chat)
    for decoding in decodings:
        if stops:
            decoding = dataclasses.replace(decoding, stop=list(decoding.stop) + stops)
        out = generate(loaded.model, loaded.tokenizer, prompts, decoding, batch_size=8,
                       device=lifecycle.model_device(loaded))
        for prompt, texts in zip(args.prompts, out.texts):
            if len(decodings) > 1 or len(args.prompts) > 1:
                print(f"### [{decoding.name}] {prompt}")
            for k, text in enumerate(texts):
                if len(texts) > 1:
                    print(f"--- sample {k + 1}/{len(texts)}")
                print(text.strip() if chat else prompt + text)
        print(f"[{decoding.name}: {out.new_tokens} tokens in {out.seconds:.2f}s, {out.tokens_per_s:.1f} tokens/s, "
              f"{out.s_per_example:.2f} s/prompt]", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ chat
def chat_cmd(args: argparse.Namespace, input_fn: Any = input, out: TextIO | None = None) -> int:
    """`peftlab chat RUN`: an interactive chat that streams tokens; `/reset` clears, `/exit` or EOF quits."""
    from peftlab import lifecycle
    from peftlab.evaluation.generate import generate

    out = out or sys.stdout
    loaded = lifecycle.load_run(args.run, getattr(args, "store", "runs"))
    decoding = parse_decodings(getattr(args, "decoding", "greedy"), getattr(args, "max_new_tokens", None))[0]
    decoding = dataclasses.replace(decoding, num_return_sequences=1)
    chat = True  # a chat is a chat: the template (or the plain one) frames every turn
    stops = list(decoding.stop) + lifecycle.stop_strings(loaded, chat)
    decoding = dataclasses.replace(decoding, stop=stops)
    system = lifecycle.default_system(loaded, getattr(args, "system", ""))
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    label = loaded.meta.get("method", "base")
    out.write(f"chatting with {args.run} ({label}, decoding {decoding.name}); /reset clears the history, "
              "/exit or Ctrl-D quits\n")
    out.flush()
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            break
        line = line.strip()
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            history = history[:1] if system else []
            out.write("(history cleared)\n")
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        ids = lifecycle.prompt_ids(loaded, history, chat)
        out.write("assistant> ")
        out.flush()
        streamer = lifecycle.StopAwareStreamer(loaded.tokenizer, stops, out)
        result = generate(loaded.model, loaded.tokenizer, [ids], decoding, batch_size=1,
                          device=lifecycle.model_device(loaded), streamer=streamer)
        history.append({"role": "assistant", "content": result.texts[0][0].strip()})
    return 0


# ------------------------------------------------------------------------------------ evaluate
def evaluate_cmd(args: argparse.Namespace) -> int:
    """`peftlab evaluate RUN --decoding …`: re-evaluate a finished run's adapter without retraining.

    Each strategy's evaluation is appended to the run's result.json (earlier ones are kept; an
    identical re-evaluation replaces its older copy) and the index row is updated.
    """
    from peftlab import lifecycle

    evaluations = lifecycle.evaluate_run(args.run, args.decoding, store=getattr(args, "store", "runs"),
                                         limit_eval=getattr(args, "limit_eval", None),
                                         allow_code_execution=getattr(args, "allow_code_execution", False))
    width = max(len(e["name"]) for e in evaluations)
    for ev in evaluations:
        tp = ev.get("throughput") or {}
        metrics = ", ".join(f"{k}={fmt_number(v)}" for k, v in ev["metrics"].items())
        print(f"{ev['name']:<{width}}  {metrics}  ({fmt_number(tp.get('tokens_per_s'))} tokens/s, "
              f"{fmt_number(tp.get('s_per_example'))} s/example)")
    print(f"recorded {len(evaluations)} evaluation(s) in the run's result.json")
    return 0
