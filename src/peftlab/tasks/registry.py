"""Tasks as data: one YAML per task (data, splits, prompts, metrics) plus a small hook module.

The YAML says *what* a task is, including where its data comes from (`data:`, parsed into
`TaskData`: per split the hub dataset and its row converter; the pinned offline package, its
members, converter and expected counts). The hook module (named by `hooks:`) holds the two pieces
of Python a task needs (`peftlab.tasks.api.TaskHooks`): how a record becomes a chat, and how a
model is scored on the test split. Converters are Python functions registered by name
(`peftlab.data.offline.converter`, `peftlab.data.hub.converter`); a task from outside the package
registers its own in its hooks file, which is imported when a name is not yet registered.

Tasks from outside the package: put `<name>.yaml` (and its hooks file) in a directory and name
the directory in `PEFTLAB_TASK_PATHS` (os.pathsep-separated, like lm-eval's `--include_path`) or
call `add_task_path(dir)` from Python. Their `hooks:` is a module name, or a `.py` file relative to
the YAML (`hooks: my_task.py`). A task of the same name as a built-in one replaces it.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

TASK_DIR = Path(__file__).resolve().parent
TASK_KEYS = ("name", "description", "kind", "hooks", "sources", "data", "splits", "system", "metrics",
             "primary_metric", "args", "generation", "notes")
HUB_KEYS = ("dataset", "config", "split", "converter", "streaming", "limit", "select")
OFFLINE_KEYS = ("package", "members", "converter", "expected_counts")
PIN_KEYS = ("name", "version", "kind", "sha256")


@dataclass(frozen=True)
class HubSplit:
    """One task split from the Hugging Face hub: `datasets.load_dataset(dataset, config, split=split)`
    (streamed when `streaming`, first `limit` rows), rows turned into records by the hub converter
    `converter`. `select` only annotates the origin (`id[:config]:split[select]`)."""

    task_split: str
    dataset: str
    split: str
    converter: str
    config: str | None = None
    streaming: bool = False
    limit: int | None = None
    select: str | None = None

    @property
    def origin(self) -> str:
        base = self.dataset + (f":{self.config}" if self.config else "") + f":{self.split}"
        if self.limit is not None:
            base += f"[:{self.limit}]"
        return base + (f"[{self.select}]" if self.select else "")


@dataclass(frozen=True)
class OfflineSource:
    """A task's offline data: members of one pinned registry package, converted into every split.

    `package` is `"name==version"` (a pin declared once in `peftlab.data.offline.PINS`, for
    packages several tasks share) or a mapping {name, version, kind, sha256} declared in the YAML.
    `members` maps a role the converter asks for to archive member names or fnmatch patterns.
    """

    package: str | dict
    members: dict  # role -> tuple of member names / patterns
    converter: str
    expected_counts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskData:
    """The `data:` block of a task YAML: the splits, their hub sources and the offline source."""

    splits: tuple[str, ...]
    hub: dict = field(default_factory=dict)  # split -> HubSplit
    offline: OfflineSource | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    kind: str  # "lm": loss on every token; "chat": system/user/assistant, loss on the assistant
    hooks: str
    sources: dict  # prose for people: {hub: ..., offline: ...}; `data` is what the loaders read
    splits: dict  # role (train/validation/test) -> data split name
    metrics: dict  # metric name -> "higher" | "lower"
    primary_metric: str
    system: str = ""
    args: dict = field(default_factory=dict)
    generation: dict = field(default_factory=dict)
    notes: str = ""
    data: TaskData | None = None  # None: the task declares no data (records come from elsewhere)

    @property
    def module(self) -> ModuleType:
        if self.hooks.endswith(".py"):
            return _module_from_file(Path(self.hooks))
        return importlib.import_module(self.hooks)

    def causal_only(self, trains: bool) -> str:
        """Why this task cannot run on an encoder-decoder (seq2seq) model, as a clause that follows "because"
        ("": it can). `trains`: a method that trains runs it (the untrained `base` only evaluates).

        The hooks' `causal_only(trains)` decides where they have one (`lm`: its perplexity is causal by
        definition); otherwise a `kind: lm` task cannot train one: its training is causal language modelling
        on raw text, with no prompt for the encoder and no target for the decoder.
        """
        hook = getattr(self.module, "causal_only", None)
        if callable(hook):
            return str(hook(trains) or "")
        if self.kind == "lm" and trains:
            return ("it trains by causal language modelling on raw text (every token predicts the next), which has "
                    "no prompt for an encoder and no target for a decoder")
        return ""

    def resolve_args(self, user: dict) -> dict:
        unknown = set(user) - set(self.args)
        if unknown:
            raise ValueError(f"task {self.name!r}: unknown argument(s) {sorted(unknown)}; valid: {sorted(self.args)}")
        return {**self.args, **user}


def _module_from_file(path: Path) -> ModuleType:
    """A hooks file outside the package, imported once under a private module name."""
    name = f"peftlab_task_hooks_{path.stem}_{abs(hash(str(path.resolve()))):x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import task hooks from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_EXTRA_PATHS: list[Path] = []


def add_task_path(directory: str | Path) -> None:
    """Register a directory of task YAMLs (+ hooks files) from outside the package."""
    path = Path(directory).expanduser().resolve()
    if not path.is_dir():
        raise ValueError(f"task path {directory}: not a directory")
    if path not in _EXTRA_PATHS:
        _EXTRA_PATHS.append(path)
        all_tasks.cache_clear()


def task_paths() -> list[Path]:
    """Where tasks are read from: the package's own, then `PEFTLAB_TASK_PATHS`, then `add_task_path`'s."""
    env = [Path(p).expanduser() for p in os.environ.get("PEFTLAB_TASK_PATHS", "").split(os.pathsep) if p.strip()]
    return [TASK_DIR, *env, *_EXTRA_PATHS]


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
    hooks = str(raw["hooks"])
    if hooks.endswith(".py") and not Path(hooks).is_absolute():
        hooks = str(path.parent / hooks)  # a hooks file beside the YAML
    data = _parse_data(path.name, raw["data"], raw["splits"]) if raw.get("data") else None
    return TaskSpec(
        name=raw["name"], description=raw.get("description", ""), kind=raw["kind"], hooks=hooks,
        sources=raw.get("sources", {}), splits=raw["splits"], metrics=dict(metrics),
        primary_metric=raw["primary_metric"], system=raw.get("system", "") or "", args=raw.get("args") or {},
        generation=raw.get("generation") or {}, notes=raw.get("notes", "") or "", data=data,
    )


def _check_keys(where: str, raw: Any, valid: tuple[str, ...], required: tuple[str, ...]) -> None:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - set(valid)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {', '.join(valid)}")
    missing = [k for k in required if raw.get(k) in (None, "")]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")


def _parse_data(fname: str, raw: Any, splits: dict) -> TaskData:
    """Validate a `data:` block; the data splits are the values of the task's `splits:`."""
    _check_keys(f"{fname}: data", raw, ("hub", "offline"), ())
    names = tuple(dict.fromkeys(str(v) for v in splits.values()))
    hub: dict[str, HubSplit] = {}
    if raw.get("hub"):
        if not isinstance(raw["hub"], dict) or set(raw["hub"]) != set(names):
            got = sorted(raw["hub"]) if isinstance(raw["hub"], dict) else raw["hub"]
            raise ValueError(f"{fname}: data.hub must name exactly the splits {list(names)}, got {got}")
        for name in names:
            entry = raw["hub"][name]
            where = f"{fname}: data.hub.{name}"
            _check_keys(where, entry, HUB_KEYS, ("dataset", "converter"))
            limit = entry.get("limit")
            if limit is not None and (not entry.get("streaming") or not isinstance(limit, int) or limit < 1):
                raise ValueError(f"{where}: limit must be a positive integer and needs streaming: true")
            hub[name] = HubSplit(
                task_split=name, dataset=str(entry["dataset"]), split=str(entry.get("split") or name),
                converter=str(entry["converter"]), config=None if entry.get("config") is None else str(entry["config"]),
                streaming=bool(entry.get("streaming", False)), limit=limit,
                select=None if entry.get("select") is None else str(entry["select"]))
    offline = None
    if raw.get("offline"):
        entry = raw["offline"]
        where = f"{fname}: data.offline"
        _check_keys(where, entry, OFFLINE_KEYS, ("package", "members", "converter"))
        package = entry["package"]
        if isinstance(package, dict):
            _check_keys(f"{where}.package", package, PIN_KEYS, PIN_KEYS)
            package = {k: str(package[k]) for k in PIN_KEYS}
        elif not (isinstance(package, str) and "==" in package):
            raise ValueError(f"{where}.package: expected 'name==version' (a shared pin) or "
                             f"{{{', '.join(PIN_KEYS)}}}, got {package!r}")
        if not isinstance(entry["members"], dict):
            raise ValueError(f"{where}.members: expected a mapping role -> member name(s)")
        members = {str(role): (str(m),) if isinstance(m, str) else tuple(str(x) for x in m)
                   for role, m in entry["members"].items()}
        counts = entry.get("expected_counts") or {}
        if not isinstance(counts, dict) or not all(isinstance(v, int) for v in counts.values()):
            raise ValueError(f"{where}.expected_counts: expected a mapping name -> integer")
        offline = OfflineSource(package=package, members=members, converter=str(entry["converter"]),
                                expected_counts=dict(counts))
    return TaskData(splits=names, hub=hub, offline=offline)


def all_tasks() -> dict[str, TaskSpec]:
    return _all_tasks(tuple(str(p) for p in task_paths()))


@functools.lru_cache(maxsize=None)
def _all_tasks(paths: tuple[str, ...]) -> dict[str, TaskSpec]:
    out: dict[str, TaskSpec] = {}
    for directory in paths:
        if not Path(directory).is_dir():
            raise ValueError(f"task path {directory} (PEFTLAB_TASK_PATHS): not a directory")
        for p in sorted(Path(directory).glob("*.yaml")):
            spec = _load(p)
            out[spec.name] = spec
    return out


all_tasks.cache_clear = _all_tasks.cache_clear  # type: ignore[attr-defined]


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
