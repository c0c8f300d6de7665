"""Task data from the Hugging Face hub: the seeds' original datasets, for users who have it.

Each loader maps one hub dataset onto the task records of docs/contracts.md, exactly the fields
the offline converters produce, so nothing downstream can tell the sources apart. `datasets` is
imported lazily: importing peftlab must not pay for it, and offline users never need it.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
from typing import Callable, Iterable
from urllib.parse import urlparse

from peftlab.data.offline import check_task_split, holdout_indices

CODE_TRAIN_CAP = 10_000
"""Files streamed from codeparrot-clean (~5 M files in all); about 100 MB of Python."""

HUB_IDS: dict[str, dict[str, str]] = {
    "lm": {s: "Salesforce/wikitext:wikitext-2-raw-v1" for s in ("train", "validation", "test")},
    "sentiment": {"train": "stanfordnlp/sst2", "validation": "stanfordnlp/sst2", "test": "stanfordnlp/imdb"},
    "qa": {"train": "rajpurkar/squad", "test": "rajpurkar/squad"},
    "math": {"train": "openai/gsm8k:main", "test": "openai/gsm8k:main"},
    "code": {"train": "codeparrot/codeparrot-clean", "test": "openai/openai_humaneval"},
    "instruct": {"train": "tatsu-lab/alpaca", "test": "tatsu-lab/alpaca"},
}
"""Hub dataset (`id` or `id:config`) behind each task split."""

_HEADING = re.compile(r"^=+ .* =+$")
_GSM8K_MARK = "####"


def _load(dataset_id: str, config: str | None, split: str, streaming: bool = False):
    """The one place that calls `datasets.load_dataset` (lazy import: heavy, hub-only)."""
    import datasets

    return datasets.load_dataset(dataset_id, config, split=split, streaming=streaming)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Cheap TCP probe of the hub endpoint, so `source="auto"` fails over in seconds, not ~25 s
    of `datasets` retries per split. Behind a proxy we cannot probe directly: assume reachable."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- per task

def wikitext_paragraphs(lines: Iterable[str]) -> list[dict]:
    """wikitext-raw stores one paragraph per line between ` = Heading = ` lines and blank lines.

    Records are the paragraphs (headings and blanks dropped), the same unit as the offline
    Wikipedia paragraphs, so perplexities from either source measure the same kind of text.
    """
    records = []
    for line in lines:
        text = line.strip()
        if text and not _HEADING.match(text):
            records.append({"text": text})
    return records


def _lm(split: str) -> list[dict]:
    return wikitext_paragraphs(_load("Salesforce/wikitext", "wikitext-2-raw-v1", split)["text"])


def _sentiment(split: str) -> list[dict]:
    """SST-2 sentences for train/validation (its test labels are hidden); IMDB reviews for test."""
    if split == "test":
        ds = _load("stanfordnlp/imdb", None, "test")
        return [{"text": t.replace("<br />", " ").strip(), "label": int(y)}
                for t, y in zip(ds["text"], ds["label"], strict=True)]
    ds = _load("stanfordnlp/sst2", None, split)
    return [{"text": t.strip(), "label": int(y)} for t, y in zip(ds["sentence"], ds["label"], strict=True)]


def _qa(split: str) -> list[dict]:
    """SQuAD v1.1: our test is the official validation set (the test set is hidden)."""
    ds = _load("rajpurkar/squad", None, "train" if split == "train" else "validation")
    return [{"id": str(ex["id"]), "title": ex["title"], "context": ex["context"],
             "question": ex["question"].strip(), "answers": list(ex["answers"]["text"])}
            for ex in ds]


def gsm8k_record(index: int, split: str, question: str, answer: str) -> dict:
    """GSM8K answers end in `#### 1,234`: the number (commas removed) is the answer, the rest
    is the worked solution."""
    solution, sep, final = answer.rpartition(_GSM8K_MARK)
    if not sep:
        raise ValueError(f"gsm8k {split}[{index}] has no '{_GSM8K_MARK}' final answer")
    return {"id": f"gsm8k-{split}-{index:05d}", "question": question.strip(),
            "answer": final.strip().replace(",", ""), "solution": solution.strip() or None}


def _math(split: str) -> list[dict]:
    ds = _load("openai/gsm8k", "main", split)
    return [gsm8k_record(i, split, q, a) for i, (q, a) in enumerate(zip(ds["question"], ds["answer"], strict=True))]


def _code(split: str, cap: int = CODE_TRAIN_CAP) -> list[dict]:
    """HumanEval for test; for train the first `cap` files of codeparrot-clean, streamed
    (the full set is ~50 GB, far more than a PEFT comparison trains on)."""
    if split == "test":
        ds = _load("openai/openai_humaneval", None, "test")
        fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
        return [{k: ex[k] for k in fields} for ex in ds]
    stream = _load("codeparrot/codeparrot-clean", None, "train", streaming=True)
    return [{"text": ex["content"]} for ex in itertools.islice(stream, cap) if ex["content"].strip()]


def alpaca_split(rows: list[dict], split: str) -> list[dict]:
    """Alpaca has only a train split: hold out 5 % (hash-ranked on instruction+input) as test."""
    keys = [f"{r['instruction']}\n{r['input']}" for r in rows]
    held = holdout_indices(keys, 0.05, "alpaca-test")
    return [{"id": f"alpaca-{i:05d}", "instruction": r["instruction"].strip(),
             "input": r["input"].strip(), "output": r["output"].strip()}
            for i, r in enumerate(rows) if (i in held) == (split == "test")]


def _instruct(split: str) -> list[dict]:
    ds = _load("tatsu-lab/alpaca", None, "train")
    rows = [{"instruction": ex["instruction"], "input": ex["input"], "output": ex["output"]} for ex in ds]
    return alpaca_split(rows, split)


_LOADERS: dict[str, Callable[[str], list[dict]]] = {
    "lm": _lm, "sentiment": _sentiment, "qa": _qa, "math": _math, "code": _code, "instruct": _instruct,
}


def _origin(task: str, split: str) -> str:
    """`id[:config]:hub-split` naming exactly which hub data a task split came from."""
    hub_id = HUB_IDS[task][split]
    if task == "qa":
        return f"{hub_id}:{'train' if split == 'train' else 'validation'}"
    if task == "instruct":
        return f"{hub_id}:train[5% holdout: {split}]"
    return f"{hub_id}:{split}"


def load_hub(task: str, split: str, *, code_train_cap: int = CODE_TRAIN_CAP) -> tuple[list[dict], str]:
    """(records, origin) for one task split from the hub."""
    check_task_split(task, split)
    if task == "code" and split == "train":
        return _code(split, cap=code_train_cap), f"{HUB_IDS[task][split]}:train[:{code_train_cap}]"
    return _LOADERS[task](split), _origin(task, split)
