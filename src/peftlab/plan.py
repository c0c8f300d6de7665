"""Expand an experiment into concrete runs: tasks × methods × (grid points) × seeds.

Grid keys are the same dotted paths as `--set` overrides. A key scoped to a method label
(`lora.r`) multiplies only that method's runs; `method.*` and `train.*` multiply every method that
trains (the untrained `base` row is not repeated for learning rates it never uses); `task.*`
multiplies every run.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from peftlab.config import ConfigError, ExperimentConfig, MethodConfig, RunConfig, TaskConfig, TrainConfig, build


def _applies(key: str, method: MethodConfig, trains: bool, labels: list[str]) -> bool:
    head = key.split(".", 1)[0]
    if head == method.label:
        return True
    if head in ("method", "train"):
        return trains
    if head == "task":
        return True
    if head in labels:
        return False
    raise ConfigError(f"grid: key {key!r} must start with train., task., method. or a method label "
                      f"({', '.join(labels)})")


def _with(method: MethodConfig, task: TaskConfig, train: TrainConfig, key: str, value: Any
          ) -> tuple[MethodConfig, TaskConfig, TrainConfig]:
    head, _, rest = key.partition(".")
    if not rest:
        raise ConfigError(f"grid: key {key!r} needs a field after the dot (e.g. train.lr, lora.r)")
    if head == "train":
        data = {**dataclasses.asdict(train), rest: value}
        return method, task, build(TrainConfig, data, "grid " + key)
    if head == "task":
        data = dataclasses.asdict(task)
        if rest in data:
            data[rest] = value
        else:
            data["args"] = {**data["args"], rest: value}
        return method, build(TaskConfig, data, "grid " + key), train
    return dataclasses.replace(method, args={**method.args, rest: value}), task, train


def expand(exp: ExperimentConfig) -> list[RunConfig]:
    """Every run of the experiment, in a stable order (task, method, grid point, seed)."""
    from peftlab.methods import get_method

    labels = [m.label for m in exp.methods]
    runs: list[RunConfig] = []
    for task in exp.tasks:
        for method in exp.methods:
            trains = get_method(method.method).trains
            axes = [(k, v if isinstance(v, list) else [v]) for k, v in exp.grid.items()
                    if _applies(k, method, trains, labels)]
            for point in itertools.product(*[vals for _, vals in axes]):
                m, t, tr = method, task, exp.train
                grid = {}
                for (key, _), value in zip(axes, point):
                    m, t, tr = _with(m, t, tr, key, value)
                    grid[key] = value
                for seed in exp.seeds:
                    runs.append(RunConfig(experiment=exp.name, model=exp.model, task=t, method=m, train=tr,
                                          eval=exp.eval, seed=seed, grid=grid, output_dir=exp.output_dir,
                                          trackers=list(exp.trackers)))
    ids = [r.run_id() for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError("the experiment expands to duplicate runs; give methods distinct labels or arguments")
    return runs


def validate(exp: ExperimentConfig) -> list[RunConfig]:
    """Everything that can be checked without loading a model: names, arguments, the grid."""
    from peftlab.methods import get_method
    from peftlab.tasks import get_task

    for task in exp.tasks:
        try:
            get_task(task.name).resolve_args(task.args)
        except ValueError as exc:
            raise ConfigError(f"tasks: {exc}") from None
    for m in exp.methods:
        try:
            get_method(m.method).resolve_args(m.args)
        except ValueError as exc:
            raise ConfigError(f"methods: {exc}") from None
    return expand(exp)
