"""Task data for peftlab: one call, `load_records`, whatever the source.

Records follow docs/contracts.md ("Task records"); `DataInfo` says where they came from and
fingerprints them, so a result can prove which data it was trained and evaluated on.
The hub gives the seeds' original datasets; the offline source gives real substitutes shipped
in pinned registry packages (see `peftlab.data.offline`), for machines without the hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import warnings
from typing import Iterable

from peftlab.data.offline import (
    TASK_SPLITS,
    check_task_split,
    load_offline,
    offline_info,
    prepare,
)

__all__ = ["TASK_SPLITS", "SOURCES", "load_records", "fingerprint", "subsample_indices", "prepare"]

SOURCES = ("auto", "hub", "offline")
_OFFLINE_VALUES = {"1", "true", "yes", "on"}
log = logging.getLogger(__name__)


def fingerprint(records: Iterable[dict]) -> str:
    """sha256 of the canonical JSON of the record list (sorted keys, compact, UTF-8).

    Streamed record by record, it equals hashing `json.dumps(records, sort_keys=True,
    ensure_ascii=False, separators=(",", ":"))` without building a ~400 MB string.
    """
    digest = hashlib.sha256(b"[")
    for i, rec in enumerate(records):
        if i:
            digest.update(b",")
        digest.update(json.dumps(rec, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode())
    digest.update(b"]")
    return digest.hexdigest()


def subsample_indices(n: int, limit: int | None, seed: int) -> list[int] | None:
    """Sorted indices of a seeded random subsample of size `limit`, or None for "all".

    Sorting keeps the source order, so a subsample of a file is still read front to back and
    the same (limit, seed) always picks the same records.
    """
    if limit is None or limit >= n:
        return None
    return sorted(random.Random(seed).sample(range(n), limit))


def _hub_disabled() -> bool:
    """HF's own switches: either one set means the user asked for no hub traffic."""
    return any(os.environ.get(k, "").strip().lower() in _OFFLINE_VALUES
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _try_hub(task: str, split: str, required: bool) -> tuple[list[dict], str] | None:
    """Hub records, or None in auto mode when the hub is off, unreachable or fails."""
    from peftlab.data import hub

    if not required:
        if _hub_disabled():
            return None
        if not hub.hub_reachable():
            log.info("hub unreachable; using offline data for %s/%s", task, split)
            return None
    try:
        return hub.load_hub(task, split)
    except Exception as exc:  # network/auth/dataset errors have no common base class
        if required:
            raise
        warnings.warn(f"hub load of {task}/{split} failed ({type(exc).__name__}: {exc}); "
                      "falling back to offline data", RuntimeWarning, stacklevel=3)
        return None


def load_records(task: str, split: str, source: str = "auto", limit: int | None = None,
                 seed: int = 0) -> tuple[list[dict], dict]:
    """Records of one task split and their DataInfo (task, split, source, origin, count, fingerprint).

    source: "hub" (fail if the hub fails), "offline" (never contacts the hub; the first use
    downloads the pinned package from the registry), or "auto" (hub unless HF_HUB_OFFLINE /
    HF_DATASETS_OFFLINE is "1" or the hub fails; then offline). `limit` takes a seeded random
    subsample (`random.Random(seed).sample` over indices, original order kept); None = all.
    """
    check_task_split(task, split)
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; valid sources: {', '.join(SOURCES)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")
    got = None if source == "offline" else _try_hub(task, split, required=source == "hub")
    if got is not None:
        records, origin = got
        keep = subsample_indices(len(records), limit, seed)
        if keep is not None:
            records = [records[i] for i in keep]
        used = "hub"
    else:
        entry = offline_info(task, split)
        records = load_offline(task, split, subsample_indices(entry["count"], limit, seed))
        origin, used = entry["origin"], "offline"
    info = {"task": task, "split": split, "source": used, "origin": origin,
            "count": len(records), "fingerprint": fingerprint(records)}
    return records, info
