"""The Ray executor: each run is a Ray task with its own resource request.

`peftlab sweep FILE --executor ray --address auto` joins a running cluster (no address: start a
local Ray instance for this sweep). Each run becomes one `@ray.remote` task with `num_cpus`,
`num_gpus`, `memory` (and custom `resources`) from the experiment's `executor:` mapping (defaults:
1 CPU, no GPU), so Ray packs as many runs per machine as the resources allow.

**Shared filesystem.** A task opens its own `Store` on the same root as the driver and writes its
run directory there, so every node must see the store at the same absolute path (NFS, a mounted
bucket, or a single machine) and `flock` must work on it (it is what keeps two sweeps, or a
re-submitted task, from running one run twice). The model directory / cache (`PEFTLAB_CACHE`,
`HF_HOME`) must be reachable from the workers too.

**Environment.** Workers receive the driver's `HF_*`, `PEFTLAB_*`, `TRANSFORMERS_*`, `WANDB_*`,
`MLFLOW_*` and `TOKENIZERS_PARALLELISM` variables through `runtime_env.env_vars`, plus the
experiment's `executor.env`; `executor.setup` (`"package.module:function"`) is called in the worker
before each run (make it idempotent), e.g. to register a custom task.

**Failures.** A failure inside a run is recorded by the runner as usual (`failed` with its
traceback). If the worker process itself dies (out of memory, segfault, node lost) the driver
takes the run's lock and records it `failed` with the Ray error. Ctrl-C cancels the outstanding
tasks: running ones get a KeyboardInterrupt and are recorded `cancelled`, queued ones never start.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Iterable

from peftlab.config import ConfigError, RunConfig
from peftlab.executors.base import Outcome, ProgressListener, SweepSummary, claim_and_run, record, resolve_setup
from peftlab.plan import PlannedRun, SweepPlan
from peftlab.status import OutcomeKind, RunStatus
from peftlab.tasks.registry import task_paths

ENV_PREFIXES = ("HF_", "PEFTLAB_", "TRANSFORMERS_", "WANDB_", "MLFLOW_")
ENV_NAMES = ("TOKENIZERS_PARALLELISM",)
CANCEL_GRACE_S = 20.0


def worker_env(extra: dict | None = None) -> dict[str, str]:
    """Environment variables the workers need: the driver's HF/peftlab/tracker settings + `extra`."""
    env = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES) or k in ENV_NAMES}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    outside = [str(p) for p in task_paths()[1:]]  # tasks from outside the package, however registered
    if outside:
        env["PEFTLAB_TASK_PATHS"] = os.pathsep.join(dict.fromkeys(outside))
    env.update({str(k): str(v) for k, v in (extra or {}).items()})
    return env


def task_options(opts: dict) -> dict:
    """Ray task options for one run from the experiment's `executor:` mapping."""
    options: dict[str, Any] = {
        "num_cpus": float(opts.get("num_cpus", 1)),
        "num_gpus": float(opts.get("num_gpus", 0) or 0),
        "max_retries": int(opts.get("max_retries", 0) or 0),
        "runtime_env": {"env_vars": worker_env(opts.get("env"))},
    }
    if opts.get("memory_gb"):
        options["memory"] = int(float(opts["memory_gb"]) * 2**30)
    if opts.get("resources"):
        options["resources"] = {str(k): float(v) for k, v in opts["resources"].items()}
    return options


def remote_run(rc: RunConfig, store_root: str, sweep_id: str, retry_failed: bool, setup: Any) -> dict:
    """The body of one Ray task (runs in the worker): setup hook, then claim-and-run on the shared store."""
    from peftlab.logs import quiet_libraries
    from peftlab.store import Store

    quiet_libraries()  # as on the CLI: no HF progress bars or library chatter in the driver's output
    fn = resolve_setup(setup)
    if fn is not None:
        fn()
    outcome = claim_and_run(rc, Store(store_root), sweep_id, retry_failed)
    return {"kind": outcome.kind.value, "run_id": outcome.run_id, "result": outcome.result, "seconds": outcome.seconds,
            "host": socket.gethostname(), "pid": os.getpid()}


def record_lost(store: Any, rc: RunConfig, sweep_id: str, error: BaseException) -> Outcome:
    """The worker running `rc` died (or the task failed outside the runner): record the run failed."""
    from peftlab.runner import initial_result
    from peftlab.store import now

    run_id = rc.run_id()
    lock = store.lock(run_id)
    if not lock.acquire():  # someone else is running it now (a retry, another sweep): leave it
        return Outcome(OutcomeKind.BUSY, run_id)
    try:
        current = store.read_run_result(run_id)
        if current and current.status == RunStatus.OK:
            return Outcome(OutcomeKind.RAN, run_id, current.to_dict())
        result = current or initial_result(rc, run_id, sweep_id)
        text = str(error).strip() or type(error).__name__
        result.sweep_id = sweep_id
        result.finish(RunStatus.FAILED, f"the Ray task running this run was lost ({type(error).__name__}): {text}",
                      now())
        store.write_result(result)
        return Outcome(OutcomeKind.RAN, run_id, result.to_dict())
    finally:
        lock.release()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'peftlab[ray]' (or 'ray[default]')") from None
    return ray


def run_ray(plan: SweepPlan, store: Any, summary: SweepSummary, listener: ProgressListener, retry_failed: bool,
            setup: Any, opts: dict, address: str | None, stages: Iterable[list[PlannedRun]] | None = None) -> None:
    """Run `stages` (default: the plan's runs to run, as one stage) on Ray; a stage starts when the one before it
    has finished (a tuned experiment's final runs wait for every trial)."""
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"address": address, "logging_level": logging.WARNING}
        if address is None:
            kwargs["include_dashboard"] = False
        ray.init(**kwargs)
    try:
        options = task_options(opts)
        k = 0
        for stage in (stages if stages is not None else [plan.to_run]):
            k = _drive(ray, plan, stage, k, store, summary, listener, retry_failed, setup, options)
    finally:
        if started_here:
            ray.shutdown()


def _drive(ray: Any, plan: SweepPlan, runs: list[PlannedRun], k: int, store: Any, summary: SweepSummary,
           listener: ProgressListener, retry_failed: bool, setup: Any, options: dict) -> int:
    """Submit `runs`, record each as it finishes (numbered on from `k`); returns the last number given."""
    from peftlab.store import now

    if not runs:
        return k
    task = ray.remote(remote_run)
    root = str(store.root.resolve())
    submitted_at = now()
    pending: dict[Any, Any] = {}
    for planned in runs:
        ref = task.options(name=f"peftlab:{planned.run_id}", **options).remote(
            planned.rc, root, plan.sweep_id, retry_failed, setup)
        pending[ref] = planned
    ask = ", ".join(f"{name}={options[name]:g}" for name in ("num_cpus", "num_gpus"))
    if "memory" in options:
        ask += f", memory={options['memory'] / 2**30:g}GiB"
    listener.note(f"submitted {len(pending)} run(s) to Ray ({ask} each; cluster: "
                 f"{_cluster_summary(ray)})")
    listener.parallel()
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not done:
                listener.waiting(k, len(pending))
                continue
            for ref in done:
                planned = pending.pop(ref)
                k += 1
                record(summary, _collect(ray, ref, planned, store, plan.sweep_id), listener, k)
    except KeyboardInterrupt:
        listener.note(f"cancelling {len(pending)} outstanding Ray task(s)…")
        for ref in pending:
            ray.cancel(ref)  # running: KeyboardInterrupt in the task → the runner records it cancelled
        deadline = time.monotonic() + CANCEL_GRACE_S
        while pending and time.monotonic() < deadline:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.1, deadline - time.monotonic()))
            for ref in done:
                planned = pending.pop(ref)
                try:
                    data = ray.get(ref)
                    outcome = Outcome(OutcomeKind(data["kind"]), data["run_id"], data["result"], data["seconds"])
                except Exception:  # noqa: BLE001 - cancelled: queued (never started) or running (recorded)
                    result = store.read_result(planned.run_id)
                    if (not result or result.get("status") != RunStatus.CANCELLED or result.get("sweep_id") != plan.sweep_id
                            or (result.get("started_at") or "") < submitted_at):
                        continue
                    outcome = Outcome(OutcomeKind.RAN, planned.run_id, result)
                k += 1
                record(summary, outcome, listener, k)
        raise
    return k


def _collect(ray: Any, ref: Any, planned: Any, store: Any, sweep_id: str) -> Outcome:
    try:
        data = ray.get(ref)
    except ray.exceptions.RayError as exc:  # worker died (OOM, crash) or the task failed outside the runner
        return record_lost(store, planned.rc, sweep_id, exc)
    return Outcome(OutcomeKind(data["kind"]), data["run_id"], data["result"], data["seconds"])


def _cluster_summary(ray: Any) -> str:
    try:
        res = ray.cluster_resources()
    except Exception:  # noqa: BLE001 - informational only
        return "?"
    parts = [f"{res.get('CPU', 0):g} CPU", f"{res.get('GPU', 0):g} GPU"]
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"{nodes} node(s), " + ", ".join(parts)
