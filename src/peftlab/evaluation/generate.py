"""One batched generation path for every method.

Prompts are left-padded (every row's next token sits in the last column), generated with the KV
cache, stopped at end-of-sequence or at stop strings, cut at the stop strings, and timed.

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
virtual tokens at every forward (`_virtual_tokens`): on the first forward of a sequence (or on
every forward without a cache) soft prompts are prepended as embeddings and prefixes are put in
the cache, the attention mask gains `n` ones in front, and every position id is shifted by `n`, so
each token sits exactly where it sat in training (virtual tokens at `0..n-1`, the text after
them, pads ignored). `tests/test_generation.py` checks, per method, that cached generation equals
cache-free generation and an unpadded token-by-token forward loop, and batched equals one-by-one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from peftlab.config import DecodingConfig


@dataclass
class GenerationOutput:
    texts: list[list[str]]  # per prompt, `num_return_sequences` completions (cut at stop strings)
    new_tokens: int = 0  # tokens generated, end-of-sequence included, padding after it excluded
    seconds: float = 0.0  # wall time of the whole call (padding, generation, decoding)
    per_prompt_s: list[float] = field(default_factory=list)  # per prompt, in prompt order: its batch's time / batch size
    token_ids: list[list[list[int]]] = field(default_factory=list)  # per prompt and sample: generated ids before EOS
    batches: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    @property
    def examples(self) -> int:
        return len(self.texts)

    @property
    def s_per_example(self) -> float:
        return self.seconds / len(self.texts) if self.texts else 0.0

    def throughput(self) -> dict[str, float]:
        """What a result records: `{"tokens_per_s", "s_per_example", "new_tokens", "seconds", "examples"}`."""
        return {"tokens_per_s": self.tokens_per_s, "s_per_example": self.s_per_example,
                "new_tokens": self.new_tokens, "seconds": self.seconds, "examples": self.examples}


# ------------------------------------------------------------------------------------ decoding config
def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (chat models end turns with them)."""
    ids: list[int] = []
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    gen_config = getattr(_hf_model(model), "generation_config", None) if model is not None else None
    extra = getattr(gen_config, "eos_token_id", None)
    for i in ([extra] if isinstance(extra, int) else list(extra or [])):
        if int(i) not in ids and int(i) < len(tokenizer):  # tiny test configs name ids beyond the vocab
            ids.append(int(i))
    return ids


def generation_kwargs(decoding: DecodingConfig, tokenizer: Any, model: Any = None) -> dict:
    """Hugging Face `generate` arguments for one decoding strategy.

    Every knob is set explicitly: `generate` fills unset ones from the model's own
    `generation_config` (an instruct model may ship `do_sample=True, top_p=0.9`), which would make
    "greedy" silently sample and "temperature=0.7" silently nucleus-sample.
    """
    n = decoding.num_return_sequences
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict[str, Any] = {"max_new_tokens": decoding.max_new_tokens, "pad_token_id": pad,
                              "num_return_sequences": n, "repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
                              "min_new_tokens": 0}
    eos = eos_token_ids(model, tokenizer)
    kwargs["eos_token_id"] = eos or None
    if decoding.strategy == "greedy":
        if n > 1:
            raise ValueError(f"decoding {decoding.name!r}: greedy decoding gives one answer per prompt; "
                             "n samples need sampling (e.g. temperature=0.7:n=5) or beam search (beam=5:n=5)")
        kwargs.update(do_sample=False, num_beams=1, temperature=None, top_k=None, top_p=None)
    elif decoding.strategy == "beam":
        kwargs.update(do_sample=False, num_beams=max(decoding.num_beams, n), temperature=None, top_k=None, top_p=None,
                      length_penalty=1.0, early_stopping=True)
    else:
        kwargs.update(do_sample=True, num_beams=1, temperature=decoding.temperature, top_k=decoding.top_k or 0,
                      top_p=decoding.top_p if decoding.top_p is not None else 1.0)
    return kwargs


def cut_at_stop(text: str, stops: list[str]) -> str:
    """Truncate at the first stop string (HumanEval's `\\ndef`, a chat's end-of-turn, …)."""
    cut = len(text)
    for stop in stops:
        if not stop:
            continue
        idx = text.find(stop)
        if idx != -1:
            cut = min(cut, idx)
    return text[:cut]


def left_pad(prompts: list[list[int]], pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate: empty prompt (give at least one token, e.g. a BOS token)")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


class StopOnStrings:
    """A `StoppingCriteria` that finishes a row once its new text contains a stop string.

    Rows finish independently (transformers pads finished rows), so a batch stops as soon as every
    row has said what it needed; the text is still cut at the stop string afterwards.
    """

    def __init__(self, tokenizer: Any, stops: list[str], prompt_width: int):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_width = prompt_width
        self.tail = max((len(s) for s in self.stops), default=1) + 8  # tokens: >= characters of any stop

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, self.prompt_width:]
        if not self.stops or new.shape[1] == 0:
            return done
        for row in range(new.shape[0]):
            text = self.tokenizer.decode(new[row, -self.tail:].tolist(), skip_special_tokens=False)
            done[row] = any(s in text for s in self.stops)
        return done


# ------------------------------------------------------------------------------- virtual tokens
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
class _Target:
    """What `generate` is called on, and what each forward must add (virtual tokens)."""

    lm: Any  # the object whose `.generate` runs
    inner: Any = None  # the transformers model whose forward gets the virtual tokens
    num_virtual: int = 0
    soft_prompt: torch.Tensor | None = None  # [n, hidden]: prepended as embeddings (prompt tuning, hybrid)
    prefix: Callable[[int], Any] | None = None  # batch -> Cache holding n positions (prefix tuning)


def _hf_model(model: Any) -> Any:
    """The underlying transformers model (through peft and peftlab wrappers)."""
    from peftlab.methods.hybrid import LoraPromptModel

    if isinstance(model, LoraPromptModel):
        model = model.peft_model
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _target(model: Any) -> _Target:
    from peftlab.methods.hybrid import LoraPromptModel

    if isinstance(model, LoraPromptModel):
        inner = _hf_model(model)
        return _Target(lm=inner, inner=inner, num_virtual=model.num_virtual_tokens,
                       soft_prompt=model.soft_prompt.detach())
    config = getattr(model, "active_peft_config", None)
    if config is not None and getattr(config, "is_prompt_learning", False):
        kind = str(getattr(config.peft_type, "value", config.peft_type))
        inner = model.get_base_model()
        n = int(config.num_virtual_tokens)
        if kind in ("PROMPT_TUNING", "P_TUNING"):
            with torch.no_grad():
                prompt = model.get_prompt(batch_size=1)[0].detach()
            return _Target(lm=inner, inner=inner, num_virtual=n, soft_prompt=prompt)
        if kind == "PREFIX_TUNING":
            return _Target(lm=inner, inner=inner, num_virtual=n,
                           prefix=lambda batch: model.get_prompt(batch_size=batch))
    return _Target(lm=model)  # weight adapters and plain models: their own generate is right


@contextlib.contextmanager
def _virtual_tokens(target: _Target) -> Iterator[None]:
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
def _eval_mode(model: Any) -> Iterator[None]:
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
    """`model.generate` made right for every method: returns prompt ids + new ids, like transformers.

    `kwargs` are transformers `generate` arguments (`use_cache`, `streamer`, `stopping_criteria`, …).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    target = _target(model)
    with _eval_mode(model), _virtual_tokens(target):
        return target.lm.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


# ------------------------------------------------------------------------------------ the batched path
def _completion_ids(seq: list[int], eos: set[int], pad: int | None) -> tuple[list[int], int]:
    """(ids before the first EOS, tokens generated counting the EOS but not the padding after it)."""
    for i, t in enumerate(seq):
        if t in eos:
            return seq[:i], i + 1
    end = len(seq)
    while end and pad is not None and seq[end - 1] == pad:
        end -= 1
    return seq[:end], end


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: list[list[int]], decoding: DecodingConfig,
             batch_size: int = 8, device: Any = None, *, use_cache: bool = True,
             streamer: Any = None) -> GenerationOutput:
    """Generate `num_return_sequences` completions per prompt (token-id lists), batched.

    Prompts are sorted by length so a batch holds similar lengths (less padding); results come
    back in prompt order. Sampling is seeded per batch from `decoding.seed`, so the same call
    gives the same samples. `use_cache=False` exists to check the cache (it is much slower);
    `streamer` (a transformers streamer) needs `batch_size=1` or a single prompt.
    """
    device = device or next(model.parameters()).device
    kwargs = generation_kwargs(decoding, tokenizer, model)
    pad = kwargs["pad_token_id"]
    eos = set(kwargs["eos_token_id"] or [])
    n = decoding.num_return_sequences
    if streamer is not None and len(prompts) > 1 and batch_size > 1:
        raise ValueError("generate: a streamer needs one prompt at a time (batch_size=1)")
    out = GenerationOutput(texts=[])
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths share a batch
    texts: dict[int, list[str]] = {}
    ids_out: dict[int, list[list[int]]] = {}
    per_prompt = [0.0] * len(prompts)
    start = time.perf_counter()
    for b, s in enumerate(range(0, len(order), batch_size)):
        idx = order[s:s + batch_size]
        t0 = time.perf_counter()
        batch = left_pad([prompts[i] for i in idx], pad, device)
        width = batch["input_ids"].shape[1]
        extra: dict[str, Any] = {"use_cache": use_cache}
        if decoding.stop:
            from transformers import StoppingCriteriaList

            extra["stopping_criteria"] = StoppingCriteriaList([StopOnStrings(tokenizer, decoding.stop, width)])
        if streamer is not None:
            extra["streamer"] = streamer
        if kwargs["do_sample"]:
            torch.manual_seed(decoding.seed + b)
        generated = hf_generate(model, **batch, **kwargs, **extra)
        new = generated[:, width:].tolist()
        for row, seq in enumerate(new):
            i = idx[row // n]
            ids, count = _completion_ids(seq, eos, pad)
            out.new_tokens += count
            ids_out.setdefault(i, []).append(ids)
            text = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), decoding.stop)
            texts.setdefault(i, []).append(text)
        elapsed = time.perf_counter() - t0
        for i in idx:
            per_prompt[i] = elapsed / len(idx)
        out.batches += 1
    out.seconds = time.perf_counter() - start
    out.texts = [texts[i] for i in range(len(prompts))]
    out.token_ids = [ids_out[i] for i in range(len(prompts))]
    out.per_prompt_s = per_prompt
    return out
