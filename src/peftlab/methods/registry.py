"""The method registry: each family module registers its methods by name.

A method turns a frozen base model into a trainable adapted model. peft supplies the layers; a
method entry adds what the comparison needs, declared once here and read everywhere else (the
runner, `peftlab.adapters` and the commands hold no method names): its paper defaults, whether it
trains at all, whether it trains every weight (`full`), whether the base must be loaded in 4-bit,
a per-step training callback (AdaLoRA's budget allocation), how its saved adapter loads back, and
whether and how it merges into the base weights (with the sentence that explains why).

`get_method` (in `peftlab.methods`) resolves a name: a registered method here, or any other peft
type through `peftlab.methods.generic`.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

from peftlab.models import ModelArchitecture

# Sane upper bounds, checked before any model loads: past these a run only allocates absurd memory.
MAX_RANK = 16384
MAX_VIRTUAL_TOKENS = 16384

# An argument check: (value, where) -> the value, normalised (8.0 -> 8); raises ValueError naming `where`.
Check = Callable[[Any, str], Any]


def integer(lo: int = 1, hi: int | None = None) -> Check:
    def check(value: Any, where: str) -> Any:
        number = _number(value)
        if (isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number)
                or int(number) != number):
            raise ValueError(f"{where} must be an integer >= {lo}, got {value!r}")
        if number < lo or (hi is not None and number > hi):
            bound = f"between {lo} and {hi:,}" if hi is not None else f">= {lo}"
            raise ValueError(f"{where} must be {bound}, got {value!r}")
        return int(number)
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Check:
    def check(value: Any, where: str) -> Any:
        num = _number(value)
        if isinstance(num, bool) or not isinstance(num, (int, float)) or not math.isfinite(num):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        low_bad = lo is not None and (num < lo or (lo_open and num == lo))
        high_bad = hi is not None and (num > hi or (hi_open and num == hi))
        if low_bad or high_bad:
            left = "(" if lo_open else "["
            right = ")" if hi_open or hi is None else "]"
            span = f"in {left}{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}{right}"
            raise ValueError(f"{where} must be {span}, got {value!r}")
        return num
    return check


def boolean() -> Check:
    def check(value: Any, where: str) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be true or false, got {value!r}")
        return value
    return check


def choice(*valid: str, upper: bool = False) -> Check:
    def check(value: Any, where: str) -> Any:
        key = str(value).upper() if upper and isinstance(value, str) else value
        if not isinstance(key, str) or key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: {value!r} is not valid{hint}; valid: {', '.join(valid)}")
        return key
    return check


def optional(inner: Check) -> Check:
    def check(value: Any, where: str) -> Any:
        return None if value is None else inner(value, where)
    return check


def module_names(allow_none: bool = True, shortcuts: tuple[str, ...] = ()) -> Check:
    """A list of module names, a comma-separated string of them, or a shortcut (`auto`, `attention`, …)."""
    def check(value: Any, where: str) -> Any:
        if value is None and allow_none:
            return value
        if isinstance(value, str) and (value in shortcuts or [p for p in value.split(",") if p.strip()]):
            return value
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value):
            return list(value)
        extra = f" or one of {', '.join(shortcuts)}" if shortcuts else ""
        raise ValueError(f"{where} must be a non-empty list of module names{extra}, got {value!r}")
    return check


def _number(value: Any) -> Any:
    """YAML 1.1 reads `1e3` as a string; users mean the number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass
class ApplyContext:
    """What a method may need besides the model: the tokenizer, where the base came from and what it is."""

    tokenizer: Any = None
    model_name: str = ""
    model_path: str = ""
    seed: int = 0  # the run's seed, for methods that initialise tensors themselves (the hybrid's prompt)
    architecture: ModelArchitecture = field(default_factory=ModelArchitecture)  # decoder-only unless told

    @property
    def task_type(self) -> str:
        """peft's task type for the base model: `CAUSAL_LM`, or `SEQ_2_SEQ_LM` for an encoder-decoder model.
        Every method that builds a peft config takes it from here."""
        return self.architecture.task_type


#: How a method's training merges into the base weights (`Method.merge`):
#: `weights` the update folds into the weights; `partial` part of it does (the rest is exported);
#: `virtual` nothing changes a weight, the virtual tokens are exported beside the base;
#: `none` there is nothing to merge (no training, or the saved model is already complete);
#: `maybe` peft's `merge_and_unload` is tried and says if it cannot.
MERGE_KINDS = ("weights", "partial", "virtual", "none", "maybe")

# (adapted model, optimizer step) -> None, called after every optimizer step.
StepCallback = Callable[[nn.Module, int], None]
# (base model, adapter directory, is_trainable) -> the adapted model a run saved.
Loader = Callable[[nn.Module, Any, bool], nn.Module]


def peft_loader(base_model: nn.Module, path: Any, is_trainable: bool) -> nn.Module:
    """The default loader: a peft adapter directory on top of the base model."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, path, is_trainable=is_trainable)


@dataclass
class Method:
    name: str
    family: str
    description: str
    defaults: dict = field(default_factory=dict)
    apply: Callable[[nn.Module, dict, ApplyContext], nn.Module] | None = None
    trains: bool = True  # False: the base model as it is (nothing trains, nothing is saved)
    full: bool = False  # every weight trains; the saved "adapter" is a complete model (loads without a base)
    quantize_base: bool = False
    merge: str = "maybe"  # one of MERGE_KINDS
    merge_why: str = "maybe: `peftlab adapters merge` tries peft's merge_and_unload and says if it cannot"
    on_step: StepCallback | None = None  # per optimizer step (AdaLoRA: update_and_allocate)
    load: Loader = peft_loader  # how the saved adapter loads on top of its base model
    peft_type: str | None = None
    checks: dict[str, Check] = field(default_factory=dict)  # argument name -> its value check
    validate: Callable[[dict], dict] | None = None  # whole-argument check (generic PEFT types: the config's fields)
    # Why the method cannot adapt an encoder-decoder (seq2seq) model, as a clause that follows "because"
    # ("" : it can); checked before any model loads (`peftlab.plan.architecture_problem`).
    causal_only: str = ""
    # The same for some of its arguments only: (resolved arguments) -> the clause, "" when they can.
    causal_only_args: Callable[[dict], str] | None = None

    def __post_init__(self) -> None:
        if self.merge not in MERGE_KINDS:
            raise ValueError(f"method {self.name!r}: merge must be one of {', '.join(MERGE_KINDS)}, got {self.merge!r}")

    @property
    def mergeable(self) -> bool:
        """Whether (part of) the training folds into the base weights."""
        return self.merge in ("weights", "partial")

    def encoder_decoder_problem(self, args: dict) -> str:
        """Why this method, with `args`, cannot adapt an encoder-decoder model ("": it can)."""
        if self.causal_only or self.causal_only_args is None:
            return self.causal_only
        return self.causal_only_args(self.resolve_args(args))

    def resolve_args(self, args: dict) -> dict:
        """Defaults overlaid with the user's arguments; unknown names and bad values are errors.

        Everything is checked without a model, so `peftlab validate` and every run catch it first.
        """
        if not isinstance(args, dict):
            raise ValueError(f"method {self.name!r}: expected a mapping of arguments, got {args!r}")
        merged = {**self.defaults, **args}
        if self.peft_type is None:
            unknown = set(args) - set(self.defaults)
            if unknown:
                first = sorted(map(str, unknown))[0]
                close = difflib.get_close_matches(first, list(self.defaults), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                valid = sorted(self.defaults) or "none (this method takes no arguments)"
                raise ValueError(f"method {self.name!r}: unknown argument(s) {sorted(unknown)}{hint}; valid: {valid}")
        for name, check in self.checks.items():
            if name in merged:
                merged[name] = check(merged[name], f"method {self.name!r}: {name}")
        if self.validate is not None:
            merged = self.validate(merged)
        return merged


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


def check_task_type(name: str, adapted: nn.Module, ctx: ApplyContext) -> nn.Module:
    """`adapted`, refused when it is a peft model built for another task type than the base model's (a method
    whose apply does not pass `task_type=ctx.task_type` would wrap an encoder-decoder model as a causal LM)."""
    task_type = getattr(getattr(adapted, "active_peft_config", None), "task_type", None)
    task_type = getattr(task_type, "value", task_type)
    if task_type is not None and str(task_type) != ctx.task_type:
        raise ValueError(f"method {name!r} built a peft {task_type} model on the {ctx.architecture.kind} model, which "
                         f"needs {ctx.task_type}: its apply must pass task_type=ctx.task_type")
    return adapted


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model
