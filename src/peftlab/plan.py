"""Expand an experiment into concrete runs: tasks × methods × (grid points) × seeds.

Grid keys are the same dotted paths as `--set` overrides. A key scoped to a method label
(`lora.r`) multiplies only that method's runs; `method.*` and `train.*` multiply every method that
trains (the untrained `base` row is not repeated for learning rates it never uses); `task.*`
multiplies every run.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
from typing import Any

from peftlab.config import ConfigError, ExperimentConfig, MethodConfig, RunConfig, TaskConfig, TrainConfig, build


def _applies(key: str, method: MethodConfig, trains: bool, labels: list[str]) -> bool:
    if not isinstance(key, str) or not key.strip():
        raise ConfigError(f"grid: key {key!r} must be a dotted path such as lora.r or train.lr")
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
            for key, values in axes:
                if not values:
                    raise ConfigError(f"grid: {key} has no values; give at least one (e.g. {key}: [4, 8])")
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


# A run directory's name must fit in one path component (255 bytes on common file systems).
MAX_RUN_ID_BYTES = 255
_TASK_FIELDS = ("source", "limit_train", "limit_eval", "max_length")


def validate(exp: ExperimentConfig) -> list[RunConfig]:
    """Everything that can be checked without loading a model: names, arguments, the grid, the model name.

    Every method's and task's arguments are checked for every grid point, so a bad grid value fails
    here, before any run starts, not as a failed run after the model has loaded.
    """
    from peftlab.methods import get_method

    for task in exp.tasks:
        _check_task(task, "tasks")
    for m in exp.methods:
        try:
            get_method(m.method).resolve_args(m.args)
        except ValueError as exc:
            raise ConfigError(_method_error(m, exc, "methods")) from None
    runs = expand(exp)
    dims = _model_dims(exp)
    seen_methods: set[str] = set()
    seen_tasks: set[str] = set()
    seen_train: set[str] = set()
    for rc in runs:
        key = repr((rc.method.label, sorted(rc.method.args.items(), key=str)))
        if key not in seen_methods:
            seen_methods.add(key)
            where = _grid_where(rc, (rc.method.label, "method"), "methods")
            try:
                args = get_method(rc.method.method).resolve_args(rc.method.args)
            except ValueError as exc:
                raise ConfigError(_method_error(rc.method, exc, where)) from None
            _check_rank(rc.method, args, dims, exp.model.name, where)
        key = repr(rc.task)
        if key not in seen_tasks:
            seen_tasks.add(key)
            _check_task(rc.task, _grid_where(rc, ("task",), "tasks"), exp)
        key = repr(rc.train)
        if key not in seen_train and get_method(rc.method.method).trains:
            seen_train.add(key)
            problem = rc.train.warmup_problem()
            if problem:
                where = _grid_where(rc, ("train",), "")
                raise ConfigError(f"{where}: {problem}" if where else problem)
        size = len(rc.run_id().encode())
        if size > MAX_RUN_ID_BYTES:
            raise ConfigError(f"run id {rc.run_id()[:60]}… is {size} bytes, too long for a directory name "
                              f"(at most {MAX_RUN_ID_BYTES}); shorten the experiment name, method labels or grid values")
    return runs


def _grid_where(rc: RunConfig, heads: tuple[str, ...], default: str) -> str:
    """`grid lora.r=0` when grid values of these heads shaped the run, else `default`."""
    points = [f"{k}={v}" for k, v in rc.grid.items() if k.split(".", 1)[0] in heads]
    return "grid " + ", ".join(points) if points else default


def _method_error(method: MethodConfig, exc: Exception, where: str) -> str:
    text = str(exc)
    if method.label != method.method and f"{method.label!r}" not in text:
        return f"{where}: {method.label!r}: {text}"
    return f"{where}: {text}"


def _check_task(task: TaskConfig, where: str, exp: ExperimentConfig | None = None) -> None:
    """The task exists, its arguments are known (the valid list includes the task's own fields), and a
    task that executes model-written code has the user's opt-in."""
    from peftlab.tasks import get_task

    try:
        spec = get_task(task.name)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    unknown = sorted(set(map(str, task.args)) - set(spec.args))
    if unknown:
        valid = list(_TASK_FIELDS) + list(spec.args)
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: task {task.name!r}: unknown argument(s) {unknown}{hint}; valid: task fields "
                          f"{', '.join(_TASK_FIELDS)}; task args {', '.join(sorted(spec.args)) or '(none)'}")
    for name, value in task.args.items():
        _check_task_arg(task.name, name, value, spec.args.get(name), where)
    args = spec.resolve_args(task.args)
    if exp is not None and _executes_code(spec, args):
        from peftlab.evaluation.sandbox import ALLOW_CODE_EXECUTION_ENV, code_execution_allowed

        if not code_execution_allowed(exp.eval.allow_code_execution):
            raise ConfigError(f"{where}: task {task.name!r} executes model-written code to score it; allow that with "
                              f"--allow-code-execution or {ALLOW_CODE_EXECUTION_ENV}=1, or give the task args: {{execute: "
                              "false} to report token_jaccard only")


def _is_count(name: str) -> bool:
    """Task knobs that count something (tokens, characters, samples, a window): null or an integer >= 1."""
    return (name.startswith(("max_", "n_")) or name.endswith(("_limit", "_chars", "_tokens"))
            or name in ("window", "stride"))


def _check_task_arg(task: str, name: str, value: Any, default: Any, where: str) -> None:
    """A task argument has the kind of its default (a number where a number is expected, …)."""
    import math

    def fail(expected: str) -> None:
        raise ConfigError(f"{where}: task {task!r}: {name} expects {expected}, got {value!r}")

    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and not math.isfinite(value):
        fail("a finite number")
    if _is_count(name) and (default is None or (isinstance(default, int) and not isinstance(default, bool))):
        if value is not None and (not is_int or value < 1):
            fail("null or an integer >= 1")
    elif value is None or default is None:
        return
    elif isinstance(default, bool):
        if not isinstance(value, bool):
            fail("true or false")
    elif isinstance(default, (int, float)):
        if not is_number or value <= 0:
            fail("a number > 0")
    elif isinstance(default, str):
        if not isinstance(value, str):
            fail("a string")
    elif isinstance(default, list):
        if not isinstance(value, list):
            fail(f"a list such as {default!r}")


def _executes_code(spec: Any, args: dict) -> bool:
    """Whether scoring the task runs model-written code (its hooks say so; the code task by its `execute`)."""
    hook = getattr(spec.module, "executes_code", None)
    if callable(hook):
        return bool(hook(args))
    return spec.name == "code" and bool(args.get("execute", True))


def _model_dims(exp: ExperimentConfig) -> dict | None:
    """Check the model name without loading it; its hidden size where config.json is at hand."""
    from peftlab.models import ModelResolutionError, check_model_name, model_dims

    try:
        check_model_name(exp.model.name, exp.model.revision, exp.model.gguf_file)
    except ModelResolutionError as exc:
        raise ConfigError(f"model: {exc}") from None
    return model_dims(exp.model.name, exp.model.revision)


def _check_rank(method: MethodConfig, args: dict, dims: dict | None, model: str, where: str) -> None:
    """A LoRA rank above the model's hidden size is no longer low-rank: only memory and time are lost."""
    from peftlab.methods import get_method

    hidden = (dims or {}).get("hidden_size")
    if hidden and get_method(method.method).family in ("lora", "hybrid") and isinstance(args.get("r"), int) \
            and args["r"] > hidden:
        raise ConfigError(f"{where}: {method.label!r}: r={args['r']} exceeds the hidden size of {model} ({hidden}); "
                          "a rank above it is not low-rank")
