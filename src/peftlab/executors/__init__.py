"""Where a sweep's runs execute: `local` (in this process, one after another) or `ray` (a Ray cluster).

`run_sweep` takes a plan (`peftlab.plan.make_plan`) and runs what is left through an executor; every
executor starts runs only through `claim_and_run` (`executors.base`), so resume and store-sharing
rules are the same everywhere, and reports progress to the `ProgressListener` it is handed.

Executors run *stages*, one after another: a plain experiment has one; a tuned one (`peftlab.tuning`)
has its trials, then — once every trial has finished and every method's selection is recorded — the
final runs on the test split (`tuned_stages`).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from peftlab.config import ConfigError, ExperimentConfig
from peftlab.executors.base import (
    Outcome,
    ProgressListener,
    SilentListener,
    SweepInterrupted,
    SweepSummary,
    claim_and_run,
    record,
    resolve_setup,
)
from peftlab.plan import EXECUTORS, PlannedRun, SweepPlan, check_run_options, make_plan, plan_runs
from peftlab.status import FINISHED_BADLY, PlanState


def run_sweep(exp: ExperimentConfig, store: Any = None, executor: str = "local", retry_failed: bool = False,
              listener: ProgressListener | None = None, ray_address: str | None = None,
              setup: Callable[[], Any] | str | None = None, plan: SweepPlan | None = None) -> SweepSummary:
    """Run every run of `exp` that is not done yet; returns what happened.

    `store`: a `Store`, a path, or None (the experiment's `output_dir`). `executor`: `local` or
    `ray` (`ray_address`: None starts a local Ray, `"auto"` joins a running cluster). `setup`: a
    callable or `"module:function"` run before the runs in each process that executes them (e.g.
    to register a custom task); the experiment's `executor.setup` is used when not given.
    `listener`: told about every run (default: silent).
    Ctrl-C raises `SweepInterrupted` (a KeyboardInterrupt) carrying the summary so far.
    """
    from peftlab.store import Store

    opts = check_run_options(exp)
    store = store if isinstance(store, Store) else Store(store or exp.output_dir)
    plan = plan or make_plan(exp, store, retry_failed)
    setup = setup if setup is not None else opts.get("setup")
    listener = listener or SilentListener()
    summary = SweepSummary(sweep_id=plan.sweep_id, experiment=exp.name, store=str(store.root), executor=executor,
                           total=0)
    if exp.tuning is None:
        _book(summary, plan.runs)
        stages: Iterator[list[PlannedRun]] = iter([plan.to_run])
    else:
        stages = tuned_stages(plan, store, summary, listener)
    listener.sweep_started(plan)
    start = time.perf_counter()
    try:
        if executor == "local":
            from peftlab.executors.local import run_local

            run_local(plan, store, summary, listener, retry_failed, setup, stages)
        elif executor == "ray":
            from peftlab.executors.ray_executor import run_ray

            run_ray(plan, store, summary, listener, retry_failed, setup, opts,
                    ray_address if ray_address is not None else opts.get("address"), stages)
        else:
            raise ConfigError(f"executor: {executor!r} is not valid; valid: {', '.join(EXECUTORS)}")
    except KeyboardInterrupt as exc:
        summary.interrupted = True
        raise SweepInterrupted(summary) from exc
    finally:
        summary.duration_s = time.perf_counter() - start
        listener.close()
    return summary


def _book(summary: SweepSummary, planned: list[PlannedRun]) -> None:
    """Count planned runs into the summary: the total, and those this sweep will not run (ok, busy, failed)."""
    summary.total += len(planned)
    summary.already_ok += [p.run_id for p in planned if p.state == PlanState.OK]
    summary.busy += [p.run_id for p in planned if p.state == PlanState.BUSY]
    summary.skipped_failed += [p.run_id for p in planned if p.state in FINISHED_BADLY and p.action == "skip"]


def tuned_stages(plan: SweepPlan, store: Any, summary: SweepSummary,
                 listener: ProgressListener) -> Iterator[list[PlannedRun]]:
    """A tuned experiment's stages: its trials; then (after they ran) every selection is recorded and, when
    every method has one, the final runs on the test split are planned from the store and run."""
    from peftlab import tuning

    exp = plan.experiment
    trials = [p for p in plan.runs if p.rc.trial is not None]
    _book(summary, trials)
    yield [p for p in trials if p.action == "run"]
    chosen, waiting = tuning.record_selections(exp, store)
    for selection in chosen.values():
        listener.note(tuning.describe(selection))
        if selection.get("selected") is None:
            summary.pending.append(f"{selection['task']}/{selection['label']}: {selection['reason']}")
    if waiting:
        summary.pending += [f"{name}: trials not finished" for name in waiting]
        listener.note(f"the final runs on the test split wait until every method is selected; trials not finished: "
                      f"{', '.join(waiting)} (busy in another process, or interrupted: run the sweep again)")
        return
    finals = plan_runs(tuning.final_runs(exp, chosen), store, plan.retry_failed)
    _book(summary, finals)
    todo = [p for p in finals if p.action == "run"]
    listener.note(f"every method is selected: {len(finals)} final run(s) on the test split, {len(todo)} to run")
    yield todo


__all__ = ["run_sweep", "tuned_stages", "Outcome", "ProgressListener", "SilentListener", "SweepInterrupted", "SweepSummary",
           "claim_and_run", "record", "resolve_setup"]
