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


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Check/convert one YAML value to the declared field type, naming `where` on failure."""
    origin = get_origin(typ)
    if typ is Any:
        return value
    if origin is Union:
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
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
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


def _positive(value: float | int | None, where: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """Which base model, in which precision. `name` is a hub id, a local directory or an alias."""

    name: str = "smollm2-135m-instruct"
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    revision: str | None = None
    trust_remote_code: bool = False
    gguf_file: str | None = None

    def __post_init__(self) -> None:
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
        _positive(self.max_length, f"task {self.name}.max_length")


@dataclass(frozen=True)
class MethodConfig:
    """One method entry: `label` names the row in reports, `method` the registry key."""

    label: str
    method: str
    args: dict = field(default_factory=dict)


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
    packing: bool = True  # causal-LM text is packed into full windows
    log_every: int = 1
    save_adapter: bool = True
    peak_tflops: float | None = None  # the peak MFU is measured against; None: known GPU table / CPU probe
    num_threads: int | None = None

    def __post_init__(self) -> None:
        _positive(self.lr, "train.lr")
        _positive(self.weight_decay, "train.weight_decay", allow_zero=True)
        _positive(self.warmup_steps, "train.warmup_steps", allow_zero=True)
        _choice(self.schedule, ("linear", "cosine", "constant"), "train.schedule")
        _positive(self.epochs, "train.epochs")
        _positive(self.max_steps, "train.max_steps")
        _positive(self.batch_size, "train.batch_size")
        _positive(self.grad_accum, "train.grad_accum")
        _positive(self.max_grad_norm, "train.max_grad_norm")
        _positive(self.eval_every, "train.eval_every")
        _choice(self.mixed_precision, ("auto", "no", "bf16", "fp16"), "train.mixed_precision")


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
        _positive(self.max_new_tokens, "decoding.max_new_tokens")
        _positive(self.num_beams, "decoding.num_beams")
        _positive(self.temperature, "decoding.temperature")
        _positive(self.num_return_sequences, "decoding.num_return_sequences")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ConfigError(f"decoding.top_p: must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings shared by tasks; `decoding` lists strategies evaluated on one adapter."""

    batch_size: int = 8
    decoding: list[DecodingConfig] = field(default_factory=lambda: [DecodingConfig()])
    allow_code_execution: bool = False


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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Hash of everything that changes the result (not where it is stored)."""
        data = self.to_dict()
        data.pop("output_dir", None)
        data.pop("trackers", None)
        blob = json.dumps(data, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def run_id(self) -> str:
        grid = "".join(f"--{k.split('.')[-1]}{v}" for k, v in sorted(self.grid.items()))
        label = self.method.label.replace("+", "-").replace("/", "-")
        return f"{self.experiment}--{label}--{self.task.name}{grid}--s{self.seed}--{self.config_hash()}"

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return build(cls, data, "run")


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
        args = {k: v for k, v in entry.items() if k not in ("label", "method", "args")}
        args.update(entry.get("args") or {})
        return MethodConfig(label=str(entry.get("label", entry["method"])), method=str(entry["method"]), args=args)
    raise ConfigError(f"{where}: expected a method name or a mapping, got {entry!r}")


def _parse_task(entry: Any, i: int) -> TaskConfig:
    if isinstance(entry, str):
        return TaskConfig(name=entry)
    if isinstance(entry, dict) and len(entry) == 1 and "name" not in entry:
        (name, body), = entry.items()
        return build(TaskConfig, {"name": name, **(body or {})}, f"tasks[{i}]")
    return build(TaskConfig, entry, f"tasks[{i}]")


def _parse_decoding(entry: Any, i: int) -> DecodingConfig:
    if isinstance(entry, str):
        return parse_decoding_spec(entry)
    return build(DecodingConfig, entry, f"eval.decoding[{i}]")


def parse_decoding_spec(spec: str) -> DecodingConfig:
    """`greedy`, `beam=4`, `top_k=50`, `top_p=0.9`, `temperature=0.7`, `sample` → a DecodingConfig.

    Several knobs can be joined with `:` (`top_k=50:temperature=0.7:n=5`).
    """
    kwargs: dict[str, Any] = {"name": spec}
    for part in spec.split(":"):
        key, _, value = part.partition("=")
        key = key.strip()
        if key == "greedy":
            kwargs["strategy"] = "greedy"
        elif key == "beam":
            kwargs.update(strategy="beam", num_beams=int(value or 4))
        elif key == "sample":
            kwargs["strategy"] = "sample"
        elif key in ("top_k", "top_p", "temperature"):
            kwargs["strategy"] = "sample"
            kwargs[key] = int(value) if key == "top_k" else float(value)
        elif key in ("n", "num_return_sequences"):
            kwargs["num_return_sequences"] = int(value)
        elif key in ("max_new_tokens", "seed"):
            kwargs[key] = int(value)
        else:
            raise ConfigError(
                f"decoding {spec!r}: unknown part {key!r}; valid: greedy, beam=N, sample, top_k=K, "
                "top_p=P, temperature=T, n=N, max_new_tokens=N, seed=S"
            )
    return build(DecodingConfig, kwargs, f"decoding {spec!r}")


EXPERIMENT_KEYS = ("name", "model", "task", "tasks", "methods", "train", "eval", "seeds", "grid",
                   "output_dir", "presets", "executor", "trackers", "description")


def parse_experiment(raw: dict, source: str = "experiment") -> ExperimentConfig:
    """Validate a raw YAML mapping (after presets and overrides) into an ExperimentConfig."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    for key in raw:
        if key not in EXPERIMENT_KEYS:
            raise ConfigError(f"{source}: unknown key {key!r}{_suggest(str(key), list(EXPERIMENT_KEYS))}")
    if "task" in raw and "tasks" in raw:
        raise ConfigError(f"{source}: give either 'task' or 'tasks', not both")
    tasks_raw = raw.get("tasks", raw.get("task", "lm"))
    tasks_raw = tasks_raw if isinstance(tasks_raw, list) else [tasks_raw]
    methods_raw = raw.get("methods", ["lora"])
    methods_raw = methods_raw if isinstance(methods_raw, list) else [methods_raw]
    model_raw = raw.get("model", {})
    model_raw = {"name": model_raw} if isinstance(model_raw, str) else model_raw
    eval_raw = dict(raw.get("eval") or {})
    decoding = [_parse_decoding(d, i) for i, d in enumerate(eval_raw.pop("decoding", ["greedy"]) or ["greedy"])]
    methods = [_parse_method(m, i) for i, m in enumerate(methods_raw)]
    labels = [m.label for m in methods]
    dupes = {x for x in labels if labels.count(x) > 1}
    if dupes:
        raise ConfigError(f"{source}.methods: duplicate labels {sorted(dupes)}; give each entry a distinct 'label'")
    seeds = raw.get("seeds", [0])
    return ExperimentConfig(
        name=str(raw.get("name") or source),
        model=build(ModelConfig, model_raw, "model"),
        tasks=[_parse_task(t, i) for i, t in enumerate(tasks_raw)],
        methods=methods,
        train=build(TrainConfig, raw.get("train"), "train"),
        eval=dataclasses.replace(build(EvalConfig, eval_raw, "eval"), decoding=decoding),
        seeds=_coerce(seeds, list[int], "seeds"),
        grid=_coerce(raw.get("grid") or {}, dict, "grid"),
        output_dir=str(raw.get("output_dir", "runs")),
        executor=_coerce(raw.get("executor") or {}, dict, "executor"),
        trackers=_coerce(raw.get("trackers") or [], list[str], "trackers"),
    )


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
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.setdefault("name", path.stem)
    presets = raw.pop("presets", {}) or {}
    if preset:
        if preset not in presets:
            raise ConfigError(f"{path}: unknown preset {preset!r}; valid: {', '.join(presets) or '(none defined)'}")
        raw = deep_merge(raw, presets[preset])
    return raw


# ---------------------------------------------------------------------------------------------
# Overrides: `--set train.lr=1e-4 --set method=lora --set lora.r=16`
# ---------------------------------------------------------------------------------------------

def _method_entries(raw: dict) -> list[MethodConfig]:
    methods = raw.get("methods", ["lora"])
    return [_parse_method(m, i) for i, m in enumerate(methods if isinstance(methods, list) else [methods])]


def _as_raw_method(m: MethodConfig) -> dict:
    return {"label": m.label, "method": m.method, **m.args}


def apply_override(raw: dict, key: str, value: Any) -> dict:
    """Apply one dotted override to a raw experiment mapping and return the new mapping.

    `method=NAME[,NAME]` keeps only those entries (adding registered methods not in the file);
    `method.ARG=V` sets an argument of every kept method; `LABEL.ARG=V` of one method;
    `task=NAME` replaces the tasks; `task.FIELD=V` sets a field of every task; other keys are
    dotted paths into the mapping (`train.lr`, `model.dtype`, `seeds`).
    """
    raw = copy.deepcopy(raw)
    head, _, rest = key.partition(".")
    methods = _method_entries(raw)
    labels = [m.label for m in methods]
    if head in ("method", "methods") and not rest:
        wanted = value if isinstance(value, list) else [v.strip() for v in str(value).split(",") if v.strip()]
        by_label = {m.label: m for m in methods}
        raw["methods"] = [_as_raw_method(by_label.get(w, MethodConfig(label=w, method=w))) for w in wanted]
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
            raw["tasks"] = value if isinstance(value, list) else [t.strip() for t in str(value).split(",")]
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
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value
    return raw


def apply_overrides(raw: dict, sets: list[str]) -> dict:
    """Apply `KEY=VALUE` strings in order; values are read as YAML (`1e-4`, `[0, 1]`, `true`)."""
    for item in sets:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)
        raw = apply_override(raw, key.strip(), value)
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
    raw = apply_overrides(load_raw(path, preset), sets or [])
    return parse_experiment(raw, Path(path).stem)
