"""The plan: an experiment expanded into concrete runs (tasks × methods × grid points × seeds),
checked, and — for a sweep — each run's state read from the run store.

* `expand` / `validate`: every run, with every check that needs no model.
* `architecture_problem`: whether a run's method and tasks apply to its model's architecture (an
  encoder-decoder model refuses causal-only methods and tasks), from the model's config alone;
  `validate` asks it where the config is at hand and the runner asks again before loading weights.
* `make_plan`: the sweep's plan (`SweepPlan`): each run's state in the store (`PlanState`) and
  whether it runs (resume rules below), the sweep's id and an estimate from earlier runs.
* `executor_options` / `check_trackers`: the experiment's `executor:` mapping and trackers,
  checked before anything runs.

Resume rules: `ok` runs are skipped; a run whose process died (`running` with a free lock) or that
was cancelled is re-run; `failed`/`diverged` runs are skipped unless `retry_failed`; a run whose
`result.json` is unreadable is re-run; a run whose lock another process holds is `busy` and
skipped. Reading the plan writes nothing (a path is opened read-only and not created), so a dry
run works on a read-only or full store. `sweep_id` = experiment name + a hash of the plan's run
ids, so every invocation of the same file (same preset/overrides) shares it.

Executor options come from the experiment's `executor:` mapping:

```yaml
executor:
  kind: ray            # local | ray (the CLI's --executor wins)
  address: auto        # Ray address (the CLI's --address wins); none: start a local Ray
  num_cpus: 1          # per run (default 1)
  num_gpus: 0          # per run (default 0: set it on GPU clusters)
  memory_gb: 8         # per run (Ray `memory`, a scheduling hint)
  resources: {}        # custom Ray resources per run
  max_retries: 0       # Ray retries of a run whose worker died (default 0: record it failed)
  env: {}              # extra environment variables for the Ray workers
  setup: pkg.mod:func  # called in the process that runs the runs, before them (register tasks…)
```

Grid keys are the same dotted paths as `--set` overrides. A key scoped to a method label
(`lora.r`) multiplies only that method's runs; `method.*` and `train.*` multiply every method that
trains (the untrained `base` row is not repeated for learning rates it never uses); `task.*`
multiplies every run. A key without a dot names a tied axis: its values are mappings of dotted keys
that move together (`rank: [{lora.r: 4, lora.lora_alpha: 8}, {lora.r: 8, lora.lora_alpha: 16}]`, one
axis of two points); it multiplies the methods every one of its keys applies to, and each run
records the keys separately in its `grid`.

A tuned experiment (`tuning:`, see `peftlab.tuning`) plans its trials first; its final runs join the
plan once the stored trials decide every method's selection (until then `SweepPlan.pending` counts them).
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.config import (
    Axis,
    ConfigError,
    ExperimentConfig,
    MethodConfig,
    RunConfig,
    TaskConfig,
    apply_setting,
    parse_axis,
)
from peftlab.status import PlanState, RunStatus

if TYPE_CHECKING:
    from peftlab.models import ModelArchitecture


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


def expand(exp: ExperimentConfig) -> list[RunConfig]:
    """Every run of the experiment, in a stable order (task, method, grid point, seed).

    A method that trains nothing (`base`) runs under the first seed only: nothing it computes depends on
    the run's seed (evaluation subsets use a fixed data seed, sampling decodings their own
    `decoding.seed`), so further seeds would repeat identical work. The report pairs that one run with
    every seed of the others.

    A tuned experiment (`tuning:`) expands to its trials only (`peftlab.tuning.trials`): the runs scored
    on test follow each method's selection (`peftlab.tuning.final_runs`)."""
    if exp.tuning is not None:
        from peftlab.tuning import trials

        return _unique(trials(exp))
    from peftlab.methods import get_method

    labels = [m.label for m in exp.methods]
    axes = grid_axes(exp)
    used: set[str] = set()
    runs: list[RunConfig] = []
    for task in exp.tasks:
        for method in exp.methods:
            trains = get_method(method.method).trains
            # a list, not a generator: every key is checked (a bad head raises) even when an earlier one fails
            mine = [a for a in axes if all([_applies(k, method, trains, labels) for k in a.keys])]
            used.update(a.name for a in mine)
            for point in itertools.product(*[a.points for a in mine]):
                m, t, tr = method, task, exp.train
                grid = {}
                for part in point:
                    for key, value in part.items():
                        m, t, tr = apply_setting(m, t, tr, key, value)
                        grid[key] = value
                for seed in (exp.seeds if trains else exp.seeds[:1]):
                    runs.append(RunConfig(experiment=exp.name, model=exp.model, task=t, method=m, train=tr,
                                          eval=exp.eval, seed=seed, grid=grid, output_dir=exp.output_dir,
                                          trackers=list(exp.trackers)))
    for axis in axes:
        if len(axis.keys) > 1 and axis.name not in used:
            raise ConfigError(f"grid.{axis.name}: no method takes all of its keys ({', '.join(axis.keys)}); a tied "
                              "axis moves keys of one method (with train. and task. keys) together")
    return _unique(runs)


def grid_axes(exp: ExperimentConfig) -> list[Axis]:
    """The experiment's grid as axes, in the file's order: `lora.r: [4, 8]` is a plain axis; a key without a
    dot names a tied axis, whose values are mappings of dotted keys that move together
    (`rank: [{lora.r: 4, lora.lora_alpha: 8}, {lora.r: 8, lora.lora_alpha: 16}]`). A key set by two axes
    is an error."""
    axes = [parse_axis(k, v, "grid") for k, v in exp.grid.items()]
    owner: dict[str, str] = {}
    for axis in axes:
        for key in axis.keys:
            if key in owner:
                raise ConfigError(f"grid: {key} is set by two axes ({owner[key]} and {axis.name}); give it once")
            owner[key] = axis.name
    return axes


def _unique(runs: list[RunConfig]) -> list[RunConfig]:
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
    for i, name in enumerate(exp.eval.retention_tasks):  # scored with their defaults on every run
        _check_task(TaskConfig(name=name), f"eval.retention_tasks[{i}]", exp)
        if any(t.name == name for t in exp.tasks):
            raise ConfigError(f"eval.retention_tasks[{i}]: {name!r} is a task of the experiment already; a retention "
                              f"task measures what training on another task kept")
    for m in exp.methods:
        try:
            get_method(m.method).resolve_args(m.args)
        except ValueError as exc:
            raise ConfigError(_method_error(m, exc, "methods")) from None
    runs = expand(exp)
    dims = _model_dims(exp)
    architecture = _local_architecture(exp)
    seen_pairs: set[str] = set()
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
        pair = repr((rc.method.label, sorted(rc.method.args.items(), key=str), rc.task.name, rc.eval.retention_tasks))
        if architecture is not None and pair not in seen_pairs:  # grid and tuning points change a method's arguments
            seen_pairs.add(pair)
            problem = architecture_problem(architecture, rc)
            if problem:
                raise ConfigError(problem)
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
        _check_id_length(rc)
        if rc.trial is not None:  # the final run this trial becomes if it is selected
            from peftlab.tuning import final_config

            _check_id_length(final_config(rc, exp.seeds[0]))
    return runs


def _check_id_length(rc: RunConfig) -> None:
    size = len(rc.run_id().encode())
    if size > MAX_RUN_ID_BYTES:
        raise ConfigError(f"run id {rc.run_id()[:60]}… is {size} bytes, too long for a directory name "
                          f"(at most {MAX_RUN_ID_BYTES}); shorten the experiment name, method labels or grid values")


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
    if exp is not None and executes_code(spec, args):
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


def executes_code(spec: Any, args: dict) -> bool:
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


def _local_architecture(exp: ExperimentConfig) -> ModelArchitecture | None:
    """The model's architecture where its config.json is at hand here (None: it is read before the run loads it)."""
    from peftlab.models import local_architecture

    return local_architecture(exp.model.name, exp.model.revision)


def architecture_problem(architecture: ModelArchitecture, rc: RunConfig) -> str | None:
    """Why the run's method, task or a retention task cannot run on its model (None: they all can), in one
    sentence naming the method, the model and why; only an encoder-decoder model refuses anything.

    Causal-only methods say so in `Method.causal_only` (the lora+prompt hybrid), causal-only tasks in
    `TaskSpec.causal_only` (`lm`: perplexity; a `kind: lm` task such as code cannot train one). Held-out
    general text for forgetting (`eval.forgetting_texts`) is skipped with its reason instead (`runner`)."""
    from peftlab.methods import get_method
    from peftlab.tasks import get_task

    if not architecture.encoder_decoder:
        return None
    method = get_method(rc.method.method)
    who = f"method {rc.method.label!r}" + ("" if rc.method.label == method.name else f" ({method.name})")
    model = f"{rc.model.name!r} (an encoder-decoder {architecture.model_type or 'model'})"
    problem = method.encoder_decoder_problem(rc.method.args)
    if problem:
        return f"{who} cannot adapt {model} because {problem}"
    tasks = [(rc.task.name, method.trains, "task")] + [(name, False, "retention task") for name in rc.eval.retention_tasks]
    for name, trains, role in tasks:
        reason = get_task(name).causal_only(trains)
        if reason:
            using = f" with {who}" if trains else ""
            return f"{role} {name!r}{using} cannot run on {model} because {reason}"
    return None


def _check_rank(method: MethodConfig, args: dict, dims: dict | None, model: str, where: str) -> None:
    """A LoRA rank above the model's hidden size is no longer low-rank: only memory and time are lost."""
    from peftlab.methods import get_method

    hidden = (dims or {}).get("hidden_size")
    if hidden and get_method(method.method).family in ("lora", "hybrid") and isinstance(args.get("r"), int) \
            and args["r"] > hidden:
        raise ConfigError(f"{where}: {method.label!r}: r={args['r']} exceeds the hidden size of {model} ({hidden}); "
                          "a rank above it is not low-rank")


# ------------------------------------------------------------------------------------------ sweep plan
EXECUTORS = ("local", "ray")
EXECUTOR_KEYS = ("kind", "address", "num_cpus", "num_gpus", "memory_gb", "resources", "max_retries", "env", "setup")


@dataclass
class PlannedRun:
    rc: RunConfig
    run_id: str
    state: PlanState
    action: str  # run | skip

    @property
    def note(self) -> str:
        if self.state == PlanState.NEW:
            return "new"
        if self.action == "run":
            return f"{self.state}→rerun"
        return str(self.state)


@dataclass
class SweepPlan:
    experiment: ExperimentConfig
    sweep_id: str
    store_root: Path
    runs: list[PlannedRun]
    retry_failed: bool = False
    history: dict = field(default_factory=dict)  # (label, task) -> [seconds of previous ok runs]
    pending: int = 0  # tuned experiments: final runs not in `runs` yet, as they follow the trials' selection

    @property
    def to_run(self) -> list[PlannedRun]:
        return [p for p in self.runs if p.action == "run"]

    def count(self, *states: PlanState, action: str | None = None) -> int:
        return sum(1 for p in self.runs if p.state in states and (action is None or p.action == action))

    def estimate_s(self, runs: list[PlannedRun] | None = None) -> float | None:
        """Sequential seconds for `runs` (default: those to run) from previous ok runs of this experiment."""
        everything = [s for values in self.history.values() for s in values]
        if not everything:
            return None
        overall = sum(everything) / len(everything)
        total = 0.0
        for p in self.to_run if runs is None else runs:
            values = self.history.get((p.rc.method.label, p.rc.task.name))
            total += sum(values) / len(values) if values else overall
        return total

    def mean_run_s(self) -> float | None:
        everything = [s for values in self.history.values() for s in values]
        return sum(everything) / len(everything) if everything else None


def sweep_id_for(exp: ExperimentConfig, runs: list[RunConfig]) -> str:
    """Stable per experiment content: the name plus a hash of the expanded plan (its run ids)."""
    digest = hashlib.sha256("\n".join(sorted(rc.run_id() for rc in runs)).encode()).hexdigest()[:8]
    return f"{exp.name}-{digest}"


def executor_options(exp: ExperimentConfig) -> dict:
    """The experiment's `executor:` mapping, checked (unknown keys are errors, like everywhere else)."""
    opts = dict(exp.executor or {})
    for key in opts:
        if key not in EXECUTOR_KEYS:
            close = difflib.get_close_matches(str(key), EXECUTOR_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"executor: unknown key {key!r}{hint}; valid: {', '.join(EXECUTOR_KEYS)}")
    kind = opts.get("kind", "local")
    if kind not in EXECUTORS:
        raise ConfigError(f"executor.kind: {kind!r} is not valid; valid: {', '.join(EXECUTORS)}")
    for key in ("num_cpus", "num_gpus", "memory_gb", "max_retries"):
        value = opts.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise ConfigError(f"executor.{key}: expected a number >= 0, got {value!r}")
    for key in ("resources", "env"):
        if opts.get(key) is not None and not isinstance(opts[key], dict):
            raise ConfigError(f"executor.{key}: expected a mapping, got {opts[key]!r}")
    return opts


def check_trackers(trackers: list[str]) -> None:
    """Fail before any run starts when a tracker is unknown or its package is missing."""
    if not trackers:
        return
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    valid = [t.value for t in LoggerType if t.value != "all"]
    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in trackers:
        if name not in valid:
            raise ConfigError(f"trackers: {name!r} is not an accelerate tracker; valid: {', '.join(valid)}")
        if name not in available:
            package = "tensorboard" if name == "tensorboard" else name.replace("_", "-")
            raise ConfigError(f"trackers: {name!r} is not installed here (pip install {package})")


def check_run_options(exp: ExperimentConfig) -> dict:
    """The experiment's executor options and trackers, checked before anything runs; the options."""
    opts = executor_options(exp)
    check_trackers(list(exp.trackers))
    return opts


def _read_state(store: Any, run_id: str, retry_failed: bool) -> tuple[PlanState, str]:
    """(state, action) of one run from its result file and lock, without writing anything."""
    status = store.status(run_id)
    if status is None:
        return (PlanState.UNREADABLE if store.result_problem(run_id) else PlanState.NEW), "run"
    if status == RunStatus.OK:
        return PlanState.OK, "skip"
    # Not finished: if another process holds the lock it is running right now (a second sweep).
    if store.lock(run_id).held_elsewhere():
        return PlanState.BUSY, "skip"
    if status in (RunStatus.RUNNING, RunStatus.INTERRUPTED):  # running + free lock: its process is gone
        return PlanState.INTERRUPTED, "run"
    if status == RunStatus.CANCELLED:
        return PlanState.CANCELLED, "run"
    if status in (RunStatus.FAILED, RunStatus.DIVERGED):
        return PlanState(status), "run" if retry_failed else "skip"
    return PlanState.INTERRUPTED, "run"  # unknown status: treat as not finished


def _durations(results: list[dict]) -> dict:
    out: dict = {}
    for r in results:
        if r.get("status") != RunStatus.OK or not r.get("started_at") or not r.get("finished_at"):
            continue
        try:
            seconds = (dt.datetime.fromisoformat(r["finished_at"]) - dt.datetime.fromisoformat(r["started_at"]))
        except (TypeError, ValueError):
            continue
        out.setdefault((r.get("label"), r.get("task")), []).append(max(seconds.total_seconds(), 1.0))
    return out


def make_plan(exp: ExperimentConfig, store: Any = None, retry_failed: bool = False) -> SweepPlan:
    """Expand `exp` and read every run's state from the store (a path, a Store, or None).

    A path is opened read-only and a directory that does not exist yet is not created, so
    `--dry-run` writes nothing (and works on a read-only or full store).
    """
    from peftlab.store import Store

    runs = validate(exp)
    root = Path(store.root if isinstance(store, Store) else (store or exp.output_dir))
    if not isinstance(store, Store):
        store = Store(root, readonly=True) if root.is_dir() else None
    planned = plan_runs(runs, store, retry_failed)
    pending = 0
    if exp.tuning is not None:
        finals = _known_finals(exp, store, planned)
        if finals is None:
            from peftlab.tuning import count_finals

            pending = count_finals(exp)
        else:
            planned += plan_runs(finals, store, retry_failed)
    history = _durations(store.results(experiment=exp.name)) if store else {}
    return SweepPlan(experiment=exp, sweep_id=sweep_id_for(exp, runs), store_root=root, runs=planned,
                     retry_failed=retry_failed, history=history, pending=pending)


def plan_runs(runs: list[RunConfig], store: Any, retry_failed: bool) -> list[PlannedRun]:
    """Each run with its state in `store` (None: every run is new) and whether it runs."""
    planned = []
    for rc in runs:
        run_id = rc.run_id()
        state, action = _read_state(store, run_id, retry_failed) if store else (PlanState.NEW, "run")
        planned.append(PlannedRun(rc=rc, run_id=run_id, state=state, action=action))
    return planned


def _known_finals(exp: ExperimentConfig, store: Any, trials: list[PlannedRun]) -> list[RunConfig] | None:
    """A tuned experiment's final runs when the stored trials already decide every selection and none of them
    is to run again (read only; the sweep records the selections); else None."""
    from peftlab.tuning import final_runs, selections

    if store is None or any(p.action == "run" for p in trials):
        return None
    chosen, waiting = selections(exp, store)
    return None if waiting else final_runs(exp, chosen)
