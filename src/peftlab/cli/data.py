"""`peftlab data prepare` and `peftlab data show`: offline data and models, and a look at a task's data."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback

from peftlab.data import TASK_SPLITS, load_records, offline

_FIELD_WIDTH = 160


def _resolve_tasks(tasks: list[str]) -> list[str]:
    """Empty list or "all" means every task; unknown names raise ValueError with the choices."""
    if not tasks or "all" in tasks:
        return list(TASK_SPLITS)
    for task in tasks:
        offline.check_task_split(task)
    return list(dict.fromkeys(tasks))


def prepare_cmd(tasks: list[str], force: bool, verbose: bool = False) -> int:
    """Prepare offline data for `tasks`; print per-split counts, file locations and timings.

    Keeps going after a failing task so one bad download does not hide the others' status (one line
    each; `verbose`: with the traceback); returns 1 if any task failed, else 0.
    """
    try:
        names = _resolve_tasks(tasks)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start, failed = time.perf_counter(), []
    for task in names:
        t0 = time.perf_counter()
        try:
            paths = offline.prepare(task, force=force)
            manifest = offline.read_manifest(task) or {}
        except Exception as exc:  # report and continue with the next task
            failed.append(task)
            print(f"{task}: FAILED: {type(exc).__name__}: {exc}" + ("" if verbose else " (-v for the traceback)"),
                  file=sys.stderr)
            if verbose:
                traceback.print_exc(limit=3, file=sys.stderr)
            continue
        print(f"{task} ({time.perf_counter() - t0:.1f} s) -> {offline.data_dir(task)}")
        for split, path in paths.items():
            entry = manifest.get("splits", {}).get(split, {})
            print(f"  {split:<10} {entry.get('count', '?'):>8} records  {path.name}"
                  f"  ({entry.get('bytes', 0) / 1e6:.1f} MB)  {entry.get('origin', '')}")
    print(f"total {time.perf_counter() - start:.1f} s; {len(names) - len(failed)}/{len(names)} tasks ready")
    return 1 if failed else 0


def _short(value, width: int = _FIELD_WIDTH) -> str:
    """One line per field: long strings cut in the middle so both ends stay visible."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    if len(text) <= width:
        return text
    half = (width - 5) // 2
    return f"{text[:half]} ... {text[-half:]}  [{len(text)} chars]"


def show_cmd(task: str, source: str, n: int = 3) -> int:
    """Print each split's DataInfo and its first `n` records (long fields truncated)."""
    try:
        offline.check_task_split(task)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for split in TASK_SPLITS[task]:
        try:
            records, info = load_records(task, split, source=source)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"== {task}/{split}: {info['count']} records from {info['source']} "
              f"({info['origin']}), fingerprint {info['fingerprint'][:12]}")
        for i, rec in enumerate(records[:max(n, 0)]):
            print(f"  [{i}]")
            for key, value in rec.items():
                print(f"    {key}: {_short(value)}")
    return 0


# ------------------------------------------------------------------------------------------ commands
def cmd_data_prepare(args: argparse.Namespace) -> int:
    from peftlab.models import ALIASES, DEFAULT_MODEL, prepare_alias

    names = args.names or [DEFAULT_MODEL, *sorted(_task_names())]
    known = [*_task_names(), *ALIASES, "all"]
    for name in names:
        if name not in known:
            import difflib

            from peftlab.config import ConfigError

            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"data prepare: unknown name {name!r}{hint}; tasks: {', '.join(_task_names())}; "
                              f"model aliases: {', '.join(ALIASES)}")
    models = [n for n in names if n in ALIASES]
    tasks = [n for n in names if n not in ALIASES]
    for alias in models:
        t0 = time.perf_counter()
        path = prepare_alias(alias, force=args.force)
        print(f"model {alias}: {path} ({time.perf_counter() - t0:.1f}s)")
    return prepare_cmd(tasks, args.force, getattr(args, "verbose", False)) if tasks else 0


def _task_names() -> list[str]:
    from peftlab.tasks.registry import all_tasks

    return list(all_tasks())


def cmd_data_show(args: argparse.Namespace) -> int:
    return show_cmd(args.task, args.source, args.n)
