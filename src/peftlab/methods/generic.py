"""Any other peft method by its PEFT type name (vera, loha, lokr, adalora, oft, …) with no new code.

Arguments go straight to that method's peft config class; target modules default to the
architecture's query/value projections when the method needs them and the user names none.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import types
import typing
import warnings
from typing import Any

import torch.nn as nn

from peftlab.methods.registry import MAX_RANK, ApplyContext, Method, integer, number
from peftlab.methods.targets import resolve_targets

# Fields of every peft config that peftlab sets itself (or that describe a saved adapter, not a choice).
_INTERNAL_FIELDS = {"task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
                    "inference_mode"}
_PROMPT_TYPES = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "ADAPTION_PROMPT", "CPT")
_RANK_FIELDS = ("r", "init_r", "target_r")
#: PEFT types peft builds for decoder-only models only (adaption prompts patch Llama-style attention; CPT is causal).
CAUSAL_ONLY_TYPES = ("ADAPTION_PROMPT", "CPT")
#: PEFT types whose update peft folds into the weights (`merge_and_unload`): the one list.
MERGEABLE_TYPES = ("LOHA", "LOKR", "VERA", "OFT", "BOFT", "ADALORA", "HRA", "FOURIERFT", "BONE", "C3A", "SHIRA")


def _adalora_step(model: nn.Module, step: int) -> None:
    """AdaLoRA re-allocates its rank budget after every optimizer step."""
    model.base_model.update_and_allocate(step)


def _merge_kind(peft_type: str) -> tuple[str, str]:
    if peft_type in MERGEABLE_TYPES:
        return "weights", "yes: peft can fold this update into the weights (merge_and_unload)"
    if peft_type in _PROMPT_TYPES:
        return "virtual", "no: this method's virtual tokens are part of the input, not of any weight"
    return "maybe", "maybe: `peftlab adapters merge` tries peft's merge_and_unload and says if it cannot"


@functools.lru_cache(maxsize=1)
def peft_type_names() -> tuple[str, ...]:
    from peft import PeftType

    return tuple(t.value for t in PeftType)


def _config_class(peft_type: str):
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return PEFT_TYPE_TO_CONFIG_MAPPING[PeftType(peft_type)]


@functools.lru_cache(maxsize=None)
def config_fields(peft_type: str) -> dict[str, Any]:
    """The user-settable fields of a PEFT type's config class, with their (resolved) type hints."""
    cls = _config_class(peft_type)
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation this Python cannot resolve: check names only
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init and f.name not in _INTERNAL_FIELDS}


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a simple type hint (unknown kinds of hints are accepted)."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return True
    if hint is type(None):
        return value is None
    if origin is typing.Union or origin is types.UnionType:
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        options = typing.get_args(hint)
        patterned = any(isinstance(o, str) and "[" in o for o in options)  # e.g. 'pissa_niter_[number of iters]'
        return value in options or (patterned and isinstance(value, str))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        inner = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (not inner or all(_matches(v, inner[0]) for v in value))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _hint_text(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if typing.get_origin(hint) is None else None
    return text or str(hint).replace("typing.", "")


def check_args(name: str, peft_type: str, args: dict) -> dict:
    """Check arguments of a generic PEFT method against its config class, without a model.

    Names must be fields of the config dataclass (peft.VeraConfig, peft.LoHaConfig, …), values must
    fit the field's type, ranks must be sane, and the config must construct (its own checks run).
    """
    fields = config_fields(peft_type)
    unknown = sorted(set(map(str, args)) - set(fields))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"method {name!r}: unknown argument(s) {unknown}{hint}; valid: {', '.join(sorted(fields))}")
    out = dict(args)
    for key, value in args.items():
        where = f"method {name!r}: {key}"
        hint = fields[key]
        if isinstance(value, float) and value.is_integer() and _matches(int(value), hint) and not _matches(value, hint):
            value = out[key] = int(value)  # `--set vera.r=1e3` reads 1e3 as a float
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{where} must be a finite number, got {value!r}")
        if not _matches(value, hint):
            raise ValueError(f"{where} expects {_hint_text(hint)}, got {value!r}")
        if key in _RANK_FIELDS:
            lowest = 0 if peft_type in ("OFT", "BOFT") else 1  # OFT: r=0 when oft_block_size is given
            out[key] = integer(lowest, MAX_RANK)(value, where)
        elif key.endswith("dropout") and value is not None:
            number(0, 1, hi_open=True)(value, where)
    _construct(name, peft_type, out)
    return out


def _construct(name: str, peft_type: str, args: dict) -> None:
    """Build the peft config once (no model needed) so its own checks run before any model loads."""
    cls = _config_class(peft_type)
    trial = dict(args)
    if "target_modules" in config_fields(peft_type) and peft_type not in _PROMPT_TYPES \
            and not isinstance(trial.get("target_modules"), (list, tuple)):
        trial["target_modules"] = ["q_proj", "v_proj"]  # shortcuts resolve per model; any names do here
    if peft_type == "ADALORA":
        trial.setdefault("total_step", 1000)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(task_type="CAUSAL_LM", **trial)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"method {name!r}: {' '.join(str(exc).split())}") from None


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
            config = cls(task_type=ctx.task_type, **args)
        except TypeError as exc:
            valid = sorted(p for p in params if p not in ("self", "task_type", "peft_type"))
            raise ValueError(f"method {name!r}: {exc}; valid arguments: {', '.join(valid)}") from None
        return get_peft_model(model, config)

    merge, merge_why = _merge_kind(peft_type)
    causal_only = (f"peft implements {peft_type} for decoder-only (causal) language models only"
                   if peft_type in CAUSAL_ONLY_TYPES else "")
    return Method(
        name=name.lower(), family="peft", description=f"peft {peft_type} with the given keyword arguments",
        apply=apply, peft_type=peft_type, validate=lambda args: check_args(name.lower(), peft_type, args),
        merge=merge, merge_why=merge_why, on_step=_adalora_step if peft_type == "ADALORA" else None,
        causal_only=causal_only,
    )
