"""The local executor: runs one after another in this process, sharing one ModelCache.

The base model is loaded once for the whole sweep and each run gets a deep copy (methods that
quantize the base load their own: a 4-bit model cannot be deep-copied safely).
"""

from __future__ import annotations

from typing import Any

from peftlab.executors.base import ProgressListener, SweepSummary, claim_and_run, record, resolve_setup
from peftlab.plan import SweepPlan


def run_local(plan: SweepPlan, store: Any, summary: SweepSummary, listener: ProgressListener, retry_failed: bool,
              setup: Any = None) -> None:
    from peftlab.runner import ModelCache

    fn = resolve_setup(setup)
    if fn is not None:
        fn()
    cache = ModelCache()
    for k, planned in enumerate(plan.to_run, 1):
        listener.run_started(k, planned.rc)
        outcome = claim_and_run(planned.rc, store, plan.sweep_id, retry_failed, progress=listener.step, cache=cache)
        record(summary, outcome, listener, k)
