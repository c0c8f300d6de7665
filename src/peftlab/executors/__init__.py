"""Where a sweep's runs execute: `local` (in this process, one after another) or `ray` (a Ray cluster).

`run_sweep` takes a plan (`peftlab.plan.make_plan`) and runs what is left through an executor; every
executor starts runs only through `claim_and_run` (`executors.base`), so resume and store-sharing
rules are the same everywhere, and reports progress to the `ProgressListener` it is handed.
"""

from __future__ import annotations

import time
from typing import Any, Callable

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
from peftlab.plan import EXECUTORS, SweepPlan, check_run_options, make_plan
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
                           total=len(plan.runs), already_ok=[p.run_id for p in plan.runs if p.state == PlanState.OK],
                           busy=[p.run_id for p in plan.runs if p.state == PlanState.BUSY],
                           skipped_failed=[p.run_id for p in plan.runs
                                           if p.state in FINISHED_BADLY and p.action == "skip"])
    listener.sweep_started(plan)
    start = time.perf_counter()
    try:
        if executor == "local":
            from peftlab.executors.local import run_local

            run_local(plan, store, summary, listener, retry_failed, setup)
        elif executor == "ray":
            from peftlab.executors.ray_executor import run_ray

            run_ray(plan, store, summary, listener, retry_failed, setup, opts,
                    ray_address if ray_address is not None else opts.get("address"))
        else:
            raise ConfigError(f"executor: {executor!r} is not valid; valid: {', '.join(EXECUTORS)}")
    except KeyboardInterrupt as exc:
        summary.interrupted = True
        raise SweepInterrupted(summary) from exc
    finally:
        summary.duration_s = time.perf_counter() - start
        listener.close()
    return summary


__all__ = ["run_sweep", "Outcome", "ProgressListener", "SilentListener", "SweepInterrupted", "SweepSummary",
           "claim_and_run", "record", "resolve_setup"]
