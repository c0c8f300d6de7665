"""After training: inspect, merge, try and evaluate an adapter (`peftlab adapters|generate|chat|evaluate`).

The commands themselves live in `peftlab.cli.lifecycle`; the work happens here, in
`peftlab.adapters` (load/merge/export) and `peftlab.evaluation.generate` (generation), so the
same things are one import away in Python. An adapter is a run of a store, or any adapter
directory (peftlab's, or a plain PEFT one); `evaluate_run` records what it scores in the store
either way (a run from elsewhere becomes a run of experiment `external`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from peftlab.adapters import (
    EXPORT_REPORT,
    MERGE_REPORT,
    META_FILE,
    LoadedRun,
    RunRef,
    load_run,
    locate,
    read_meta,
    saved_encoder_decoder,
)
from peftlab.config import parse_decodings
from peftlab.formatting import fmt_bytes, fmt_duration, fmt_number
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
def adapter_info(ref: RunRef, base: str | None = None) -> dict:
    """What `peftlab adapters show` says about a run's adapter (or a plain PEFT adapter directory), as
    one JSON-ready dict; `describe` prints it. Reads files only: nothing is loaded."""
    meta = read_meta(ref.adapter_dir, base, strict=False)
    result = ref.result or {}
    cost = result.get("cost") or {}
    model_cfg = meta.get("model", {})
    source = meta.get("source") or {}
    peft_config = _peft_config(ref.adapter_dir)
    files = []
    for path in sorted(p for p in ref.adapter_dir.rglob("*") if p.is_file()):
        entry: dict[str, Any] = {"path": str(path.relative_to(ref.adapter_dir)), "bytes": path.stat().st_size}
        if path.suffix == ".safetensors":
            entry["values"], entry["tensors"] = _safetensors_params(path)
        files.append(entry)
    base_model = {"name": model_cfg.get("name"), "dtype": model_cfg.get("dtype", "auto"),
                  "class": meta.get("model_class")}
    for key, field_name in (("recorded", "base_model_name_or_path"), ("note", "base_note"), ("problem", "base_problem")):
        if source.get(field_name) is not None and (key != "recorded" or source[field_name] != model_cfg.get("name")):
            base_model[key] = source[field_name]
    parameters: dict[str, Any] = {"adapter_values": sum(f.get("values", 0) for f in files)}
    if cost.get("total_params"):
        parameters.update(trainable=cost.get("trainable_params", 0), total=cost["total_params"],
                          trainable_pct=cost.get("trainable_pct", 0))
    run_id = result.get("run_id") or (ref.run_dir.name if ref.run_dir else None)
    return {
        "run": run_id, "kind": "run" if ref.run_dir else ("peft" if ref.plain else "adapter"),
        "adapter_dir": str(ref.adapter_dir), "status": result.get("status"), "finished_at": result.get("finished_at"),
        "experiment": result.get("experiment"), "label": result.get("label"),
        "method": meta.get("method"), "peft_type": peft_config.get("peft_type"),
        "arguments": meta.get("args") or result.get("method_args") or {}, "peft_config": peft_config,
        "base_model": base_model, "task": meta.get("task"), "seed": meta.get("seed"), "parameters": parameters,
        "bytes_on_disk": directory_bytes(ref.adapter_dir), "recorded_bytes": cost.get("adapter_bytes"),
        "files": files, "mergeable": _merge_why(meta.get("method", "")),
        "metrics": result.get("metrics") or {}, "evaluations": result.get("evaluations") or [],
    }


def describe(ref: RunRef, base: str | None = None) -> str:
    """`adapter_info` as aligned lines of text."""
    info = adapter_info(ref, base)
    lines: list[tuple[str, str]] = []
    if info["kind"] == "peft":
        lines.append(("adapter", f"{info['adapter_dir']} (a plain PEFT adapter directory, not a peftlab run)"))
    else:
        lines.append(("run", info["run"] or ref.adapter_dir.name))
    if ref.result:
        finished = f" (finished {info['finished_at']})" if info["finished_at"] else ""
        lines.append(("status", f"{info['status']}{finished}"))
        lines.append(("experiment", f"{info['experiment']}, label {info['label']}"))
    peft_type = f"  (peft {info['peft_type']})" if info["peft_type"] else ""
    lines.append(("method", f"{info['method']}{peft_type}"))
    lines.append(("arguments", ", ".join(f"{k}={v}" for k, v in info["arguments"].items()) or "-"))
    keys = ("r", "lora_alpha", "target_modules", "modules_to_save", "num_virtual_tokens", "use_dora",
            "feedforward_modules", "task_type")
    shown = {k: info["peft_config"][k] for k in keys if info["peft_config"].get(k) not in (None, [], False)}
    if shown:
        lines.append(("peft config", ", ".join(f"{k}={v}" for k, v in shown.items())))
    bm = info["base_model"]
    base_text = f"{bm['name']} (dtype {bm['dtype']}" + (f", {bm['class']}" if bm.get("class") else "") + ")"
    if bm.get("recorded"):
        base_text += f"; recorded: {bm['recorded']}"
    lines.append(("base model", base_text))
    for key in ("note", "problem"):
        if bm.get(key):
            lines.append(("", bm[key]))
    if info["task"] is not None:
        lines.append(("task", f"{info['task']}, seed {info['seed']}"))
    params = info["parameters"]
    if params.get("total"):
        lines.append(("parameters", f"{params['trainable']:,} trainable of {params['total']:,} "
                                    f"({params['trainable_pct']:.4f}%)"))
    elif params["adapter_values"]:
        lines.append(("parameters", f"{params['adapter_values']:,} in the adapter's weights"))
    recorded = f"; recorded at save: {fmt_bytes(info['recorded_bytes'])}" if info["recorded_bytes"] else ""
    lines.append(("adapter", f"{fmt_bytes(info['bytes_on_disk'])} on disk in {ref.adapter_dir}{recorded}"))
    files = []
    for f in info["files"]:
        extra = f"  ({f['values']:,} values in {f['tensors']} tensors)" if "values" in f else ""
        files.append(f"{f['path']:<36} {f['bytes']:>12,} B{extra}")
    width = max(len(k) for k, _ in lines) + 2
    text = "\n".join(f"{k:<{width}}{v}" for k, v in lines)
    text += "\n" + "\n".join(f"{'':<{width}}  {f}" for f in files)
    text += f"\n{'mergeable':<{width}}{info['mergeable']}"
    if info["metrics"]:
        text += f"\n{'metrics':<{width}}" + ", ".join(f"{k}={fmt_number(v)}" for k, v in info["metrics"].items())
    for ev in info["evaluations"]:
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
    """The prompt's token ids; an encoder-decoder model's encoder reads the plain prompt (no template, no earlier
    answers: `chat.prompt_text`)."""
    from peftlab.models import ModelArchitecture
    from peftlab.tasks.chat import render_prompt

    if ModelArchitecture.of(loaded.model).encoder_decoder:
        return render_prompt(loaded.tokenizer, messages, max_length, encoder_decoder=True)
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
#: The experiment name of runs `peftlab evaluate` makes for adapters trained elsewhere.
EXTERNAL = "external"
SAMPLES_FILE = "samples.jsonl"


@dataclass
class Evaluated:
    """What `evaluate_run` did: the run it recorded into and the evaluations it added or skipped."""

    run_id: str
    run_dir: Path
    created: bool  # a new run in the store (an adapter evaluated on a task for the first time)
    task: str
    label: str | None
    method: str | None
    model: str | None
    evaluated: list[dict]  # evaluations added (or, with force, replaced); [] for a task scored without decoding
    skipped: list[str]  # decodings the run already had (force re-evaluates them)
    metrics: dict  # the run's metrics
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "run_dir": str(self.run_dir)}


def evaluate_run(run: str, decoding: str | None = None, store: str | Path = "runs", limit_eval: int | None = None,
                 device: str | None = None, allow_code_execution: bool = False, force: bool = False,
                 task: str | None = None, base: str | None = None,
                 log: Callable[[str], None] | None = None) -> Evaluated:
    """Evaluate an adapter without training, and record the result in the run store.

    * A finished run (its own task, or `task` naming it): each strategy of `decoding` (default: the
      run's own) is added to its result.json as an evaluation; a strategy the run already has is
      skipped unless `force`, which replaces it, so no decoding is stored twice. Per-example scores
      go to its examples.jsonl (under the decoding's name, or `<name>@<evaluated_at>` while the run's
      own metrics still point at lines of that name; the replaced evaluation's lines go), every
      strategy's outputs to its samples.jsonl (lines tagged `"evaluation": <name>`), both before
      result.json is rewritten, under the run's lock.
    * An adapter directory (plain PEFT or peftlab's), or a run scored on another `task`: evaluated on
      `task` and stored in `store` like a run (experiment `external`, label `external:<name>`,
      status ok, the adapter copied into it), so it appears in `peftlab ls runs` and in reports
      beside trained runs. Its task settings (limit_eval, max_length, args, source) follow the
      store's runs of that task when they agree, so comparisons pair on the same examples;
      `limit_eval` overrides. Evaluating the same adapter on the same task again finds that run.

    Everything that needs no model is checked first (the run or adapter, the task, the base
    model, whether the task decodes at all, code-execution consent): `--decoding` on a task scored
    without generation is refused before anything loads. Tasks that execute model-written code
    need the opt-in of *this* call (`allow_code_execution`, the command's
    `--allow-code-execution`, or `PEFTLAB_ALLOW_CODE_EXECUTION=1`); a run's stored opt-in never
    counts: it consented to executing that run's code then, not new model output now.
    """
    log = log or (lambda message: None)
    ref = locate(run, store)
    own_task = _own_task(ref)
    if ref.run_dir is not None and (task is None or task == own_task):
        return _reevaluate(ref, decoding, limit_eval, device, allow_code_execution, force, base, log)
    if task is None:
        from peftlab.tasks.registry import all_tasks

        raise ValueError(f"{run}: an adapter directory, not a run of the store, so it has no task of its own; name "
                         f"the task to evaluate it on with --task (valid: {', '.join(sorted(all_tasks()))})")
    return _evaluate_adapter(ref, task, decoding, store, limit_eval, device, allow_code_execution, force, base, log)


def _own_task(ref: RunRef) -> str | None:
    if ref.run_dir is None:
        return None
    return (ref.result or {}).get("task") or read_meta(ref.adapter_dir, strict=False).get("task")


def uses_decoding(spec: Any, args: dict, result: dict | None = None) -> bool:
    """Whether the task generates (so decoding strategies apply) under `args`, known without a model:
    the task hooks' `uses_decoding(args)` when they have one; else a finished run that recorded
    metrics but no evaluation was scored without generation; else whether the task declares
    generation defaults (`generation:` in its YAML)."""
    hook = getattr(spec.module, "uses_decoding", None)
    if callable(hook):
        return bool(hook(args))
    if result and result.get("metrics") and not result.get("evaluations"):
        return False
    return bool(spec.generation)


def _no_decoding(what: str, task: str, metrics: Any) -> str:
    names = f" (its metrics: {', '.join(metrics)})" if metrics else ""
    return f"{what}: task {task!r} is scored without generation{names}, so decoding strategies do not apply"


def _require_opt_in(spec: Any, args: dict, allow: bool, action: str) -> None:
    from peftlab.evaluation import sandbox

    executes_code = getattr(spec.module, "executes_code", None)
    if executes_code is not None and executes_code(args):
        sandbox.require_opt_in(allow, action)


def _reevaluate(ref: RunRef, decoding: str | None, limit_eval: int | None, device: str | None, allow: bool,
                force: bool, base: str | None, log: Callable[[str], None]) -> Evaluated:
    import yaml

    from peftlab.config import RunConfig
    from peftlab.tasks import get_task

    if ref.run_dir is None or ref.result is None or not (ref.run_dir / "config.yaml").exists():
        raise FileNotFoundError(f"{ref.name}: a run directory with result.json and config.yaml is needed to re-evaluate")
    name = ref.run_dir.name
    if ref.result.get("status") != RunStatus.OK:
        raise ValueError(f"run {name} has status {ref.result.get('status')!r}; only finished runs are re-evaluated")
    rc = RunConfig.from_dict(yaml.safe_load((ref.run_dir / "config.yaml").read_text()))
    spec = get_task(rc.task.name)
    task_args = spec.resolve_args(rc.task.args)
    if not uses_decoding(spec, task_args, ref.result):
        problem = _no_decoding(f"run {name}", rc.task.name, ref.result.get("metrics"))
        raise ValueError(f"{problem}; its metrics are recorded already, so there is nothing to re-evaluate")
    if base:
        read_meta(ref.adapter_dir, base)  # check --base before anything loads
    wanted = parse_decodings(decoding) if decoding else list(rc.eval.decoding)
    have = {e.get("name") for e in ref.result.get("evaluations") or [] if isinstance(e, dict)}
    todo, skipped = [], []
    for d in wanted:
        if d.name in skipped or any(t.name == d.name for t in todo):
            continue  # named twice
        if force or d.name not in have:
            todo.append(d)
        else:
            skipped.append(d.name)
    outcome = Evaluated(run_id=name, run_dir=ref.run_dir, created=False, task=rc.task.name,
                        label=ref.result.get("label"), method=ref.result.get("method"), model=ref.result.get("model"),
                        evaluated=[], skipped=skipped, metrics=ref.result.get("metrics") or {})
    if not todo:
        return outcome
    _require_opt_in(spec, task_args, allow, f"Re-evaluating run {name}")
    if spec.splits.get("test") is None:
        raise ValueError(f"task {rc.task.name!r} has no test split to evaluate")
    from peftlab.runner import load_split
    from peftlab.store import Store, now

    limit = limit_eval or rc.task.limit_eval
    records, data_info = load_split(rc, spec, "test", limit)
    loaded = load_run(ref.run_dir, device=device, base=base)
    precision = (ref.result.get("cost") or {}).get("mixed_precision") or "no"  # as the run was trained and scored
    parts = _evaluate_each(rc, spec, task_args, loaded, records, todo, allow, log, precision)
    stamp = now()
    new, samples = [], {}
    for _, evaluation, elapsed in parts:
        entries = evaluation.get("evaluations") or []
        if not entries:
            raise ValueError(_no_decoding(f"run {name}", rc.task.name, evaluation.get("metrics")))
        for ev in entries:
            ev.setdefault("examples", evaluation.get("examples"))
            ev.update(source="peftlab evaluate", evaluated_at=stamp, limit_eval=limit,
                      data_fingerprint=data_info.get("fingerprint"), eval_time_s=elapsed)
            samples[ev["name"]] = evaluation.get("samples") or []
        new.extend(entries)
    db = Store(ref.run_dir.parent)
    lock = db.lock(name)
    if not lock.acquire():
        raise RuntimeError(f"run {name} is being run by another process; try again when it finishes")
    try:
        result = db.read_run_result(name)
        if result is None:
            raise ValueError(f"run {name}: its result.json changed while it was evaluated and is no longer readable")
        _record_evaluations(db, result, new, _combine(parts)["scores"], samples, stamp)
        db.write_result(result)
    finally:
        lock.release()
    outcome.evaluated, outcome.metrics = new, result.metrics or {}
    return outcome


def _evaluate_each(rc: Any, spec: Any, task_args: dict, loaded: LoadedRun, records: list[dict], decodings: list,
                   allow: bool, log: Callable[[str], None], precision: Any = "no") -> list[tuple[Any, dict, float]]:
    """The task's evaluation once per decoding strategy (so each strategy's outputs are kept), or once
    without one for a task scored without generation: [(decoding or None, evaluation, seconds)]. Scored
    under `precision`'s autocast (`measure.autocast_context`): the arithmetic the run was trained and scored in."""
    from peftlab.measure import autocast_context
    from peftlab.runner import evaluate_step

    device = str(model_device(loaded))
    parts = []
    for i, d in enumerate(decodings or [None]):
        # the stored opt-in never carries over: only this call's (or the environment's) counts
        eval_cfg = dataclasses.replace(rc.eval, decoding=[d] if d is not None else rc.eval.decoding,
                                       allow_code_execution=bool(allow))
        with autocast_context(precision, device):
            evaluation, elapsed = evaluate_step(rc, spec, loaded.model, loaded.tokenizer, records, device,
                                                task_args=task_args, eval_cfg=eval_cfg, on_progress=_progress_lines(log))
        decoded = bool(evaluation.get("evaluations"))
        what = d.name if decoded else "scored without generation"
        log(f"[{i + 1}/{len(decodings) or 1}] {what}: {_metrics_text(evaluation.get('metrics') or {})} "
            f"({len(records)} examples, {elapsed:.1f}s)")
        parts.append((d if decoded else None, evaluation, elapsed))
        if not decoded:  # the task did not generate: another strategy would score the same again
            break
    return parts


def _progress_lines(log: Callable[[str], None], every_s: float = 10.0) -> Callable[[str, float, int], None]:
    """An evaluation progress callback that logs `phase done/total (rate/s, ETA)` at most every `every_s`
    seconds, and when a phase completes."""
    state = {"last": time.perf_counter(), "phase": None, "start": 0.0}

    def tick(phase: str, done: float, total: int) -> None:
        now = time.perf_counter()
        if phase != state["phase"] or not done:
            state.update(phase=phase, start=now)
            return
        if done < total and now - state["last"] < every_s:
            return
        state["last"] = now
        rate = done / max(now - state["start"], 1e-9)
        eta = f", ETA {fmt_duration((total - done) / rate)}" if done < total else ""
        log(f"  {phase}: {int(done)}/{total} ({rate:.1f}/s{eta})")

    return tick


def _metrics_text(metrics: dict) -> str:
    return ", ".join(f"{k}={fmt_number(v)}" for k, v in metrics.items())


def _combine(parts: list[tuple[Any, dict, float]]) -> dict:
    """One evaluation of several per-strategy ones: the first's metrics (the run's), every strategy's
    evaluations, each score set once (a strategy-independent one, e.g. instruct's `loglik`, repeats)."""
    first = parts[0][1]
    combined = {**first, "evaluations": [], "scores": [], "eval_tokens": 0}
    seen: set[str] = set()
    for _, evaluation, _ in parts:
        combined["evaluations"].extend(evaluation.get("evaluations") or [])
        combined["eval_tokens"] += int(evaluation.get("eval_tokens") or 0)
        for ss in evaluation.get("scores") or []:
            if ss["evaluation"] not in seen:
                seen.add(ss["evaluation"])
                combined["scores"].append(ss)
    return combined


def _record_evaluations(db: Any, result: Any, new: list[dict], scores: list[dict], samples: dict[str, list],
                        stamp: str) -> None:
    """Put `new` evaluations into `result` (replacing any of the same name), their per-example scores into
    examples.jsonl and their outputs into samples.jsonl; result.json itself is the caller's to write."""
    from peftlab.result import EXAMPLES_FILE

    names = {e["name"] for e in new}
    old = [e for e in result.evaluations or [] if isinstance(e, dict)]
    kept = [e for e in old if e.get("name") not in names]
    replaced = [e for e in old if e.get("name") in names]
    lines, replace = _example_lines({"scores": scores}, new, result, kept, replaced, stamp)
    if lines:
        db.write_examples(result.run_id, lines, replace=replace)
        result.examples_file = EXAMPLES_FILE
    write_samples(db.run_dir(result.run_id), samples)
    result.evaluations = kept + new


def write_samples(run_dir: Path, samples: dict[str, list[dict]]) -> None:
    """Add each evaluation's outputs to the run's samples.jsonl, one line per example tagged
    `"evaluation": <name>`; earlier lines of those names go, every other line stays (the training
    run's own lines carry no tag: they are its first evaluation's). Written atomically."""
    from peftlab.result import json_default
    from peftlab.store import atomic_write_text

    if not any(samples.values()):
        return
    path = run_dir / SAMPLES_FILE
    kept = []
    if path.exists():
        for raw in path.read_text(encoding="utf-8").splitlines():
            try:
                tag = json.loads(raw).get("evaluation")
            except (ValueError, AttributeError):
                tag = None
            if raw.strip() and tag not in samples:
                kept.append(raw)
    new = [json.dumps({"evaluation": name, **line}, default=json_default)
           for name, lines in samples.items() for line in lines]
    atomic_write_text(path, "".join(line + "\n" for line in kept + new))


# ------------------------------------------------------------------------------------ adapters from elsewhere
def _evaluate_adapter(ref: RunRef, task: str, decoding: str | None, store: str | Path, limit_eval: int | None,
                      device: str | None, allow: bool, force: bool, base: str | None,
                      log: Callable[[str], None]) -> Evaluated:
    """`evaluate_run` for an adapter that is not (or not on this task) a run of the store."""
    from peftlab.config import DecodingConfig, EvalConfig, MethodConfig, ModelConfig, RunConfig, TrainConfig
    from peftlab.methods import get_method
    from peftlab.store import Store
    from peftlab.tasks import get_task
    from peftlab.tasks.common import LOGLIK

    spec = get_task(task)
    meta = read_meta(ref.adapter_dir, base)
    where = f"evaluate {ref.name}"
    if saved_encoder_decoder(ref.adapter_dir):
        reason = spec.causal_only(False)
        if reason:
            raise ValueError(f"{where}: task {task!r} cannot score the adapter's encoder-decoder base "
                             f"{meta.get('model', {}).get('name')!r} because {reason}")
    elif meta.get("model_class") and not str(meta["model_class"]).endswith("ForCausalLM"):
        raise ValueError(f"{where}: the adapter is for a {meta['model_class']} base, and peftlab's tasks score "
                         "language models (causal, or encoder-decoder such as T5), not task heads")
    get_method(meta.get("method", ""))
    if spec.splits.get("test") is None:
        raise ValueError(f"task {task!r} has no test split to evaluate")
    notes = [meta["source"]["base_note"]] if (meta.get("source") or {}).get("base_note") else []
    task_cfg, note = _task_config(store, task, limit_eval)
    notes += [note] if note else []
    task_args = spec.resolve_args(task_cfg.args)
    name = _adapter_name(ref)
    model_cfg = meta.get("model", {})
    model = ModelConfig(name=model_cfg["name"], dtype=model_cfg.get("dtype", "auto"), revision=model_cfg.get("revision"),
                        trust_remote_code=bool(model_cfg.get("trust_remote_code")), gguf_file=model_cfg.get("gguf_file"))
    run_id = _external_run_id(name, model, task_cfg, meta["method"], ref.adapter_dir)
    existing = _finished_result(store, run_id)
    decodes = uses_decoding(spec, task_args, existing)
    if decoding and not decodes:
        raise ValueError(f"{_no_decoding(where, task, list((existing or {}).get('metrics') or spec.metrics))}; "
                         "drop --decoding")
    if existing is not None and (decodes or not force):
        if not decodes:  # scored once, without decoding: the same again gives the same numbers
            return Evaluated(run_id=run_id, run_dir=Path(store) / run_id, created=False, task=task,
                             label=existing.get("label"), method=existing.get("method"), model=existing.get("model"),
                             evaluated=[], skipped=[LOGLIK], metrics=existing.get("metrics") or {}, notes=notes)
        outcome = _reevaluate(locate(Path(store) / run_id), decoding, limit_eval, device, allow, force, None, log)
        outcome.notes = notes + outcome.notes
        return outcome
    _require_opt_in(spec, task_args, allow, f"Evaluating {ref.name} on task {task}")
    decodings = parse_decodings(decoding) if decodes else []
    rc = RunConfig(experiment=EXTERNAL, model=model, task=task_cfg,
                   method=MethodConfig(label=f"{EXTERNAL}:{name}", method=meta["method"],
                                       args=dict(meta.get("args") or {})),
                   train=TrainConfig(), eval=EvalConfig(decoding=decodings or [DecodingConfig()]), seed=0,
                   output_dir=str(store))
    outcome = _new_external_run(Store(store), run_id, rc, spec, task_args, ref, meta, decodings, device, allow, log)
    if decoding and not outcome.evaluated:  # known only now: the task hooks do not say `uses_decoding`
        notes.append(f"task {task!r} was scored without generation, so --decoding {decoding} was not used")
    outcome.notes = notes + outcome.notes
    return outcome


def _finished_result(store: str | Path, run_id: str) -> dict | None:
    """The run's result when it is in the store and finished ok (read without writing anything)."""
    from peftlab.store import Store

    if not (Path(store) / run_id / "result.json").exists():
        return None
    result = Store(store, readonly=True).read_result(run_id)
    return result if result is not None and result.get("status") == RunStatus.OK else None


def _adapter_name(ref: RunRef) -> str:
    """What names an adapter from elsewhere in its label: the run's id, else its directory's name."""
    from peftlab.config import _id_part

    name = ref.run_dir.name if ref.run_dir is not None else ref.adapter_dir.resolve().name
    return _id_part(name)[:80] or "adapter"


def adapter_fingerprint(adapter_dir: Path) -> str:
    """sha256 over the adapter directory's files (names and bytes), peftlab's own notes left out."""
    digest = hashlib.sha256()
    for path in sorted(p for p in adapter_dir.rglob("*") if p.is_file()):
        if path.name in (META_FILE, MERGE_REPORT, EXPORT_REPORT):
            continue
        digest.update(str(path.relative_to(adapter_dir)).encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _external_run_id(name: str, model: Any, task: Any, method: str, adapter_dir: Path) -> str:
    """`external--<name>--<task>--<hash>`: the same adapter (by content) on the same base and task
    settings is the same run, whatever decodings it is evaluated with."""
    key = {"adapter": adapter_fingerprint(adapter_dir), "model": dataclasses.asdict(model),
           "task": dataclasses.asdict(task), "method": method}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{EXTERNAL}--{name}--{task.name}--{digest}"


def _task_config(store: str | Path, task: str, limit_eval: int | None) -> tuple[Any, str | None]:
    """The task settings to evaluate with: those of the store's finished runs of `task` when they all
    agree (so the adapter is scored on the same examples and pairs with them), else the defaults."""
    import yaml

    from peftlab.config import RunConfig, TaskConfig
    from peftlab.store import Store

    found: dict[str, Any] = {}
    root = Path(store)
    if root.is_dir():
        for result in Store(root, readonly=True).results(task=task, status=RunStatus.OK.value):
            if result.get("experiment") == EXTERNAL:
                continue
            try:
                rc = RunConfig.from_dict(yaml.safe_load((root / result["run_id"] / "config.yaml").read_text()))
            except (OSError, ValueError, TypeError, yaml.YAMLError):
                continue
            cfg = dataclasses.replace(rc.task, limit_train=None)
            found[json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)] = cfg
    if len(found) == 1:
        cfg = next(iter(found.values()))
        note = (f"scored like the store's other {task} runs: limit_eval {cfg.limit_eval}, max_length "
                f"{cfg.max_length}, source {cfg.source}" + (f", args {cfg.args}" if cfg.args else ""))
    else:
        cfg = TaskConfig(name=task)
        note = (f"the store's {task} runs differ in their task settings, so the task's defaults are used "
                f"(max_length {cfg.max_length})") if found else None
    if limit_eval:
        cfg = dataclasses.replace(cfg, limit_eval=limit_eval)
    return cfg, note


def _new_external_run(db: Any, run_id: str, rc: Any, spec: Any, task_args: dict, ref: RunRef, meta: dict,
                      decodings: list, device: str | None, allow: bool, log: Callable[[str], None]) -> Evaluated:
    """Record a new run for an adapter from elsewhere: copy it in, evaluate it, store it as the runner
    stores a run (status `running` first; `ok`, or `failed`/`cancelled` with the reason, at the end)."""
    import traceback

    import yaml

    from peftlab.runner import initial_result
    from peftlab.store import now

    lock = db.lock(run_id)
    if not lock.acquire():
        raise RuntimeError(f"run {run_id} is being evaluated by another process; try again when it finishes")
    try:
        db.delete_run(run_id, keep_lock=True)  # an earlier attempt that did not finish
        result = initial_result(rc, run_id, None)
        result.train = {}  # nothing was trained here
        result.extra["external"] = dict(meta.get("source") or {"kind": "run" if ref.run_dir else "adapter",
                                                               "path": str(ref.adapter_dir.resolve())})
        db.write_config(run_id, yaml.safe_load(yaml.safe_dump(rc.to_dict(), sort_keys=False)))
        db.write_result(result)
        try:
            _evaluate_into(db, result, rc, spec, task_args, ref, meta, decodings, device, allow, log)
        except KeyboardInterrupt:
            result.finish(RunStatus.CANCELLED, "interrupted by the user (Ctrl-C)", now())
            db.write_result(result)
            raise
        except Exception:
            result.finish(RunStatus.FAILED, traceback.format_exc(), now())
            db.write_result(result)
            raise
        result.finish(RunStatus.OK, None, now())
        db.write_result(result)
    finally:
        lock.release()
    return Evaluated(run_id=run_id, run_dir=db.run_dir(run_id), created=True, task=rc.task.name,
                     label=rc.method.label, method=rc.method.method, model=rc.model.name,
                     evaluated=list(result.evaluations or []), skipped=[], metrics=result.metrics or {})


def _evaluate_into(db: Any, result: Any, rc: Any, spec: Any, task_args: dict, ref: RunRef, meta: dict,
                   decodings: list, device: str | None, allow: bool, log: Callable[[str], None]) -> None:
    """The adapter copied into the run's `adapter/`, loaded from there, scored; `result` filled in."""
    from peftlab.evaluation.metrics import direction_of
    from peftlab.measure import choose_precision, count_parameters
    from peftlab.runner import check_evaluation, load_split, record_examples, vocab_size
    from peftlab.store import now
    from peftlab.tasks.common import LOGLIK
    from peftlab.train import weights_dtype

    adapter = copy_adapter(ref.adapter_dir, db.run_dir(result.run_id) / "adapter", meta)
    records, data_info = load_split(rc, spec, "test", rc.task.limit_eval)
    result.data = {"test": data_info}
    loaded = load_run(adapter, device=device)
    precision = choose_precision(rc.train.mixed_precision, str(model_device(loaded)), weights_dtype(loaded.model))
    result.cost = {**(result.cost or {}), **precision.record()}
    parts = _evaluate_each(rc, spec, task_args, loaded, records, decodings, allow, log, precision)
    evaluation = _combine(parts)
    elapsed = sum(seconds for _, _, seconds in parts)
    stamp = now()
    for ev in evaluation["evaluations"]:
        ev.setdefault("examples", evaluation.get("examples"))
        ev.update(source="peftlab evaluate", evaluated_at=stamp, limit_eval=rc.task.limit_eval,
                  data_fingerprint=data_info.get("fingerprint"))
    adapter_values = adapter_parameters(adapter)
    total = count_parameters(loaded.model)["total_params"]
    examples = evaluation.get("examples") or len(records)
    result.cost = {"trainable_params": adapter_values, "total_params": total,
                   "trainable_pct": 100.0 * adapter_values / total if total else 0.0,
                   "adapter_bytes": directory_bytes(adapter), "train_time_s": 0.0, "epoch_times_s": [], "steps": 0,
                   "tokens_trained": 0, "tokens_per_s": None, "eval_time_s": elapsed, "eval_examples": examples,
                   "eval_s_per_example": elapsed / max(examples, 1),
                   "eval_tokens_per_s": evaluation["eval_tokens"] / elapsed if evaluation.get("eval_tokens") else None}
    result.metrics = evaluation["metrics"]
    result.evaluations = evaluation["evaluations"]
    result.primary_metric = spec.primary_metric
    result.metric_directions = {k: d for k in evaluation["metrics"] if (d := direction_of(k, spec.metrics))}
    record_examples(db, result, evaluation)
    write_samples(db.run_dir(result.run_id),
                  {(d.name if d is not None else LOGLIK): ev.get("samples") or [] for d, ev, _ in parts})
    problem = check_evaluation(result.metrics, result.evaluations, vocab_size(loaded.model, loaded.tokenizer))
    if problem:
        raise ValueError(f"{ref.name}: {problem}")


def copy_adapter(source: Path, dest: Path, meta: dict) -> Path:
    """Copy an adapter directory into a run (`dest`), with its peftlab description (`meta`) beside it."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(META_FILE, MERGE_REPORT, EXPORT_REPORT, ".lock"))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def adapter_parameters(adapter_dir: Path) -> int:
    """Values stored in the adapter's weight files (its trained parameters), read from their headers."""
    total = 0
    for path in adapter_dir.rglob("*"):
        if path.suffix == ".safetensors":
            total += _safetensors_params(path)[0]
        elif path.suffix == ".bin" and path.name.startswith("adapter_model"):
            import torch

            total += sum(t.numel() for t in torch.load(path, map_location="cpu", weights_only=True).values())
    return total


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


__all__ = ["describe", "adapter_info", "evaluate_run", "Evaluated", "uses_decoding", "write_samples", "render_chat",
           "StopAwareStreamer", "META_FILE", "uses_chat", "default_system", "stop_strings", "model_device",
           "prompt_ids", "EXTERNAL"]
