"""The method registry: each family module registers its methods by name.

A method turns a frozen base model into a trainable adapted model. peft supplies the layers; a
method entry adds what the comparison needs: its paper defaults, whether it trains at all,
whether the base must be loaded in 4-bit, and whether it can be merged into the base weights.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn

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
    """What a method may need besides the model: the tokenizer and where the base came from."""

    tokenizer: Any = None
    model_name: str = ""
    model_path: str = ""
    seed: int = 0  # the run's seed, for methods that initialise tensors themselves (the hybrid's prompt)


@dataclass
class Method:
    name: str
    family: str
    description: str
    defaults: dict = field(default_factory=dict)
    apply: Callable[[nn.Module, dict, ApplyContext], nn.Module] | None = None
    trains: bool = True
    quantize_base: bool = False
    mergeable: bool = False
    peft_type: str | None = None
    checks: dict[str, Check] = field(default_factory=dict)  # argument name -> its value check
    validate: Callable[[dict], dict] | None = None  # whole-argument check (generic PEFT types: the config's fields)

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


def get_method(name: str) -> Method:
    """A registered method, or any other PEFT method by its PEFT type name (vera, loha, lokr, …)."""
    if name in REGISTRY:
        return REGISTRY[name]
    from peftlab.methods.generic import generic_method, peft_type_names

    if name.upper().replace("-", "_") in peft_type_names():
        return generic_method(name)
    valid = sorted(REGISTRY)
    close = difflib.get_close_matches(name, valid + [n.lower() for n in peft_type_names()], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown method {name!r}{hint}; registered: {', '.join(valid)}; "
        f"or any PEFT type: {', '.join(n.lower() for n in peft_type_names())}"
    )


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model
