"""Batched scoring is exact: token-budget batches, last-position logits, batched perplexity windows, progress."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_model, build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    from peftlab.methods import ApplyContext, get_method

    base = build_model("llama", len(tok)).eval()
    out = {"base": base}
    for name in ("lora", "prompt", "prefix", "lora+prompt"):
        method = get_method(name)
        torch.manual_seed(1)
        adapted = method.apply(copy.deepcopy(base), method.resolve_args({}), ApplyContext(tokenizer=tok))
        for p in adapted.parameters():  # trained-looking adapters, not identity ones
            if p.requires_grad:
                with torch.no_grad():
                    p.add_(0.2 * torch.randn_like(p))
        out[name] = adapted.eval()
    return out


def test_token_batches_hand_worked():
    from peftlab.evaluation.scoring import token_batches

    # longest first; a batch takes rows while rows x its first (longest) row <= 10
    assert token_batches([3, 5, 2, 5, 1], 10) == [[1, 3], [0, 2, 4]]
    assert token_batches([3, 5, 2, 5, 1], 10, max_rows=2) == [[1, 3], [0, 2], [4]]
    assert token_batches([12, 2], 10) == [[0], [1]]  # a row over the budget goes alone
    assert token_batches([], 10) == []
    with pytest.raises(ValueError, match="max_tokens"):
        token_batches([1], 0)


@pytest.mark.parametrize("name", ["base", "lora", "prompt", "prefix", "lora+prompt"])
def test_last_token_logits_match_the_full_forward(models, tok, name):
    """The output layer on the last positions only gives the logits the full forward pass gives there,
    including for methods that prepend virtual tokens (prompt) or past key/values (prefix)."""
    from peftlab.evaluation.scoring import aligned_logits, last_token_logits, pad_rows

    model = models[name]
    rows = [tok(t)["input_ids"] for t in ("a movie that is good and long", "bad", "the plot is thin")]
    batch = pad_rows(rows, tok.pad_token_id)
    fast = last_token_logits(model, batch["input_ids"], batch["attention_mask"])
    full = aligned_logits(model, batch["input_ids"], batch["attention_mask"])
    want = torch.stack([full[i, len(r) - 1] for i, r in enumerate(rows)])
    assert fast.shape == (3, full.shape[-1])
    assert torch.allclose(fast, want, atol=1e-4)
    # and each row alone (no padding at all) agrees too
    for i, r in enumerate(rows):
        alone = aligned_logits(model, torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long))[0, -1]
        assert torch.allclose(fast[i], alone, atol=1e-4)


def test_batched_windows_and_token_budget_change_no_score(models, tok):
    from peftlab.evaluation.progress import EvalProgress
    from peftlab.tasks.lm import strided_document_nll

    texts = [("the cat sat on the mat and the dog ran " * (i + 2)).strip() for i in range(6)]
    model = models["lora"]
    one = strided_document_nll(model, tok, texts, 16, 8, "cpu", max_tokens=16)
    seen = []
    many = strided_document_nll(model, tok, texts, 16, 8, "cpu", max_tokens=16 * 5,
                                progress=EvalProgress(lambda *a: seen.append(a)))
    assert one[1] == many[1] and sum(one[1]) > 0
    assert all(abs(a - b) < 1e-3 * max(1.0, abs(a)) for a, b in zip(one[0], many[0]))
    assert seen[0][1] == 0 and seen[-1][1] == seen[-1][2] and len(seen) > 2  # phase start .. all windows


def test_progress_counts_examples_of_choice_scoring(models, tok):
    from peftlab.evaluation.progress import EvalProgress
    from peftlab.evaluation.scoring import choice_logprobs

    seen = []
    prompts = [tok(t)["input_ids"] for t in ("good", "a bad film", "fine", "long and dull film")]
    progress = EvalProgress(lambda phase, done, total: seen.append((phase, done, total))).phase("test", 4)
    out = choice_logprobs(models["base"], prompts, [[5, 6], [7]], tok.pad_token_id, "cpu", max_tokens=12,
                          progress=progress)
    assert out.shape == (4, 2) and seen[0] == ("test", 0.0, 4) and seen[-1] == ("test", 4.0, 4)
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)
