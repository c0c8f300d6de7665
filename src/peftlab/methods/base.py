"""`base` (no training: the reference row) and `full` (full fine-tuning: the upper reference)."""

from __future__ import annotations

import torch.nn as nn

from peftlab.methods.registry import ApplyContext, Method, freeze, register


def _apply_base(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    return freeze(model)


def _apply_full(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


#: The method that trains nothing (`base:MODEL` names an untrained model of this method).
UNTRAINED_METHOD = "base"

register(Method(
    name=UNTRAINED_METHOD, family="base", description="No training: the base model as it is (reference row)",
    apply=_apply_base, trains=False, merge="none", merge_why="nothing to merge: `base` trains nothing",
    load=lambda base_model, path, is_trainable: base_model,
))
register(Method(
    name="full", family="base", description="Full fine-tuning: every weight trains (upper reference, highest cost)",
    apply=_apply_full, full=True, merge="none",
    merge_why="nothing to merge: the saved model is already a complete model",
))
