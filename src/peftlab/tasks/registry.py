"""Tasks as data: one YAML per task (sources, splits, prompts, metrics) plus a small hook module.

The YAML says *what* a task is; the hook module (named by `hooks:`) holds the two pieces of
Python a task needs: how a record becomes a chat, and how a model is scored on the test split.
"""

from __future__ import annotations

import difflib
import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

TASK_DIR = Path(__file__).resolve().parent
TASK_KEYS = ("name", "description", "kind", "hooks", "sources", "splits", "system", "metrics",
             "primary_metric", "args", "generation", "notes")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    kind: str  # "lm": loss on every token; "chat": system/user/assistant, loss on the assistant
    hooks: str
    sources: dict
    splits: dict  # role (train/validation/test) -> data split name
    metrics: dict  # metric name -> "higher" | "lower"
    primary_metric: str
    system: str = ""
    args: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    notes: str = ""

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(self.hooks)

    def resolve_args(self, user: dict) -> dict:
        unknown = set(user) - set(self.args)
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown argument(s) {sorted(unknown)}; valid: {sorted(self.args)}")
        return {**self.args, **user}


def _load(path: Path) -> TaskSpec:
    raw = yaml.safe_load(path.read_text())
    unknown = set(raw) - set(TASK_KEYS)
    if unknown:
        raise ValueError(f"{path.name}: unknown key(s) {sorted(unknown)}; valid: {', '.join(TASK_KEYS)}")
    if raw.get("kind") not in ("lm", "chat"):
        raise ValueError(f"{path.name}: kind must be 'lm' or 'chat', got {raw.get('kind')!r}")
    metrics = raw["metrics"]
    if raw["primary_metric"] not in metrics:
        raise ValueError(f"{path.name}: primary_metric {raw['primary_metric']!r} is not among its metrics")
    return TaskSpec(
        name=raw["name"], description=raw.get("description", ""), kind=raw["kind"], hooks=raw["hooks"],
        sources=raw.get("sources", {}), splits=raw["splits"], metrics=dict(metrics),
        primary_metric=raw["primary_metric"], system=raw.get("system", "") or "", args=raw.get("args") or {},
        generation=raw.get("generation") or {}, notes=raw.get("notes", "") or "",
    )


@functools.lru_cache(maxsize=None)
def all_tasks() -> dict[str, TaskSpec]:
    specs = [_load(p) for p in sorted(TASK_DIR.glob("*.yaml"))]
    return {s.name: s for s in specs}


def get_task(name: str) -> TaskSpec:
    tasks = all_tasks()
    if name not in tasks:
        close = difflib.get_close_matches(name, list(tasks), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown task {name!r}{hint}; valid: {', '.join(sorted(tasks))}")
    return tasks[name]


def task_summary(spec: TaskSpec) -> dict[str, Any]:
    return {"name": spec.name, "kind": spec.kind, "splits": spec.splits, "metrics": spec.metrics,
            "primary": spec.primary_metric, "hub": spec.sources.get("hub", ""),
            "offline": spec.sources.get("offline", ""), "description": spec.description}
