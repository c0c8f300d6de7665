"""The method registry: each family module registers its methods by name.

A method turns a frozen base model into a trainable adapted model. peft supplies the layers; a
method entry adds what the comparison needs: its paper defaults, whether it trains at all,
whether the base must be loaded in 4-bit, and whether it can be merged into the base weights.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn as nn


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

    def resolve_args(self, args: dict) -> dict:
        """Defaults overlaid with the user's arguments; unknown argument names are errors."""
        merged = {**self.defaults, **args}
        if self.peft_type is None:
            unknown = set(args) - set(self.defaults)
            if unknown:
                raise ValueError(
                    f"method {self.name!r}: unknown argument(s) {sorted(unknown)}; valid: {sorted(self.defaults)}"
                )
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
