"""Fine-tuning methods, one small module per family, each registered by name.

`get_method(name)` returns a registered method or wraps any other peft type (vera, loha, …).
"""

from peftlab.methods import base, hybrid, ia3, lora, prompt  # noqa: F401  (registration)
from peftlab.methods.registry import REGISTRY, ApplyContext, Method, get_method

__all__ = ["REGISTRY", "ApplyContext", "Method", "get_method", "list_methods"]


def list_methods() -> list[Method]:
    return list(REGISTRY.values())
