"""`peftlab`: one subcommand per verb (run, sweep, report, ls, validate, data, adapters, generate, chat)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is one `--help` away)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _tolerance(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text!r}")
    return value


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML (see configs/)")
    p.add_argument("--preset", help="named scale preset defined in the file (demo, small, paper)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. --set train.lr=1e-4 --set method=lora --set lora.r=16")
    p.add_argument("--store", help="run store directory (default: the experiment's output_dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="peftlab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every training step")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train and evaluate every run of an experiment (methods × tasks × seeds)")
    _experiment_args(p)
    p.add_argument("--force", action="store_true", help="re-run runs that already finished")
    p.add_argument("--decoding", help="comma list of decoding strategies to evaluate, e.g. greedy,top_k=50,top_p=0.9")
    p.add_argument("--allow-code-execution", action="store_true", help="run model-written code (code task)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", help="run an experiment's grid × seeds with resume and an executor")
    _experiment_args(p)
    p.add_argument("--dry-run", action="store_true", help="show the plan and its size, run nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="also re-run failed/diverged runs (interrupted and cancelled runs always re-run)")
    p.add_argument("--executor", choices=["local", "ray"], help="where runs execute (default local)")
    p.add_argument("--address", help="Ray cluster address (e.g. auto)")
    p.add_argument("--report", dest="report_dir", help="write the report here when the sweep ends")
    p.add_argument("--allow-code-execution", action="store_true", help="run model-written code (code task)")
    p.set_defaults(func=_lazy("peftlab.sweep", "sweep_cmd"))

    p = sub.add_parser("report", help="tables, plots and an HTML page from a run store (never retrains)")
    p.add_argument("store", nargs="?", default="runs")
    p.add_argument("--out", default="reports/latest")
    p.add_argument("--experiment", help="only runs of this experiment")
    p.add_argument("--title")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ls", help="list methods, models, tasks or runs")
    p.add_argument("what", choices=["methods", "models", "tasks", "runs"])
    p.add_argument("--store", default="runs")
    p.add_argument("--experiment")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("validate", help="check an experiment file without running it")
    _experiment_args(p)
    p.add_argument("--allow-code-execution", action="store_true", help="the run will allow model-written code (code task)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("data", help="prepare offline data/models, or show a task's data")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("prepare", help="fetch, verify and convert offline sources (tasks and/or model aliases)")
    d.add_argument("names", nargs="*", help="task names and/or model aliases (default: all tasks + default model)")
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=cmd_data_prepare)
    d = dsub.add_parser("show", help="counts and examples per split")
    d.add_argument("task")
    d.add_argument("--source", default="offline", choices=["auto", "hub", "offline"])
    d.add_argument("-n", type=_count, default=3)
    d.set_defaults(func=cmd_data_show)

    p = sub.add_parser("adapters", help="inspect, merge or export a run's adapter")
    asub = p.add_subparsers(dest="adapters_command", required=True)
    a = asub.add_parser("show", help="method, config, parameter counts, bytes on disk")
    a.add_argument("run", help="run id or run directory")
    a.add_argument("--store", default="runs")
    a.set_defaults(func=_lazy("peftlab.lifecycle", "show_cmd"))
    a = asub.add_parser("merge", help="merge into the base weights and write a plain Hugging Face model")
    a.add_argument("run", help="run id or run directory")
    a.add_argument("--out", required=True)
    a.add_argument("--store", default="runs")
    a.add_argument("--atol", type=_tolerance, default=None, help="tolerance for the logits check")
    a.set_defaults(func=_lazy("peftlab.lifecycle", "merge_cmd"))

    p = sub.add_parser("evaluate", help="re-evaluate a finished run's adapter under decoding strategies (no retraining)")
    p.add_argument("run", help="run id or run directory")
    p.add_argument("--decoding", required=True,
                   help="comma list of strategies, e.g. greedy,top_k=50,top_p=0.9,temperature=0.7 (join knobs with ':')")
    p.add_argument("--store", default="runs")
    p.add_argument("--limit-eval", type=_positive_int, default=None, help="evaluate a seeded subsample of N test examples")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="run model-written code (code task); the run's stored setting never counts")
    p.set_defaults(func=_lazy("peftlab.lifecycle", "evaluate_cmd"))

    for name, helptext, fn in (("generate", "generate from a trained run", "generate_cmd"),
                               ("chat", "interactive chat with a trained run (streams tokens)", "chat_cmd")):
        g = sub.add_parser(name, help=helptext)
        g.add_argument("run", help="run id, run directory, or 'base:MODEL' for an untrained model")
        if name == "generate":
            g.add_argument("prompts", nargs="+")
        g.add_argument("--store", default="runs")
        g.add_argument("--decoding", default="greedy", help="greedy, beam=4, top_k=50, top_p=0.9, temperature=0.7 …")
        g.add_argument("--max-new-tokens", type=_positive_int, default=128)
        g.add_argument("--system", default="", help="system message")
        g.set_defaults(func=_lazy("peftlab.lifecycle", fn))
    return parser


def _lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    def call(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), name)(args) or 0)

    return call


# ------------------------------------------------------------------------------------------ run
def load_for_cli(args: argparse.Namespace) -> Any:
    """The experiment of `run`/`sweep`/`validate`, with every check that needs no model, and its
    store and report paths checked before anything runs."""
    from peftlab.config import ConfigError, load_experiment

    sets = list(args.sets)
    if getattr(args, "decoding", None) is not None:
        sets.append(f"eval.decoding={_decoding_list(args.decoding)}")
    if getattr(args, "allow_code_execution", False):
        sets.append("eval.allow_code_execution=true")
    exp = load_experiment(args.config, args.preset, sets)
    if getattr(args, "store", None) is not None:
        import dataclasses

        if not args.store.strip():
            raise ConfigError("--store: empty path; give the run store directory")
        exp = dataclasses.replace(exp, output_dir=args.store)
    writes = getattr(args, "command", None) == "run" or (getattr(args, "command", None) == "sweep"
                                                          and not getattr(args, "dry_run", False))
    check_dir(exp.output_dir, "--store" if getattr(args, "store", None) else "output_dir", writes)
    if getattr(args, "report_dir", None) is not None:
        check_dir(args.report_dir, "--report", writes)
    return exp


def check_dir(path: str | Path, flag: str, writes: bool = True) -> None:
    """A directory peftlab will write: not a file, not under a file, and (when `writes`) writable.

    Checked before any run starts, so a wrong path is one sentence, not a failure after training.
    """
    from peftlab.config import ConfigError

    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path}: is a file, not a directory")
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ConfigError(f"{flag} {path}: cannot be created because {parent} is a file")
    if writes and parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {parent} is not writable (read-only or permission denied)")


def check_run_options(exp: Any) -> None:
    """The experiment's executor options and trackers (checked by `sweep` too), before anything runs."""
    from peftlab.sweep import check_trackers, executor_options

    executor_options(exp)
    check_trackers(list(exp.trackers))


def _decoding_list(text: str) -> list[str]:
    """`greedy,top_k=50,top_p=0.9` → one strategy per comma (use `:` to join knobs of one)."""
    from peftlab.config import ConfigError

    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"--decoding {text!r}: name at least one strategy, e.g. greedy or greedy,top_p=0.9")
    return parts


def check_decoding_flag(args: argparse.Namespace) -> None:
    """`generate`/`chat`/`evaluate --decoding …`: parse every strategy before a model is loaded."""
    from peftlab.config import parse_decoding_spec

    text = getattr(args, "decoding", None)
    if text is not None:
        for part in _decoding_list(text):
            parse_decoding_spec(part)


def cmd_run(args: argparse.Namespace) -> int:
    from peftlab.plan import validate
    from peftlab.runner import ModelCache, execute_run
    from peftlab.store import Store

    exp = load_for_cli(args)
    runs = validate(exp)
    check_run_options(exp)
    store = Store(exp.output_dir)
    cache = ModelCache()
    print(f"{exp.name}: {len(runs)} run(s) → {store.root}/")
    failures = 0
    for i, rc in enumerate(runs, 1):
        run_id = rc.run_id()
        if store.status(run_id) == "ok" and not args.force:
            print(f"[{i}/{len(runs)}] {run_id}: already done (use --force to re-run)")
            continue
        if args.force:
            store.delete_run(run_id)
        t0 = time.perf_counter()
        result = execute_run(rc, store, progress=_progress_printer(i, len(runs), rc), cache=cache)
        print("\r" + " " * 100 + "\r", end="")
        print(f"[{i}/{len(runs)}] {summary_line(result)}  ({time.perf_counter() - t0:.0f}s)")
        failures += result["status"] != "ok"
    print(f"done: {len(runs) - failures} ok, {failures} not ok; see `peftlab ls runs --store {store.root}`")
    return 1 if failures else 0


def _progress_printer(i: int, n: int, rc: Any) -> Callable[[int, int, float], None]:
    def show(step: int, total: int, loss: float) -> None:
        if sys.stdout.isatty():
            print(f"\r[{i}/{n}] {rc.method.label} {rc.task.name} s{rc.seed}: step {step}/{total} loss {loss:.4f}",
                  end="", flush=True)
    return show


def summary_line(result: dict) -> str:
    cost = result.get("cost") or {}
    primary = result.get("primary_metric")
    value = (result.get("metrics") or {}).get(primary)
    metric = f"{primary}={value:.4g}" if isinstance(value, (int, float)) else "-"
    tps = cost.get("tokens_per_s")
    mem = cost.get("peak_memory_bytes")
    parts = [f"{result.get('label', '?'):<14}", f"{result.get('task', '?'):<9}", f"s{result.get('seed')}",
             f"{result.get('status', '?'):<9}", f"{metric:<24}",
             f"trainable={cost.get('trainable_pct', 0):.4f}%" if cost else "",
             f"tok/s={tps:.0f}" if tps else "", f"peak={mem / 2**30:.2f}GiB" if mem else ""]
    line = "  ".join(p for p in parts if p)
    if result.get("status") != "ok" and result.get("error"):
        line += f"  error: {result['error'].strip().splitlines()[-1][:120]}"
    return line


# ------------------------------------------------------------------------------------------ ls
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


def cmd_validate(args: argparse.Namespace) -> int:
    from peftlab.plan import validate

    exp = load_for_cli(args)
    runs = validate(exp)
    check_run_options(exp)
    print(f"{args.config}: ok — {len(exp.tasks)} task(s), {len(exp.methods)} method(s), "
          f"{len(exp.seeds)} seed(s), {len(runs)} run(s)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from peftlab.report import write_report
    from peftlab.store import Store

    check_dir(args.out, "--out")
    filters = {"experiment": args.experiment} if args.experiment else {}
    results = Store(args.store, readonly=True).results(**filters)
    paths = write_report(results, Path(args.out), title=args.title)
    for name, path in paths.items():
        print(f"{name:<10} {path}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from peftlab.data.cli_data import prepare_cmd
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
    return prepare_cmd(tasks, args.force) if tasks else 0


def _task_names() -> list[str]:
    from peftlab.tasks.registry import all_tasks

    return list(all_tasks())


def cmd_data_show(args: argparse.Namespace) -> int:
    from peftlab.data.cli_data import show_cmd

    return show_cmd(args.task, args.source, args.n)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = logging.StreamHandler()
    console.setLevel(logging.INFO if args.verbose else logging.WARNING)  # run logs still reach log.txt
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[console])
    _quiet_libraries()
    try:
        if args.command in ("generate", "chat", "evaluate"):
            check_decoding_flag(args)
        return args.func(args)
    except KeyboardInterrupt:
        print("\ncancelled (finished runs are kept; the interrupted run is recorded as cancelled)", file=sys.stderr)
        return 130
    except Exception as exc:  # every error is one line; -v shows the traceback
        if args.verbose:
            raise
        print(f"error: {error_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, (*USER_ERRORS, OSError)) or _is_sqlite_error(exc) else 1


_OS_REASONS = {
    errno.ENOSPC: "no space left on device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "is a directory, not a file",
    errno.ENOTDIR: "a part of this path is a file, not a directory",
    errno.EEXIST: "already exists and is not a directory",
    errno.ENAMETOOLONG: "the name is too long",
    errno.ENOENT: "no such file or directory",
}


def error_line(exc: BaseException) -> str:
    """One line naming what went wrong: a file system error names its path and the reason in words."""
    if isinstance(exc, OSError) and exc.errno is not None and type(exc).__str__ is OSError.__str__:
        reason = _OS_REASONS.get(exc.errno, exc.strerror or str(exc))
        if exc.filename is not None:
            other = f" (-> {exc.filename2})" if getattr(exc, "filename2", None) else ""
            text = f"{exc.filename}{other}: {reason}"
        else:
            text = reason
    elif _is_sqlite_error(exc):
        text = f"run store index (SQLite): {exc}"
    elif isinstance(exc, (*USER_ERRORS, OSError)):
        text = str(exc) or type(exc).__name__
    else:
        text = f"unexpected {type(exc).__name__}: {exc} (a bug in peftlab: rerun with -v for the traceback)"
    return " ".join(text.split())


def _is_sqlite_error(exc: BaseException) -> bool:
    return type(exc).__module__ == "sqlite3" or any(c.__module__ == "sqlite3" for c in type(exc).__mro__)


def _quiet_libraries() -> None:
    import os
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft vs transformers 5 deprecation
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # peft sets it for GPT-2's Conv1D itself
    for name in ("transformers", "peft", "accelerate", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
