"""Prefix tuning initialised from real token activations (`prefix_init: TEXT`).

The prefixes must be exactly the base model's own keys and values for the text's first tokens:
then the adapted model, before any training, predicts what the base predicts after that text.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_model, build_tokenizer

from peftlab.methods import ApplyContext, get_method
from peftlab.methods.virtual_tokens import prefix_of

TOK = build_tokenizer()
TEXT = "the answer is 42 . final answer : 42"


def adapted(**args):
    method = get_method("prefix")
    base = build_model("llama", len(TOK))
    return base, method.apply(build_model("llama", len(TOK)), method.resolve_args(args), ApplyContext(tokenizer=TOK))


@torch.no_grad()
def test_text_init_prefix_is_the_base_cache_of_the_text() -> None:
    n = 6
    base, model = adapted(num_virtual_tokens=n, prefix_init="text", prefix_init_text=TEXT)
    ids = TOK(TEXT, return_tensors="pt")["input_ids"]
    assert ids.shape[1] >= n
    cache = base(input_ids=ids[:, :n], use_cache=True).past_key_values
    prefixes = prefix_of(model)
    assert len(prefixes) == len(cache.layers)
    for (key, value), layer in zip(prefixes, cache.layers):
        torch.testing.assert_close(key, layer.keys[0].float())
        torch.testing.assert_close(value, layer.values[0].float())


@torch.no_grad()
def test_text_init_model_continues_the_text_as_the_base_does() -> None:
    n = 6
    base, model = adapted(num_virtual_tokens=n, prefix_init="TEXT", prefix_init_text=TEXT)
    ids = TOK(TEXT, return_tensors="pt")["input_ids"]
    follow = TOK(" final answer", return_tensors="pt")["input_ids"]
    expected = base(input_ids=torch.cat([ids[:, :n], follow], dim=1)).logits[:, n:]
    got = model(input_ids=follow).logits[:, -follow.shape[1]:]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_short_text_is_repeated_to_fill_every_prefix() -> None:
    _, model = adapted(num_virtual_tokens=12, prefix_init="TEXT", prefix_init_text="good")
    keys = torch.stack([k for k, _ in prefix_of(model)])
    assert torch.isfinite(keys).all() and keys.abs().sum() > 0


def test_random_is_still_the_default() -> None:
    assert get_method("prefix").resolve_args({})["prefix_init"] == "RANDOM"


@pytest.mark.parametrize(("args", "message"), [
    ({"prefix_init": "TEXT"}, "prefix_init TEXT needs prefix_init_text"),
    ({"prefix_init": "TEXT", "prefix_init_text": "x", "prefix_projection": True}, "needs prefix_projection false"),
    ({"prefix_init": "words"}, "'words' is not valid.*valid: RANDOM, TEXT"),
    ({"prefix_init_text": 3}, "prefix_init_text must be a string"),
])
def test_bad_prefix_init_is_refused_without_a_model(args: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_method("prefix").resolve_args(args)
