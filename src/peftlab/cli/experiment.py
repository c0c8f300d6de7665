"""`peftlab run`, `peftlab sweep`, `peftlab validate`: an experiment file from the command line.

`run` and `sweep` start runs the same way — `executors.claim_and_run` (lock, re-read the status
under it, clear, run) — so a run that another process holds is never run twice.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from peftlab import executors
from peftlab.cli.checks import load_for_cli
from peftlab.cli.display import (
    SKIP_REASONS,
    Display,
    format_plan,
    print_json,
    step_printer,
    summary_line,
    sweep_summary_line,
)
from peftlab.config import ConfigError
from peftlab.executors.base import SweepInterrupted
from peftlab.plan import check_run_options, check_trackers, executor_options, make_plan, validate
from peftlab.status import FINISHED_BADLY, OutcomeKind, RunStatus


# ------------------------------------------------------------------------------------------ run
def cmd_run(args: argparse.Namespace) -> int:
    """Every run of the experiment in order; `ok` runs are kept unless `--force`; failed ones re-run."""
    import time

    from peftlab.runner import ModelCache
    from peftlab.store import Store

    exp = load_for_cli(args)
    runs = validate(exp)
    check_run_options(exp)
    if exp.tuning is not None:
        raise ConfigError(f"{args.config}: tuning runs in stages (trials, selection on validation, then the test runs); "
                          f"use: peftlab sweep {args.config}")
    store = Store(exp.output_dir)
    cache = ModelCache()
    print(f"{exp.name}: {len(runs)} run(s) → {store.root}/")
    failures = busy = 0
    for i, rc in enumerate(runs, 1):
        t0 = time.perf_counter()
        outcome = executors.claim_and_run(rc, store, None, retry_failed=True, cache=cache, force=args.force,
                                          progress=step_printer(i, len(runs), rc))
        if outcome.kind == OutcomeKind.DONE:
            print(f"[{i}/{len(runs)}] {outcome.run_id}: already done (use --force to re-run)")
        elif outcome.kind == OutcomeKind.BUSY:
            busy += 1
            print(f"[{i}/{len(runs)}] {outcome.run_id}: {SKIP_REASONS[outcome.kind]}")
        else:
            if sys.stdout.isatty():  # clear the live step line
                print("\r" + " " * 100 + "\r", end="")
            print(f"[{i}/{len(runs)}] {summary_line(outcome.result)}  ({time.perf_counter() - t0:.0f}s)")
            failures += outcome.result["status"] != RunStatus.OK
    ok = len(runs) - failures - busy
    elsewhere = f", {busy} busy in another process (run again later)" if busy else ""
    print(f"done: {ok} ok, {failures} not ok{elsewhere}; see `peftlab ls runs --store {store.root}`")
    return 1 if failures else 0


# ------------------------------------------------------------------------------------------ validate
def cmd_validate(args: argparse.Namespace) -> int:
    """`peftlab validate FILE [--json]`: every check that needs no model; the run count (or every run id)."""
    exp = load_for_cli(args)
    runs = validate(exp)
    check_run_options(exp)
    if getattr(args, "json", False):
        print_json({"ok": True, "config": str(args.config), "experiment": exp.name, "model": exp.model.name,
                    "tasks": [t.name for t in exp.tasks], "methods": [m.label for m in exp.methods],
                    "seeds": list(exp.seeds), "grid": exp.grid, "store": exp.output_dir,
                    "runs": [rc.run_id() for rc in runs]})
        return 0
    finals = 0
    if exp.tuning is not None:
        from peftlab.tuning import count_finals

        finals = count_finals(exp)
    print(f"{args.config}: ok — {len(exp.tasks)} task(s), {len(exp.methods)} method(s), "
          f"{len(exp.seeds)} seed(s), {len(runs)} run(s)" + (f" + {finals} test run(s) after selection" if finals else ""))
    return 0


# ------------------------------------------------------------------------------------------ sweep
def resume_command(args: argparse.Namespace) -> str:
    parts = ["peftlab", "sweep", str(args.config)]
    if getattr(args, "preset", None):
        parts += ["--preset", args.preset]
    for item in getattr(args, "sets", None) or []:
        parts += ["--set", item]
    if getattr(args, "store", None):
        parts += ["--store", args.store]
    if getattr(args, "executor", None):
        parts += ["--executor", args.executor]
    if getattr(args, "address", None):
        parts += ["--address", args.address]
    if getattr(args, "allow_code_execution", False):
        parts.append("--allow-code-execution")
    return " ".join(shlex.quote(p) for p in parts)


def cmd_sweep(args: argparse.Namespace) -> int:
    """`peftlab sweep FILE`: show the plan, then run what is left (exit 0: every run ok)."""
    from peftlab.store import Store

    exp = load_for_cli(args)
    opts = executor_options(exp)
    address = getattr(args, "address", None) or opts.get("address")
    executor = getattr(args, "executor", None) or ("ray" if getattr(args, "address", None) else None) \
        or opts.get("kind", "local")
    plan = make_plan(exp, exp.output_dir, args.retry_failed)
    print(format_plan(plan, max_rows=None if args.dry_run else 40, executor=executor))
    if executor == "ray" and not opts.get("num_gpus"):
        print("  note: each run requests no GPU (set executor.num_gpus in the experiment for GPU clusters)")
    if args.dry_run:
        return 0
    check_trackers(list(exp.trackers))
    store = Store(exp.output_dir)
    if plan.to_run or plan.pending:
        print()
        try:
            summary = executors.run_sweep(exp, store, executor=executor, retry_failed=args.retry_failed,
                                          listener=Display(), ray_address=address, plan=plan)
        except SweepInterrupted as exc:
            print(f"\n{sweep_summary_line(exc.summary)}")
            print("interrupted: finished runs are kept; the interrupted run(s) are recorded as cancelled and "
                  f"re-run on resume.\nresume with: {resume_command(args)}")
            return 130
        print(sweep_summary_line(summary))
        if summary.busy:
            print(f"  {len(summary.busy)} run(s) are being run by another process; run the sweep again later "
                  "to pick up any that it does not finish")
        if summary.skipped_failed and not args.retry_failed:
            print(f"  {len(summary.skipped_failed)} failed/diverged run(s) skipped; add --retry-failed to re-run them")
        for reason in summary.pending:
            print(f"  test runs not started: {reason}")
        ok = summary.ok and not summary.pending
    else:
        ok = not plan.count(*FINISHED_BADLY)
    report_dir = getattr(args, "report_dir", None)
    if report_dir:
        from peftlab.report import write_report

        paths = write_report(store.results(experiment=exp.name), Path(report_dir), title=exp.name,
                             examples=store.read_examples, samples=store.read_samples, configs=store.read_config)
        print(f"report: {paths.get('report.html') or paths.get('summary.md') or report_dir}")
    else:
        print(f"see: peftlab ls runs --store {store.root} --experiment {exp.name}  |  "
              f"peftlab report {store.root} --experiment {exp.name}")
    return 0 if ok else 1
