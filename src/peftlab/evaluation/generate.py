"""One batched generation path for every method.

Prompts are left-padded (every row's next token sits in the last column), generated with the KV
cache, stopped at end-of-sequence or at stop strings, cut at the stop strings, and timed.

An encoder-decoder (seq2seq) model is the one branch (`ModelArchitecture.of(model).encoder_decoder`):
its prompts are right-padded (the encoder reads them whole, and soft prompts that peft puts in front
then sit right before every row's text, whatever its length), and its `generate` returns only
decoder tokens, of which the first is its decoder start token, so nothing of the prompt is
stripped from them. A causal LM returns prompt + new tokens: the new ones start after the padded
prompt's width.

Prompt-learning methods (prompt tuning, prefix tuning, the LoRA+prompt hybrid) generate through
`peftlab.methods.virtual_tokens.hf_generate`, which gives the plain transformers model their
virtual tokens at every forward; `tests/test_generation.py` checks, per method, that cached
generation equals cache-free generation and an unpadded token-by-token forward loop, and batched
equals one-by-one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from peftlab.config import DecodingConfig
from peftlab.evaluation.progress import EvalProgress
from peftlab.evaluation.scoring import pad_rows
from peftlab.methods.virtual_tokens import hf_generate, hf_model
from peftlab.models import ModelArchitecture

__all__ = ["GenerationOutput", "generate", "hf_generate", "generation_kwargs", "eos_token_ids", "left_pad",
           "cut_at_stop", "StopOnStrings"]


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
    gen_config = getattr(hf_model(model), "generation_config", None) if model is not None else None
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
             streamer: Any = None, progress: EvalProgress | None = None) -> GenerationOutput:
    """Generate `num_return_sequences` completions per prompt (token-id lists), batched.

    Prompts are sorted by length so a batch holds similar lengths (less padding); results come
    back in prompt order. Sampling is seeded per batch from `decoding.seed`, so the same call
    gives the same samples. `use_cache=False` exists to check the cache (it is much slower);
    `streamer` (a transformers streamer) needs `batch_size=1` or a single prompt; `progress` advances
    by the prompts of each finished batch.
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
    seq2seq = ModelArchitecture.of(model).encoder_decoder
    start = time.perf_counter()
    for b, s in enumerate(range(0, len(order), batch_size)):
        idx = order[s:s + batch_size]
        t0 = time.perf_counter()
        if seq2seq:  # right-padded encoder input; the output is decoder tokens after the decoder start token
            batch = {k: v.to(device) for k, v in pad_rows([prompts[i] for i in idx], pad).items()}
            new_from = 1
        else:  # left-padded: prompt + new tokens come back, the new ones after the prompt's width
            batch = left_pad([prompts[i] for i in idx], pad, device)
            new_from = batch["input_ids"].shape[1]
        extra: dict[str, Any] = {"use_cache": use_cache}
        if decoding.stop:
            from transformers import StoppingCriteriaList

            extra["stopping_criteria"] = StoppingCriteriaList([StopOnStrings(tokenizer, decoding.stop, new_from)])
        if streamer is not None:
            extra["streamer"] = streamer
        if kwargs["do_sample"]:
            torch.manual_seed(decoding.seed + b)
        generated = hf_generate(model, **batch, **kwargs, **extra)
        new = generated[:, new_from:].tolist()
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
        if progress is not None:
            progress.advance(len(idx))
    out.seconds = time.perf_counter() - start
    out.texts = [texts[i] for i in range(len(prompts))]
    out.token_ids = [ids_out[i] for i in range(len(prompts))]
    out.per_prompt_s = per_prompt
    return out
