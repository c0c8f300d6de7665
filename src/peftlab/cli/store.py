"""`peftlab ls` and `peftlab report`: what is registered, what is in a run store, and its report."""

from __future__ import annotations

import argparse
from pathlib import Path

from peftlab.cli.checks import check_dir
from peftlab.cli.display import summary_line


def cmd_ls(args: argparse.Namespace) -> int:
    if args.what == "methods":
        from peftlab.methods import list_methods

        for m in list_methods():
            defaults = ", ".join(f"{k}={v}" for k, v in m.defaults.items()) or "-"
            print(f"{m.name:<12} {m.family:<7} {m.description}\n{'':<21}defaults: {defaults}")
        print("any other peft method by its PEFT type name, e.g. vera, loha, lokr, adalora, oft "
              "(arguments go to its peft config)")
    elif args.what == "models":
        from peftlab.models import list_models

        for row in list_models():
            state = "cached" if row["cached"] else "not cached (peftlab data prepare " + row["alias"] + ")"
            print(f"{row['alias']:<24} {state:<12} hub: {row['hub_id']}\n{'':<25}{row['description']}; {row['source']}")
    elif args.what == "tasks":
        from peftlab.tasks.registry import all_tasks, task_summary

        for spec in all_tasks().values():
            s = task_summary(spec)
            metrics = ", ".join(f"{k} ({'↑' if v == 'higher' else '↓'})" for k, v in s["metrics"].items())
            print(f"{s['name']:<10} {s['description']}\n{'':<11}splits: {s['splits']}\n{'':<11}metrics: {metrics}; "
                  f"primary: {s['primary']}\n{'':<11}hub: {s['hub']}\n{'':<11}offline: {s['offline']}")
    else:
        from peftlab.store import Store

        filters = {"experiment": args.experiment} if args.experiment else {}
        if not Path(args.store).exists():
            print(f"no run store at {args.store}")
            return 0
        check_dir(args.store, "--store", writes=False)
        results = Store(args.store, readonly=True).results(**filters)
        for r in results:
            print(f"{r['run_id'][:60]:<60}  {summary_line(r)}")
        print(f"{len(results)} run(s) in {args.store}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from peftlab import report
    from peftlab.store import Store

    check_dir(args.out, "--out")
    filters = {"experiment": args.experiment} if args.experiment else {}
    store = Store(args.store, readonly=True)
    paths = report.write_report(store.results(**filters), Path(args.out), title=args.title,
                                examples=store.read_examples)
    for name, path in paths.items():
        print(f"{name:<10} {path}")
    return 0
