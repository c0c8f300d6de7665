"""The run result: `runs/<run-id>/result.json` as a typed object, and the schema it is written in.

`RunResult` owns the schema (`SCHEMA_VERSION`, the top-level keys and their order, see
docs/contracts.md) and its validation; `peftlab.store.Store.write_result` is the only thing that
writes a result.json, and it writes `RunResult.to_json()`. Readers (the report, the plan, the
CLI) keep reading plain dicts from the store; whoever changes a result (the runner,
`lifecycle.evaluate_run`, the Ray executor) reads it as a `RunResult` (`RunResult.from_dict` or
`Store.read_run_result`), changes its fields and hands it back to the store.

Keys a result holds that this version does not know are kept in `extra` and written back after
the known ones, so reading and re-writing a result never loses anything.

This module sits on a low floor: it imports only `peftlab.status`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from peftlab.status import RunStatus

SCHEMA_VERSION = 1
#: Statuses a result.json may hold (`interrupted` is only ever *read*: a `running` run whose process is gone).
TERMINAL = (RunStatus.OK, RunStatus.FAILED, RunStatus.DIVERGED, RunStatus.CANCELLED)
STATUSES = (*TERMINAL, RunStatus.RUNNING)
REQUIRED_FIELDS = ("run_id", "status")
OBJECT_FIELDS = ("metrics", "metric_directions", "per_example", "per_example_source", "retention", "cost", "grid",
                 "train", "curves", "data", "provenance")
#: Fields written only when set (absent from older results and from runs without per-example scores).
OPTIONAL_FIELDS = ("pid", "per_example", "per_example_source", "examples_file", "retention")
#: The run directory's file of per-example scores (docs/contracts.md, "Per-example scores").
EXAMPLES_FILE = "examples.jsonl"
LIST_FIELDS = ("evaluations",)


class InvalidResult(ValueError):
    """Data that is not a valid run result; `problem` says why (e.g. "has status 'great', not one of ...")."""

    def __init__(self, problem: str):
        super().__init__(problem)
        self.problem = problem


def validate_result(result: Any, run_id: str | None = None) -> str | None:
    """What makes `result` (a dict read from JSON) unusable as a run result (None: it is fine);
    `run_id`: the name of the directory it was read from."""
    if not isinstance(result, dict):
        kind = {list: "an array", str: "a string", type(None): "null", bool: "a boolean"}.get(type(result), "a number")
        return f"holds {kind} where a result object belongs"
    missing = [name for name in REQUIRED_FIELDS if name not in result]
    if missing:
        return f"lacks the required field(s) {', '.join(missing)}"
    version = result.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION or isinstance(version, bool):
        return f"has schema_version {version!r}; this peftlab reads schema_version {SCHEMA_VERSION}"
    if not isinstance(result["run_id"], str) or not result["run_id"]:
        return f"has run_id {result['run_id']!r}, not a run id"
    if run_id is not None and result["run_id"] != run_id:
        return f"says run_id {result['run_id']!r}, which is not its directory's name"
    if result["status"] not in STATUSES:
        status = result["status"].value if isinstance(result["status"], RunStatus) else result["status"]
        return f"has status {status!r}, not one of {', '.join(STATUSES)}"
    for name in OBJECT_FIELDS:
        if result.get(name) is not None and not isinstance(result[name], dict):
            return f"has a {type(result[name]).__name__} in {name!r} where an object belongs"
    if result.get("evaluations") is not None and not isinstance(result["evaluations"], list):
        return "has evaluations that are not a list"
    return None


def json_default(obj: Any) -> Any:
    """How values JSON does not know are written (numpy/torch scalars, paths, sets, tuples)."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


@dataclass(kw_only=True)
class RunResult:
    """One run's result. Fields are result.json's top-level keys, in the order they are written
    (`schema_version` comes first and is not a field: it is `SCHEMA_VERSION`)."""

    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION

    run_id: str
    experiment: str | None = None
    sweep_id: str | None = None
    status: RunStatus = RunStatus.RUNNING
    pid: int | None = None  # only while running (written only when set)
    error: str | None = None  # the traceback / reason of a failed, diverged or cancelled run
    label: str | None = None  # the method entry's name in the experiment
    method: str | None = None  # registry key
    method_args: dict | None = field(default_factory=dict)
    model: str | None = None
    task: str | None = None
    seed: int | None = None
    grid: dict | None = field(default_factory=dict)  # swept coordinates ({} outside a grid)
    train: dict | None = field(default_factory=dict)  # TrainConfig as a dict
    config_hash: str | None = None
    metrics: dict | None = field(default_factory=dict)
    metric_directions: dict | None = field(default_factory=dict)  # {name: "higher" | "lower"}
    primary_metric: str | None = None
    evaluations: list | None = field(default_factory=list)  # one per decoding strategy evaluated
    # per-example scores of the run's `metrics` (each `evaluations` entry has its own two keys):
    per_example: dict | None = None  # {metric: stats.py statistic that reproduces it from its values}
    per_example_source: dict | None = None  # {metric: the `evaluation` of its lines in examples_file}
    examples_file: str | None = None  # "examples.jsonl" (in the run directory) once it is written
    # outside the task: {"forgetting": {...}, "<retention task>": {...}}, each with metrics, per_example,
    # per_example_source (score sets in examples_file), examples and data (runner.retention_step)
    retention: dict | None = None
    cost: dict | None = field(default_factory=dict)
    curves: dict | None = field(default_factory=dict)
    data: dict | None = field(default_factory=dict)
    provenance: dict | None = field(default_factory=dict)
    started_at: str | None = None
    finished_at: str | None = None
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as read

    def __post_init__(self) -> None:
        problem = validate_result(self._fields())
        if problem:
            raise InvalidResult(problem)
        self.status = RunStatus(self.status)

    # ------------------------------------------------------------------------------ (de)serialising
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The top-level keys of result.json that are fields, in the order they are written."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    def _fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.keys()}

    @classmethod
    def from_dict(cls, data: Any, run_id: str | None = None) -> "RunResult":
        """The result `data` (a result.json's object) holds; `InvalidResult` (a ValueError, with the
        store's wording in `.problem`) when it is not a valid result. `run_id`: its directory's name."""
        problem = validate_result(data, run_id)
        if problem:
            raise InvalidResult(problem)
        known = set(cls.keys())
        values = {k: v for k, v in data.items() if k in known}
        extra = {k: v for k, v in data.items() if k not in known and k != "schema_version"}
        return cls(**values, extra=extra)

    @classmethod
    def from_json(cls, text: str | bytes, run_id: str | None = None) -> "RunResult":
        return cls.from_dict(json.loads(text), run_id)

    def to_dict(self) -> dict[str, Any]:
        """result.json's object: `schema_version`, the fields in order (`pid` only when set), then `extra`.
        Values are the fields themselves (not copies); `status` is its plain text."""
        out: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for name, value in self._fields().items():
            if name in OPTIONAL_FIELDS and value is None:
                continue
            out[name] = value.value if isinstance(value, RunStatus) else value
        for name, value in self.extra.items():
            out.setdefault(name, value)
        return out

    def to_json(self) -> str:
        """The text of result.json (what `Store.write_result` writes)."""
        return json.dumps(self.to_dict(), indent=2, default=json_default)

    def validate(self) -> str | None:
        """What is wrong with this result as it would be written (None: nothing)."""
        return validate_result(json.loads(self.to_json()))

    # ------------------------------------------------------------------------------ changes
    def finish(self, status: RunStatus, error: str | None, finished_at: str) -> None:
        """Mark the run ended with `status` (its process no longer runs it: `pid` is dropped)."""
        self.status = RunStatus(status)
        self.error = error
        self.finished_at = finished_at
        self.pid = None


__all__ = ["RunResult", "InvalidResult", "validate_result", "json_default", "SCHEMA_VERSION", "STATUSES",
           "TERMINAL", "REQUIRED_FIELDS", "OBJECT_FIELDS", "OPTIONAL_FIELDS", "EXAMPLES_FILE"]
