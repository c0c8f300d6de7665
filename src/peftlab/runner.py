"""Execute one run: model → method → data → train → evaluate → store.

This is the only place the stages meet. Whatever happens, the run ends in the store with a
status: `ok`, `failed` (with the traceback), `diverged` or `cancelled` (Ctrl-C, which is then
re-raised so a sweep stops too). `diverged` means the training or validation loss became NaN/inf,
or the evaluation is absurd (`check_evaluation`): a metric that is NaN/inf, or a token perplexity
above the vocabulary size (worse than a uniform guess over the model's output vocabulary, taken
from the model at evaluation time); the metrics are kept in the result and the error names the
metric and its value. When the store itself cannot be written (`StoreError`: full disk,
read-only file system) the error propagates: nothing can be recorded, so the sweep stops with
that one sentence and the run reads as interrupted later.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
import traceback
from typing import Any, Callable

import torch

from peftlab.adapters import save_adapter
from peftlab.config import ConfigError, EvalConfig, RunConfig, TaskConfig
from peftlab.data.batching import make_batches
from peftlab.evaluation.metrics import direction_of
from peftlab.evaluation.progress import EvalProgress, ProgressCallback
from peftlab.measure import autocast_context, choose_precision, count_parameters, provenance, training_cost
from peftlab.methods import ApplyContext, get_method
from peftlab.methods.registry import check_task_type
from peftlab.models import (
    ModelArchitecture,
    default_device,
    load_model,
    load_tokenizer,
    model_architecture,
    resolve_path,
)
from peftlab.plan import architecture_problem
from peftlab.result import EXAMPLES_FILE, RunResult
from peftlab.status import RunStatus
from peftlab.store import RunLock, Store, StoreError, now
from peftlab.tasks import get_task
from peftlab.tasks.api import DATA_SEED, EvalContext
from peftlab.tasks.examples import training_examples
from peftlab.train import Diverged, train, weights_dtype

log = logging.getLogger("peftlab")
#: Metrics that are token-level perplexities: a uniform guess over V output tokens scores exactly V.
TOKEN_PERPLEXITY_METRICS = ("perplexity", "token_perplexity")


class RunBusy(RuntimeError):
    """Another process holds this run's lock (a second sweep on the same store)."""


class ModelCache:
    """Keeps loaded base models so a sweep loads each once; runs get a deep copy (never shared)."""

    def __init__(self) -> None:
        self._models: dict[tuple, Any] = {}

    def get(self, key: tuple, loader: Callable[[], Any]) -> Any:
        if key not in self._models:
            self._models[key] = loader()
        return copy.deepcopy(self._models[key])


def execute_run(rc: RunConfig, store: Store, sweep_id: str | None = None,
                progress: Callable[[int, int, float], None] | None = None,
                cache: ModelCache | None = None, lock: RunLock | None = None,
                eval_progress: ProgressCallback | None = None) -> dict:
    """Run `rc` and record it; returns the recorded result as a dict (`RunResult.to_dict()`, what
    `Store.read_result` gives back).

    `lock`: the run's lock already held by the caller (a sweep takes it first, so it can re-check the
    status and clear a stale run directory under it); the caller then also releases it.
    `progress(step, steps, loss)` follows training, `eval_progress(phase, done, total)` the evaluation.
    """
    run_id = rc.run_id()
    own_lock = lock is None
    if lock is None:
        lock = store.lock(run_id)
        if not lock.acquire():
            raise RunBusy(f"run {run_id} is being run by another process")
    handler = _attach_log(store.run_dir(run_id) / "log.txt")
    result = initial_result(rc, run_id, sweep_id)
    try:
        store.write_config(run_id, rc.to_dict())
        store.write_result(result)
        _execute(rc, store, result, progress, cache, eval_progress)
    except KeyboardInterrupt:
        _finish(store, result, RunStatus.CANCELLED, "interrupted by the user (Ctrl-C)")
        raise
    except StoreError:  # the store cannot be written: recording a failure would fail the same way
        raise
    except Diverged as exc:
        _finish(store, result, RunStatus.DIVERGED, str(exc))
    except Exception:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
        _finish(store, result, RunStatus.FAILED, traceback.format_exc())
    else:
        _finish(store, result, RunStatus.OK, None)
    finally:
        log.removeHandler(handler)
        handler.close()
        if own_lock:
            lock.release()
    return result.to_dict()


def _finish(store: Store, result: RunResult, status: RunStatus, error: str | None) -> None:
    result.finish(status, error, now())
    if error:
        log.error("run %s %s: %s", result.run_id, status, error.strip().splitlines()[-1])
    store.write_result(result)


def _attach_log(path: Any) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def initial_result(rc: RunConfig, run_id: str, sweep_id: str | None) -> RunResult:
    """The result of a run that has just started (status `running`); executors record it before running."""
    return RunResult(
        run_id=run_id, experiment=rc.experiment, sweep_id=sweep_id, status=RunStatus.RUNNING, pid=os.getpid(),
        error=None, label=rc.method.label, method=rc.method.method, method_args=dict(rc.method.args),
        model=rc.model.name, task=rc.task.name, seed=rc.seed, grid=dict(rc.grid),
        train=dataclasses.asdict(rc.train), config_hash=rc.config_hash(), provenance=provenance(),
        started_at=now(), finished_at=None, extra={"tuning": dict(rc.tuning)} if rc.tuning else {},
    )


def _seed_everything(seed: int, threads: int | None) -> None:
    from accelerate.utils import set_seed

    if threads:
        torch.set_num_threads(threads)
    set_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def load_split(rc: RunConfig, spec: Any, role: str, limit: int | None) -> tuple[list[dict], dict]:
    """The records of one role (train/validation/test) of the run's task, and where they came from.

    A tuning trial is refused the test split (`peftlab.tuning.check_split`); with `rc.holdout` a task without
    a validation split gets one held out of train (`peftlab.tuning.holdout_split`)."""
    from peftlab.data import load_records
    from peftlab.tuning import check_split, holdout_split

    check_split(rc, role)
    if rc.holdout and role in ("train", "validation") and spec.splits.get("validation") is None:
        return holdout_split(rc, spec, role, limit)
    split = spec.splits.get(role)
    if split is None:
        return [], {}
    return load_records(rc.task.name, split, source=rc.task.source, limit=limit, seed=DATA_SEED)


def _execute(rc: RunConfig, store: Store, result: RunResult, progress: Any, cache: ModelCache | None,
             eval_progress: ProgressCallback | None = None) -> None:
    spec = get_task(rc.task.name)
    task_args = spec.resolve_args(rc.task.args)
    method = get_method(rc.method.method)
    method_args = method.resolve_args(rc.method.args)
    result.method_args = method_args
    device = default_device()
    _seed_everything(rc.seed, rc.train.num_threads)

    # The model's config (never its weights) says what it is; a method or task that cannot run on it stops here.
    architecture = model_architecture(rc.model.name, rc.model.revision, rc.model.trust_remote_code, rc.model.gguf_file)
    problem = architecture_problem(architecture, rc)
    if problem:
        raise ConfigError(problem)
    tokenizer = load_tokenizer(rc.model.name, rc.model.revision, rc.model.trust_remote_code)
    key = (rc.model.name, rc.model.dtype, rc.model.revision, method.quantize_base, device)
    loader = lambda: load_model(rc.model.name, rc.model.dtype, method.quantize_base, device,  # noqa: E731
                                rc.model.revision, rc.model.trust_remote_code, rc.model.gguf_file)
    base = cache.get(key, loader) if cache and not method.quantize_base else loader()
    ctx = ApplyContext(tokenizer=tokenizer, model_name=rc.model.name, model_path=resolve_path(rc.model.name)[0],
                       seed=rc.seed, architecture=architecture)
    model = check_task_type(method.name, method.apply(base, method_args, ctx), ctx)
    params = count_parameters(model)
    log.info("run %s: %s on %s, %d trainable of %d (%.4f%%)", result.run_id, method.name, rc.task.name,
             params["trainable_params"], params["total_params"], params["trainable_pct"])

    train_records, train_info = load_split(rc, spec, "train", rc.task.limit_train) if method.trains else ([], {})
    val_records, val_info = load_split(rc, spec, "validation", rc.task.limit_eval) if method.trains else ([], {})
    eval_records, eval_info = ((val_records, val_info) if rc.eval_split == "validation" and method.trains
                               else load_split(rc, spec, rc.eval_split, rc.task.limit_eval))  # trials: validation
    result.data = {k: v for k, v in (("train", train_info), ("validation", val_info), (rc.eval_split, eval_info)) if v}

    cost: dict[str, Any] = dict(params)
    if method.trains:
        outcome = _train(rc, spec, task_args, method, model, tokenizer, train_records, val_records, device, progress,
                         store.run_dir(result.run_id), architecture)
        precision = outcome.precision
        cost.update(
            train_time_s=outcome.train_time_s, epoch_times_s=outcome.epoch_times_s, steps=outcome.steps,
            tokens_trained=outcome.tokens, tokens_per_s=outcome.tokens / max(outcome.train_time_s, 1e-9),
            validation_time_s=outcome.val_time_s,
            **training_cost(params["total_params"], params["trainable_params"], outcome.tokens, outcome.train_time_s,
                            method.full, device, precision.torch_dtype, rc.train.peak_tflops),
            **outcome.record(), memory_breakdown=outcome.memory_breakdown, **outcome.memory,
        )
        result.curves = outcome.curves
    else:
        precision = choose_precision(rc.train.mixed_precision, device, weights_dtype(model))
        cost.update(train_time_s=0.0, epoch_times_s=[], steps=0, tokens_trained=0, tokens_per_s=None,
                    **precision.record())
    cost["adapter_bytes"] = _save(rc, method.name, method_args, model, store.run_dir(result.run_id))
    result.cost = cost
    store.write_result(result)  # training is safe on disk before evaluation starts

    with autocast_context(precision, device):  # every row of a comparison is scored in the arithmetic it trained in
        evaluation, eval_time = evaluate_step(rc, spec, model, tokenizer, eval_records, device, method=method.name,
                                              task_args=task_args, on_progress=eval_progress,
                                              architecture=architecture)
    cost.update(eval_time_s=eval_time, eval_examples=evaluation.get("examples"),
                eval_s_per_example=eval_time / max(evaluation.get("examples") or 1, 1),
                eval_tokens_per_s=(evaluation["eval_tokens"] / eval_time) if evaluation.get("eval_tokens") else None)
    result.metrics = evaluation["metrics"]
    result.evaluations = evaluation.get("evaluations", [])
    result.primary_metric = spec.primary_metric
    result.metric_directions = {k: d for k in evaluation["metrics"] if (d := direction_of(k, spec.metrics))}
    if evaluation.get("samples"):
        _write_samples(store.run_dir(result.run_id), evaluation["samples"])
    with autocast_context(precision, device):
        retention, retention_scores, retention_time = (retention_step(rc, model, tokenizer, device, eval_progress,
                                                                      architecture)
                                                       if rc.trial is None else ({}, [], 0.0))  # trials: test unread
    if retention:
        result.retention = retention
        cost["retention_time_s"] = retention_time
        evaluation = {**evaluation, "scores": [*(evaluation.get("scores") or []), *retention_scores]}
    record_examples(store, result, evaluation)
    problem = check_evaluation(result.metrics, result.evaluations, vocab_size(model, tokenizer))
    if problem:
        raise Diverged(problem)


def evaluate_step(rc: RunConfig, spec: Any, model: Any, tokenizer: Any, records: list[dict], device: str,
                  method: str | None = None, task_args: dict | None = None,
                  eval_cfg: EvalConfig | None = None, on_progress: ProgressCallback | None = None,
                  architecture: ModelArchitecture | None = None) -> tuple[dict, float]:
    """Score `model` on `records` with the task's `evaluate` hook: (its evaluation, seconds taken).

    The one evaluate step: the runner calls it after training, `peftlab evaluate` on a saved run
    (with its own decoding strategies in `eval_cfg`). `on_progress(phase, done, total)` hears every
    scored batch. `architecture`: the model's (the runner read it before loading), else read from the model.
    """
    architecture = architecture or ModelArchitecture.of(model)
    ctx = EvalContext(
        model=model, tokenizer=tokenizer, records=records,
        args=task_args if task_args is not None else spec.resolve_args(rc.task.args),
        max_length=rc.task.max_length, device=str(device), eval=eval_cfg or rc.eval, spec=spec,
        method=method or rc.method.method, source=rc.task.source, data_seed=DATA_SEED,
        progress=EvalProgress(on_progress), encoder_decoder=architecture.encoder_decoder)
    t0 = time.perf_counter()
    model.eval()
    evaluation = spec.module.evaluate(spec, ctx)
    return evaluation, time.perf_counter() - t0


def retention_step(rc: RunConfig, model: Any, tokenizer: Any, device: str,
                   on_progress: ProgressCallback | None = None, architecture: ModelArchitecture | None = None
                   ) -> tuple[dict, list[dict], float]:
    """What the run keeps outside its task: forgetting on general text (`eval.forgetting_texts` paragraphs,
    `peftlab.evaluation.forgetting`) and each of `eval.retention_tasks` scored by its own evaluation (its
    test split, `limit_eval` and `max_length` of the run's task). Returns ({name: entry}, their score sets
    (named `forgetting`, `retention:<task>:<set>`), seconds); entries hold `metrics`, `per_example`,
    `per_example_source`, `examples` and `data`. An encoder-decoder model skips forgetting (general-text loss
    is a causal-LM measure): its entry holds only `skipped`, the reason, and the run's log says it."""
    from peftlab.evaluation.forgetting import (
        EVALUATION,
        GENERAL_TASK,
        SKIPPED_ENCODER_DECODER,
        TOKENS,
        general_texts,
        score_general_text,
    )
    from peftlab.tasks.common import example_ids

    t0 = time.perf_counter()
    entries: dict[str, dict] = {}
    score_sets: list[dict] = []
    architecture = architecture or ModelArchitecture.of(model)
    if rc.eval.forgetting_texts and rc.task.name != GENERAL_TASK and architecture.encoder_decoder:
        entries[EVALUATION] = {"skipped": SKIPPED_ENCODER_DECODER}
        log.info("forgetting not measured: %s", SKIPPED_ENCODER_DECODER)
    elif rc.eval.forgetting_texts and rc.task.name != GENERAL_TASK:
        records, info = general_texts(rc.eval.forgetting_texts, rc.task.source, DATA_SEED)
        model.eval()
        entry = score_general_text(model, tokenizer, records, example_ids(records), device,
                                   max(1, rc.eval.batch_size) * TOKENS, EvalProgress(on_progress))
        score_sets += entry.pop("scores")
        entries[EVALUATION] = {**entry, "data": info}
    for name in rc.eval.retention_tasks:
        task_rc = dataclasses.replace(rc, task=TaskConfig(name=name, source=rc.task.source,
                                                          limit_eval=rc.task.limit_eval, max_length=rc.task.max_length))
        spec = get_task(name)
        records, info = load_split(task_rc, spec, "test", rc.task.limit_eval)
        evaluation, _ = evaluate_step(task_rc, spec, model, tokenizer, records, device, on_progress=on_progress)
        prefix = f"retention:{name}:"
        score_sets += [{**ss, "evaluation": prefix + ss["evaluation"]} for ss in evaluation.get("scores") or []]
        entries[name] = {"metrics": evaluation["metrics"], "primary_metric": spec.primary_metric,
                         "per_example": evaluation.get("per_example"),
                         "per_example_source": {m: prefix + ss for m, ss in
                                                (evaluation.get("per_example_source") or {}).items()},
                         "examples": evaluation.get("examples"), "data": info}
    return entries, score_sets, time.perf_counter() - t0


def example_lines(evaluation: dict, names: dict[str, str] | None = None) -> list[dict]:
    """The examples.jsonl lines of an evaluation's score sets (`names` renames score sets)."""
    from peftlab.tasks.common import example_lines as lines

    names = names or {}
    return lines([{**ss, "evaluation": names.get(ss["evaluation"], ss["evaluation"])}
                  for ss in evaluation.get("scores") or []])


def record_examples(store: Store, result: RunResult, evaluation: dict) -> None:
    """Write the run's per-example scores (examples.jsonl, atomically, the whole file) and point the result at
    them (`per_example`, `per_example_source`, `examples_file`); before the result says `ok`."""
    if not evaluation.get("scores"):
        return
    store.write_examples(result.run_id, example_lines(evaluation))
    result.per_example = dict(evaluation.get("per_example") or {}) or None
    result.per_example_source = dict(evaluation.get("per_example_source") or {}) or None
    result.examples_file = EXAMPLES_FILE


def vocab_size(model: Any, tokenizer: Any = None) -> int | None:
    """Size of the model's output vocabulary (rows of its output embedding), else the config's or
    the tokenizer's; None when none of them says."""
    try:
        out = model.get_output_embeddings()
        rows = getattr(getattr(out, "weight", None), "shape", None)
        if rows is not None and len(rows) == 2 and int(rows[0]) > 0:
            return int(rows[0])
    except (AttributeError, NotImplementedError, TypeError):
        pass
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(size, int) and size > 0:
        return size
    if tokenizer is not None:
        try:
            return len(tokenizer) or None
        except TypeError:
            return None
    return None


def check_evaluation(metrics: dict, evaluations: list | None = None, vocab: int | None = None) -> str | None:
    """Why an evaluation is absurd (None: it is plausible): a NaN/inf metric, or a token perplexity
    above `vocab` (a uniform guess over the vocabulary scores exactly `vocab`, so more means the
    model is worse than guessing, e.g. after lr=1e3)."""
    sources = [("", metrics or {})]
    for ev in evaluations or []:
        if isinstance(ev, dict) and isinstance(ev.get("metrics"), dict):
            sources.append((f" (evaluation {ev.get('name') or '?'})", ev["metrics"]))
    for where, values in sources:
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                return f"evaluation diverged: metric {name}{where} is {value}"
            if vocab and name in TOKEN_PERPLEXITY_METRICS and value > vocab:
                return (f"evaluation diverged: metric {name}{where} is {value:.4g}, above the vocabulary size "
                        f"({vocab}) that a uniform guess scores")
    return None


def _train(rc: RunConfig, spec: Any, task_args: dict, method: Any, model: Any, tokenizer: Any,
           train_records: list[dict], val_records: list[dict], device: str, progress: Any, run_dir: Any,
           architecture: ModelArchitecture) -> Any:
    seq2seq = architecture.encoder_decoder
    examples = [e for e in training_examples(spec, tokenizer, train_records, rc.task.max_length,
                                             rc.train.packing, task_args, seq2seq)
                if any(label != -100 for label in e["labels"])]
    if not examples:
        raise ValueError(f"task {rc.task.name}: no training examples (check limit_train and max_length)")
    val_examples = training_examples(spec, tokenizer, val_records, rc.task.max_length, rc.train.packing, task_args,
                                     seq2seq)
    val_batches = make_batches(val_examples, rc.train.batch_size, tokenizer.pad_token_id, seed=DATA_SEED,
                               shuffle=False) if val_examples else []
    return train(model, examples, val_batches, rc.train, rc.seed, tokenizer.pad_token_id, device,
                 on_step=method.on_step, progress=progress, trackers=rc.trackers or None, project_dir=str(run_dir),
                 encoder_decoder=seq2seq)


def _save(rc: RunConfig, method_name: str, method_args: dict, model: Any, run_dir: Any) -> int | None:
    if not rc.train.save_adapter:
        return None
    meta = {"args": method_args, "model": dataclasses.asdict(rc.model), "task": rc.task.name, "seed": rc.seed}
    return save_adapter(model, method_name, run_dir / "adapter", meta)


def _write_samples(run_dir: Any, samples: list[dict]) -> None:
    import json

    from peftlab.store import atomic_write_text

    atomic_write_text(run_dir / "samples.jsonl", "".join(json.dumps(s, default=str) + "\n" for s in samples))
