"""Offline task data: real public benchmarks that ship inside pinned registry packages.

Each task declares its offline data in its YAML (`data.offline`, parsed by
`peftlab.tasks.registry`): the pinned package, the archive members (by role), the name of the
converter that turns them into the source-agnostic task records of docs/contracts.md, and the
counts the converter must find. Converters are registered here by name with `@converter(name)`;
a task from outside the package registers its own in its hooks file. `prepare(task)` downloads
(pip or the index, SHA-256 checked), extracts the members once, converts, and writes
`<cache>/data/<task>/<split>.jsonl` plus a `manifest.json` (pins, members, counts, sha256 of
every file). Everything downstream reads only those files,
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

import csv
import fnmatch
import gzip
import hashlib
import json
import platform
import re
import sysconfig
import tokenize
from dataclasses import asdict
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Callable, Collection, Iterable, Mapping, Sequence

from peftlab.data import archives
from peftlab.data.archives import PackagePin
from peftlab.files import FileLock, atomic_open, atomic_write_text
from peftlab.numbers import canonical_number
from peftlab.paths import cache_dir
from peftlab.tasks.registry import OfflineSource, TaskData, all_tasks

FORMAT_VERSION = 1
"""Bump when a converter's output changes, so stale prepared caches are rebuilt."""

PINS: dict[str, PackagePin] = {
    "bigbench": PackagePin("bigbench", "1.0.0",
                           "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2", "sdist"),
}
"""Pins shared by several tasks (qa, math and instruct read the one 358 MB bigbench sdist), declared
once; a task YAML names one as `package: bigbench==1.0.0`. A package only one task reads is pinned
in that task's YAML (`package: {name, version, kind, sha256}`)."""


class _TaskSplits(Mapping):
    """{task: its data splits} for every task whose YAML declares `data:` (outside tasks included),
    read from the task registry on each access."""

    def _tasks(self) -> dict[str, tuple[str, ...]]:
        return {name: spec.data.splits for name, spec in all_tasks().items() if spec.data is not None}

    def __getitem__(self, task: str) -> tuple[str, ...]:
        return self._tasks()[task]

    def __iter__(self):
        return iter(self._tasks())

    def __len__(self) -> int:
        return len(self._tasks())

    def __repr__(self) -> str:
        return repr(self._tasks())


TASK_SPLITS: Mapping[str, tuple[str, ...]] = _TaskSplits()
"""Data splits per task, from the task YAMLs (`splits:` values)."""

CODE_MAX_BYTES = 200_000
_TEST_DIRS = frozenset({"test", "tests", "idle_test", "__pycache__", "site-packages", "dist-packages"})

Files = Mapping[str, Path]


# --------------------------------------------------------------------------- validation

def check_task_split(task: str, split: str | None = None) -> None:
    """Raise ValueError naming the valid choices for an unknown task or split."""
    if task not in TASK_SPLITS:
        if task in all_tasks():
            raise ValueError(f"task {task!r} declares no data (no `data:` in its YAML)")
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


def _read_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


# --------------------------------------------------------------------------- declarations

def task_data(task: str) -> TaskData:
    """The task's `data:` declaration (ValueError for an unknown task or one without data)."""
    check_task_split(task)
    data = all_tasks()[task].data
    assert data is not None
    return data


def offline_source(task: str) -> OfflineSource:
    source = task_data(task).offline
    if source is None:
        raise ValueError(f"task {task!r} declares no offline data (no `data.offline` in its YAML)")
    return source


def package_pin(task: str) -> PackagePin:
    """The pinned package a task's offline data comes from: its YAML's own pin, or a shared one
    from PINS (`name==version`, the version checked against the shared pin)."""
    package = offline_source(task).package
    if isinstance(package, dict):
        return PackagePin(package["name"], package["version"], package["sha256"], package["kind"])  # type: ignore[arg-type]
    name, _, version = package.partition("==")
    pin = PINS.get(name)
    if pin is None:
        raise ValueError(f"task {task!r}: package {package!r} is not a shared pin; shared: "
                         f"{', '.join(p.spec for p in PINS.values())} (or declare {{name, version, kind, sha256}})")
    if pin.version != version:
        raise ValueError(f"task {task!r}: package {package!r}, but the shared pin is {pin.spec}")
    return pin


def expected_counts(task: str) -> dict[str, int]:
    """Counts the task's converter must find (`data.offline.expected_counts`)."""
    return dict(offline_source(task).expected_counts)


def _count_check(task: str, counts: Mapping[str, int]) -> None:
    """Compare a converter's counts with the declared expected counts; a mismatch is a bug, so raise."""
    expected = expected_counts(task)
    wrong = {k: (counts.get(k), v) for k, v in expected.items() if counts.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}: got {got}, expected {want}" for k, (got, want) in wrong.items())
        raise RuntimeError(f"offline data for {task!r} has unexpected counts ({detail})")


Converted = dict
"""A converter's result: {"splits": {split: records}, "origins": {split: str}, "notes": {...}}."""


def _converted(splits: dict[str, list[dict]], origins: dict[str, str], notes: dict) -> Converted:
    return {"splits": splits, "origins": origins, "notes": notes}


class Members:
    """What a converter receives: the task, its pin and the extracted members, by declared role."""

    def __init__(self, task: str, pin: PackagePin, roles: Mapping[str, Sequence[str]], files: Files):
        self.task, self.pin, self.roles, self.files = task, pin, roles, files

    def declared(self, role: str) -> Sequence[str]:
        if role not in self.roles:
            raise ValueError(f"task {self.task!r}: its converter needs members {role!r}; "
                             f"data.offline.members declares {', '.join(self.roles) or 'none'}")
        return self.roles[role]

    def path(self, role: str) -> Path:
        """The one file declared for `role`."""
        names = self.declared(role)
        if len(names) != 1 or names[0] not in self.files:
            raise ValueError(f"task {self.task!r}: members {role!r} must name exactly one file, got {list(names)}")
        return self.files[names[0]]

    def paths(self, role: str) -> list[tuple[str, Path]]:
        """(member name, file) for every member of `role`: declared order, each pattern's matches sorted."""
        out: list[tuple[str, Path]] = []
        for spec in self.declared(role):
            out += [(m, self.files[m]) for m in sorted(self.files) if m == spec or fnmatch.fnmatchcase(m, spec)]
        return out

    def origin(self, role: str) -> str:
        """`name==version/member`; several members as `prefix{a,b}suffix`."""
        names = list(self.declared(role))
        if len(names) == 1:
            return f"{self.pin.spec}/{names[0]}"
        prefix = _common_prefix(names)
        suffix = _common_prefix([n[len(prefix):][::-1] for n in names])[::-1]
        middles = [n[len(prefix):len(n) - len(suffix)] for n in names]
        return f"{self.pin.spec}/{prefix}{{{','.join(middles)}}}{suffix}"

    def check_counts(self, counts: Mapping[str, int]) -> None:
        _count_check(self.task, counts)


def _common_prefix(names: Sequence[str]) -> str:
    first, last = min(names), max(names)
    i = 0
    while i < min(len(first), len(last)) and first[i] == last[i]:
        i += 1
    return first[:i]


Converter = Callable[[Members], Converted]
CONVERTERS: dict[str, Converter] = {}
"""Offline converters by name, as task YAMLs name them in `data.offline.converter`."""
PROVENANCE: dict[str, Callable[[], dict]] = {}
"""For converters that read more than the package (code: the interpreter's stdlib): what a
prepared cache must have been built from, beside the pin, to count as current."""


def converter(name: str, provenance: Callable[[], dict] | None = None) -> Callable[[Converter], Converter]:
    """Register an offline converter under `name` (`data.offline.converter: <name>` in a task YAML).

    A converter takes `Members` and returns `{"splits", "origins", "notes"}` with one record list
    per data split; it calls `members.check_counts(...)` with the counts its YAML declares.
    """
    def register(fn: Converter) -> Converter:
        if name in CONVERTERS and CONVERTERS[name] is not fn:
            raise ValueError(f"offline converter {name!r} is already registered ({CONVERTERS[name].__module__})")
        CONVERTERS[name] = fn
        if provenance is not None:
            PROVENANCE[name] = provenance
        return fn
    return register


def lookup_converter(registry: dict, name: str, task: str, kind: str):
    """`registry[name]`, importing the task's hooks module first when the name is not registered
    yet (an outside task brings its converter in its hooks file)."""
    if name not in registry:
        all_tasks()[task].module  # noqa: B018 - importing the hooks registers their converters
    if name not in registry:
        raise ValueError(f"task {task!r}: unknown {kind} converter {name!r}; registered: {', '.join(sorted(registry))}")
    return registry[name]


# --------------------------------------------------------------------------- lm

@converter("wikipedia_paragraphs")
def convert_lm(members: Members) -> Converted:
    """Field "0" of each line of wikipedia_5.jsonl is one paragraph (fields 1-10 are shuffles)."""
    texts = []
    with open(members.path("paragraphs"), encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                text = json.loads(line)["0"].strip()
                if text:
                    texts.append(text)
    n = len(texts)
    members.check_counts({"total": n})
    a, b = n * 8 // 10, n * 9 // 10
    splits = {"train": texts[:a], "validation": texts[a:b], "test": texts[b:]}
    origin = members.origin("paragraphs") + '#field="0"'
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


@converter("pang_lee_polarity")
def convert_sentiment(members: Members) -> Converted:
    """Sentences (v1.0) → train/validation (90/10 per label); full reviews (v2.0) → test."""
    sentences = _polarity_rows(members.path("sentences"))
    reviews = _polarity_rows(members.path("reviews"))
    counts = {f"{name}_{pol}": sum(r["label"] == lab for r in recs)
              for name, recs in (("sentences", sentences), ("reviews", reviews))
              for pol, lab in (("pos", 1), ("neg", 0))}
    members.check_counts(counts)
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
    origins = {"train": members.origin("sentences"),
               "validation": members.origin("sentences"),
               "test": members.origin("reviews")}
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


@converter("squad_json")
def convert_qa(members: Members) -> Converted:
    """Test = official SQuAD v1.1 dev (as bigbench ships it); train = all four SQuADShifts sets."""
    test = squad_records(_read_json(members.path("test")))
    train: list[dict] = []
    per_file = {}
    for member, path in members.paths("train"):
        recs = squad_records(_read_json(path))
        per_file[member.rsplit("/", 1)[-1]] = len(recs)
        train.extend(recs)
    members.check_counts({"test": len(test)})
    overlap = {r["id"] for r in train} & {r["id"] for r in test}
    if overlap:
        raise RuntimeError(f"qa train and test share {len(overlap)} question ids")
    return _converted({"train": train, "test": test},
                      {"train": members.origin("train"), "test": members.origin("test")},
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


def normalize_math_answer(option: str, question: str = "") -> str | None:
    """Canonical number for a MathQA option, or None when the option is not a plain number.

    Strips units and currency ('240 %' → '240', 'rs 1500' → '1500', '12.50 kg' → '12.5'),
    writes every value in the one canonical form the math metric also uses
    (`peftlab.numbers.canonical_number`: '4 / 10' → '0.4', '1 / 3' → '1/3', '1 [ 1 / 5 ]' → '1.2'),
    and rejects ratios ('1 : 2'), times ('12 noon'), algebra
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
        value = _option_value(m)
    except (ZeroDivisionError, InvalidOperation):
        return None
    return canonical_number(-value if m["sign"] and m["sign"].strip() == "-" else value)


def _option_value(m: re.Match) -> Fraction:
    """Exact value of a matched option."""
    if m["whole"] is not None:
        return int(m["whole"]) + Fraction(int(m["mnum"]), int(m["mden"]))
    num = Fraction(Decimal(m["num"]))
    return num / Fraction(Decimal(m["den"])) if m["den"] is not None else num


@converter("mathqa_numeric")
def convert_math(members: Members) -> Converted:
    """MathQA (bigbench elementary_math_qa/question_only): keep items with a plain-number answer."""
    examples = _read_json(members.path("items"))["examples"]
    members.check_counts({"total_items": len(examples)})
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
    origin = members.origin("items")
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


def _stdlib_provenance() -> dict:
    return {"python": platform.python_version(), "stdlib": str(stdlib_dir()), "max_bytes": CODE_MAX_BYTES}


@converter("humaneval_and_stdlib", provenance=_stdlib_provenance)
def convert_code(members: Members) -> Converted:
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
    test = _humaneval_records(members.path("problems"))
    members.check_counts({"test": len(test)})
    origins = {"train": f"python=={platform.python_version()}/stdlib/**/*.py",
               "test": members.origin("problems")}
    return _converted({"train": train, "test": test}, origins,
                      {"stdlib": str(root), "train_files": len(train)})


# --------------------------------------------------------------------------- instruct

def _first_output(target) -> str:
    """Natural Instructions lists every acceptable output; the first non-empty one is the target."""
    options = [target] if isinstance(target, str) else list(target)
    return next((t for t in options if isinstance(t, str) and t.strip()), "")


@converter("natural_instructions")
def convert_instruct(members: Members) -> Converted:
    """Natural Instructions v1 subtasks → records; 5 % of each subtask's examples held out."""
    splits: dict[str, list[dict]] = {"train": [], "test": []}
    per_subtask = {}
    for member, path in members.paths("subtasks"):
        name = member.rsplit("/", 2)[-2]
        doc = _read_json(path)
        instruction = doc["task_prefix"].strip()
        recs = [{"id": f"{name}-{i:05d}", "instruction": instruction, "input": ex["input"].strip(),
                 "output": _first_output(ex["target"]).strip()}
                for i, ex in enumerate(doc["examples"])]
        held = holdout_indices([r["input"] for r in recs], 0.05, f"instruct-test-{name}")
        for i, rec in enumerate(recs):
            splits["test" if i in held else "train"].append(rec)
        per_subtask[name] = len(recs)
    total = sum(per_subtask.values())
    members.check_counts({"total": total, "subtasks": len(per_subtask)})
    origin = members.origin("subtasks")
    return _converted(splits, dict.fromkeys(splits, origin),
                      {"subtasks": len(per_subtask), "total": total, "per_subtask": per_subtask})


# --------------------------------------------------------------------------- cache layout

def data_dir(task: str) -> Path:
    """`<cache>/data/<task>/`."""
    return cache_dir() / "data" / task


def _manifest_path(task: str) -> Path:
    return data_dir(task) / "manifest.json"


def _extracted_dir(archive: Path) -> Path:
    return cache_dir() / "extracted" / archive.name


def _locked(path: Path) -> FileLock:
    """Exclusive advisory lock on `path` (created if needed) for the duration of a `with` block."""
    return FileLock(path)


def write_jsonl(path: Path, records: Iterable[dict]) -> dict:
    """Atomically write records as JSON lines; return {count, sha256, bytes} of what landed."""
    digest, count, size = hashlib.sha256(), 0, 0
    with atomic_open(path, "wb") as fh:
        for rec in records:
            line = (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")
            fh.write(line)
            digest.update(line)
            count, size = count + 1, size + len(line)
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


def _specs_for_pin(pin: PackagePin) -> list[str]:
    """Every member any task needs from this package: extracted together in one pass."""
    specs: list[str] = []
    for task, spec in all_tasks().items():
        source = spec.data.offline if spec.data is not None else None
        if source is None:
            continue
        try:
            same = package_pin(task) == pin
        except ValueError:  # another task's bad declaration is its own problem
            continue
        if same:
            specs += [m for names in source.members.values() for m in names]
    return specs


def _declared_members(task: str) -> list[str]:
    return list(dict.fromkeys(m for names in offline_source(task).members.values() for m in names))


def ensure_members(pin: PackagePin, specs: Sequence[str], force: bool = False) -> dict[str, Path]:
    """Download the pinned archive and return {member: extracted path} for `specs`.

    When anything is missing, ONE pass over the archive extracts what every task needs from it
    (qa, math and instruct share the 358 MB bigbench sdist), so the next task finds it ready.
    """
    archive = archives.download_package(pin)
    dest = _extracted_dir(archive)
    with _locked(cache_dir() / "extracted" / f".{archive.name}.lock"):
        index = _load_index(dest, pin)
        if force:
            index = {s: n for s, n in index.items() if s not in specs}
        if any(s not in index for s in specs):
            wanted = [s for s in dict.fromkeys([*specs, *_specs_for_pin(pin)]) if s not in index]
            paths = archives.extract_members(archive, wanted, dest)
            names = [p.relative_to(dest).as_posix() for p in paths]
            for spec in wanted:
                index[spec] = sorted(n for n in names if n == spec or fnmatch.fnmatchcase(n, spec))
            _save_index(dest, pin, index)
    return {name: dest / name for spec in specs for name in index[spec]}


# --------------------------------------------------------------------------- prepare / load

def _expected_sources(task: str) -> list[dict]:
    """What a manifest must record for its files to count as current."""
    sources = [asdict(package_pin(task))]
    provenance = PROVENANCE.get(offline_source(task).converter)
    if provenance is not None:
        sources.append(provenance())
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
        source, pin = offline_source(task), package_pin(task)
        convert = lookup_converter(CONVERTERS, source.converter, task, "offline")
        files = ensure_members(pin, _declared_members(task), force=force)
        members = [f"{pin.spec}/{name}" for name in files]
        converted = convert(Members(task, pin, source.members, files))
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
