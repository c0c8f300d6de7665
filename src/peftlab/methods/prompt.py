"""Prompt-learning methods: soft prompt tuning (Lester et al. 2021) and prefix tuning (Li & Liang 2021).

Neither changes a weight of the base model, so neither can be merged: their trained tensors are
virtual tokens (prompt tuning) or per-layer key/value prefixes (prefix tuning).
"""

from __future__ import annotations

import torch.nn as nn

from peftlab.methods.registry import MAX_VIRTUAL_TOKENS, ApplyContext, Method, boolean, choice, integer, optional, register


def _apply_prompt(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    from peft import PromptTuningConfig, get_peft_model

    args = {k: v for k, v in args.items() if v is not None}
    if str(args.get("prompt_tuning_init", "RANDOM")).upper() == "TEXT":
        args.setdefault("tokenizer_name_or_path", ctx.model_path)
    if ctx.task_type == "SEQ_2_SEQ_LM":
        # peft gives a seq2seq prompt 2·n rows (one set per transformer stack) but its forward and generate
        # read the first n only: the other n would train nothing and double the parameter count.
        args["num_transformer_submodules"] = 1
    return get_peft_model(model, PromptTuningConfig(task_type=ctx.task_type, **args))


def _apply_prefix(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    from peft import PrefixTuningConfig, get_peft_model, initialize_kv_prefix_from_text

    args = {k: v for k, v in args.items() if v is not None}
    init = str(args.pop("prefix_init", "RANDOM")).upper()
    text = args.pop("prefix_init_text", None)
    adapted = get_peft_model(model, PrefixTuningConfig(task_type=ctx.task_type, **args))
    if init == "TEXT":
        # The prefixes start as the base model's own keys and values for the first tokens of a real
        # text (Li & Liang 2021, §5: "initialize with activations of real words"), so every layer's
        # prefix has the scale that layer's attention expects. A random N(0, 1) prefix does not:
        # its keys and values are far larger than real ones (the first loss sits above ln|V|).
        initialize_kv_prefix_from_text(adapted, ctx.tokenizer, text=_repeat_to_tokens(text, ctx.tokenizer,
                                                                                         args["num_virtual_tokens"]),
                                       use_chat_template=False)
    return adapted


def _repeat_to_tokens(text: str, tokenizer: object, n: int) -> str:
    """`text` repeated until it tokenises to at least `n` tokens (a short instruction still fills every prefix)."""
    out = text
    while len(tokenizer(out)["input_ids"]) < n:  # type: ignore[operator]
        out = f"{out} {text}"
    return out


def _check_prefix_init(args: dict) -> dict:
    """Prefix initialisation from text needs the text, and a prefix that is its own parameter."""
    text = args.get("prefix_init_text")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"method 'prefix': prefix_init_text must be a string, got {text!r}")
    if args.get("prefix_init") == "TEXT":
        if not (text or "").strip():
            raise ValueError("method 'prefix': prefix_init TEXT needs prefix_init_text (the text whose keys and "
                             "values start the prefixes)")
        if args.get("prefix_projection"):
            raise ValueError("method 'prefix': prefix_init TEXT needs prefix_projection false (with the MLP "
                             "reparameterisation the prefixes are not parameters a cache can be copied into)")
    return args


def _check_text_init(args: dict) -> dict:
    """Text initialisation needs its text; without it peft fails only after the model has loaded."""
    text = args.get("prompt_tuning_init_text")
    if text is not None and not isinstance(text, str):
        raise ValueError(f"method 'prompt': prompt_tuning_init_text must be a string, got {text!r}")
    if args.get("prompt_tuning_init") == "TEXT" and not (text or "").strip():
        raise ValueError("method 'prompt': prompt_tuning_init TEXT needs prompt_tuning_init_text (the words whose "
                         "embeddings start the prompt)")
    return args


register(Method(
    name="prompt", family="prompt", description="Trainable soft-prompt embeddings prepended to the input",
    defaults={"num_virtual_tokens": 8, "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None},
    apply=_apply_prompt, merge="virtual",
    merge_why="no: prompt tuning's virtual tokens are part of the input, not of any weight (exported instead)",
    checks={"num_virtual_tokens": integer(1, MAX_VIRTUAL_TOKENS),
            "prompt_tuning_init": choice("RANDOM", "TEXT", "SAMPLE_VOCAB", upper=True)},
    validate=_check_text_init,
))
register(Method(
    name="prefix", family="prompt", description="Trainable key/value prefixes in every attention layer",
    defaults={"num_virtual_tokens": 10, "prefix_projection": False, "encoder_hidden_size": None,
              "prefix_init": "RANDOM", "prefix_init_text": None},
    apply=_apply_prefix, merge="virtual",
    merge_why="no: prefix tuning's key/value prefixes live in the attention cache, not in any weight (exported instead)",
    checks={"num_virtual_tokens": integer(1, MAX_VIRTUAL_TOKENS), "prefix_projection": boolean(),
            "encoder_hidden_size": optional(integer(1, 1 << 20)),
            "prefix_init": choice("RANDOM", "TEXT", upper=True)},
    validate=_check_prefix_init,
    causal_only_args=lambda args: ("prefix_init TEXT copies a decoder-only model's cache of the text into the "
                                   "prefixes, and an encoder-decoder model keeps two (use prefix_init RANDOM)"
                                   if args.get("prefix_init") == "TEXT" else ""),
))
