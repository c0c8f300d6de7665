"""`peftlab init`: a commented starter experiment file for a task and methods.

The file is assembled from what peftlab knows at run time: the tasks' registry (descriptions,
metrics, arguments with the comments of the task's own YAML), the methods' registry (descriptions,
default arguments and the checks that say what each accepts), the model aliases and the config
dataclasses' defaults. Every key carries a comment: what it does and what it accepts. The text is
checked with `peftlab validate`'s own checks (and under its `smoke` preset) before it is written,
so the file passes as written.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import yaml

from peftlab import files
from peftlab.cli.checks import check_dir
from peftlab.config import (
    DISTRIBUTIONS,
    TUNING_STRATEGIES,
    ConfigError,
    EvalConfig,
    ModelConfig,
    TaskConfig,
    TrainConfig,
    check_name,
    deep_merge,
    parse_experiment,
)

COMMENT_COLUMN = 38  # trailing comments start here, so they line up
WIDTH = 118  # a key line longer than this gets its comment on the line above instead

# What each config field does and what it accepts (the config dataclasses hold the defaults).
FIELD_HELP: dict[str, str] = {
    "model.name": "offline alias ({aliases}), hub id (owner/name) or a local model directory",
    "model.dtype": "weight precision: auto (bfloat16 on a GPU that has it, else float32), float32, bfloat16, float16",
    "model.revision": "hub branch, tag or commit to load (null: the default branch)",
    "model.trust_remote_code": "run Python code shipped in the model repository: true only for repositories you trust",
    "model.gguf_file": "a .gguf file of the model directory or repository to load, de-quantized (null: none)",
    "task.source": "where the data comes from: auto (the hub; the offline copy when HF_HUB_OFFLINE=1 or the hub "
                   "fails), hub, offline",
    "task.limit_train": "training examples: a seeded random subsample of this size (null: the whole train split)",
    "task.limit_eval": "test examples evaluated: a seeded subsample (null: the whole test split)",
    "task.max_length": "tokens per example (an integer >= 1); longer inputs are cut",
    "task.args": "the task's own arguments (defaults shown)",
    "train.lr": "AdamW learning rate (a number > 0)",
    "train.weight_decay": "AdamW weight decay on matrices (>= 0; biases and norms never decay)",
    "train.warmup_steps": "steps of linear learning-rate warm-up from 0 (>= 0, below max_steps)",
    "train.schedule": "learning rate after warm-up: linear (down to 0), cosine, constant",
    "train.epochs": "passes over the training data (> 0, fractions allowed); max_steps wins when set",
    "train.max_steps": "optimizer steps to train (an integer >= 1; null: as many as epochs make)",
    "train.batch_size": "examples per forward pass (an integer >= 1)",
    "train.grad_accum": "forward passes per optimizer step (>= 1): the effective batch is batch_size x grad_accum",
    "train.max_grad_norm": "clip the gradient norm to this (> 0; null: no clipping)",
    "train.eval_every": "optimizer steps between validation-loss checks (null: once per epoch)",
    "train.eval_batches": "validation batches per check (0: no validation loss)",
    "train.mixed_precision": "auto (bf16 autocast on a GPU that has it, none on CPU), no, bf16, fp16",
    "train.bucketing": "batch examples of similar length together: less padding (true/false)",
    "train.packing": "causal-LM text is packed into full windows of max_length tokens (true/false)",
    "train.log_every": "steps between the loss records of the curves and log.txt (an integer >= 1)",
    "train.save_adapter": "keep the trained adapter in the run directory: generate, evaluate and merge need it",
    "train.peak_tflops": "peak TFLOP/s that MFU is measured against (null: the GPU's known peak, or a CPU probe)",
    "train.num_threads": "CPU threads torch uses (null: torch's default)",
    "eval.batch_size": "examples per evaluation batch (an integer >= 1)",
    "eval.decoding": "generation tasks: each adapter is evaluated under every strategy listed: greedy, beam=4, "
                     "top_k=50, top_p=0.9, temperature=0.7; knobs joined with ':' (temperature=0.7:n=5)",
    "eval.allow_code_execution": "let tasks that score by running model-written code do so (the code task); "
                                 "also --allow-code-execution",
    "eval.forgetting_texts": "held-out general-text paragraphs scored on every run to measure forgetting (an integer "
                             ">= 0; 0: no forgetting measure)",
    "eval.retention_tasks": "other peftlab tasks scored on every run to measure retention, e.g. [qa] (default: none)",
}

# What a method argument does (the method's registered check says what it accepts).
ARG_HELP: dict[str, str] = {
    "r": "rank of the low-rank update",
    "lora_alpha": "scale numerator: the update is multiplied by lora_alpha / r",
    "lora_dropout": "dropout on the adapter branch's input while training",
    "target_modules": "layers that get the adapter",
    "bias": "which biases train",
    "modules_to_save": "more modules trained in full and saved with the adapter, e.g. [lm_head] (null: none)",
    "gradient_checkpointing": "recompute activations in the backward pass: less memory, slower",
    "num_virtual_tokens": "number of trainable virtual tokens",
    "prompt_tuning_init": "how the soft prompt starts: RANDOM, TEXT (the embeddings of prompt_tuning_init_text) or "
                          "SAMPLE_VOCAB (embeddings of random vocabulary tokens)",
    "prompt_tuning_init_text": "the text whose embeddings start the prompt when prompt_tuning_init is TEXT",
    "prefix_init": "how the prefixes start: RANDOM, or TEXT (the base model's own keys and values for the first "
                   "tokens of prefix_init_text, Li & Liang's initialisation from real words)",
    "prefix_init_text": "the text whose keys and values start the prefixes when prefix_init is TEXT",
    "prefix_projection": "reparameterise the prefixes through a two-layer MLP while training",
    "encoder_hidden_size": "hidden size of that MLP (null: the model's hidden size)",
    "feedforward_modules": "which target modules are feed-forward layers (their input is scaled, not their output)",
    "prompt_init": "how the soft prompt starts: vocab (embeddings of random vocabulary tokens) or random",
}

SMOKE = {"limit_train": 32, "limit_eval": 8}
SMOKE_TRAIN = {"max_steps": 4, "warmup_steps": 0, "eval_batches": 1}


# ------------------------------------------------------------------------------------------ values
def yaml_value(value: Any) -> str:
    """One value in YAML flow style: `0.0005`, `null`, `[negative, positive]`, `'a: b'`."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**6, sort_keys=False).strip()
    return text[:-3].rstrip() if text.endswith("\n...") or text.endswith("...") else text


def check_rule(check: Callable[[Any, str], Any] | None, name: str) -> str | None:
    """What a method argument accepts, in its registered check's own words.

    The check is asked about an impossible value (a huge negative number): its refusal names the
    valid range or choices ("must be between 1 and 16,384", "valid: none, all, lora_only"); one
    that accepts None also takes null.
    """
    if check is None:
        return None
    try:
        check(-1e300, name)
        return None
    except (ValueError, TypeError) as exc:  # the refusal is the answer
        text = str(exc)
    if "valid: " in text:
        rule = "one of " + text.rsplit("valid: ", 1)[1]
    elif text.startswith(name + " "):
        rule = text[len(name) + 1:].rsplit(", got ", 1)[0]
    else:
        return None
    try:
        takes_null = check(None, name) is None
    except (ValueError, TypeError):
        takes_null = False
    return rule + (", or null" if takes_null else "")


def _task_file(name: str) -> Path | None:
    from peftlab.tasks.registry import task_paths

    for directory in reversed(task_paths()):  # later paths override earlier ones, as in the registry
        for path in sorted(Path(directory).glob("*.yaml")):
            try:
                if path.stem == name or (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("name") == name:
                    return path
            except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
                continue
    return None


def task_arg_notes(name: str) -> dict[str, str]:
    """The comment beside each argument in the task's own YAML (`args:`), by argument name."""
    path = _task_file(name)
    if path is None:
        return {}
    notes, in_args = {}, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line[0].isspace():
            in_args = line.split("#", 1)[0].strip() == "args:"
            continue
        match = re.match(r"\s+([A-Za-z_]\w*):[^#]*#\s*(.+)$", line) if in_args else None
        if match:  # "below" in a task's YAML points at its own later sections
            notes[match.group(1)] = match.group(2).strip().replace(" below", " of the task's definition")
    return notes


# ------------------------------------------------------------------------------------------ writing
class _Doc:
    """YAML lines with comments: a key and its comment on one line, or the comment above when long."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, text: str, indent: int = 0) -> None:
        for line in textwrap.wrap(text, WIDTH - indent - 2, break_on_hyphens=False) or [""]:
            self.lines.append(f"{' ' * indent}# {line}".rstrip())

    def example(self, text: str) -> None:
        """A commented-out line to uncomment as it is (never wrapped)."""
        self.lines.append(f"# {text}")

    def key(self, indent: int, key: str, value: str | None, comment: str) -> None:
        line = f"{' ' * indent}{key}:" + (f" {value}" if value is not None else "")
        trailing = f"{line.ljust(COMMENT_COLUMN)}  # {comment}"
        if len(trailing) <= WIDTH:
            self.lines.append(trailing)
        else:
            self.comment(comment, indent)
            self.lines.append(line)

    def blank(self) -> None:
        self.lines.append("")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _defaults(cls: type) -> dict[str, Any]:
    instance = cls(name="x") if cls is TaskConfig else cls()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls) if f.init}


def _fields(doc: _Doc, indent: int, section: str, values: dict[str, Any], fmt: dict[str, str] | None = None) -> None:
    for key, value in values.items():
        note = FIELD_HELP.get(f"{section}.{key}", f"{section}.{key} (default {yaml_value(value)}; see docs/contracts.md)")
        doc.key(indent, key, yaml_value(value), note.format(**(fmt or {})))


def _task_block(doc: _Doc, indent: int, args: dict[str, Any], arg_notes: dict[str, str]) -> None:
    """A task's fields (the config's defaults) and its own arguments, with the task YAML's comments."""
    fields = {k: v for k, v in _defaults(TaskConfig).items() if k not in ("name", "args")}
    _fields(doc, indent, "task", fields)
    if args:
        doc.key(indent, "args", None, FIELD_HELP["task.args"])
        for key, value in args.items():
            doc.key(indent + 2, key, yaml_value(value), arg_notes.get(key) or f"task argument (default {yaml_value(value)})")


def _method_block(doc: _Doc, method: Any) -> None:
    from peftlab.methods.generic import config_fields

    doc.comment(f"{method.name}: {method.description}", 2)
    if not method.defaults:
        if method.peft_type is not None:
            doc.comment(f"arguments: any field of peft's {method.peft_type} config (unset: peft's defaults): "
                        f"{', '.join(sorted(config_fields(method.peft_type)))}", 2)
        doc.lines.append(f"  - {method.name}")
        return
    doc.lines.append(f"  - {method.name}:")
    for arg, value in method.defaults.items():
        parts = [ARG_HELP.get(arg), check_rule(method.checks.get(arg), arg)]
        note = "; ".join(p for p in parts if p) or f"method argument (default {yaml_value(value)})"
        doc.key(6, arg, yaml_value(value), note)


def _header(doc: _Doc, name: str, labels: str, task_names: str, path: str) -> None:
    doc.comment(f"{name}: {labels} on {task_names} (written by `peftlab init`; edit freely).")
    doc.comment("")
    doc.comment(f"  peftlab validate {path}   # every check that needs no model")
    doc.comment(f"  peftlab sweep {path} --preset smoke   # a few steps on a few examples: does it all run?")
    doc.comment(f"  peftlab sweep {path} --report reports/{name}   # every run (resumable), then the report")
    doc.comment("")
    doc.comment("Unknown keys are errors; `--set KEY=VALUE` overrides any key from the command line "
                "(--set train.lr=1e-4 --set seeds=0,1).")
    doc.key(0, "name", yaml_value(name), "the experiment's name: run ids and the report start with it (one path "
                                         "component)")
    doc.key(0, "description", yaml_value(f"{labels} on {task_names}"), "free text for people; peftlab ignores it")
    doc.blank()


def _model_section(doc: _Doc, model: str) -> None:
    from peftlab.models import ALIASES

    doc.comment("The base model every run starts from.")
    doc.key(0, "model", None, "a name alone also works: model: NAME")
    _fields(doc, 2, "model", {**_defaults(ModelConfig), "name": model}, {"aliases": ", ".join(ALIASES)})
    doc.blank()


def _task_section(doc: _Doc, tasks: list[Any], allow_code_execution: bool) -> dict[str, dict]:
    """The task(s); returns task -> the arguments written differently from its defaults (code execution off)."""
    from peftlab.plan import executes_code
    from peftlab.tasks.registry import all_tasks

    others = ", ".join(t for t in sorted(all_tasks()) if t not in {s.name for s in tasks})
    doc.comment(f"The task{'s' if len(tasks) > 1 else ''}: data, metrics, and how much of it each run uses. "
                f"Other tasks: {others or '(none)'} (`peftlab ls tasks`).")
    for spec in tasks:
        metrics = ", ".join(f"{k} ({v})" for k, v in spec.metrics.items())
        doc.comment(f"{spec.name}: {spec.description} Metrics: {metrics}; primary: {spec.primary_metric}.")
    single = len(tasks) == 1
    doc.key(0, "task" if single else "tasks", None, "one task; several: tasks: [...]" if single
            else "every method runs on every task")
    changed: dict[str, dict] = {}
    for spec in tasks:
        args, notes = dict(spec.args), task_arg_notes(spec.name)
        if executes_code(spec, args) and not allow_code_execution and "execute" in args:
            args["execute"] = False
            changed[spec.name] = {"execute": False}
            notes["execute"] = ("init wrote false (token_jaccard only): true runs the model-written code to score "
                                "pass@k and needs eval.allow_code_execution: true (peftlab init --allow-code-execution)")
        doc.key(2, spec.name if single else f"- {spec.name}", None, "the task's name (`peftlab ls tasks`), then its "
                                                                      "fields")
        _task_block(doc, 4 if single else 6, args, notes)
    doc.blank()
    return changed


def _methods_section(doc: _Doc, methods: list[Any]) -> None:
    from peftlab.methods import REGISTRY

    rest = ", ".join(n for n in REGISTRY if n not in {m.name for m in methods})
    doc.comment("The methods compared: one run per task x method x grid point x seed. An entry is a name, "
                "NAME: {arguments}, or {label: NAME2, method: NAME, ...} to run one method twice with other "
                f"arguments. Other methods: {rest or '(none)'}, or any PEFT type by name (vera, loha, ...: "
                "`peftlab ls methods`).")
    doc.key(0, "methods", None, "defaults shown; the comments say what each argument accepts")
    for method in methods:
        _method_block(doc, method)
    doc.blank()


def _protocol_section(doc: _Doc, allow_code_execution: bool) -> None:
    doc.comment("The training protocol every trained method shares.")
    doc.key(0, "train", None, "the same for every method, so the comparison is fair")
    _fields(doc, 2, "train", _defaults(TrainConfig))
    doc.blank()
    doc.key(0, "eval", None, "how every run is evaluated")
    evals = _defaults(EvalConfig)
    evals["decoding"] = [d.name for d in evals["decoding"]]
    evals["allow_code_execution"] = allow_code_execution
    _fields(doc, 2, "eval", evals)
    doc.blank()
    doc.key(0, "seeds", "[0, 1, 2]", "one run per seed for every trained method (base runs once); the report's "
                                     "intervals need 2 or more")


def _optional_keys(doc: _Doc, methods: list[Any]) -> None:
    """grid, tuning, output_dir, executor, trackers, task_paths: set or as examples to uncomment."""
    from peftlab.plan import EXECUTOR_KEYS, EXECUTORS

    ranked = next((m.name for m in methods if "r" in m.defaults), None)
    grid = {f"{ranked}.r": [4, 8, 16]} if ranked else {}
    doc.comment("grid: every combination of these values is a run; METHOD.ARG varies that method only, train.* "
                "every trained method (`peftlab sweep FILE --dry-run` lists the runs):")
    doc.example(f"grid: {yaml_value({**grid, 'train.lr': [1.0e-4, 5.0e-4]})}")
    space = {m.name: {**({f"{m.name}.r": [4, 8, 16]} if "r" in m.defaults else {}),
                      "train.lr": {"log_uniform": [1.0e-5, 1.0e-3]}} for m in methods if m.trains}
    if space:
        doc.comment(f"tuning (instead of a grid): each trained method first gets `budget` trials drawn from its space "
                    f"({' | '.join(TUNING_STRATEGIES)}), trained on train and scored on validation; the best "
                    "configuration then runs over the seeds on test. A space value is a list or "
                    f"{{{' | '.join(DISTRIBUTIONS)}: [low, high]}}:")
        doc.example(f"tuning: {yaml_value({'budget': 8, 'strategy': 'random', 'space': space})}")
    doc.key(0, "output_dir", "runs", "the run store: runs/<run-id>/ and index.sqlite (--store overrides it)")
    doc.comment(f"executor: where `peftlab sweep` runs: {{kind: {' | '.join(EXECUTORS)}}}; other keys: "
                f"{', '.join(k for k in EXECUTOR_KEYS if k != 'kind')} (see the README's Ray section)")
    doc.example("executor: {kind: local}")
    doc.comment("trackers: log losses and the learning rate through accelerate: tensorboard, mlflow, wandb (off "
                "by default)")
    doc.example("trackers: [tensorboard]")
    doc.comment("task_paths: directories of task YAMLs from outside peftlab (as PEFTLAB_TASK_PATHS), relative to "
                "this file")
    doc.example("task_paths: [my_tasks]")
    doc.blank()


def _presets_section(doc: _Doc, tasks: list[Any], changed: dict[str, dict]) -> None:
    doc.comment("Named changes applied with --preset NAME (merged over the settings above).")
    doc.key(0, "presets", None, "--preset smoke: a minute-scale check that every run works")
    doc.key(2, "smoke", None, "few examples, few steps, one seed")
    if len(tasks) == 1:
        doc.key(4, "task", yaml_value({tasks[0].name: SMOKE}), "small seeded subsamples")
    else:  # a list replaces the tasks above: other fields fall back to their defaults
        smoke = [{t.name: {**SMOKE, **({"args": changed[t.name]} if t.name in changed else {})}} for t in tasks]
        doc.key(4, "tasks", yaml_value(smoke), "small seeded subsamples of every task")
    doc.key(4, "train", yaml_value(SMOKE_TRAIN), "a few optimizer steps")
    doc.key(4, "seeds", "[0]", "one seed")


def render(tasks: list[Any], methods: list[Any], model: str, name: str, path: str = "experiment.yaml",
           allow_code_execution: bool = False) -> str:
    """The starter experiment's text for task specs and methods (registry objects); `path` is where it
    is written (for the commands in its header)."""
    doc = _Doc()
    _header(doc, name, ", ".join(m.name for m in methods), ", ".join(t.name for t in tasks), path)
    _model_section(doc, model)
    changed = _task_section(doc, tasks, allow_code_execution)
    _methods_section(doc, methods)
    _protocol_section(doc, allow_code_execution)
    _optional_keys(doc, methods)
    _presets_section(doc, tasks, changed)
    return doc.text()


def check_text(text: str, name: str) -> int:
    """`peftlab validate`'s checks on the file as written and under its presets; the number of runs."""
    from peftlab.plan import check_run_options, validate

    raw = yaml.safe_load(text)
    presets = raw.pop("presets", {}) or {}
    count = 0
    for preset in (None, *presets):
        exp = parse_experiment(deep_merge(raw, presets[preset]) if preset else raw, name)
        runs = validate(exp)
        check_run_options(exp)
        count = count or len(runs)
    return count


# ------------------------------------------------------------------------------------------ the command
def _names(text: str, flag: str) -> list[str]:
    names = [part.strip() for part in str(text).split(",") if part.strip()]
    if not names:
        raise ConfigError(f"{flag}: empty; name at least one")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{flag}: {', '.join(map(repr, twice))} named twice; name each once")
    return names


def _lookup(names: list[str], get: Any, flag: str) -> list[Any]:
    """Each name through its registry's `get` (get_task, get_method); an unknown one is the flag's error."""
    try:
        return [get(name) for name in names]
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def cmd_init(args: argparse.Namespace) -> int:
    """`peftlab init --task T --methods A,B [--model M] [-o FILE] [--force]`."""
    from peftlab.methods import get_method
    from peftlab.models import DEFAULT_MODEL, ModelResolutionError, check_model_name
    from peftlab.tasks.registry import get_task

    to_stdout = args.out == "-"
    out = Path(args.out).expanduser()
    if not to_stdout:
        if out.is_dir():
            raise ConfigError(f"-o {args.out}: is a directory; give a file name such as {out / 'experiment.yaml'}")
        if out.exists() and not args.force:
            raise ConfigError(f"-o {args.out}: already exists; add --force to overwrite it, or give another -o")
        check_dir(out.parent if str(out.parent) else Path("."), "-o")
    name = check_name(args.name if args.name is not None else ("experiment" if to_stdout else out.stem), "--name")
    tasks = _lookup(_names(args.task, "--task"), get_task, "--task")
    methods = _lookup(_names(args.methods, "--methods"), get_method, "--methods")
    model = args.model or DEFAULT_MODEL
    try:
        check_model_name(model)
    except ModelResolutionError as exc:
        raise ConfigError(f"--model: {exc}") from None
    text = render(tasks, methods, model, name, "FILE" if to_stdout else args.out,
                  getattr(args, "allow_code_execution", False))
    try:
        count = check_text(text, name)
    except ConfigError as exc:
        raise ConfigError(f"the starter file for {args.task} with {args.methods} does not validate: {exc}") from None
    if to_stdout:
        sys.stdout.write(text)
        return 0
    files.atomic_write_text(out, text)
    print(f"wrote {args.out}: {', '.join(m.name for m in methods)} on {', '.join(t.name for t in tasks)}, "
          f"{count} run(s) as written; every key is commented")
    print(f"  peftlab validate {args.out}\n  peftlab sweep {args.out} --preset smoke\n"
          f"  peftlab sweep {args.out} --report reports/{name}")
    return 0
