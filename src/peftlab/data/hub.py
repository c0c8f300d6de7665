"""Task data from the Hugging Face hub: the seeds' original datasets, for users who have it.

Each task YAML declares, per split, the hub dataset (`data.hub.<split>`: dataset, config, split,
streaming/limit) and the name of the converter that maps its rows onto the task records of
docs/contracts.md, exactly the fields the offline converters produce, so nothing downstream can
tell the sources apart. Converters are registered here with `@converter(name)`; a task from outside
the package registers its own in its hooks file. `datasets` is imported lazily: importing peftlab
must not pay for it, and offline users never need it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import socket
from typing import Any, Callable, Iterable
from urllib.parse import urlparse

from peftlab.data.offline import check_task_split, holdout_indices, lookup_converter, task_data
from peftlab.tasks.registry import HubSplit

HubConverter = Callable[[Any, HubSplit], list]
CONVERTERS: dict[str, HubConverter] = {}
"""Hub converters by name, as task YAMLs name them in `data.hub.<split>.converter`: each takes the
loaded dataset (or, streamed, an iterable of rows) and the split's declaration; returns records."""


def converter(name: str) -> Callable[[HubConverter], HubConverter]:
    """Register a hub converter under `name` (`data.hub.<split>.converter: <name>` in a task YAML)."""
    def register(fn: HubConverter) -> HubConverter:
        if name in CONVERTERS and CONVERTERS[name] is not fn:
            raise ValueError(f"hub converter {name!r} is already registered ({CONVERTERS[name].__module__})")
        CONVERTERS[name] = fn
        return fn
    return register


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


@converter("wikitext_paragraphs")
def _wikitext(ds, src: HubSplit) -> list[dict]:
    return wikitext_paragraphs(ds["text"])


@converter("imdb")
def _imdb(ds, src: HubSplit) -> list[dict]:
    """IMDB full reviews (the sentiment transfer test), "<br />" removed."""
    return [{"text": t.replace("<br />", " ").strip(), "label": int(y)}
            for t, y in zip(ds["text"], ds["label"], strict=True)]


@converter("sst2")
def _sst2(ds, src: HubSplit) -> list[dict]:
    """SST-2 sentences (train/validation; its test labels are hidden)."""
    return [{"text": t.strip(), "label": int(y)} for t, y in zip(ds["sentence"], ds["label"], strict=True)]


@converter("squad")
def _squad(ds, src: HubSplit) -> list[dict]:
    """SQuAD v1.1 rows (the qa test is the official validation set: the test set is hidden)."""
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


@converter("gsm8k")
def _gsm8k(ds, src: HubSplit) -> list[dict]:
    return [gsm8k_record(i, src.task_split, q, a)
            for i, (q, a) in enumerate(zip(ds["question"], ds["answer"], strict=True))]


@converter("humaneval")
def _humaneval(ds, src: HubSplit) -> list[dict]:
    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    return [{k: ex[k] for k in fields} for ex in ds]


@converter("codeparrot")
def _codeparrot(rows, src: HubSplit) -> list[dict]:
    """codeparrot-clean files as text (streamed: the full set is ~50 GB, far more than a PEFT
    comparison trains on; the YAML's `limit` caps the files read)."""
    return [{"text": ex["content"]} for ex in rows if ex["content"].strip()]


def alpaca_split(rows: list[dict], split: str) -> list[dict]:
    """Alpaca has only a train split: hold out 5 % (hash-ranked on instruction+input) as test."""
    keys = [f"{r['instruction']}\n{r['input']}" for r in rows]
    held = holdout_indices(keys, 0.05, "alpaca-test")
    return [{"id": f"alpaca-{i:05d}", "instruction": r["instruction"].strip(),
             "input": r["input"].strip(), "output": r["output"].strip()}
            for i, r in enumerate(rows) if (i in held) == (split == "test")]


@converter("alpaca_holdout")
def _alpaca(ds, src: HubSplit) -> list[dict]:
    """Alpaca's one train split, 5 % held out as test (`alpaca_split`) for the task split."""
    rows = [{"instruction": ex["instruction"], "input": ex["input"], "output": ex["output"]} for ex in ds]
    return alpaca_split(rows, src.task_split)


def hub_split(task: str, split: str) -> HubSplit:
    """The task YAML's `data.hub.<split>` declaration."""
    check_task_split(task, split)
    hub = task_data(task).hub
    if split not in hub:
        raise ValueError(f"task {task!r} declares no hub source (no `data.hub` in its YAML)")
    return hub[split]


def load_hub(task: str, split: str, *, limit: int | None = None) -> tuple[list[dict], str]:
    """(records, origin) for one task split from the hub; origin is `id[:config]:hub-split` plus
    `[:limit]` for a capped stream and `[select]` as declared. `limit` overrides a streamed split's
    declared cap."""
    src = hub_split(task, split)
    convert = lookup_converter(CONVERTERS, src.converter, task, "hub")
    if limit is not None:
        if not src.streaming:
            raise ValueError(f"{task}/{split}: limit applies to streamed hub splits only")
        src = dataclasses.replace(src, limit=limit)
    rows = _load(src.dataset, src.config, src.split, streaming=src.streaming)
    if src.limit is not None:
        rows = itertools.islice(rows, src.limit)
    return convert(rows, src), src.origin
