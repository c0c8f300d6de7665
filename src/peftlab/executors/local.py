"""The local executor: runs one after another in this process, sharing one ModelCache.

The base model is loaded once for the whole sweep and each run gets a deep copy (methods that
quantize the base load their own: a 4-bit model cannot be deep-copied safely).
"""

from __future__ import annotations

from typing import Any, Iterable

from peftlab.executors.base import ProgressListener, SweepSummary, claim_and_run, record, resolve_setup
from peftlab.plan import PlannedRun, SweepPlan


def run_local(plan: SweepPlan, store: Any, summary: SweepSummary, listener: ProgressListener, retry_failed: bool,
              setup: Any = None, stages: Iterable[list[PlannedRun]] | None = None) -> None:
    """Run `stages` (default: the plan's runs to run, as one stage) in order; `k` counts on across stages."""
    from peftlab.runner import ModelCache

    fn = resolve_setup(setup)
    if fn is not None:
        fn()
    cache = ModelCache()
    k = 0
    for stage in (stages if stages is not None else [plan.to_run]):
        for planned in stage:
            k += 1
            listener.run_started(k, planned.rc)
            outcome = claim_and_run(planned.rc, store, plan.sweep_id, retry_failed, progress=listener.step,
                                    cache=cache, eval_progress=listener.evaluating)
            record(summary, outcome, listener, k)
