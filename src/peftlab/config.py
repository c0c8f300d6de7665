"""Typed, validated experiment configs.

An experiment YAML is parsed into frozen dataclasses. Unknown keys are errors (a typo such as
`learning_rate` for `lr` would otherwise silently train with the default), and every error names
the offending field and, where there is a fixed set, the valid choices.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field."""


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; valid: {', '.join(sorted(valid))}"


# Integers beyond this are refused whatever the field (a float such as 1e29 is "integral" but absurd).
MAX_INT = 2**53
MAX_STEPS = 10**9  # steps, warm-up and evaluation intervals: more could never finish
MAX_SIZE = 10**6  # batch sizes, accumulation, lengths, beams, samples, token budgets


def _number_text(value: Any) -> Any:
    """YAML 1.1 reads `1e-4` and `1e3` as strings; users mean numbers. Other values pass through."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert one YAML value to the declared field type, naming `where` on failure."""
    origin = get_origin(typ)
    if typ is Any:
        return value
    if origin is Union or origin is types.UnionType:  # `int | None` is a UnionType, not a typing.Union
        args = [a for a in get_args(typ) if a is not type(None)]
        if value is None:
            if type(None) in get_args(typ):
                return None
            raise ConfigError(f"{where}: must not be empty")
        return _coerce(value, args[0], where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            value = [value]
        (inner,) = get_args(typ)[:1] or (Any,)
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or typ is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        number = _number_text(value)
        if (isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number)
                or int(number) != number):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if abs(number) > MAX_INT:
            raise ConfigError(f"{where}: {value!r} is out of range (at most {MAX_INT:,})")
        return int(number)
    if typ is float:
        number = _number_text(value)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(number)
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(typ):
        return build(typ, value, where)
    return value


def build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None
    return obj


def _choice(value: str, valid: tuple[str, ...], where: str) -> None:
    if value not in valid:
        raise ConfigError(f"{where}: {value!r} is not valid{_suggest(value, list(valid))}")


def _positive(value: float | int | None, where: str, allow_zero: bool = False, at_most: float | None = None) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    if at_most is not None and value > at_most:
        limit = f"{at_most:,.0f}" if float(at_most).is_integer() else f"{at_most:g}"
        raise ConfigError(f"{where}: {value:g} is absurdly large (at most {limit})")


_UNSAFE_NAME_CHARS = ("/", "\\", "\0")


def check_name(value: Any, where: str, max_len: int = 100) -> str:
    """A name that becomes part of a directory name: no path separators, `..`, or control characters."""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}: expected a name (a string), got {value!r}")
    text = str(value)
    if not text.strip():
        raise ConfigError(f"{where}: must not be empty")
    if any(c in text for c in _UNSAFE_NAME_CHARS) or ".." in text or text == ".":
        raise ConfigError(f"{where}: {text!r} must not contain path separators or '..' (it names a directory "
                          "inside the run store)")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ConfigError(f"{where}: {text!r} must not contain control characters")
    if len(text) > max_len:
        raise ConfigError(f"{where}: {len(text)} characters is too long (at most {max_len})")
    return text


@dataclass(frozen=True)
class ModelConfig:
    """Which base model, in which precision. `name` is a hub id, a local directory or an alias."""

    name: str = "smollm2-135m-instruct"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    revision: str | None = None
    trust_remote_code: bool = False
    gguf_file: str | None = None

    def __post_init__(self) -> None:
        if not str(self.name).strip():
            raise ConfigError("model.name: must not be empty; give an offline alias, a hub id (owner/name) or a "
                              "local directory")
        _choice(self.dtype, ("auto", "float32", "bfloat16", "float16"), "model.dtype")


@dataclass(frozen=True)
class TaskConfig:
    """One task and how much of it to use; `limit_*` take seeded subsamples for small runs."""

    name: str = "lm"
    source: str = "auto"  # auto | hub | offline
    limit_train: int | None = None
    limit_eval: int | None = None
    max_length: int = 256
    args: dict = field(default_factory=dict)  # task-specific knobs (see `peftlab ls tasks`)

    def __post_init__(self) -> None:
        _choice(self.source, ("auto", "hub", "offline"), f"task {self.name}.source")
        _positive(self.limit_train, f"task {self.name}.limit_train")
        _positive(self.limit_eval, f"task {self.name}.limit_eval")
        _positive(self.max_length, f"task {self.name}.max_length", at_most=MAX_SIZE)


@dataclass(frozen=True)
class MethodConfig:
    """One method entry: `label` names the row in reports, `method` the registry key."""

    label: str
    method: str
    args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not str(self.method).strip():
            raise ConfigError(f"methods: entry {self.label!r} names no method")
        if not str(self.label).strip() or any(ord(c) < 32 or ord(c) == 127 for c in str(self.label)):
            raise ConfigError(f"methods: label {self.label!r} must be a non-empty name without control characters")


@dataclass(frozen=True)
class TrainConfig:
    """The shared training protocol (defaults follow the seeds' paper: AdamW 5e-4, wd 0.01, 100 warm-up)."""

    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 100
    schedule: str = "linear"  # linear | cosine | constant
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    eval_every: int | None = None  # steps between validation-loss checks (None: once per epoch)
    eval_batches: int = 8  # validation batches per check
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    bucketing: bool = True
    packing: bool = True  # causal-LM text is packed into full windows; chat batches go padding-free when the model allows
    log_every: int = 1
    save_adapter: bool = True
    peak_tflops: float | None = None  # the peak MFU is measured against; None: known GPU table / CPU probe
    num_threads: int | None = None

    def __post_init__(self) -> None:
        _positive(self.lr, "train.lr")
        _positive(self.weight_decay, "train.weight_decay", allow_zero=True)
        _positive(self.warmup_steps, "train.warmup_steps", allow_zero=True, at_most=MAX_STEPS)
        _choice(self.schedule, ("linear", "cosine", "constant"), "train.schedule")
        _positive(self.epochs, "train.epochs", at_most=MAX_SIZE)
        _positive(self.max_steps, "train.max_steps", at_most=MAX_STEPS)
        _positive(self.batch_size, "train.batch_size", at_most=MAX_SIZE)
        _positive(self.grad_accum, "train.grad_accum", at_most=MAX_SIZE)
        _positive(self.max_grad_norm, "train.max_grad_norm")
        _positive(self.eval_every, "train.eval_every", at_most=MAX_STEPS)
        _positive(self.eval_batches, "train.eval_batches", allow_zero=True, at_most=MAX_SIZE)
        _choice(self.mixed_precision, ("auto", "no", "bf16", "fp16"), "train.mixed_precision")
        _positive(self.log_every, "train.log_every", at_most=MAX_STEPS)
        _positive(self.peak_tflops, "train.peak_tflops")
        _positive(self.num_threads, "train.num_threads", at_most=4096)

    def warmup_problem(self) -> str | None:
        """Why this schedule cannot work, when max_steps leaves no room after warm-up (else None)."""
        if self.max_steps is not None and self.warmup_steps and self.max_steps <= self.warmup_steps:
            return (f"train.max_steps ({self.max_steps}) must be greater than train.warmup_steps "
                    f"({self.warmup_steps}), or the learning rate never leaves warm-up; lower train.warmup_steps")
        return None


@dataclass(frozen=True)
class DecodingConfig:
    """How to generate: greedy, beam search or sampling (top-k / top-p / temperature)."""

    name: str = "greedy"
    strategy: str = "greedy"  # greedy | beam | sample
    max_new_tokens: int = 64
    num_beams: int = 1
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    num_return_sequences: int = 1
    seed: int = 0
    stop: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _choice(self.strategy, ("greedy", "beam", "sample"), "decoding.strategy")
        _positive(self.max_new_tokens, "decoding.max_new_tokens", at_most=MAX_SIZE)
        _positive(self.num_beams, "decoding.num_beams", at_most=1000)
        _positive(self.temperature, "decoding.temperature")
        _positive(self.top_k, "decoding.top_k", at_most=MAX_SIZE)
        _positive(self.num_return_sequences, "decoding.num_return_sequences", at_most=MAX_SIZE)
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"decoding.top_p: must be in (0, 1], got {self.top_p}")


#: EvalConfig fields that count in a run's identity only when changed from these defaults.
EVAL_ADDED_DEFAULTS = (("forgetting_texts", 32), ("retention_tasks", []))


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings shared by tasks; `decoding` lists strategies evaluated on one adapter."""

    batch_size: int = 8
    decoding: list[DecodingConfig] = field(default_factory=lambda: [DecodingConfig()])
    allow_code_execution: bool = False
    forgetting_texts: int = 32  # held-out general-text paragraphs scored on every run (0: no forgetting measure)
    retention_tasks: list[str] = field(default_factory=list)  # other peftlab tasks scored on every run

    def __post_init__(self) -> None:
        _positive(self.batch_size, "eval.batch_size", at_most=MAX_SIZE)
        _positive(self.forgetting_texts, "eval.forgetting_texts", allow_zero=True, at_most=MAX_SIZE)
        if not self.decoding:
            raise ConfigError("eval.decoding: must name at least one strategy, e.g. greedy")


# ---------------------------------------------------------------------------------------------
# Axes (grid and tuning search space) and tuning
# ---------------------------------------------------------------------------------------------

DISTRIBUTIONS = ("uniform", "log_uniform", "int_uniform")
TUNING_STRATEGIES = ("grid", "random", "sobol")
MAX_TRIALS = 10_000


@dataclass(frozen=True)
class Axis:
    """One axis of a grid or a tuning search space.

    A choice axis lists its `points`, each a `{dotted key: value}` mapping: one key for a plain axis
    (`lora.r: [4, 8]`), several that move together for a tied one (`rank: [{lora.r: 4, lora.lora_alpha: 8}]`).
    A distribution axis (search spaces only) draws one key's value from `uniform`, `log_uniform` or
    `int_uniform` over [low, high].
    """

    name: str
    points: tuple = ()
    distribution: str | None = None
    low: float = 0.0
    high: float = 0.0

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.points[0]) if self.points else (self.name,)


def _dotted(key: Any, where: str) -> str:
    if not isinstance(key, str) or "." not in key or not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"{where}: key {key!r} must be a dotted path such as lora.r or train.lr")
    return key


def parse_axis(name: Any, value: Any, where: str, distributions: bool = False) -> Axis:
    """One grid / search-space entry as an `Axis`; `where` names it in errors (`grid`, `tuning.space.lora`).

    `name` with a dot: a plain axis, a list of values (one bare value is a list of one) or, where
    `distributions`, `{uniform|log_uniform|int_uniform: [low, high]}`. `name` without a dot: a tied
    axis, a list of mappings of dotted keys, every mapping with the same keys.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: key {name!r} must be a dotted path such as lora.r or train.lr, or the name of "
                          "a tied axis")
    at = f"{where}.{name}"
    if "." not in name:
        example = "[{lora.r: 4, lora.lora_alpha: 8}, {lora.r: 8, lora.lora_alpha: 16}]"
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) and v for v in value):
            raise ConfigError(f"{where}: key {name!r} is not a dotted path (such as lora.r or train.lr), so it names a "
                              f"tied axis, whose values are mappings of dotted keys that move together, e.g. "
                              f"{name}: {example}; got {value!r}")
        keys = [_dotted(k, at) for k in value[0]]
        for i, point in enumerate(value):
            if sorted(point) != sorted(keys):
                raise ConfigError(f"{at}[{i}]: every point of a tied axis sets the same keys ({', '.join(keys)}); "
                                  f"got {', '.join(map(str, point))}")
        return Axis(name=name, points=tuple({k: point[k] for k in keys} for point in value))
    _dotted(name, where)
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS:
        (kind, bounds), = value.items()
        if not distributions:
            raise ConfigError(f"{at}: {{{kind}: ...}} is a distribution, which only a tuning search space takes; a "
                              "grid lists its values, e.g. [1.0e-4, 5.0e-4]")
        return _distribution(name, kind, bounds, at)
    if distributions and isinstance(value, dict):
        raise ConfigError(f"{at}: expected a list of values or one of {{uniform: [low, high]}}, "
                          f"{{log_uniform: [low, high]}}, {{int_uniform: [low, high]}}; got {value!r}")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}: {name} has no values; give at least one (e.g. {name}: [4, 8])")
    return Axis(name=name, points=tuple({name: v} for v in values))


def _distribution(name: str, kind: str, bounds: Any, at: str) -> Axis:
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise ConfigError(f"{at}: {kind} takes [low, high], got {bounds!r}")
    typ = int if kind == "int_uniform" else float
    low, high = (_coerce(b, typ, f"{at}.{kind}") for b in bounds)
    if not low < high:
        raise ConfigError(f"{at}: {kind} needs low < high, got [{low}, {high}]")
    if kind == "log_uniform" and low <= 0:
        raise ConfigError(f"{at}: log_uniform needs low > 0 (a log scale), got {low}")
    return Axis(name=name, distribution=kind, low=low, high=high)


def apply_setting(method: MethodConfig, task: TaskConfig, train: TrainConfig, key: str, value: Any,
                  where: str = "grid") -> tuple[MethodConfig, TaskConfig, TrainConfig]:
    """Set one dotted key of a grid point or trial: `train.FIELD`, `task.FIELD` (or a task argument), or a
    method argument (`LABEL.ARG`, `method.ARG`); `where` names the setting in errors."""
    head, _, rest = key.partition(".")
    if not rest:
        raise ConfigError(f"{where}: key {key!r} needs a field after the dot (e.g. train.lr, lora.r)")
    if head == "train":
        data = {**dataclasses.asdict(train), rest: value}
        return method, task, build(TrainConfig, data, f"{where} {key}")
    if head == "task":
        data = dataclasses.asdict(task)
        if rest in data:
            data[rest] = value
        else:
            data["args"] = {**data["args"], rest: value}
        return method, build(TaskConfig, data, f"{where} {key}"), train
    return dataclasses.replace(method, args={**method.args, rest: value}), task, train


@dataclass(frozen=True)
class TuningConfig:
    """Tuning as part of the experiment: every trained method gets `budget` trials drawn from its search space
    (`space: {label: {key: values or distribution}}`), trained on train and scored on validation; the best
    trial's configuration (by `metric`, default the task's primary) is then run over the experiment's seeds
    and scored on test. `holdout`: the fraction of train held out as validation for tasks without one."""

    budget: int | None = None
    strategy: str = "random"  # grid | random | sobol
    seed: int = 0
    metric: str | None = None
    holdout: float = 0.1
    space: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.budget is None:
            raise ConfigError("tuning.budget: required: the number of trials every trained method gets, e.g. budget: 8")
        _positive(self.budget, "tuning.budget", at_most=MAX_TRIALS)
        _choice(self.strategy, TUNING_STRATEGIES, "tuning.strategy")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"tuning.seed: {self.seed} is out of range (0 <= seed < 2**32)")
        if not 0 < self.holdout < 1:
            raise ConfigError(f"tuning.holdout: the fraction of train held out must be in (0, 1), got {self.holdout}")
        if not self.space:
            raise ConfigError("tuning.space: give every trained method a search space, e.g. space: {lora: {lora.r: "
                              "[4, 8, 16], train.lr: {log_uniform: [1.0e-5, 1.0e-3]}}}")
        for label in self.space:
            self.axes(label)

    def axes(self, label: str) -> list[Axis]:
        """The search space of method `label`, checked: keys set the method's arguments (`LABEL.ARG`,
        `method.ARG`) or the training protocol (`train.FIELD`)."""
        where = f"tuning.space.{label}"
        body = self.space.get(label)
        if not isinstance(body, dict) or not body:
            raise ConfigError(f"{where}: expected a mapping of keys to values or distributions, e.g. "
                              f"{{train.lr: {{log_uniform: [1.0e-5, 1.0e-3]}}}}; got {body!r}")
        axes = [parse_axis(name, value, where, distributions=True) for name, value in body.items()]
        seen: set[str] = set()
        for axis in axes:
            for key in axis.keys:
                head = key.split(".", 1)[0]
                if head not in ("train", "method", str(label)):
                    raise ConfigError(f"{where}: key {key!r} must start with train., method. or {label}. (a search "
                                      "space sets the method's arguments and the training protocol, never the task)")
                plain = key.split(".", 1)[1] if head != "train" else key
                if plain in seen:
                    raise ConfigError(f"{where}: {key!r} is set by two axes; give it once")
                seen.add(plain)
            if self.strategy == "grid" and axis.distribution:
                raise ConfigError(f"{where}.{axis.name}: {axis.distribution} is a distribution, which strategy grid "
                                  "cannot enumerate; list its values or use strategy random or sobol")
        return axes


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: model × tasks × methods (× grid) × seeds under one protocol."""

    name: str
    model: ModelConfig
    tasks: list[TaskConfig]
    methods: list[MethodConfig]
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    grid: dict = field(default_factory=dict)
    output_dir: str = "runs"
    executor: dict = field(default_factory=dict)
    trackers: list[str] = field(default_factory=list)
    task_paths: list[str] = field(default_factory=list)  # directories of outside task YAMLs (+ hooks)
    tuning: TuningConfig | None = None  # tune each method on validation before the test runs (see TuningConfig)

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        if self.tuning is not None:
            if self.grid:
                raise ConfigError("grid and tuning: give one; a tuned experiment searches each method's space "
                                  "(tuning.space, strategy grid for a grid) and runs only the selected configuration")
            labels = [m.label for m in self.methods]
            for label in self.tuning.space:
                if label not in labels:
                    raise ConfigError(f"tuning.space: {label!r} is not a method label of the experiment"
                                      f"{_suggest(str(label), labels)}")
        for what, items, example in (("tasks", self.tasks, "lm"), ("methods", self.methods, "lora"),
                                     ("seeds", self.seeds, "0")):
            if not items:
                raise ConfigError(f"{what}: the list is empty; give at least one (e.g. {what}: [{example}])")
        for seed in self.seeds:
            if not 0 <= seed < 2**32:
                raise ConfigError(f"seeds: {seed} is out of range (0 <= seed < 2**32)")
        if not str(self.output_dir).strip():
            raise ConfigError("output_dir: must not be empty")


EVAL_SPLITS = ("test", "validation")


@dataclass(frozen=True)
class RunConfig:
    """One concrete run: what the trainer and evaluator receive. Hashable into a stable id."""

    experiment: str
    model: ModelConfig
    task: TaskConfig
    method: MethodConfig
    train: TrainConfig
    eval: EvalConfig
    seed: int
    grid: dict = field(default_factory=dict)
    output_dir: str = "runs"
    trackers: list[str] = field(default_factory=list)
    eval_split: str = "test"  # test | validation (a tuning trial: the runner refuses to read test for it)
    holdout: float | None = None  # tuned task without a validation split: this fraction of train is held out as one
    trial: int | None = None  # a tuning trial's index among its method's budget
    tuning: dict = field(default_factory=dict)  # what the tuning stage records in the result (stage, selection)

    def __post_init__(self) -> None:
        _choice(self.eval_split, EVAL_SPLITS, "run.eval_split")
        if self.trial is not None and self.eval_split != "validation":
            raise ConfigError(f"run.trial: a tuning trial is scored on the validation split, not {self.eval_split!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Hash of everything that changes the result (not where it is stored, nor the tuning stage's notes).

        The tuning fields count only when set, so a run outside tuning keeps the id it always had."""
        data = self.to_dict()
        for key in ("output_dir", "trackers", "tuning"):
            data.pop(key, None)
        for key, default in (("eval_split", "test"), ("holdout", None), ("trial", None)):
            if data.get(key) == default:
                data.pop(key, None)
        for key, default in EVAL_ADDED_DEFAULTS:  # fields added after runs were recorded: ids stay as they were
            if data.get("eval", {}).get(key) == default:
                data["eval"].pop(key, None)
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def run_id(self) -> str:
        """`EXP--LABEL--TASK--<grid point>--sSEED--HASH`; a tuning trial shows its index (`--t3`) instead of its point."""
        if self.trial is not None:
            point = f"--t{self.trial}"
        else:
            point = "".join(f"--{_id_part(k.split('.')[-1])}{_id_part(v)}" for k, v in sorted(self.grid.items()))
        label = _id_part(self.method.label.replace("+", "-"))
        return f"{self.experiment}--{label}--{self.task.name}{point}--s{self.seed}--{self.config_hash()}"

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return build(cls, data, "run")


def _id_part(value: Any) -> str:
    """A value as part of a run id (a directory name): path separators become '-', control chars go."""
    text = str(value).replace("/", "-").replace("\\", "-")
    return "".join(c for c in text if ord(c) >= 32 and ord(c) != 127)


# ---------------------------------------------------------------------------------------------
# Parsing experiment YAML: methods and tasks have compact spellings, overrides use dotted paths.
# ---------------------------------------------------------------------------------------------

def _parse_method(entry: Any, i: int) -> MethodConfig:
    """Accept `lora`, `{lora: {r: 16}}` or `{label: lora-r16, method: lora, r: 16}`."""
    where = f"methods[{i}]"
    if isinstance(entry, str):
        return MethodConfig(label=entry, method=entry)
    if isinstance(entry, dict) and len(entry) == 1 and "method" not in entry and "label" not in entry:
        (name, args), = entry.items()
        if args is not None and not isinstance(args, dict):
            raise ConfigError(f"{where}.{name}: expected a mapping of method arguments, got {args!r}")
        return MethodConfig(label=str(name), method=str(name), args=dict(args or {}))
    if isinstance(entry, dict) and "method" in entry:
        if not isinstance(entry["method"], str) or not entry["method"].strip():
            raise ConfigError(f"{where}.method: expected a method name, got {entry['method']!r}")
        label = entry.get("label", entry["method"])
        if not isinstance(label, (str, int, float)) or isinstance(label, bool):
            raise ConfigError(f"{where}.label: expected a name, got {label!r}")
        extra = entry.get("args") or {}
        if not isinstance(extra, dict):
            raise ConfigError(f"{where}.args: expected a mapping of method arguments, got {extra!r}")
        args = {k: v for k, v in entry.items() if k not in ("label", "method", "args")}
        args.update(extra)
        return MethodConfig(label=str(label), method=entry["method"], args=args)
    raise ConfigError(f"{where}: expected a method name or a mapping, got {entry!r}")


def _parse_task(entry: Any, i: int) -> TaskConfig:
    return _list_task_args(_task_entry(entry, i))


def _list_task_args(task: TaskConfig) -> TaskConfig:
    """Task arguments whose default is a list (code's `k`, sentiment's `label_words`) read `a,b` and a single
    value as lists, as `--set seeds=0,1` does, so both spellings give the same run."""
    from peftlab.tasks.registry import all_tasks

    spec = all_tasks().get(task.name)
    if spec is None:
        return task
    args = dict(task.args)
    for name, value in task.args.items():
        if isinstance(spec.args.get(name), list) and value is not None and not isinstance(value, list):
            args[name] = _comma_list(value) if isinstance(value, str) and "," in value else [value]
    return task if args == task.args else dataclasses.replace(task, args=args)


def _task_entry(entry: Any, i: int) -> TaskConfig:
    if isinstance(entry, str):
        if not entry.strip():
            raise ConfigError(f"tasks[{i}]: empty task name")
        return TaskConfig(name=entry)
    if isinstance(entry, dict) and len(entry) == 1 and "name" not in entry:
        (name, body), = entry.items()
        if body is not None and not isinstance(body, dict):
            raise ConfigError(f"tasks[{i}].{name}: expected a mapping of task fields, got {body!r}")
        return build(TaskConfig, {"name": name, **(body or {})}, f"tasks[{i}]")
    if not isinstance(entry, dict):
        raise ConfigError(f"tasks[{i}]: expected a task name or a mapping, got {entry!r}")
    return build(TaskConfig, entry, f"tasks[{i}]")


def _parse_decoding(entry: Any, i: int) -> DecodingConfig:
    if isinstance(entry, str):
        return parse_decoding_spec(entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"eval.decoding[{i}]: expected a strategy such as greedy or top_p=0.9, or a mapping, "
                          f"got {entry!r}")
    return build(DecodingConfig, entry, f"eval.decoding[{i}]")


_DECODING_KEYS = ["greedy", "beam", "sample", "top_k", "top_p", "temperature", "n", "num_return_sequences",
                  "max_new_tokens", "seed"]
_DECODING_PARTS = "greedy, beam=N, sample, top_k=K, top_p=P, temperature=T, n=N, max_new_tokens=N, seed=S"


def split_decodings(text: str, where: str = "--decoding") -> list[str]:
    """`greedy,top_k=50,top_p=0.9` → one strategy text per comma (knobs of one strategy join with `:`)."""
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"{where} {text!r}: name at least one strategy, e.g. greedy or greedy,top_p=0.9")
    return parts


def parse_decodings(text: str | None, max_new_tokens: int | None = None) -> list[DecodingConfig]:
    """The strategies of a `--decoding` list (default greedy); `max_new_tokens` applies where a strategy
    does not name its own."""
    out = []
    for part in split_decodings(text or "greedy"):
        decoding = parse_decoding_spec(part)
        if max_new_tokens and "max_new_tokens" not in part:
            decoding = dataclasses.replace(decoding, max_new_tokens=max_new_tokens)
        out.append(decoding)
    return out


def parse_decoding_spec(spec: str) -> DecodingConfig:
    """`greedy`, `beam=4`, `top_k=50`, `top_p=0.9`, `temperature=0.7`, `sample` → a DecodingConfig.

    Several knobs can be joined with `:` (`top_k=50:temperature=0.7:n=5`).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"decoding {spec!r}: empty strategy; valid: {_DECODING_PARTS}")
    kwargs: dict[str, Any] = {"name": spec}
    for part in spec.split(":"):
        key, eq, text = (x.strip() for x in part.partition("="))
        where = f"decoding {spec!r}: {key}"
        if key in ("greedy", "sample"):
            if eq:
                raise ConfigError(f"{where} takes no value, got {part.strip()!r}")
            kwargs["strategy"] = key
            continue
        if key not in _DECODING_KEYS:
            close = difflib.get_close_matches(key, _DECODING_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"decoding {spec!r}: unknown part {key!r}{hint}; valid: {_DECODING_PARTS}")
        if key == "beam" and not text:
            text = "4"
        if not text:
            raise ConfigError(f"{where} needs a value, e.g. {key}={'0.9' if key in ('top_p', 'temperature') else '4'}")
        value = _coerce(text, float if key in ("top_p", "temperature") else int, where)
        if key == "beam":
            kwargs.update(strategy="beam", num_beams=value)
        elif key in ("top_k", "top_p", "temperature"):
            kwargs.update(strategy="sample", **{key: value})
        elif key in ("n", "num_return_sequences"):
            kwargs["num_return_sequences"] = value
        else:
            kwargs[key] = value
    try:
        return build(DecodingConfig, kwargs, f"decoding {spec!r}")
    except ConfigError as exc:
        raise ConfigError(f"decoding {spec!r}: {exc}") from None


EXPERIMENT_KEYS = ("name", "model", "task", "tasks", "methods", "train", "eval", "seeds", "grid",
                   "output_dir", "presets", "executor", "trackers", "description", "task_paths", "tuning")


def parse_experiment(raw: dict, source: str = "experiment") -> ExperimentConfig:
    """Validate a raw YAML mapping (after presets and overrides) into an ExperimentConfig."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    for key in raw:
        if key not in EXPERIMENT_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}{_suggest(str(key), list(EXPERIMENT_KEYS))}")
    if "task" in raw and "tasks" in raw:
        raise ConfigError(f"{source}: give either 'task' or 'tasks', not both")
    task_key = "tasks" if "tasks" in raw else "task"
    tasks_raw = _as_list(raw.get(task_key, "lm"), task_key, "lm")
    methods_raw = _as_list(raw.get("methods", ["lora"]), "methods", "lora")
    model_raw = raw.get("model", {})
    if model_raw is None:
        raise ConfigError("model: must not be empty; give an offline alias, a hub id (owner/name) or a local directory")
    model_raw = {"name": model_raw} if isinstance(model_raw, (str, int, float)) and not isinstance(model_raw, bool) \
        else model_raw
    if model_raw is not None and not isinstance(model_raw, dict):
        raise ConfigError(f"model: expected a model name or a mapping with 'name', got {model_raw!r}")
    eval_raw = raw.get("eval") or {}
    if not isinstance(eval_raw, dict):
        raise ConfigError(f"eval: expected a mapping, got {eval_raw!r}")
    eval_raw = dict(eval_raw)
    decoding_raw = eval_raw.pop("decoding", ["greedy"])
    decoding_raw = ["greedy"] if decoding_raw is None else _as_list(decoding_raw, "eval.decoding", "greedy")
    decoding = [_parse_decoding(d, i) for i, d in enumerate(decoding_raw)]
    methods = [_parse_method(m, i) for i, m in enumerate(methods_raw)]
    labels = [m.label for m in methods]
    dupes = {x for x in labels if labels.count(x) > 1}
    if dupes:
        raise ConfigError(f"{source}.methods: duplicate labels {sorted(dupes)}; give each entry a distinct 'label'")
    seeds = _comma_list(raw.get("seeds", [0]))
    if seeds is None:
        raise ConfigError("seeds: must not be empty; give at least one seed, e.g. seeds: [0]")
    name = raw.get("name")
    output_dir = raw.get("output_dir", "runs")
    if isinstance(output_dir, bool) or not isinstance(output_dir, (str, int, float)):
        raise ConfigError(f"output_dir: expected a directory path (a string), got {output_dir!r}")
    task_paths = _register_task_paths(raw.get("task_paths"))  # before the tasks: outside tasks' args are read too
    return ExperimentConfig(
        name=check_name(source if name is None or name == "" else name, "name"),
        model=build(ModelConfig, model_raw, "model"),
        tasks=[_parse_task(t, i) for i, t in enumerate(tasks_raw)],
        methods=methods,
        train=build(TrainConfig, raw.get("train"), "train"),
        eval=dataclasses.replace(build(EvalConfig, eval_raw, "eval"), decoding=decoding),
        seeds=_coerce(seeds, list[int], "seeds"),
        grid=_coerce(raw.get("grid") or {}, dict, "grid"),
        output_dir=str(output_dir),
        executor=_coerce(raw.get("executor") or {}, dict, "executor"),
        trackers=_coerce(_comma_list(raw.get("trackers")) or [], list[str], "trackers"),
        task_paths=task_paths,
        tuning=None if raw.get("tuning") is None else build(TuningConfig, raw["tuning"], "tuning"),
    )


def _register_task_paths(value: Any) -> list[str]:
    """`task_paths:` directories of task YAMLs from outside the package (as `PEFTLAB_TASK_PATHS`),
    registered before the experiment's tasks are looked up."""
    from peftlab.tasks.registry import add_task_path

    paths = _coerce(_comma_list(value) or [], list[str], "task_paths")
    for path in paths:
        if not Path(path).expanduser().is_dir():
            raise ConfigError(f"task_paths: {path!r} is not a directory of task YAMLs")
        add_task_path(path)
    return [str(Path(p).expanduser().resolve()) for p in paths]


def _as_list(value: Any, where: str, example: str) -> list:
    """A list field that also takes one bare entry or `a,b` (as `--set` does); empty is an error, not a default."""
    value = _comma_list(value)
    if value is None or value == [] or value == "":
        raise ConfigError(f"{where}: the list is empty; give at least one (e.g. {where}: [{example}])")
    return value if isinstance(value, list) else [value]


def _comma_list(value: Any) -> Any:
    """`"0,1"` → `[0, 1]`, `"lora,prompt"` → `["lora", "prompt"]`: lists read the same in files and `--set`."""
    if isinstance(value, str) and "," in value:
        return [_override_value(part.strip()) for part in value.split(",") if part.strip()]
    return value


def deep_merge(base: dict, update: dict) -> dict:
    """Recursively merge `update` into a copy of `base` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(path: str | Path, preset: str | None = None) -> dict:
    """Read an experiment YAML and apply a named preset (`presets: {demo: {...}}`)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such experiment file")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, not an experiment file (give a .yaml file, e.g. configs/demo.yaml)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (is it binary?); an experiment file is YAML text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the experiment file ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; an experiment names at least its methods and task "
                          "(see configs/demo.yaml)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level (keys such as name, model, task, methods), "
                          f"got a {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    presets = raw.pop("presets", {}) or {}
    if not isinstance(presets, dict):
        raise ConfigError(f"{path}: presets: expected a mapping of preset names to settings, got {presets!r}")
    if preset:
        if preset not in presets:
            raise ConfigError(f"{path}: unknown preset {preset!r}; valid: {', '.join(presets) or '(none defined)'}")
        if not isinstance(presets[preset] or {}, dict):
            raise ConfigError(f"{path}: presets.{preset}: expected a mapping of settings, got {presets[preset]!r}")
        raw = deep_merge(raw, presets[preset] or {})
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line from a YAML error: where (line, column) and what."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    return f"{where}: {' '.join(str(problem).split())}"


# ---------------------------------------------------------------------------------------------
# Overrides: `--set train.lr=1e-4 --set method=lora --set lora.r=16`
# ---------------------------------------------------------------------------------------------

def _method_entries(raw: dict) -> list[MethodConfig]:
    methods = _comma_list(raw.get("methods", ["lora"]))
    return [_parse_method(m, i) for i, m in enumerate(methods if isinstance(methods, list) else [methods])]


def _as_raw_method(m: MethodConfig) -> dict:
    return {"label": m.label, "method": m.method, **m.args}


def apply_override(raw: dict, key: str, value: Any, known_labels: list[str] | tuple[str, ...] = ()) -> dict:
    """Apply one dotted override to a raw experiment mapping and return the new mapping.

    `method=NAME[,NAME]` keeps only those entries (adding registered methods not in the file);
    `method.ARG=V` sets an argument of every kept method; `LABEL.ARG=V` of one method;
    `task=NAME` replaces the tasks; `task.FIELD=V` sets a field of every task; other keys are
    dotted paths into the mapping (`train.lr`, `model.dtype`, `seeds`). `known_labels`: labels seen
    earlier (in the file or an earlier `method=`), to say so when one of them is no longer kept.
    """
    raw = copy.deepcopy(raw)
    head, _, rest = key.partition(".")
    methods = _method_entries(raw)
    labels = [m.label for m in methods]
    if head in ("method", "methods") and not rest:
        wanted = value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
        if value is None or not wanted:
            raise ConfigError(f"--set {key}=: name at least one method to keep (e.g. {key}=lora,prompt); "
                              f"methods in the experiment: {', '.join(labels)}")
        if not all(isinstance(w, str) and w.strip() for w in wanted):
            raise ConfigError(f"--set {key}: expected method names, got {value!r}")
        by_label = {m.label: m for m in methods}
        raw["methods"] = [_as_raw_method(by_label.get(w, MethodConfig(label=w, method=w))) for w in wanted]
        tuning = raw.get("tuning")
        if isinstance(tuning, dict) and isinstance(tuning.get("space"), dict):  # the dropped methods' spaces go too
            raw["tuning"] = {**tuning, "space": {k: v for k, v in tuning["space"].items() if k in wanted}}
        return raw
    if head in ("method", "methods"):
        raw["methods"] = [_as_raw_method(dataclasses.replace(m, args={**m.args, rest: value})) for m in methods]
        return raw
    if head in labels and rest:
        raw["methods"] = [
            _as_raw_method(dataclasses.replace(m, args={**m.args, rest: value}) if m.label == head else m)
            for m in methods
        ]
        return raw
    if head in ("task", "tasks"):
        tasks = raw.pop("tasks", raw.pop("task", "lm"))
        tasks = tasks if isinstance(tasks, list) else [tasks]
        if not rest:
            wanted = value if isinstance(value, list) else [t.strip() for t in str(value).split(",") if t.strip()]
            if value is None or not wanted:
                raise ConfigError(f"--set {key}=: name at least one task (e.g. {key}=lm)")
            raw["tasks"] = wanted
            return raw
        parsed = [_parse_task(t, i) for i, t in enumerate(tasks)]
        field_name, _, sub = rest.partition(".")
        out = []
        for t in parsed:
            d = dataclasses.asdict(t)
            if field_name == "args" and sub:
                d["args"] = {**d["args"], sub: value}
            elif field_name in d:
                d[field_name] = value
            else:
                d.setdefault("args", {})[field_name] = value
            out.append(d)
        raw["tasks"] = out
        return raw
    if head == "model" and not rest:
        model = raw.get("model", {})
        model = {"name": model} if isinstance(model, str) else dict(model or {})
        model["name"] = value
        raw["model"] = model
        return raw
    if head == "model":
        model = raw.get("model", {})
        raw["model"] = {"name": model} if isinstance(model, str) else dict(model or {})
    if head == "grid" and rest:  # grid keys are dotted themselves: `grid.lora.r=[4, 8]`
        grid = raw.get("grid") or {}
        raw["grid"] = {**(grid if isinstance(grid, dict) else {}), rest: value}
        return raw
    if head == "tuning" and rest.startswith("space.") and rest.count(".") >= 2:  # `tuning.space.lora.train.lr=...`
        _, label, axis = rest.split(".", 2)
        tuning = raw.get("tuning") if isinstance(raw.get("tuning"), dict) else {}
        space = tuning.get("space") if isinstance(tuning.get("space"), dict) else {}
        body = space.get(label) if isinstance(space.get(label), dict) else {}
        raw["tuning"] = {**tuning, "space": {**space, label: {**body, axis: value}}}
        return raw
    if head not in EXPERIMENT_KEYS:
        valid = sorted(set(EXPERIMENT_KEYS) - {"presets", "description"}) + ["method"] + labels
        if head in labels:
            raise ConfigError(f"--set {key}: to set an argument of method {head!r} use {head}.ARG=VALUE "
                              f"(e.g. {head}.r=16)")
        if rest and head in known_labels:
            raise ConfigError(f"--set {key}: method {head!r} is not among the kept methods ({', '.join(labels)}); "
                              f"keep it with --set method={','.join([*labels, head])}")
        if rest:
            raise ConfigError(f"--set {key}: {head!r} is neither a top-level key nor a kept method's label"
                              f"{_suggest(head, valid)}")
        raise ConfigError(f"--set {key}: unknown key {head!r}{_suggest(head, valid)}")
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return raw


# Keys whose value is a list: `--set seeds=0,1` reads like `--set method=lora,prompt` (and `[0, 1]`).
LIST_KEYS = ("seeds", "trackers", "method", "methods", "task", "tasks", "eval.decoding", "eval.retention_tasks")


def _override_value(text: str) -> Any:
    """One `--set` value read as YAML (`1e-4` as a number, as users mean it)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)
    return value


def apply_overrides(raw: dict, sets: list[str]) -> dict:
    """Apply `KEY=VALUE` strings in order; values are read as YAML (`1e-4`, `[0, 1]`, `true`).

    For list keys (seeds, trackers, methods, tasks, eval.decoding, grid axes) `a,b` means `[a, b]`.
    """
    known: list[str] = [m.label for m in _method_entries(raw)] if sets else []
    for item in sets:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        value = _override_value(text)
        if isinstance(value, str) and "," in value and (key in LIST_KEYS or key.startswith(("grid.", "tuning.space."))):
            value = [_override_value(part) for part in value.split(",") if part.strip()]
        raw = apply_override(raw, key, value, known)
        known += [m.label for m in _method_entries(raw) if m.label not in known]
    return raw


def _looks_numeric(text: str) -> bool:
    """YAML 1.1 reads `1e-4` as a string; users mean a number."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_experiment(path: str | Path, preset: str | None = None, sets: list[str] | None = None) -> ExperimentConfig:
    """Read, apply preset and overrides, validate: the one way the CLI gets an experiment."""
    raw = load_raw(path, preset)
    if isinstance(raw, dict) and isinstance(raw.get("task_paths"), list):  # relative to the experiment file
        raw["task_paths"] = [str(Path(path).parent / p) if isinstance(p, str) and not Path(p).expanduser().is_absolute()
                             else p for p in raw["task_paths"]]
    try:
        raw = apply_overrides(raw, sets or [])
        return parse_experiment(raw, Path(path).stem)
    except (TypeError, AttributeError, KeyError) as exc:  # a shape no check above foresaw: still one sentence
        raise ConfigError(f"{path}: malformed experiment ({type(exc).__name__}: {exc})") from None
