"""Any other peft method by its PEFT type name (vera, loha, lokr, adalora, oft, …) with no new code.

Arguments go straight to that method's peft config class; target modules default to the
architecture's query/value projections when the method needs them and the user names none.
"""

from __future__ import annotations

import functools
import inspect

import torch.nn as nn

from peftlab.methods.registry import ApplyContext, Method
from peftlab.methods.targets import resolve_targets


@functools.lru_cache(maxsize=1)
def peft_type_names() -> tuple[str, ...]:
    from peft import PeftType

    return tuple(t.value for t in PeftType)


def _config_class(peft_type: str):
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(peft_type)]


def generic_method(name: str) -> Method:
    peft_type = name.upper().replace("-", "_")

    def apply(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
        from peft import get_peft_model

        cls = _config_class(peft_type)
        params = inspect.signature(cls).parameters
        args = dict(args)
        if "target_modules" in params and peft_type not in ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING"):
            args["target_modules"] = resolve_targets(model, args.get("target_modules"))
        if peft_type == "ADALORA":
            args.setdefault("total_step", int(args.pop("total_step", 1000)))
        try:
            config = cls(task_type="CAUSAL_LM", **args)
        except TypeError as exc:
            valid = sorted(p for p in params if p not in ("self", "task_type", "peft_type"))
            raise ValueError(f"method {name!r}: {exc}; valid arguments: {', '.join(valid)}") from None
        return get_peft_model(model, config)

    return Method(
        name=name.lower(), family="peft", description=f"peft {peft_type} with the given keyword arguments",
        apply=apply, peft_type=peft_type, mergeable=peft_type in ("LOHA", "LOKR", "VERA", "OFT", "BOFT", "ADALORA", "HRA"),
    )
