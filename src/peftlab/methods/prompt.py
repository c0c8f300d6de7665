"""Prompt-learning methods: soft prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021).

Neither changes a weight of the base model, so neither can be merged: their trained tensors are
virtual tokens (prompt tuning) or per-layer key/value prefixes (prefix tuning).
"""

from __future__ import annotations

import torch.nn as nn

from peftlab.methods.registry import ApplyContext, Method, register


def _apply_prompt(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    from peft import PromptTuningConfig, get_peft_model

    args = {k: v for k, v in args.items() if v is not None}
    if str(args.get("prompt_tuning_init", "RANDOM")).upper() == "TEXT":
        args.setdefault("tokenizer_name_or_path", ctx.model_path)
    return get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", **args))


def _apply_prefix(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    from peft import PrefixTuningConfig, get_peft_model

    args = {k: v for k, v in args.items() if v is not None}
    return get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", **args))


register(Method(
    name="prompt", family="prompt", description="Trainable soft-prompt embeddings prepended to the input",
    defaults={"num_virtual_tokens": 8, "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None},
    apply=_apply_prompt,
))
register(Method(
    name="prefix", family="prompt", description="Trainable key/value prefixes in every attention layer",
    defaults={"num_virtual_tokens": 10, "prefix_projection": False, "encoder_hidden_size": None},
    apply=_apply_prefix,
))
