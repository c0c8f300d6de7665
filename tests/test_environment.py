"""The locked environment: the lock file is well formed and every result says which lock it ran on."""

from __future__ import annotations

import re
from importlib import metadata

from peftlab.measure import LOCK_FILE, lock_state, provenance


def test_lock_pins_every_package_with_a_hash_including_the_installers():
    text = LOCK_FILE.read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", text, re.M))
    for name in ("torch", "transformers", "peft", "accelerate", "datasets", "pip", "setuptools", "pytest"):
        assert name in pins, f"{name} is not locked"
    assert pins["torch"].startswith("2.13.0")
    blocks = re.split(r"^(?=[A-Za-z0-9])", text, flags=re.M)
    unhashed = [b.split("==")[0] for b in blocks if "==" in b and "--hash=sha256:" not in b]
    assert not unhashed, f"pins without a hash: {unhashed}"


def test_lock_state_names_every_drifted_package(tmp_path):
    torch_version = metadata.version("torch")
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"torch=={torch_version} \\\n    --hash=sha256:{'0' * 64}\n"
                    "transformers==0.0.1 \\\n    --hash=sha256:" + "1" * 64 + "\n"
                    "not-a-real-package-xyz==1.0 \\\n    --hash=sha256:" + "2" * 64 + "\n")
    state = lock_state(lock)
    assert re.fullmatch(r"[0-9a-f]{64}", state["lock_sha256"])
    drifted = {m["name"]: m for m in state["lock_mismatches"]}
    assert set(drifted) == {"transformers", "not-a-real-package-xyz"}
    assert drifted["transformers"]["installed"] == metadata.version("transformers")
    assert drifted["not-a-real-package-xyz"]["installed"] is None


def test_lock_state_outside_a_checkout(tmp_path):
    assert lock_state(tmp_path / "missing.lock") == {"lock_sha256": None, "lock_mismatches": None}


def test_provenance_carries_the_lock_hash():
    prov = provenance()
    assert prov["lock_sha256"] and "lock_mismatches" in prov
