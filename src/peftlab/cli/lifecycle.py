"""`peftlab adapters show|merge|export`, `generate`, `chat`, `evaluate`: after training, from the command line.

Each imports `peftlab.lifecycle` (and with it torch) only when called. The work is in
`peftlab.lifecycle` (describe, prompts, streaming, evaluation), `peftlab.adapters`
(load/merge/export) and `peftlab.evaluation.generate`; these functions parse nothing and print.
Every command takes a run id (or a unique prefix), a run directory, or an adapter directory
(peftlab's, or a plain PEFT one: `adapter_config.json` + weights), and `--base MODEL` where the
adapter's recorded base model is not the one to use.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import time
from typing import Any, TextIO

from peftlab.config import parse_decodings
from peftlab.formatting import fmt_bytes, fmt_number

#: chat's slash commands and what they do (`/help` lists them).
CHAT_COMMANDS = {
    "/help": "list these commands",
    "/reset": "clear the conversation (the system message stays)",
    "/exit": "quit (also /quit or Ctrl-D)",
}


def _base(args: argparse.Namespace) -> str | None:
    return getattr(args, "base", None) or None


def _print_json(document: Any) -> None:
    print(json.dumps(document, indent=2, default=str))


# ------------------------------------------------------------------------------------ show
def show_cmd(args: argparse.Namespace) -> int:
    """`peftlab adapters show RUN`: method, config, parameter counts, bytes on disk (`--json`: one document)."""
    from peftlab import lifecycle

    ref = lifecycle.locate(args.run, getattr(args, "store", "runs"))
    if getattr(args, "json", False):
        _print_json(lifecycle.adapter_info(ref, _base(args)))
    else:
        print(lifecycle.describe(ref, _base(args)))
    return 0


# ------------------------------------------------------------------------------------ merge
def merge_cmd(args: argparse.Namespace) -> int:
    """`peftlab adapters merge RUN --out DIR`: merged plain HF model, checked against the adapter model."""
    from peftlab.adapters import merge

    t0 = time.perf_counter()
    report = merge(args.run, args.out, store=getattr(args, "store", "runs"), atol=getattr(args, "atol", None),
                   overwrite=bool(getattr(args, "force", False)), base=_base(args),
                   verbose=bool(getattr(args, "verbose", False)))
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


# ------------------------------------------------------------------------------------ export
def export_cmd(args: argparse.Namespace) -> int:
    """`peftlab adapters export RUN --out DIR`: the adapter as plain peft loads it, with a model card."""
    from peftlab.adapters import export

    t0 = time.perf_counter()
    report = export(args.run, args.out, store=getattr(args, "store", "runs"), base=_base(args),
                    overwrite=bool(getattr(args, "force", False)))
    for note in report.notes:
        print(f"note: {note}")
    verdict = "ok" if report.ok else "MISMATCH"
    print(f"check: {report.out} loaded with plain peft on {report.base_model} vs peftlab's model on {report.samples} "
          f"sample inputs: max |Δlogit| = {report.max_abs_diff:.3g} (tolerance {report.atol:.3g}) → {verdict}")
    size = sum(report.files.values())
    print(f"wrote {report.out} ({fmt_bytes(size)}: {', '.join(report.files)}) in {time.perf_counter() - t0:.1f}s")
    if report.ok:
        print(f"load it: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({report.base_model!r}), "
              f"{report.out!r}); README.md is its model card")
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------ generate
def read_prompts(prompts: list[str], stdin: TextIO | None = None) -> list[str]:
    """The prompts of `generate`: `-` stands for the whole of standard input, as one prompt (so a
    prompt may span lines; for several prompts, give several arguments)."""
    if prompts.count("-") > 1:
        raise ValueError("generate: '-' (read the prompt from standard input) may be given once")
    if "-" not in prompts:
        return list(prompts)
    text = (stdin or sys.stdin).read().rstrip("\n")
    if not text.strip():
        raise ValueError("generate -: standard input was empty; pipe the prompt in, e.g. "
                         "`echo 'Name a prime number.' | peftlab generate RUN -`")
    return [text if p == "-" else p for p in prompts]


def generate_cmd(args: argparse.Namespace, stdin: TextIO | None = None) -> int:
    """`peftlab generate RUN "prompt" ["prompt" …]` (`-`: the prompt from stdin): batched generation under one or
    more strategies."""
    from peftlab import lifecycle
    from peftlab.evaluation.generate import generate
    from peftlab.tasks.chat import build_messages

    texts_in = read_prompts(list(args.prompts), stdin)  # before the model loads: a bad stdin costs nothing
    decodings = parse_decodings(getattr(args, "decoding", "greedy"), getattr(args, "max_new_tokens", None))
    loaded = lifecycle.load_run(args.run, getattr(args, "store", "runs"), base=_base(args))
    chat = lifecycle.uses_chat(loaded)
    system = lifecycle.default_system(loaded, getattr(args, "system", ""))
    prompts = [lifecycle.prompt_ids(loaded, build_messages(system, p) if chat else [{"role": "user", "content": p}],
                                    chat)
               for p in texts_in]
    stops = lifecycle.stop_strings(loaded, chat)
    for decoding in decodings:
        if stops:
            decoding = dataclasses.replace(decoding, stop=list(decoding.stop) + stops)
        out = generate(loaded.model, loaded.tokenizer, prompts, decoding, batch_size=8,
                       device=lifecycle.model_device(loaded))
        for prompt, texts in zip(texts_in, out.texts):
            if len(decodings) > 1 or len(texts_in) > 1:
                print(f"### [{decoding.name}] {prompt}")
            for k, text in enumerate(texts):
                if len(texts) > 1:
                    print(f"--- sample {k + 1}/{len(texts)}")
                print(text.strip() if chat else prompt + text)
        print(f"[{decoding.name}: {out.new_tokens} tokens in {out.seconds:.2f}s, {out.tokens_per_s:.1f} tokens/s, "
              f"{out.s_per_example:.2f} s/prompt]", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------ chat
def _chat_command(line: str) -> str | None:
    """The slash command a chat line is (`/reset`), or None for a message to the model. A single
    word starting with `/` is a command; `//text` sends `/text`."""
    if line.startswith("/") and not line.startswith("//") and " " not in line:
        return line
    return None


def chat_cmd(args: argparse.Namespace, input_fn: Any = input, out: TextIO | None = None) -> int:
    """`peftlab chat RUN`: an interactive chat that streams tokens; `/help` lists the commands (`/reset`, `/exit`)."""
    from peftlab import lifecycle
    from peftlab.evaluation.generate import generate

    out = out or sys.stdout
    decoding = parse_decodings(getattr(args, "decoding", "greedy"), getattr(args, "max_new_tokens", None))[0]
    loaded = lifecycle.load_run(args.run, getattr(args, "store", "runs"), base=_base(args))
    decoding = dataclasses.replace(decoding, num_return_sequences=1)
    chat = True  # a chat is a chat: the template (or the plain one) frames every turn
    stops = list(decoding.stop) + lifecycle.stop_strings(loaded, chat)
    decoding = dataclasses.replace(decoding, stop=stops)
    system = lifecycle.default_system(loaded, getattr(args, "system", ""))
    history: list[dict] = [{"role": "system", "content": system}] if system else []
    label = loaded.meta.get("method", "base")
    out.write(f"chatting with {args.run} ({label}, decoding {decoding.name}); /help lists the commands, "
              "/exit or Ctrl-D quits\n")
    out.flush()
    while True:
        try:
            line = input_fn("you> ")
        except (EOFError, KeyboardInterrupt):
            out.write("\n")
            break
        line = line.strip()
        command = _chat_command(line)
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history = history[:1] if system else []
            out.write("(history cleared)\n")
            continue
        if command == "/help":
            width = max(len(c) for c in CHAT_COMMANDS)
            out.write("".join(f"  {c:<{width}}  {what}\n" for c, what in CHAT_COMMANDS.items()))
            out.write("  anything else is sent to the model (start it with // to send a line that begins with /)\n")
            continue
        if command is not None:
            out.write(f"unknown command {command}; /help lists the commands\n")
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line[1:] if line.startswith("//") else line})
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
    """`peftlab evaluate RUN|ADAPTER_DIR [--task T] [--decoding …]`: score an adapter without training.

    A run gains evaluations under new decoding strategies (those it has are skipped unless
    `--force`); an adapter directory (or a run on another `--task`) is scored and stored in
    `--store` like a run. `--json` prints one JSON document on stdout and everything else on stderr.
    """
    from peftlab import lifecycle

    as_json = bool(getattr(args, "json", False))
    store = getattr(args, "store", "runs")
    if getattr(args, "task", None):
        from peftlab.cli.checks import check_dir

        check_dir(store, "--store")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # with --json, stdout carries the document only: anything printed while evaluating goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        outcome = lifecycle.evaluate_run(args.run, getattr(args, "decoding", None), store=store,
                                         limit_eval=getattr(args, "limit_eval", None),
                                         allow_code_execution=getattr(args, "allow_code_execution", False),
                                         force=bool(getattr(args, "force", False)), task=getattr(args, "task", None),
                                         base=_base(args), log=log)
    if as_json:
        _print_json(outcome.to_dict())
        return 0
    for note in outcome.notes:
        print(f"note: {note}")
    where = f"new run {outcome.run_id} ({outcome.label})" if outcome.created else f"run {outcome.run_id}"
    print(f"{outcome.task}: {where} in {outcome.run_dir.parent}")
    if outcome.created and not outcome.evaluated:
        print(f"metrics  {', '.join(f'{k}={fmt_number(v)}' for k, v in outcome.metrics.items())}")
    width = max((len(e["name"]) for e in outcome.evaluated), default=0)
    for ev in outcome.evaluated:
        tp = ev.get("throughput") or {}
        metrics = ", ".join(f"{k}={fmt_number(v)}" for k, v in ev["metrics"].items())
        print(f"{ev['name']:<{width}}  {metrics}  ({fmt_number(tp.get('tokens_per_s'))} tokens/s, "
              f"{fmt_number(tp.get('s_per_example'))} s/example)")
    for name in outcome.skipped:
        print(f"skipped {name}: the run has this evaluation already (--force re-evaluates it)")
    if outcome.created:
        evaluations = f" and {len(outcome.evaluated)} evaluation(s)" if outcome.evaluated else ""
        print(f"recorded the run{evaluations} in {outcome.run_dir}/result.json")
    else:
        print(f"recorded {len(outcome.evaluated)} evaluation(s) in the run's result.json")
    return 0
