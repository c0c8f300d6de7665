"""Which modules an adapter targets, per architecture.

The seeds adapt the attention query and value projections. Their names differ by architecture
(`q_proj`/`v_proj` in Llama-like models, one fused `c_attn` in GPT-2, `q`/`v` in T5's encoder and
decoder), so defaults resolve from the model's `model_type`, and users can name their own list or a
shortcut.
"""

from __future__ import annotations

from typing import Any

#: The T5 family (encoder-decoder): attention projections q, k, v, o; MLP wi (or gated wi_0, wi_1) and wo.
T5_TYPES = ("t5", "mt5", "umt5", "longt5")
ATTENTION_QV = {
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "bloom": ["query_key_value"],
    "gpt_bigcode": ["c_attn"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    **{t5: ["q", "v"] for t5 in T5_TYPES},  # every attention of encoder and decoder (self and cross)
}
ATTENTION_ALL = {
    "gpt2": ["c_attn", "c_proj"],
    "gpt_neox": ["query_key_value", "dense"],
    "falcon": ["query_key_value", "dense"],
    **{t5: ["q", "k", "v", "o"] for t5 in T5_TYPES},
}
MLP = {
    "gpt2": ["c_fc", "mlp.c_proj"],
    "gpt_neox": ["dense_h_to_4h", "dense_4h_to_h"],
    **{t5: ["wi", "wi_0", "wi_1", "wo"] for t5 in T5_TYPES},  # peft skips the names a checkpoint lacks
}
TARGET_SHORTCUTS = ("auto", "qv", "attention", "attention+mlp", "all-linear")
LLAMA_LIKE_QV = ["q_proj", "v_proj"]
LLAMA_LIKE_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
LLAMA_LIKE_MLP = ["gate_proj", "up_proj", "down_proj"]


def model_type(model: Any) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", "") or ""


def resolve_targets(model: Any, spec: Any) -> Any:
    """`auto`/None → query+value; `attention`, `attention+mlp`, `all-linear`, or an explicit list."""
    mtype = model_type(model)
    if isinstance(spec, (list, tuple)):
        return list(spec)
    if spec in (None, "auto", "qv"):
        return ATTENTION_QV.get(mtype, LLAMA_LIKE_QV)
    if spec == "attention":
        return ATTENTION_ALL.get(mtype, LLAMA_LIKE_ATTN)
    if spec == "attention+mlp":
        return ATTENTION_ALL.get(mtype, LLAMA_LIKE_ATTN) + MLP.get(mtype, LLAMA_LIKE_MLP)
    if spec == "all-linear":
        return "all-linear"
    if isinstance(spec, str):
        return [s.strip() for s in spec.split(",") if s.strip()]
    raise ValueError(f"target_modules: expected auto, qv, attention, attention+mlp, all-linear or a list, got {spec!r}")


def ia3_targets(model: Any) -> tuple[list[str], list[str]]:
    """IA3 scales keys, values and the MLP's down projection (the IA3 paper's choice)."""
    mtype = model_type(model)
    if mtype == "gpt2":
        return ["c_attn", "mlp.c_proj"], ["mlp.c_proj"]
    if mtype in ("gpt_neox", "falcon"):
        return ["query_key_value", "dense_4h_to_h"], ["dense_4h_to_h"]
    if mtype in T5_TYPES:  # peft's own table: k, v and the MLP's wo
        return _peft_ia3_defaults(mtype) or (["k", "v", "wo"], ["wo"])
    return ["k_proj", "v_proj", "down_proj"], ["down_proj"]


def _peft_ia3_defaults(mtype: str) -> tuple[list[str], list[str]] | None:
    """peft's IA3 defaults for a model type (targets, feed-forward modules), None where peft has none."""
    try:
        from peft.utils.constants import (
            TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FEEDFORWARD,
        )
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS
    except ImportError:
        return None
    if mtype not in TARGETS:
        return None
    return list(TARGETS[mtype]), list(FEEDFORWARD.get(mtype, []))
