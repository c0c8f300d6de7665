"""Prompt-learning plumbing in one place: virtual tokens in generation, scoring and exports.

Prompt tuning, prefix tuning and the LoRA+prompt hybrid train tokens that are part of the
sequence (soft-prompt embeddings in front of the input, or key/value prefixes in every layer's
cache) but not of the token ids. Everything that must know about them lives here: generation
(`hf_generate`), the transformers model under the wrappers (`hf_model`), the cache keyword of a
forward (`cache_argument`), and reading or rebuilding the trained tokens for export
(`soft_prompt_of`, `prefix_of`, `prefix_cache`).

Prompt-learning methods need care, because their virtual tokens are part of the sequence the cache
holds but not of the token ids `generate` tracks:

* peft's prompt tuning *drops* the position ids `generate` computes from the attention mask
  ("Position ids are not supported for parameter efficient tuning"), so under left padding the pad
  columns shift every real token's position: a prompt generates something else in a batch than
  alone (with absolute position embeddings, e.g. GPT-2, most of the time).
* peft's prefix tuning crashes under `use_cache=False`.
* the hybrid's old path generated from `inputs_embeds`, which makes `transformers` force the cache
  on, so there was no cache-free run to compare with.

peftlab therefore drives the plain transformers model itself for these methods and gives it the
virtual tokens at every forward (`with_virtual_tokens`): on the first forward of a sequence (or on
every forward without a cache) soft prompts are prepended as embeddings and prefixes are put in
the cache, the attention mask gains `n` ones in front, and every position id is shifted by `n`, so
each token sits exactly where it sat in training (virtual tokens at `0..n-1`, the text after
them, pads ignored). `tests/test_generation.py` checks, per method, that cached generation equals
cache-free generation and an unpadded token-by-token forward loop, and batched equals one-by-one.

An encoder-decoder (seq2seq) model is left to its own `generate` (peft's `PeftModelForSeq2SeqLM`
puts soft prompts in front of the encoder input and prefixes in the cache itself): its virtual
tokens sit in the encoder, whose input is read once and whose positions are relative, and what it
returns is the decoder's tokens (the decoder start token first), never the prompt.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from peftlab.models import ModelArchitecture

# The keyword a transformers forward takes for its KV cache: `cache` since transformers 5.24,
# `past_key_values` before (5.24 still accepts the old name with a FutureWarning until 5.40).
CACHE_ARGUMENTS = ("cache", "past_key_values")


def cache_argument(forward: Callable[..., Any]) -> str:
    """`"cache"` or `"past_key_values"`: the name `forward` (a transformers model's) takes its KV cache by."""
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return next((name for name in CACHE_ARGUMENTS if name in params), "past_key_values")


@dataclass
class VirtualTokens:
    """What `generate` is called on, and what each forward must add (virtual tokens).

    A model wrapper of peftlab's own (the LoRA+prompt hybrid) describes itself by a
    `virtual_tokens()` method returning one of these; peft's prompt-learning models are read
    from their `active_peft_config`; any other model has none (`inner is None`)."""

    lm: Any  # the object whose `.generate` runs
    inner: Any = None  # the transformers model whose forward gets the virtual tokens
    num_virtual: int = 0
    soft_prompt: torch.Tensor | None = None  # [n, hidden]: prepended as embeddings (prompt tuning, hybrid)
    prefix: Callable[[int], Any] | None = None  # batch -> Cache holding n positions (prefix tuning)


def hf_model(model: Any) -> Any:
    """The underlying transformers model (through peft and peftlab wrappers)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def virtual_tokens_of(model: Any) -> VirtualTokens:
    """What generating with `model` needs: its virtual tokens and the transformers model to drive."""
    own = getattr(model, "virtual_tokens", None)  # a peftlab wrapper that carries its own (the hybrid)
    if callable(own):
        return own()
    if ModelArchitecture.of(model).encoder_decoder:  # peft's seq2seq generate handles its virtual tokens itself
        return VirtualTokens(lm=model)
    config = getattr(model, "active_peft_config", None)
    if config is not None and getattr(config, "is_prompt_learning", False):
        kind = str(getattr(config.peft_type, "value", config.peft_type))
        inner = model.get_base_model()
        n = int(config.num_virtual_tokens)
        if kind in ("PROMPT_TUNING", "P_TUNING"):
            with torch.no_grad():
                prompt = model.get_prompt(batch_size=1)[0].detach()
            return VirtualTokens(lm=inner, inner=inner, num_virtual=n, soft_prompt=prompt)
        if kind == "PREFIX_TUNING":
            return VirtualTokens(lm=inner, inner=inner, num_virtual=n,
                                 prefix=lambda batch: model.get_prompt(batch_size=batch))
    return VirtualTokens(lm=model)  # weight adapters and plain models: their own generate is right


@contextlib.contextmanager
def with_virtual_tokens(target: VirtualTokens) -> Iterator[None]:
    """Install a forward on the transformers model that adds the virtual tokens; restore it after."""
    if target.inner is None:
        yield
        return
    inner = target.inner
    own = inner.__dict__.get("forward")  # accelerate hooks live on the instance too
    orig = inner.forward
    n = target.num_virtual

    cache_name = cache_argument(orig)

    @functools.wraps(orig)
    def forward(input_ids: Any = None, attention_mask: Any = None, position_ids: Any = None,
                inputs_embeds: Any = None, use_cache: Any = None, **kwargs: Any) -> Any:
        if inputs_embeds is not None:
            raise ValueError("peftlab generation of prompt-learning models takes input_ids, not inputs_embeds")
        cache = None
        for name in CACHE_ARGUMENTS:  # whichever name this transformers release passes
            value = kwargs.pop(name, None)
            cache = value if value is not None else cache
        batch, length = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        prefill = past == 0
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError("peftlab generation of prompt-learning models needs a 2D attention mask")
            attention_mask = torch.cat([attention_mask.new_ones(batch, n), attention_mask], dim=1)
        if position_ids is None:  # cache positions, virtual tokens included
            start = past if not prefill else n
            position_ids = torch.arange(start, start + length, device=input_ids.device).unsqueeze(0).expand(batch, -1)
        else:
            position_ids = position_ids + n
        if prefill and target.soft_prompt is not None:
            embeds = inner.get_input_embeddings()(input_ids)
            prompt = target.soft_prompt.to(device=embeds.device, dtype=embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
            inputs_embeds = torch.cat([prompt, embeds], dim=1)
            input_ids = None
            position_ids = torch.cat([torch.arange(n, device=position_ids.device).unsqueeze(0).expand(batch, -1),
                                      position_ids], dim=1)
        elif prefill and target.prefix is not None:
            cache = target.prefix(batch)
        kwargs[cache_name] = cache
        out = orig(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        if prefill and target.soft_prompt is not None and out.logits.shape[1] == n + length:
            out["logits"] = out.logits[:, n:]
        if not use_cache:  # a cache-free run must not carry the prefix cache to the next step
            for name in CACHE_ARGUMENTS:
                if getattr(out, name, None) is not None:
                    out[name] = None
        return out

    inner.forward = forward
    try:
        yield
    finally:
        if own is None:
            del inner.forward  # the class's forward is back
        else:
            inner.forward = own


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Generation runs without dropout (LoRA dropout would make greedy decoding random)."""
    modules = [m for m in model.modules() if m.training]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m in modules:
            m.training = True


@torch.no_grad()
def hf_generate(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
    """`model.generate` made right for every method: returns prompt ids + new ids, like transformers (an
    encoder-decoder model: the decoder's ids, starting with its decoder start token).

    `kwargs` are transformers `generate` arguments (`use_cache`, `streamer`, `stopping_criteria`, …).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    target = virtual_tokens_of(model)
    with eval_mode(model), with_virtual_tokens(target):
        return target.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


# ------------------------------------------------------------------------------------ exports
def unwrap(model: nn.Module) -> nn.Module:
    """The model under a DistributedDataParallel-style `.module` wrapper."""
    return getattr(model, "module", model)


def _peft_kind(model: nn.Module) -> str:
    config = getattr(model, "active_peft_config", None)
    return str(getattr(getattr(config, "peft_type", None), "value", getattr(config, "peft_type", "")))


def soft_prompt_of(model: nn.Module) -> torch.Tensor | None:
    """The trained virtual-token embeddings `[n, hidden]` of prompt tuning or the hybrid, else None."""
    model = unwrap(model)
    own = getattr(model, "virtual_tokens", None)
    if callable(own):
        soft = own().soft_prompt
        return None if soft is None else soft.detach().float().cpu().clone()
    if _peft_kind(model) in ("PROMPT_TUNING", "P_TUNING"):
        with torch.no_grad():
            return model.get_prompt(batch_size=1)[0].detach().float().cpu().clone()
    return None


def prefix_of(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Prefix tuning's per-layer (key, value) prefixes, each `[kv_heads, n, head_dim]`, else None."""
    model = unwrap(model)
    if _peft_kind(model) != "PREFIX_TUNING":
        return None
    with torch.no_grad():
        cache = model.get_prompt(batch_size=1)
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise ValueError(f"cannot read the prefix from a {type(cache).__name__}")
    return [(layer.keys[0].detach().float().cpu().clone(), layer.values[0].detach().float().cpu().clone())
            for layer in layers]


def prefix_cache(model: nn.Module, path: Any, batch: int = 1) -> Any:
    """A DynamicCache holding an exported prefix (`prefix_kv.safetensors`) for a plain transformers model."""
    from safetensors.torch import load_file
    from transformers import DynamicCache

    kv = load_file(str(path))
    cache = DynamicCache(config=model.config)
    layers = len([k for k in kv if k.endswith(".key")])
    dtype = next(model.parameters()).dtype
    for i in range(layers):
        k, v = kv[f"layers.{i}.key"], kv[f"layers.{i}.value"]
        cache.update(k[None].expand(batch, -1, -1, -1).to(dtype), v[None].expand(batch, -1, -1, -1).to(dtype), i)
    return cache
