"""Run statuses and planned-run states: one vocabulary for the runner, the store, the plan and the CLI.

Both are `str` enums, so a member equals its text (`RunStatus.OK == "ok"`), is written to JSON and
SQLite as that text, and formats as it (`f"{RunStatus.OK}"` is `ok`).
"""

from __future__ import annotations

from enum import Enum


class _TextEnum(str, Enum):
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class RunStatus(_TextEnum):
    """A run's status in its `result.json` (and the results index)."""

    OK = "ok"
    FAILED = "failed"
    DIVERGED = "diverged"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    RUNNING = "running"


class PlanState(_TextEnum):
    """A planned run's state, read from the store before a sweep starts."""

    NEW = "new"
    OK = "ok"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    FAILED = "failed"
    DIVERGED = "diverged"
    BUSY = "busy"  # another process holds its lock
    UNREADABLE = "unreadable"  # its result.json is unreadable or not a valid result


class OutcomeKind(_TextEnum):
    """What claiming one run came to (the executors' and `peftlab run`'s view)."""

    RAN = "ran"
    BUSY = "busy"  # another process holds its lock
    DONE = "done"  # found ok under the lock (finished by another process meanwhile)
    SKIPPED = "skipped"  # found failed/diverged under the lock and not retried


FINISHED_BADLY = (RunStatus.FAILED, RunStatus.DIVERGED)

__all__ = ["RunStatus", "PlanState", "OutcomeKind", "FINISHED_BADLY"]
