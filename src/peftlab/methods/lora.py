"""LoRA and its relatives that share its layers: DoRA (magnitude/direction) and QLoRA (NF4 base)."""

from __future__ import annotations

import torch.nn as nn

from peftlab.methods.registry import (
    MAX_RANK,
    ApplyContext,
    Method,
    boolean,
    choice,
    integer,
    module_names,
    number,
    optional,
    register,
)
from peftlab.methods.targets import TARGET_SHORTCUTS, resolve_targets

LORA_DEFAULTS = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "target_modules": "auto", "bias": "none",
                 "modules_to_save": None}
LORA_CHECKS = {
    "r": integer(1, MAX_RANK),
    "lora_alpha": number(0, lo_open=True),
    "lora_dropout": number(0, 1, hi_open=True),
    "target_modules": module_names(shortcuts=TARGET_SHORTCUTS),
    "bias": choice("none", "all", "lora_only"),
    "modules_to_save": optional(module_names()),
    "gradient_checkpointing": boolean(),
}


def lora_config(model: nn.Module, args: dict, task_type: str = "CAUSAL_LM", **extra: object):
    """A peft LoraConfig from peftlab arguments (target shortcuts resolved for this architecture);
    `task_type`: the run's (`ApplyContext.task_type`)."""
    from peft import LoraConfig

    args = dict(args)
    args["target_modules"] = resolve_targets(model, args.get("target_modules"))
    return LoraConfig(task_type=task_type, **args, **extra)


def _apply_lora(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, args, ctx.task_type))


def _apply_dora(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(model, args, ctx.task_type, use_dora=True))


def _apply_qlora(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    """The base arrives in NF4 (the runner loads it so); LoRA layers train in the compute dtype."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    args = dict(args)
    checkpointing = bool(args.pop("gradient_checkpointing", False))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    return get_peft_model(model, lora_config(model, args, ctx.task_type))


register(Method(
    name="lora", family="lora", description="Low-rank update B·A on the targeted weights (Hu et al. 2021)",
    defaults=dict(LORA_DEFAULTS), apply=_apply_lora, checks=LORA_CHECKS,
    merge="weights", merge_why="yes: the low-rank update B·A folds into the targeted weights",
))
register(Method(
    name="dora", family="lora", description="Weight-decomposed LoRA: trains magnitude and low-rank direction (Liu et al. 2024)",
    defaults=dict(LORA_DEFAULTS), apply=_apply_dora, checks=LORA_CHECKS,
    merge="weights", merge_why="yes: magnitude × normalized (W + B·A) folds into the targeted weights",
))
register(Method(
    name="qlora", family="lora", description="LoRA on a 4-bit NF4 base through bitsandbytes (Dettmers et al. 2023)",
    defaults={**LORA_DEFAULTS, "gradient_checkpointing": False}, apply=_apply_qlora,
    quantize_base=True, checks=LORA_CHECKS, merge="weights",
    merge_why="yes, into a de-quantized copy of the NF4 base (merging into 4-bit layers would re-quantize and drift)",
))
