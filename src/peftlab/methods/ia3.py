"""IA3: learned rescaling vectors on keys, values and the MLP (Liu et al. 2022). Tiny and mergeable."""

from __future__ import annotations

import torch.nn as nn

from peftlab.methods.registry import ApplyContext, Method, module_names, optional, register
from peftlab.methods.targets import ia3_targets


def _apply_ia3(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    from peft import IA3Config, get_peft_model

    args = dict(args)
    targets, feedforward = ia3_targets(model)
    if args.get("target_modules") in (None, "auto"):
        args["target_modules"] = targets
    if args.get("feedforward_modules") in (None, "auto"):
        args["feedforward_modules"] = [f for f in feedforward if f in args["target_modules"]]
    return get_peft_model(model, IA3Config(task_type=ctx.task_type, **args))


register(Method(
    name="ia3", family="ia3", description="Learned per-channel scaling of keys, values and MLP activations",
    defaults={"target_modules": "auto", "feedforward_modules": "auto", "modules_to_save": None},
    apply=_apply_ia3, merge="weights",
    merge_why="yes: the learned scaling vectors fold into the targeted weights",
    checks={"target_modules": module_names(shortcuts=("auto",)), "feedforward_modules": module_names(shortcuts=("auto",)),
            "modules_to_save": optional(module_names())},
))
