"""`lora+prompt`: LoRA on the weights and trainable soft-prompt tokens at once (the seeds' hybrid).

peft's mixed models refuse prompt tuning, so peftlab composes the two itself: a LoRA PeftModel
does the weight update and this wrapper prepends `num_virtual_tokens` trainable embeddings to
every input. Both train together under one optimizer, and the pair saves and loads as one unit
(`lora/` + `soft_prompt.safetensors`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from peftlab.methods.lora import LORA_CHECKS, LORA_DEFAULTS, lora_config
from peftlab.methods.registry import MAX_VIRTUAL_TOKENS, ApplyContext, Method, choice, integer, register
from peftlab.methods.virtual_tokens import VirtualTokens, hf_generate

SOFT_PROMPT_FILE = "soft_prompt.safetensors"


class LoraPromptModel(nn.Module):
    """A LoRA PeftModel with a trainable soft prompt in front of every sequence."""

    def __init__(self, peft_model: nn.Module, num_virtual_tokens: int, init: str = "vocab", seed: int = 0):
        super().__init__()
        self.peft_model = peft_model
        self.num_virtual_tokens = num_virtual_tokens
        embed = self.input_embeddings()
        self.soft_prompt = nn.Parameter(self._initial_prompt(embed.weight, num_virtual_tokens, init, seed))

    @staticmethod
    def _initial_prompt(weight: torch.Tensor, n: int, init: str, seed: int) -> torch.Tensor:
        """Start from real vocabulary embeddings (Lester et al.: better than random), or random."""
        gen = torch.Generator().manual_seed(seed)
        if init == "random":
            return torch.randn(n, weight.shape[1], generator=gen).to(weight) * weight.detach().std()
        rows = torch.randint(0, weight.shape[0], (n,), generator=gen)
        return weight.detach()[rows.to(weight.device)].clone().float().to(weight.dtype)

    @property
    def config(self) -> Any:
        return self.peft_model.config

    @property
    def device(self) -> torch.device:
        return self.soft_prompt.device

    def input_embeddings(self) -> nn.Module:
        return self.peft_model.get_input_embeddings()

    def get_base_model(self) -> nn.Module:
        """The transformers model under the LoRA layers (as peft's `PeftModel.get_base_model`)."""
        return self.peft_model.get_base_model()

    def virtual_tokens(self) -> VirtualTokens:
        """The soft prompt generation must put in front of every sequence (see `methods.virtual_tokens`)."""
        inner = self.get_base_model()
        return VirtualTokens(lm=inner, inner=inner, num_virtual=self.num_virtual_tokens,
                             soft_prompt=self.soft_prompt.detach())

    def merge_and_unload(self) -> nn.Module:
        """The LoRA half folded into the weights; the soft prompt cannot be (it is part of the input)."""
        return self.peft_model.merge_and_unload()

    def _with_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     labels: torch.Tensor | None = None) -> dict:
        batch = input_ids.shape[0]
        token_embeds = self.input_embeddings()(input_ids)
        prompt = self.soft_prompt.to(token_embeds.dtype).unsqueeze(0).expand(batch, -1, -1)
        out = {"inputs_embeds": torch.cat([prompt, token_embeds], dim=1)}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ones = attention_mask.new_ones(batch, self.num_virtual_tokens)
        out["attention_mask"] = torch.cat([ones, attention_mask], dim=1)
        if labels is not None:
            ignore = labels.new_full((batch, self.num_virtual_tokens), -100)
            out["labels"] = torch.cat([ignore, labels], dim=1)
        return out

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> Any:
        kwargs.pop("position_ids", None)
        return self.peft_model(**self._with_prompt(input_ids, attention_mask, labels), **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Generate with the soft prompt in front; returns prompt ids + new ids like a plain model.

        Runs through peftlab's generation path, which prepends the soft prompt at every forward
        that starts a sequence and shifts positions past it, so `use_cache=False`, left padding
        and beam search behave as they do for a plain model (generating from `inputs_embeds`
        would force the cache on and could not be checked without it).
        """
        return hf_generate(self, input_ids, attention_mask, **kwargs)

    def save_pretrained(self, path: str | Path, **kwargs: Any) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.peft_model.save_pretrained(path / "lora", **kwargs)
        save_file({"soft_prompt": self.soft_prompt.detach().cpu().contiguous()}, str(path / SOFT_PROMPT_FILE))
        (path / "hybrid_config.json").write_text(json.dumps({"num_virtual_tokens": self.num_virtual_tokens}))

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, path: str | Path, is_trainable: bool = False) -> "LoraPromptModel":
        from peft import PeftModel
        from safetensors.torch import load_file

        path = Path(path)
        peft_model = PeftModel.from_pretrained(base_model, path / "lora", is_trainable=is_trainable)
        n = json.loads((path / "hybrid_config.json").read_text())["num_virtual_tokens"]
        model = cls(peft_model, n)
        prompt = load_file(str(path / SOFT_PROMPT_FILE))["soft_prompt"]
        with torch.no_grad():
            model.soft_prompt.copy_(prompt.to(model.soft_prompt))
        model.soft_prompt.requires_grad_(is_trainable)
        return model


def _apply_hybrid(model: nn.Module, args: dict, ctx: ApplyContext) -> nn.Module:
    from peft import get_peft_model

    args = dict(args)
    n = int(args.pop("num_virtual_tokens"))
    init = str(args.pop("prompt_init"))
    peft_model = get_peft_model(model, lora_config(model, args))
    return LoraPromptModel(peft_model, n, init=init, seed=ctx.seed)


register(Method(
    name="lora+prompt", family="hybrid",
    description="LoRA on the weights plus trainable soft-prompt tokens, trained together (peftlab's composition)",
    defaults={**LORA_DEFAULTS, "num_virtual_tokens": 8, "prompt_init": "vocab"},
    apply=_apply_hybrid, merge="partial",
    merge_why="partly: the LoRA half merges; the soft prompt is part of the input and is exported beside",
    causal_only=("peftlab's own wrapper puts its soft prompt in front of a decoder-only model's sequence and shifts "
                 "its labels and positions past it, and an encoder-decoder model's labels belong to the decoder"),
    load=lambda base_model, path, is_trainable: LoraPromptModel.from_pretrained(base_model, path, is_trainable),
    checks={**LORA_CHECKS, "num_virtual_tokens": integer(1, MAX_VIRTUAL_TOKENS), "prompt_init": choice("vocab", "random")},
))
