"""`peftlab ls` and `peftlab report`: what is registered, what is in a run store, and its report.

Every `ls` verb takes `--json`: one JSON document on stdout and nothing else.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from peftlab.cli.checks import check_dir
from peftlab.cli.display import distinguishing_settings, print_json, run_group, runs_table
from peftlab.config import ConfigError
from peftlab.status import RunStatus

DEFAULT_REPORT_DIR = "reports/latest"


def cmd_compare(args: argparse.Namespace) -> int:
    """Two methods of a store, paired on the same seeds and examples (`peftlab.report.compare`)."""
    from peftlab.report.aggregate import aggregate
    from peftlab.report.budget import is_trial
    from peftlab.report.compare import CompareError, compare_labels
    from peftlab.store import Store

    store = Store(args.store, readonly=True)
    filters = {"experiment": args.experiment} if args.experiment else {}
    results = [r for r in store.results(**filters) if not is_trial(r)]  # trials are scored on validation
    try:
        pairing = compare_labels(aggregate(results, store.read_examples), args.a, args.b, task=args.task,
                                 metric=args.metric, on=args.on)
    except CompareError as exc:
        raise ConfigError(f"{args.store}: {exc}") from None
    if args.json:
        c = pairing.comparison
        print_json({"task": pairing.task, "on": pairing.on, "metric": pairing.metric, "a": pairing.a.label,
                    "b": pairing.b.label, "difference": c.difference, "low": c.lo, "high": c.hi, "p": c.p_value,
                    "verdict": c.verdict, "n_seeds": c.n_seeds, "n_examples": c.n_examples, "mde": c.mde,
                    "a_value": c.a_value, "b_value": c.b_value, "degenerate": list(c.degenerate)})
    else:
        print(pairing.text())
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    listings = {"methods": _ls_methods, "models": _ls_models, "tasks": _ls_tasks, "runs": _ls_runs}
    return listings[args.what](args)


# ------------------------------------------------------------------------------------------ registries
def _ls_methods(args: argparse.Namespace) -> int:
    from peftlab.methods import REGISTRY, list_methods
    from peftlab.methods.generic import peft_type_names

    methods = list_methods()
    others = sorted(n.lower() for n in peft_type_names() if n.lower() not in REGISTRY)
    if getattr(args, "json", False):
        print_json({"methods": [{"name": m.name, "family": m.family, "description": m.description,
                                 "defaults": m.defaults, "trains": m.trains, "merge": m.merge} for m in methods],
                    "peft_types": others})
        return 0
    for m in methods:
        defaults = ", ".join(f"{k}={v}" for k, v in m.defaults.items()) or "-"
        print(f"{m.name:<12} {m.family:<7} {m.description}\n{'':<21}defaults: {defaults}")
    print(f"any other PEFT method by its type name, arguments going to its peft config: {', '.join(others)}")
    return 0


def _ls_models(args: argparse.Namespace) -> int:
    from peftlab.models import list_models

    rows = list_models()
    if getattr(args, "json", False):
        print_json({"models": rows})
        return 0
    for row in rows:
        state = "cached" if row["cached"] else "not cached (peftlab data prepare " + row["alias"] + ")"
        print(f"{row['alias']:<24} {state:<12} hub: {row['hub_id']}\n{'':<25}{row['description']}; {row['source']}")
    return 0


def splits_text(splits: dict) -> str:
    """`train, validation, test`; a role read from a split of another name shows it: `test (validation)`."""
    return ", ".join(role if str(name) == str(role) else f"{role} ({name})" for role, name in splits.items())


def _ls_tasks(args: argparse.Namespace) -> int:
    from peftlab.tasks.registry import all_tasks, task_summary

    summaries = [task_summary(spec) for spec in all_tasks().values()]
    if getattr(args, "json", False):
        print_json({"tasks": summaries})
        return 0
    for s in summaries:
        metrics = ", ".join(f"{k} ({'↑' if v == 'higher' else '↓'})" for k, v in s["metrics"].items())
        print(f"{s['name']:<10} {s['description']}\n{'':<11}splits: {splits_text(s['splits'])}\n"
              f"{'':<11}metrics: {metrics}; primary: {s['primary']}\n{'':<11}hub: {s['hub']}\n"
              f"{'':<11}offline: {s['offline']}")
    return 0


# ------------------------------------------------------------------------------------------ runs
def _names(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _unknown(flag: str, what: str, name: str, valid: list[str], extra: str = "") -> ConfigError:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{flag}: {name!r} is not a {what}{hint}; valid: {', '.join(valid)}{extra}")


def run_filters(args: argparse.Namespace, results: list[dict]) -> dict[str, set[str]]:
    """`--task/--method/--status` as sets of names, each checked against the real choices: statuses,
    registered tasks and methods (and any PEFT type), and what the store holds (outside tasks, labels)."""
    filters: dict[str, set[str]] = {}
    statuses = [str(s) for s in RunStatus]
    for name in _names(getattr(args, "status", None)):
        if name not in statuses:
            raise _unknown("--status", "run status", name, statuses)
    if getattr(args, "status", None) is not None:
        filters["status"] = set(_names(args.status))
    if getattr(args, "task", None) is not None:
        from peftlab.tasks.registry import all_tasks

        tasks = sorted(set(all_tasks()) | {str(r.get("task")) for r in results})
        for name in _names(args.task):
            if name not in tasks:
                raise _unknown("--task", "task", name, tasks)
        filters["task"] = set(_names(args.task))
    if getattr(args, "method", None) is not None:
        stored = {str(r.get(k)) for r in results for k in ("method", "label")}
        for name in _names(args.method):
            if name in stored:
                continue
            from peftlab.methods import REGISTRY, get_method

            try:
                get_method(name)  # any PEFT type name is a method, even with no run in this store
            except ValueError:
                raise _unknown("--method", "method or method label", name, sorted(set(REGISTRY) | stored),
                               "; or any PEFT type name (peftlab ls methods)") from None
        filters["method"] = set(_names(args.method))
    for flag, names in filters.items():
        if not names:
            raise ConfigError(f"--{flag}: empty; give at least one name (a comma list)")
    return filters


def _matches(result: dict, filters: dict[str, set[str]]) -> bool:
    if "status" in filters and str(result.get("status")) not in filters["status"]:
        return False
    if "task" in filters and str(result.get("task")) not in filters["task"]:
        return False
    if "method" in filters and not {str(result.get("method")), str(result.get("label"))} & filters["method"]:
        return False
    return True


def _read_configs(store: Any, results: list[dict]) -> dict[str, dict | None]:
    """The config.yaml of every run that shares its experiment, task, method and seed with another
    (only those are compared); None where it is missing or unreadable."""
    counts = Counter(run_group(r) for r in results)
    return {r["run_id"]: store.read_config(r["run_id"]) for r in results if counts[run_group(r)] >= 2}


def run_row(result: dict, overrides: dict[str, Any]) -> dict:
    """One run for `ls runs --json`: what the table shows, with full metrics, cost and settings."""
    primary = result.get("primary_metric")
    return {"run_id": result.get("run_id"), "experiment": result.get("experiment"), "label": result.get("label"),
            "method": result.get("method"), "task": result.get("task"), "seed": result.get("seed"),
            "status": result.get("status"), "primary_metric": primary,
            "primary_value": (result.get("metrics") or {}).get(primary), "metrics": result.get("metrics") or {},
            "grid": result.get("grid") or {}, "overrides": overrides, "cost": result.get("cost") or {},
            "error": result.get("error"), "started_at": result.get("started_at"),
            "finished_at": result.get("finished_at")}


def _ls_runs(args: argparse.Namespace) -> int:
    from peftlab.store import Store

    as_json = getattr(args, "json", False)
    if not Path(args.store).exists():
        run_filters(args, [])
        if as_json:
            print_json({"store": args.store, "runs": []})
        print(f"no run store at {args.store}", file=sys.stderr if as_json else sys.stdout)
        return 0
    check_dir(args.store, "--store", writes=False)
    store = Store(args.store, readonly=True)
    results = store.results(**({"experiment": args.experiment} if args.experiment else {}))
    filters = run_filters(args, results)
    overrides = distinguishing_settings(results, _read_configs(store, results))
    shown = [r for r in results if _matches(r, filters)]
    if as_json:
        print_json({"store": args.store, "runs": [run_row(r, overrides[r["run_id"]]) for r in shown]})
        return 0
    if shown:
        print(runs_table(shown, overrides))
    of = f" (of {len(results)})" if len(shown) != len(results) else ""
    print(f"{len(shown)} run(s){of} in {args.store}")
    return 0


# ------------------------------------------------------------------------------------------ report
def cmd_report(args: argparse.Namespace) -> int:
    from peftlab import report
    from peftlab.store import Store

    check_dir(args.out, "--out")
    filters = {"experiment": args.experiment} if args.experiment else {}
    store = Store(args.store, readonly=True)
    paths = report.write_report(store.results(**filters), Path(args.out), title=args.title,
                                examples=store.read_examples)
    for path in dict.fromkeys(paths.values()):
        print(path)
    return 0
