"""After training: inspect, merge, try and re-evaluate a run's adapter (`peftlab adapters|generate|chat|evaluate`).

The commands themselves live in `peftlab.cli.lifecycle`; the work happens here, in
`peftlab.adapters` (load/merge/export) and `peftlab.evaluation.generate` (generation), so the
same things are one import away in Python.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from peftlab.adapters import META_FILE, LoadedRun, RunRef, load_run, locate, read_meta
from peftlab.config import parse_decodings
from peftlab.formatting import fmt_bytes, fmt_number
from peftlab.measure import directory_bytes
from peftlab.status import RunStatus


# ------------------------------------------------------------------------------------ helpers
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


# ------------------------------------------------------------------------------------ show
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
    recorded = f"; recorded at save: {fmt_bytes(cost['adapter_bytes'])}" if cost.get("adapter_bytes") else ""
    lines.append(("adapter", f"{fmt_bytes(on_disk)} on disk in {ref.adapter_dir}{recorded}"))
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
    text += f"\n{'mergeable':<{width}}{_merge_why(meta['method'])}"
    metrics = result.get("metrics") or {}
    if metrics:
        text += f"\n{'metrics':<{width}}" + ", ".join(f"{k}={fmt_number(v)}" for k, v in metrics.items())
    for ev in result.get("evaluations") or []:
        tp = ev.get("throughput") or {}
        ms = ", ".join(f"{k}={fmt_number(v)}" for k, v in (ev.get("metrics") or {}).items())
        on = f" on {ev['examples']} examples" if ev.get("examples") else ""
        text += (f"\n{'evaluation':<{width}}{ev.get('name')}: {ms}{on}; {fmt_number(tp.get('tokens_per_s'))} tokens/s, "
                 f"{fmt_number(tp.get('s_per_example'))} s/example" + (f" [{ev['source']}]" if ev.get("source") else ""))
    return text


def _peft_config(adapter_dir: Path) -> dict:
    for path in (adapter_dir / "adapter_config.json", adapter_dir / "lora" / "adapter_config.json"):
        if path.exists():
            return json.loads(path.read_text())
    return {}


def _merge_why(method_name: str) -> str:
    """Whether and how the method merges, as its `Method` declares (`peftlab.methods`)."""
    from peftlab.methods import get_method

    try:
        return get_method(method_name).merge_why
    except ValueError:  # an adapter of a method this version does not know
        return "maybe: `peftlab adapters merge` tries peft's merge_and_unload and says if it cannot"


# ------------------------------------------------------------------------------------ prompts
def render_chat(tokenizer: Any, messages: list[dict]) -> str:
    """The whole conversation so far, ending where the assistant's next turn starts."""
    from peftlab.tasks.chat import PLAIN_HEADERS, has_template

    if has_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    parts = [PLAIN_HEADERS[m["role"]] + m["content"].strip() + "\n\n" for m in messages]
    return "".join(parts) + PLAIN_HEADERS["assistant"]


def uses_chat(loaded: LoadedRun) -> bool:
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


def default_system(loaded: LoadedRun, system: str) -> str:
    """`system`, or where it is empty the system prompt of the task the run was trained on."""
    if system or not loaded.meta.get("task"):
        return system
    try:
        from peftlab.tasks import get_task

        return get_task(loaded.meta["task"]).system or ""
    except ValueError:
        return ""


def stop_strings(loaded: LoadedRun, chat: bool) -> list[str]:
    """Where generation stops besides EOS: the next plain-template header for chats without a chat template."""
    from peftlab.tasks.chat import has_template

    return ["\n### "] if chat and not has_template(loaded.tokenizer) else []


def prompt_ids(loaded: LoadedRun, messages: list[dict], chat: bool, max_length: int = 2048) -> list[int]:
    text = render_chat(loaded.tokenizer, messages) if chat else messages[-1]["content"]
    ids = loaded.tokenizer(text, add_special_tokens=not chat)["input_ids"]
    return ids[-max_length:]


def model_device(loaded: LoadedRun) -> Any:
    """The device the loaded model's (first) parameters are on."""
    return next(loaded.model.parameters()).device


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


# ------------------------------------------------------------------------------------ evaluate
def evaluate_run(run: str, decoding: str, store: str | Path = "runs", limit_eval: int | None = None,
                 device: str | None = None, allow_code_execution: bool = False) -> list[dict]:
    """Evaluate a finished run's adapter under `decoding` and record it in the run's result.json.

    The new evaluations' per-example scores go into the run's examples.jsonl (atomically, before
    result.json is rewritten): under their decoding's name, or `<name>@<evaluated_at>` when an
    evaluation the result keeps already uses that name; an exact re-evaluation replaces the lines of
    the one it replaces.

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
    if ref.result.get("status") != RunStatus.OK:
        raise ValueError(f"run {ref.run_dir.name} has status {ref.result.get('status')!r}; only finished runs "
                         "are re-evaluated")
    rc = RunConfig.from_dict(yaml.safe_load((ref.run_dir / "config.yaml").read_text()))
    spec = get_task(rc.task.name)
    executes_code = getattr(spec.module, "executes_code", None)
    if executes_code is not None and executes_code(spec.resolve_args(rc.task.args)):
        sandbox.require_opt_in(allow_code_execution, f"Re-evaluating run {ref.run_dir.name}")
    from peftlab.result import RunResult
    from peftlab.runner import evaluate_step, load_split
    from peftlab.store import Store, now

    decodings = parse_decodings(decoding)
    limit = limit_eval or rc.task.limit_eval
    if spec.splits.get("test") is None:
        raise ValueError(f"task {rc.task.name!r} has no test split to evaluate")
    records, data_info = load_split(rc, spec, "test", limit)
    loaded = load_run(ref.run_dir, device=device)
    # the stored opt-in never carries over: only this call's (or the environment's) counts
    eval_cfg = dataclasses.replace(rc.eval, decoding=decodings, allow_code_execution=bool(allow_code_execution))
    evaluation, elapsed = evaluate_step(rc, spec, loaded.model, loaded.tokenizer, records, str(model_device(loaded)),
                                        eval_cfg=eval_cfg)
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
        result = db.read_run_result(ref.run_dir.name) or RunResult.from_dict(ref.result)
        old = result.evaluations or []
        kept = [e for e in old if not any(_same_evaluation(e, n) for n in new)]
        replaced = [e for e in old if any(_same_evaluation(e, n) for n in new)]
        lines, names = _example_lines(evaluation, new, result, kept, replaced, stamp)
        if lines:
            from peftlab.result import EXAMPLES_FILE

            db.write_examples(ref.run_dir.name, lines, replace=names)
            result.examples_file = EXAMPLES_FILE
        result.evaluations = kept + new
        db.write_result(result)
    finally:
        lock.release()
    return new


def _sources(entry: Any) -> set[str]:
    if not isinstance(entry, dict):
        return set()
    sources = entry.get("per_example_source")
    return {v for v in sources.values() if isinstance(v, str)} if isinstance(sources, dict) else set()


def _example_lines(evaluation: dict, new: list[dict], result: Any, kept: list, replaced: list,
                   stamp: str) -> tuple[list[dict], set[str]]:
    """(examples.jsonl lines of the new evaluations, the names whose old lines they replace).

    A new score set keeps its name unless the result still points at lines of that name (its own
    metrics or an evaluation it keeps); then it becomes `<name>@<stamp>`. The new entries'
    `per_example_source` are renamed to match.
    """
    from peftlab.runner import example_lines

    taken = _sources({"per_example_source": result.per_example_source or {}})
    for entry in kept:
        taken |= _sources(entry) | ({entry["name"]} if isinstance(entry, dict) and entry.get("name") else set())
    wanted = set().union(*(_sources(e) for e in new))
    rename: dict[str, str] = {}
    for name in sorted(wanted):
        target, n = name, 1
        while target in taken:
            n += 1
            target = f"{name}@{stamp}" + (f"#{n - 1}" if n > 2 else "")
        rename[name] = target
        taken.add(target)
    for entry in new:
        if isinstance(entry.get("per_example_source"), dict):
            entry["per_example_source"] = {m: rename.get(s, s) for m, s in entry["per_example_source"].items()}
    sets = {"scores": [ss for ss in evaluation.get("scores") or [] if ss["evaluation"] in wanted]}
    still = _sources({"per_example_source": result.per_example_source or {}}).union(*(_sources(e) for e in kept))
    stale = set().union(*(_sources(e) for e in replaced)) - still
    return example_lines(sets, rename), set(rename.values()) | stale


def _same_evaluation(a: dict, b: dict) -> bool:
    """An exact re-evaluation (same strategy, same data): the newer one replaces the older."""
    return (a.get("name") == b.get("name") and a.get("decoding") == b.get("decoding")
            and a.get("source") == b.get("source") and a.get("limit_eval") == b.get("limit_eval")
            and a.get("data_fingerprint") == b.get("data_fingerprint"))


__all__ = ["describe", "evaluate_run", "render_chat", "StopAwareStreamer", "META_FILE", "uses_chat",
           "default_system", "stop_strings", "model_device", "prompt_ids"]
