"""After training: inspect, merge, try and re-evaluate a run's adapter (`peftlab adapters|generate|chat|evaluate`).

Each `*_cmd(args)` takes the argparse namespace built in `peftlab.cli`; the work happens in
`peftlab.adapters` (load/merge/export) and `peftlab.evaluation.generate` (generation), so the
same things are one import away in Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from peftlab.adapters import META_FILE, LoadedRun, RunRef, load_run, locate, read_meta
from peftlab.config import DecodingConfig, parse_decoding_spec
from peftlab.measure import directory_bytes


# ------------------------------------------------------------------------------------ helpers
def _human(n: float | int | None) -> str:
    if n is None:
        return "n/a"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def decodings_from(text: str | None, max_new_tokens: int | None = None) -> list[DecodingConfig]:
    """`greedy,top_k=50,top_p=0.9` → one DecodingConfig per comma (join knobs of one with `:`).

    `max_new_tokens` applies where a strategy does not name its own.
    """
    out = []
    for part in [p.strip() for p in (text or "greedy").split(",") if p.strip()]:
        decoding = parse_decoding_spec(part)
        if max_new_tokens and "max_new_tokens" not in part:
            decoding = dataclasses.replace(decoding, max_new_tokens=max_new_tokens)
        out.append(decoding)
    return out or [DecodingConfig()]


def _safetensors_params(path: Path) -> tuple[int, int]:
    """(parameters, tensors) stored in a safetensors file, read from its header."""
    from safetensors import safe_open

    params = tensors = 0
    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():  # noqa: SIM118 (safe_open is not a dict)
            shape = fh.get_slice(key).get_shape()
            n = 1
            for d in shape:
                n *= int(d)
            params += n
            tensors += 1
    return params, tensors


MERGE_WHY = {
    "lora": "yes: the low-rank update B·A folds into the targeted weights",
    "dora": "yes: magnitude × normalized (W + B·A) folds into the targeted weights",
    "qlora": "yes, into a de-quantized copy of the NF4 base (merging into 4-bit layers would re-quantize and drift)",
    "ia3": "yes: the learned scaling vectors fold into the targeted weights",
    "lora+prompt": "partly: the LoRA half merges; the soft prompt is part of the input and is exported beside",
    "prompt": "no: prompt tuning's virtual tokens are part of the input, not of any weight (exported instead)",
    "prefix": "no: prefix tuning's key/value prefixes live in the attention cache, not in any weight (exported instead)",
    "full": "nothing to merge: the saved model is already a complete model",
    "base": "nothing to merge: `base` trains nothing",
}


# ------------------------------------------------------------------------------------ show
def show_cmd(args: argparse.Namespace) -> int:
    """`peftlab adapters show RUN`: method, config, parameter counts, bytes on disk."""
    ref = locate(args.run, getattr(args, "store", "runs"))
    print(describe(ref))
    return 0


def describe(ref: RunRef) -> str:
    meta = read_meta(ref.adapter_dir)
    result = ref.result or {}
    cost = result.get("cost") or {}
    model_cfg = meta.get("model", {})
    lines: list[tuple[str, str]] = []
    run_id = result.get("run_id") or (ref.run_dir.name if ref.run_dir else ref.adapter_dir.name)
    lines.append(("run", run_id))
    if result:
        finished = f" (finished {result['finished_at']})" if result.get("finished_at") else ""
        lines.append(("status", f"{result.get('status')}{finished}"))
        lines.append(("experiment", f"{result.get('experiment')}, label {result.get('label')}"))
    peft_config = _peft_config(ref.adapter_dir)
    peft_type = f"  (peft {peft_config.get('peft_type')})" if peft_config.get("peft_type") else ""
    lines.append(("method", f"{meta['method']}{peft_type}"))
    args = meta.get("args") or result.get("method_args") or {}
    lines.append(("arguments", ", ".join(f"{k}={v}" for k, v in args.items()) or "-"))
    if peft_config:
        keys = ("r", "lora_alpha", "target_modules", "modules_to_save", "num_virtual_tokens", "use_dora",
                "feedforward_modules", "task_type")
        shown = {k: peft_config[k] for k in keys if peft_config.get(k) not in (None, [], False)}
        if shown:
            lines.append(("peft config", ", ".join(f"{k}={v}" for k, v in shown.items())))
    base = f"{model_cfg.get('name')} (dtype {model_cfg.get('dtype', 'auto')}"
    base += f", {meta['model_class']}" if meta.get("model_class") else ""
    lines.append(("base model", base + ")"))
    if meta.get("task") is not None:
        lines.append(("task", f"{meta.get('task')}, seed {meta.get('seed')}"))
    if cost.get("total_params"):
        params = (f"{cost.get('trainable_params', 0):,} trainable of {cost['total_params']:,} "
                  f"({cost.get('trainable_pct', 0):.4f}%)")
        lines.append(("parameters", params))
    on_disk = directory_bytes(ref.adapter_dir)
    recorded = f"; recorded at save: {_human(cost['adapter_bytes'])}" if cost.get("adapter_bytes") else ""
    lines.append(("adapter", f"{_human(on_disk)} on disk in {ref.adapter_dir}{recorded}"))
    files = []
    for path in sorted(p for p in ref.adapter_dir.rglob("*") if p.is_file()):
        extra = ""
        if path.suffix == ".safetensors":
            params, tensors = _safetensors_params(path)
            extra = f"  ({params:,} values in {tensors} tensors)"
        files.append(f"{str(path.relative_to(ref.adapter_dir)):<36} {path.stat().st_size:>12,} B{extra}")
    width = max(len(k) for k, _ in lines) + 2
    text = "\n".join(f"{k:<{width}}{v}" for k, v in lines)
    text += "\n" + "\n".join(f"{'':<{width}}  {f}" for f in files)
    text += f"\n{'mergeable':<{width}}{MERGE_WHY.get(meta['method'], _generic_merge_why(peft_config))}"
    metrics = result.get("metrics") or {}
    if metrics:
        text += f"\n{'metrics':<{width}}" + ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
    for ev in result.get("evaluations") or []:
        tp = ev.get("throughput") or {}
        ms = ", ".join(f"{k}={_fmt(v)}" for k, v in (ev.get("metrics") or {}).items())
        on = f" on {ev['examples']} examples" if ev.get("examples") else ""
        text += (f"\n{'evaluation':<{width}}{ev.get('name')}: {ms}{on}; {_fmt(tp.get('tokens_per_s'))} tokens/s, "
                 f"{_fmt(tp.get('s_per_example'))} s/example" + (f" [{ev['source']}]" if ev.get("source") else ""))
    return text


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _peft_config(adapter_dir: Path) -> dict:
    for path in (adapter_dir / "adapter_config.json", adapter_dir / "lora" / "adapter_config.json"):
        if path.exists():
            return json.loads(path.read_text())
    return {}


def _generic_merge_why(peft_config: dict) -> str:
    kind = str(peft_config.get("peft_type", "")).upper()
    if kind in ("LOHA", "LOKR", "VERA", "OFT", "BOFT", "ADALORA", "HRA", "FOURIERFT", "BONE", "C3A", "SHIRA"):
        return "yes: peft can fold this update into the weights (merge_and_unload)"
    return "maybe: `peftlab adapters merge` tries peft's merge_and_unload and says if it cannot"


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
    print(f"wrote {report.out} ({_human(size)}: {', '.join(report.files)}) in {time.perf_counter() - t0:.1f}s")
    if report.ok:
        print(f"load it without peftlab or peft: AutoModelForCausalLM.from_pretrained({report.out!r})")
    return 0 if report.ok else 1


# ------------------------------------------------------------------------------------ prompts
def render_chat(tokenizer: Any, messages: list[dict]) -> str:
    """The whole conversation so far, ending where the assistant's next turn starts."""
    from peftlab.tasks.chat import PLAIN_HEADERS, has_template

    if has_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [PLAIN_HEADERS[m["role"]] + m["content"].strip() + "\n\n" for m in messages]
    return "".join(parts) + PLAIN_HEADERS["assistant"]


def _uses_chat(loaded: LoadedRun) -> bool:
    """Runs trained on chat tasks (and template models) are prompted as chats; `lm` runs with raw text."""
    from peftlab.tasks.chat import has_template

    task = loaded.meta.get("task")
    if task:
        try:
            from peftlab.tasks import get_task

            return get_task(task).kind == "chat"
        except ValueError:
            pass
    return has_template(loaded.tokenizer)


def _default_system(loaded: LoadedRun, system: str) -> str:
    if system or not loaded.meta.get("task"):
        return system
    try:
        from peftlab.tasks import get_task

        return get_task(loaded.meta["task"]).system or ""
    except ValueError:
        return ""


def _stops(loaded: LoadedRun, chat: bool) -> list[str]:
    from peftlab.tasks.chat import has_template

    return ["\n### "] if chat and not has_template(loaded.tokenizer) else []


def prompt_ids(loaded: LoadedRun, messages: list[dict], chat: bool, max_length: int = 2048) -> list[int]:
    text = render_chat(loaded.tokenizer, messages) if chat else messages[-1]["content"]
    ids = loaded.tokenizer(text, add_special_tokens=not chat)["input_ids"]
    return ids[-max_length:]


def _device(loaded: LoadedRun) -> Any:
    return next(loaded.model.parameters()).device


# ------------------------------------------------------------------------------------ generate
def generate_cmd(args: argparse.Namespace) -> int:
    """`peftlab generate RUN "prompt" ["prompt" …]`: batched generation under one or more strategies."""
    from peftlab.evaluation.generate import generate

    loaded = load_run(args.run, getattr(args, "store", "runs"))
    chat = _uses_chat(loaded)
    system = _default_system(loaded, getattr(args, "system", ""))
    decodings = decodings_from(getattr(args, "decoding", "greedy"), getattr(args, "max_new_tokens", None))
    from peftlab.tasks.chat import build_messages

    prompts = [prompt_ids(loaded, build_messages(system, p) if chat else [{"role": "user", "content": p}], chat)
               for p in args.prompts]
    stops = _stops(loaded, chat)
    for decoding in decodings:
        if stops:
            decoding = dataclasses.replace(decoding, stop=list(decoding.stop) + stops)
        out = generate(loaded.model, loaded.tokenizer, prompts, decoding, batch_size=8, device=_device(loaded))
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
class StopAwareStreamer:
    """A `TextStreamer` that prints new text as it comes and nothing from a stop string on."""

    def __init__(self, tokenizer: Any, stops: list[str], out: TextIO | None = None):
        from transformers import TextStreamer

        streamer = self

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                streamer.feed(text, stream_end)

        self.inner = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stops = [s for s in stops if s]
        self.out = out or sys.stdout
        self.text = ""
        self.printed = 0
        self.stopped = False

    def put(self, value: Any) -> None:
        self.inner.put(value)

    def end(self) -> None:
        self.inner.end()

    def feed(self, text: str, stream_end: bool) -> None:
        self.text += text
        if self.stopped:
            return
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i != -1), default=-1)
        if cut != -1:
            safe, self.stopped = cut, True
        elif stream_end:
            safe = len(self.text)
        else:  # hold back what could still become a stop string
            hold = max((len(s) - 1 for s in self.stops), default=0)
            safe = max(self.printed, len(self.text) - hold)
        if safe > self.printed:
            self.out.write(self.text[self.printed:safe])
            self.out.flush()
            self.printed = safe
        if stream_end or self.stopped:
            self.out.write("\n")
            self.out.flush()


def chat_cmd(args: argparse.Namespace, input_fn: Any = input, out: TextIO | None = None) -> int:
    """`peftlab chat RUN`: an interactive chat that streams tokens; `/reset` clears, `/exit` or EOF quits."""
    from peftlab.evaluation.generate import generate

    out = out or sys.stdout
    loaded = load_run(args.run, getattr(args, "store", "runs"))
    decoding = decodings_from(getattr(args, "decoding", "greedy"), getattr(args, "max_new_tokens", None))[0]
    decoding = dataclasses.replace(decoding, num_return_sequences=1)
    chat = True  # a chat is a chat: the template (or the plain one) frames every turn
    stops = list(decoding.stop) + _stops(loaded, chat)
    decoding = dataclasses.replace(decoding, stop=stops)
    system = _default_system(loaded, getattr(args, "system", ""))
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
        ids = prompt_ids(loaded, history, chat)
        out.write("assistant> ")
        out.flush()
        streamer = StopAwareStreamer(loaded.tokenizer, stops, out)
        result = generate(loaded.model, loaded.tokenizer, [ids], decoding, batch_size=1, device=_device(loaded),
                          streamer=streamer)
        history.append({"role": "assistant", "content": result.texts[0][0].strip()})
    return 0


# ------------------------------------------------------------------------------------ evaluate
def evaluate_cmd(args: argparse.Namespace) -> int:
    """`peftlab evaluate RUN --decoding …`: re-evaluate a finished run's adapter without retraining.

    Each strategy's evaluation is appended to the run's result.json (earlier ones are kept; an
    identical re-evaluation replaces its older copy) and the index row is updated.
    """
    evaluations = evaluate_run(args.run, args.decoding, store=getattr(args, "store", "runs"),
                               limit_eval=getattr(args, "limit_eval", None),
                               allow_code_execution=getattr(args, "allow_code_execution", False))
    width = max(len(e["name"]) for e in evaluations)
    for ev in evaluations:
        tp = ev.get("throughput") or {}
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in ev["metrics"].items())
        print(f"{ev['name']:<{width}}  {metrics}  ({_fmt(tp.get('tokens_per_s'))} tokens/s, "
              f"{_fmt(tp.get('s_per_example'))} s/example)")
    print(f"recorded {len(evaluations)} evaluation(s) in the run's result.json")
    return 0


def evaluate_run(run: str, decoding: str, store: str | Path = "runs", limit_eval: int | None = None,
                 device: str | None = None, allow_code_execution: bool = False) -> list[dict]:
    """Evaluate a finished run's adapter under `decoding` and record it in the run's result.json.

    Tasks that execute model-written code (the `code` task unless `execute: false`) need the
    opt-in of *this* call: `allow_code_execution` (the command's `--allow-code-execution`) or
    `PEFTLAB_ALLOW_CODE_EXECUTION=1`. The `eval.allow_code_execution` stored in the run's config
    is ignored: it consented to executing that run's code then, not to re-executing new model
    output now. Without the opt-in, `UnsafeCodeExecutionNotAllowed` is raised before any data or
    model is loaded.
    """
    import yaml

    from peftlab.config import RunConfig
    from peftlab.evaluation import sandbox
    from peftlab.tasks import get_task

    ref = locate(run, store)
    if ref.run_dir is None or ref.result is None or not (ref.run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{run}: a run directory with result.json and config.yaml is needed to re-evaluate")
    if ref.result.get("status") != "ok":
        raise ValueError(f"run {ref.run_dir.name} has status {ref.result.get('status')!r}; only finished runs "
                         "are re-evaluated")
    rc = RunConfig.from_dict(yaml.safe_load((ref.run_dir / "config.yaml").read_text()))
    spec = get_task(rc.task.name)
    executes_code = getattr(spec.module, "executes_code", None)
    if executes_code is not None and executes_code(spec.resolve_args(rc.task.args)):
        sandbox.require_opt_in(allow_code_execution, f"Re-evaluating run {ref.run_dir.name}")
    from peftlab.runner import DATA_SEED, EvalContext
    from peftlab.store import Store, now

    decodings = decodings_from(decoding)
    limit = limit_eval or rc.task.limit_eval
    split = spec.splits.get("test")
    if split is None:
        raise ValueError(f"task {rc.task.name!r} has no test split to evaluate")
    from peftlab.data import load_records

    records, data_info = load_records(rc.task.name, split, source=rc.task.source, limit=limit, seed=DATA_SEED)
    loaded = load_run(ref.run_dir, device=device)
    # the stored opt-in never carries over: only this call's (or the environment's) counts
    eval_cfg = dataclasses.replace(rc.eval, decoding=decodings, allow_code_execution=bool(allow_code_execution))
    ctx = EvalContext(model=loaded.model, tokenizer=loaded.tokenizer, records=records,
                      args=spec.resolve_args(rc.task.args), max_length=rc.task.max_length,
                      device=str(_device(loaded)), eval=eval_cfg, spec=spec, method=rc.method.method)
    t0 = time.perf_counter()
    evaluation = spec.module.evaluate(spec, ctx)
    elapsed = time.perf_counter() - t0
    new = evaluation.get("evaluations") or []
    if not new:
        raise ValueError(f"task {rc.task.name!r} is scored without generation, so decoding strategies do not apply "
                         f"(its metrics: {', '.join(evaluation.get('metrics', {}))})")
    stamp = now()
    for ev in new:
        ev.setdefault("examples", evaluation.get("examples"))
        ev.update(source="peftlab evaluate", evaluated_at=stamp, limit_eval=limit,
                  data_fingerprint=data_info.get("fingerprint"), eval_time_s=elapsed)
    root = ref.run_dir.parent
    db = Store(root)
    lock = db.lock(ref.run_dir.name)
    if not lock.acquire():
        raise RuntimeError(f"run {ref.run_dir.name} is being run by another process; try again when it finishes")
    try:
        result = db.read_result(ref.run_dir.name) or ref.result
        kept = [e for e in result.get("evaluations") or [] if not any(_same_evaluation(e, n) for n in new)]
        result["evaluations"] = kept + new
        db.write_result(result)
    finally:
        lock.release()
    return new


def _same_evaluation(a: dict, b: dict) -> bool:
    """An exact re-evaluation (same strategy, same data): the newer one replaces the older."""
    return (a.get("name") == b.get("name") and a.get("decoding") == b.get("decoding")
            and a.get("source") == b.get("source") and a.get("limit_eval") == b.get("limit_eval")
            and a.get("data_fingerprint") == b.get("data_fingerprint"))


__all__ = ["show_cmd", "merge_cmd", "generate_cmd", "chat_cmd", "evaluate_cmd", "describe", "evaluate_run",
           "decodings_from", "render_chat", "StopAwareStreamer", "META_FILE"]
