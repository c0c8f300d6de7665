"""Per-example scores (issue 9): every evaluation of every task keeps, per decoding, one value per test
example in `<run_dir>/examples.jsonl`, and the statistic its result names reproduces the recorded metric.

Tasks run on the tiny models of conftest.py (as in test_tasks.py); whole runs go through the store with
the fake data layer (as in test_runs.py).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from conftest import build_model, build_tokenizer
from test_tasks import RECORDS, fast_args, make_ctx, stub_generate

from peftlab.config import DecodingConfig, parse_experiment
from peftlab.evaluation.sandbox import ALLOW_CODE_EXECUTION_ENV
from peftlab.plan import expand
from peftlab.report import stats
from peftlab.runner import execute_run
from peftlab.store import Store
from peftlab.tasks.common import example_ids

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return build_model("llama", len(tok)).eval()


def reproduce(per_example: dict, source: dict, metrics: dict, values: dict) -> None:
    """Apply each named statistic to the stored values of its score set: the recorded metric, to 1e-6."""
    assert set(per_example) == set(source)
    for metric, name in per_example.items():
        rows = values[source[metric]]
        column = np.array([rows[i][metric] for i in sorted(rows)], dtype=float)
        got = float(stats.named_statistic(name)(column[None] if column.ndim == 2 else column[None, :, None])[0])
        assert got == pytest.approx(metrics[metric], rel=1e-6, abs=1e-9), (metric, name)


def check_hook_output(out: dict, complete: bool = True) -> dict:
    """Every metric of the run and of each evaluation is reproduced from the hook's score sets."""
    values = {ss["evaluation"]: {i: {m: col[k] for m, col in ss["values"].items()} for k, i in enumerate(ss["ids"])}
              for ss in out["scores"]}
    reproduce(out["per_example"], out["per_example_source"], out["metrics"], values)
    if complete:
        assert set(out["per_example"]) == set(out["metrics"])
    for entry in out.get("evaluations") or []:
        reproduce(entry["per_example"], entry["per_example_source"], entry["metrics"], values)
        if complete:
            assert set(entry["per_example"]) == set(entry["metrics"])
    json.dumps(out["scores"])  # plain JSON values
    return values


# ---------------------------------------------------------------------------------- every task's hook

@pytest.mark.parametrize("name", ["sentiment", "qa", "math", "code", "instruct"])
def test_each_task_reproduces_its_metrics_on_the_tiny_model(name, model, tok):
    spec, ctx = make_ctx(name, model, tok, args=fast_args(name))
    values = check_hook_output(spec.module.evaluate(spec, ctx))
    first = "loglik" if name == "sentiment" else "greedy"
    assert sorted(values[first]) == sorted(example_ids(RECORDS[name]))


def test_lm_perplexity_word_perplexity_bits_per_byte(model, tok):
    records = [{"text": "the quick brown fox jumps over the lazy dog"}, {"text": "a movie that is good"},
               {"text": "def add(a, b):\n    return a + b\n"}, {"text": "a movie that is good"}]
    spec, ctx = make_ctx("lm", model, tok, records=records, args={"window": 8, "stride": 4})
    out = spec.module.evaluate(spec, ctx)
    values = check_hook_output(out)
    assert out["per_example"] == {"perplexity": "perplexity", "word_perplexity": "perplexity",
                                  "bits_per_byte": "ratio"}
    ids = example_ids(records)
    assert ids[3] == ids[1] + "#2" and len(values["loglik"]) == 4  # a repeated text keeps its own id
    # the per-text split loses nothing: totals equal the one strided pass of evaluation.scoring
    from peftlab.evaluation.scoring import strided_perplexity

    whole = strided_perplexity(model, tok, [r["text"] for r in records], 8, 4, "cpu")
    assert out["eval_tokens"] == whole["eval_tokens"]
    for metric in ("perplexity", "word_perplexity", "bits_per_byte"):
        assert out["metrics"][metric] == pytest.approx(whole[metric], rel=1e-5)


def test_lm_without_offsets_credits_tokens_by_prefix(model, tok):
    """A tokenizer without offset mappings (a slow one): tokens are credited by tokenizing each text's prefix."""
    from peftlab.tasks.lm import strided_document_nll

    class Slow:
        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            if return_offsets_mapping:
                raise NotImplementedError("no offsets")
            return tok(text, add_special_tokens=add_special_tokens)

    texts = ["the quick brown fox", "a movie that is good", "bad"]
    fast = strided_document_nll(model, tok, texts, 8, 4, "cpu")
    slow = strided_document_nll(model, Slow(), texts, 8, 4, "cpu")
    assert sum(slow[1]) == sum(fast[1]) and sum(slow[0]) == pytest.approx(sum(fast[0]), rel=1e-9)
    assert all(n > 0 for n in slow[1])


def test_sentiment_in_domain_and_generate_scoring(monkeypatch, model, tok):
    from peftlab import data

    monkeypatch.setattr(data, "load_records",
                        lambda *a, limit=None, **k: ([{"text": "good", "label": 1}, {"text": "bad", "label": 0}], {}))
    spec, ctx = make_ctx("sentiment", model, tok)
    out = spec.module.evaluate(spec, ctx)
    values = check_hook_output(out)
    assert out["per_example_source"]["in_domain_accuracy"] == "loglik:in_domain"
    assert len(values["loglik:in_domain"]) == 2
    assert out["per_example"]["f1"] == "f1" and out["per_example"]["accuracy"] == "mean"

    stub_generate(monkeypatch, lambda i, d: ["Positive." if i == 0 else "I cannot tell."])
    spec, ctx = make_ctx("sentiment", model, tok, args={"scoring": "generate"},
                         decoding=[DecodingConfig(), DecodingConfig(name="top_k=5", strategy="sample", top_k=5)])
    out = spec.module.evaluate(spec, ctx)
    values = check_hook_output(out)
    assert set(values) == {"greedy", "greedy:in_domain", "top_k=5", "top_k=5:in_domain"}
    assert out["evaluations"][1]["per_example_source"]["accuracy"] == "top_k=5"
    # an unreadable answer is the wrong label for f1/precision/recall, as in the metric
    gold = {i: r["label"] for i, r in zip(example_ids(RECORDS["sentiment"]), RECORDS["sentiment"])}
    assert all(v["f1"][0] != gold[i] for i, v in values["greedy"].items() if v["format_error_rate"] == 100.0)


def test_math_several_samples_and_majority(monkeypatch, model, tok):
    def completions(i, decoding):
        if i == 0:
            return ["so Final Answer: 42", "Final Answer: 41", "Final Answer: 42.0"][:decoding.num_return_sequences]
        return ["the result is 4", "Final Answer: 5", "Final Answer: 5"][:decoding.num_return_sequences]

    stub_generate(monkeypatch, completions)
    sampled = DecodingConfig(name="temperature=0.7:n=3", strategy="sample", temperature=0.7, num_return_sequences=3)
    spec, ctx = make_ctx("math", model, tok, decoding=[DecodingConfig(), sampled])
    values = check_hook_output(spec.module.evaluate(spec, ctx))
    assert values["temperature=0.7:n=3"]["m1"] == {"exact_match": pytest.approx(200 / 3),
                                                   "exact_match_flexible": pytest.approx(200 / 3),
                                                   "format_error_rate": 0.0, "exact_match_majority": 100.0}


def test_code_pass_at_k_per_problem_with_the_fake_sandbox_inputs(monkeypatch, model, tok):
    monkeypatch.setenv(ALLOW_CODE_EXECUTION_ENV, "1")

    def completions(i, decoding):
        right = "    return a + b\n" if i == 0 else "    return -a\n"
        return [right] + ["    return None\n"] * (decoding.num_return_sequences - 1)

    stub_generate(monkeypatch, completions)
    spec, ctx = make_ctx("code", model, tok, args={"n_samples": 5, "k": [1, 5]})
    out = spec.module.evaluate(spec, ctx)
    values = check_hook_output(out)
    (name,) = values
    assert values[name]["T/0"]["pass@1"] == pytest.approx(20.0) and values[name]["T/1"]["pass@5"] == 100.0


# ---------------------------------------------------------------------------------- runs and the store

def experiment(model_dir, store, task="lm", methods=("base", "lora"), seeds=(0, 1), task_args=None):
    return parse_experiment({
        "name": "t", "model": {"name": str(model_dir), "dtype": "float32"}, "methods": list(methods),
        "output_dir": str(store), "seeds": list(seeds),
        "task": {task: {"limit_train": 8, "limit_eval": 4, "max_length": 32, "args": task_args or {}}},
        "train": {"max_steps": 2, "batch_size": 4, "warmup_steps": 0, "eval_batches": 1},
    })


def check_run(store: Store, result: dict) -> dict:
    assert result["status"] == "ok", result["error"]
    on_disk = json.loads((store.run_dir(result["run_id"]) / "result.json").read_text())
    assert on_disk["examples_file"] == "examples.jsonl"
    values = store.read_examples(result["run_id"])
    reproduce(on_disk["per_example"], on_disk["per_example_source"], on_disk["metrics"], values)
    assert set(on_disk["per_example"]) == set(on_disk["metrics"])
    for entry in [*on_disk["evaluations"], *(on_disk.get("retention") or {}).values()]:
        reproduce(entry["per_example"], entry["per_example_source"], entry["metrics"], values)
    return values


@pytest.mark.parametrize("task", ["lm", "sentiment"])
def test_runs_keep_examples_with_the_same_ids_across_methods_and_seeds(task, tiny_llama_dir, tmp_path, fake_records):
    store = Store(tmp_path / "runs")
    rcs = [rc for rc in expand(experiment(tiny_llama_dir, store.root, task=task))]
    rcs = [rc for rc in rcs if rc.method.method == "lora"] + [next(rc for rc in rcs if rc.method.method == "base")]
    assert len(rcs) == 3  # lora x 2 seeds, base once
    ids = []
    for rc in rcs:
        values = check_run(store, execute_run(rc, store))
        ids.append({name: sorted(rows) for name, rows in values.items()})
    assert ids[0] == ids[1] == ids[2]
    assert all(len(v) == 4 for name, v in ids[0].items() if ":" not in name and name != "forgetting")
    # forgetting: the same 32 general-text paragraphs for every run (an lm run measures its own text instead)
    assert ("forgetting" in ids[0]) == (task != "lm") and len(ids[0].get("forgetting", [0] * 32)) == 32


def test_reevaluation_adds_its_lines_and_keeps_the_others(tiny_llama_dir, tmp_path, fake_records):
    from peftlab.lifecycle import evaluate_run

    store = Store(tmp_path / "runs")
    [rc] = expand(experiment(tiny_llama_dir, store.root, task="sentiment", methods=("lora",), seeds=(0,),
                             task_args={"scoring": "generate", "max_new_tokens": 2, "in_domain_limit": 2}))
    run_id = rc.run_id()
    before = check_run(store, execute_run(rc, store))
    assert set(before) == {"greedy", "greedy:in_domain", "forgetting"}
    evaluate_run(run_id, "top_k=5:seed=1", store=store.root)
    after = check_run(store, store.read_result(run_id))
    assert set(after) == {"greedy", "greedy:in_domain", "top_k=5:seed=1", "top_k=5:seed=1:in_domain", "forgetting"}
    assert after["greedy"] == before["greedy"] and after["forgetting"] == before["forgetting"]
    # the same strategy again, as `peftlab evaluate`: the run's own greedy lines stay, the new ones get a name
    evaluate_run(run_id, "greedy", store=store.root, limit_eval=2, force=True)
    result = store.read_result(run_id)
    values = check_run(store, result)
    assert values["greedy"] == before["greedy"]
    (renamed,) = {s for s in values if s.startswith("greedy@")}
    assert renamed.replace("greedy", "greedy:in_domain", 1) in values
    assert len(values[renamed]) == 2 and result["evaluations"][-1]["per_example_source"]["accuracy"] == renamed
    evaluate_run(run_id, "greedy", store=store.root, limit_eval=2, force=True)  # identical: replaces the previous copy
    again = check_run(store, store.read_result(run_id))
    assert len([s for s in again if "@" in s]) == 2  # its set and its in-domain set, once
    assert not list(store.run_dir(run_id).glob(".examples.jsonl.*"))  # no temp files left


def test_read_examples_never_fails(tmp_path, caplog):
    store = Store(tmp_path / "runs")
    run_dir = store.run_dir("r1")
    run_dir.mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="peftlab.store"):
        assert store.read_examples("r1") == {}
    assert "examples.jsonl" not in caplog.text  # missing is normal (failed or older runs): no warning
    (run_dir / "examples.jsonl").write_text('{"evaluation": "greedy", "id": "a", "values": {"accuracy": 100.0}}\n{oops\n')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="peftlab.store"):
        assert store.read_examples("r1") == {}
        assert store.read_examples("r1") == {}
    assert caplog.text.count("examples.jsonl") == 1
    store.write_examples("r1", [{"evaluation": "greedy", "id": "a", "values": {"accuracy": 100.0}}])
    store.write_examples("r1", [{"evaluation": "top_k=5", "id": "a", "values": {"accuracy": 0.0}}],
                         replace={"top_k=5"})
    assert store.read_examples("r1") == {"greedy": {"a": {"accuracy": 100.0}}, "top_k=5": {"a": {"accuracy": 0.0}}}
