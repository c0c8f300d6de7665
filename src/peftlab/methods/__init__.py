"""Fine-tuning methods, one small module per family, each registered by name.

`get_method(name)` returns a registered method or wraps any other peft type (vera, loha, …).
Everything method-specific (training, merging, loading, per-step callbacks) is declared on the
`Method` (see `peftlab.methods.registry`); prompt-learning plumbing (virtual tokens in generation,
scoring and exports) lives in `peftlab.methods.virtual_tokens`.
"""

from __future__ import annotations

import difflib

from peftlab.methods import base, hybrid, ia3, lora, prompt  # noqa: F401  (registration)
from peftlab.methods.generic import generic_method, peft_type_names
from peftlab.methods.registry import REGISTRY, ApplyContext, Method

__all__ = ["REGISTRY", "ApplyContext", "Method", "get_method", "list_methods"]


def get_method(name: str) -> Method:
    """A registered method, or any other PEFT method by its PEFT type name (vera, loha, lokr, …)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name.upper().replace("-", "_") in peft_type_names():
        return generic_method(name)
    valid = sorted(REGISTRY)
    close = difflib.get_close_matches(name, valid + [n.lower() for n in peft_type_names()], n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(
        f"unknown method {name!r}{hint}; registered: {', '.join(valid)}; "
        f"or any PEFT type: {', '.join(n.lower() for n in peft_type_names())}"
    )


def list_methods() -> list[Method]:
    return list(REGISTRY.values())
