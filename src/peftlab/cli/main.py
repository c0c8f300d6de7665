"""`peftlab`: one subcommand per verb (run, sweep, report, ls, validate, init, data, adapters, evaluate,
generate, chat). `-v` goes before or after the verb."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from typing import Any, Callable

from peftlab.cli.checks import check_decoding_flag
from peftlab.cli.data import cmd_data_prepare, cmd_data_show
from peftlab.cli.experiment import cmd_run, cmd_sweep, cmd_validate
from peftlab.cli.init import cmd_init
from peftlab.cli.lifecycle import chat_cmd, evaluate_cmd, export_cmd, generate_cmd, merge_cmd, show_cmd
from peftlab.cli.store import DEFAULT_REPORT_DIR, cmd_compare, cmd_ls, cmd_report
from peftlab.logs import quiet_libraries
from peftlab.status import RunStatus

USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the usage itself is one `--help` away)."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _whole_number(at_least: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= `at_least`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = at_least - 1
        if value < at_least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {at_least}, got {text!r}")
        return value
    return parse


_positive_int = _whole_number(1)
_count = _whole_number(0)


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
    p.add_argument("config", help="experiment YAML (see configs/, or write one with `peftlab init`)")
    p.add_argument("--preset", help="named scale preset defined in the file (demo, small, paper)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. --set train.lr=1e-4 --set method=lora --set lora.r=16; list keys take "
                        "a,b or [a, b] (--set seeds=0,1,2)")
    p.add_argument("--store", help="run store directory (default: the experiment's output_dir)")


def _adapter_args(p: argparse.ArgumentParser, what: str = "run id (or a unique prefix), run directory or adapter "
                                                                "directory") -> None:
    p.add_argument("run", help=what)
    p.add_argument("--store", default="runs", help="run store the run id is looked up in (default: runs)")
    p.add_argument("--base", help="base model to load the adapter on, instead of the one it records")


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="one JSON document on stdout and nothing else (on an error: {\"ok\": false, \"error\": ...})")


class _Version(argparse.Action):
    """`--version`: peftlab's installed version and the libraries results depend on, one per line."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(version_text())
        parser.exit()


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    for name in ("peftlab", "torch", "transformers", "peft"):
        try:
            lines.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            lines.append(f"{name} (not installed)")
    lines.append(f"python {sys.version.split()[0]}")
    return "\n".join(lines)


def _common() -> argparse.ArgumentParser:
    """Flags every command takes, before or after its name (`peftlab -v ls runs` = `peftlab ls runs -v`).

    Their default is SUPPRESS so a subcommand's parser never resets what the top level already set."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log every training step, show library warnings and full tracebacks")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="peftlab", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log every training step, show library warnings and full tracebacks")
    parser.add_argument("--version", action=_Version, help="print the versions of peftlab, torch, transformers, "
                                                            "peft and Python, then exit")
    common = [_common()]
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", parents=common,
                       help="train and evaluate every run of an experiment (methods × tasks × seeds)")
    _experiment_args(p)
    p.add_argument("--force", action="store_true", help="re-run runs that already finished")
    p.add_argument("--decoding", help="comma list of decoding strategies to evaluate, e.g. greedy,top_k=50,top_p=0.9")
    p.add_argument("--allow-code-execution", action="store_true", help="run model-written code (code task)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sweep", parents=common, help="run an experiment's grid × seeds with resume and an executor")
    _experiment_args(p)
    p.add_argument("--dry-run", action="store_true", help="show the plan and its size, run nothing")
    p.add_argument("--retry-failed", action="store_true",
                   help="also re-run failed/diverged runs (interrupted and cancelled runs always re-run)")
    p.add_argument("--executor", choices=["local", "ray"], help="where runs execute (default local)")
    p.add_argument("--address", help="Ray cluster address (e.g. auto)")
    p.add_argument("--report", dest="report_dir", help="write the report here when the sweep ends")
    p.add_argument("--allow-code-execution", action="store_true", help="run model-written code (code task)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", parents=common,
                       help="tables, plots and an HTML page from a run store (never retrains)",
                       description="Write report.html, summary.md, CSV/LaTeX tables and plots from the runs in a "
                                   "store (never retrains); prints every file written, one path per line.")
    p.add_argument("store", nargs="?", default="runs", help="run store directory (default: runs)")
    p.add_argument("--out", default=DEFAULT_REPORT_DIR,
                   help=f"output directory (default: {DEFAULT_REPORT_DIR}); an earlier report's files there are "
                        "replaced")
    p.add_argument("--experiment", help="only runs of this experiment")
    p.add_argument("--title", help="the report's title (default: from the experiment names)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", parents=common,
                       help="two methods of a store, paired: difference, interval, p-value, verdict",
                       description="Compare method A with method B (each its best configuration) on the same seeds "
                                   "and test examples: A - B with its 95%% interval over seeds x examples, a "
                                   "permutation p-value (one pair, no multiplicity correction), the verdict and the "
                                   "smallest difference this size would detect. Tuning trials are left out.")
    p.add_argument("store", help="run store directory")
    p.add_argument("a", help="method label (as in the report), the left side of A - B; LABEL@EVALUATION scores it "
                             "by that evaluation of its runs, e.g. lora@top_p=0.9 (a decoding strategy)")
    p.add_argument("b", help="method label (or LABEL@EVALUATION), the right side")
    p.add_argument("--task", help="the task (needed when the store has several)")
    p.add_argument("--metric", help="a metric of the task (default: its primary metric)")
    p.add_argument("--on", default="the task", metavar="SCORE",
                   help="compare on 'forgetting' (held-out general text) or a retention task's name instead of "
                        "the task itself")
    p.add_argument("--experiment", help="only runs of this experiment")
    _json_flag(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("ls", parents=common, help="list methods, models, tasks or runs")
    lsub = p.add_subparsers(dest="what", required=True, metavar="{methods,models,tasks,runs}")
    for what, helptext in (("methods", "every method with its default arguments"),
                           ("models", "offline model aliases and whether they are cached"),
                           ("tasks", "tasks with their splits, metrics and data sources")):
        lp = lsub.add_parser(what, parents=common, help=helptext)
        _json_flag(lp)
        lp.set_defaults(func=cmd_ls)
    lp = lsub.add_parser("runs", parents=common,
                         help="one row per run: method, status, metric, cost and the settings that tell runs apart")
    lp.add_argument("--store", default="runs", help="run store directory (default: runs)")
    lp.add_argument("--experiment", help="only runs of this experiment")
    lp.add_argument("--task", help="only runs of these tasks (comma list)")
    lp.add_argument("--method", help="only runs of these methods or method labels (comma list)")
    lp.add_argument("--status", help=f"only runs with these statuses (comma list of {', '.join(RunStatus)})")
    _json_flag(lp)
    lp.set_defaults(func=cmd_ls)

    p = sub.add_parser("validate", parents=common, help="check an experiment file without running it")
    _experiment_args(p)
    p.add_argument("--allow-code-execution", action="store_true", help="the run will allow model-written code (code task)")
    _json_flag(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("init", parents=common, help="write a commented starter experiment file",
                       description="Write a starter experiment YAML for a task and methods, every key commented "
                                   "with what it does and its valid values; it passes `peftlab validate` as written.")
    p.add_argument("--task", required=True, help="task name, or a comma list of them (see `peftlab ls tasks`)")
    p.add_argument("--methods", default="base,lora",
                   help="comma list of methods (default: base,lora; see `peftlab ls methods`)")
    p.add_argument("--model", help="offline alias, hub id (owner/name) or local directory (default: the default alias)")
    p.add_argument("-o", "--out", default="experiment.yaml",
                   help="file to write (default: experiment.yaml; '-' prints it)")
    p.add_argument("--name", help="experiment name (default: the file's name without .yaml)")
    p.add_argument("--force", action="store_true", help="overwrite the file if it exists")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="tasks that score by running model-written code (code) do so; without it they are written "
                        "with execution off")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("data", parents=common, help="prepare offline data/models, or show a task's data")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser("prepare", parents=common,
                        help="fetch, verify and convert offline sources (tasks and/or model aliases)")
    d.add_argument("names", nargs="*", help="task names and/or model aliases (default: all tasks + default model)")
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=cmd_data_prepare)
    d = dsub.add_parser("show", parents=common, help="counts and examples per split")
    d.add_argument("task")
    d.add_argument("--source", default="offline", choices=["auto", "hub", "offline"])
    d.add_argument("-n", type=_count, default=3)
    d.set_defaults(func=cmd_data_show)

    adapter_help = "run id, run directory, or adapter directory (peftlab's, or a plain PEFT one)"
    base_help = "base model to load the adapter on (default: the one it records; needed when that cannot be found)"
    p = sub.add_parser("adapters", parents=common,
                       help="inspect, merge or export an adapter (a run's, or a plain PEFT directory)")
    asub = p.add_subparsers(dest="adapters_command", required=True)
    a = asub.add_parser("show", parents=common, help="method, config, parameter counts, bytes on disk")
    a.add_argument("run", help=adapter_help)
    a.add_argument("--store", default="runs")
    a.add_argument("--base", help=base_help)
    a.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    a.set_defaults(func=show_cmd)
    a = asub.add_parser("merge", parents=common, help="merge into the base weights and write a plain Hugging Face model")
    a.add_argument("run", help=adapter_help)
    a.add_argument("--out", required=True)
    a.add_argument("--store", default="runs")
    a.add_argument("--base", help=base_help)
    a.add_argument("--atol", type=_tolerance, default=None, help="tolerance for the logits check")
    a.add_argument("--force", action="store_true", help="replace an earlier merge in --out")
    a.set_defaults(func=merge_cmd)
    a = asub.add_parser("export", parents=common,
                        help="write the adapter as a directory plain peft loads, with a model card")
    a.add_argument("run", help=adapter_help)
    a.add_argument("--out", required=True)
    a.add_argument("--store", default="runs")
    a.add_argument("--base", help=base_help)
    a.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    a.set_defaults(func=export_cmd)

    p = sub.add_parser("evaluate", parents=common,
                       help="score an adapter on a task without training; recorded in the run store")
    p.add_argument("run", help=adapter_help + "; a directory is stored as a new run")
    p.add_argument("--task", help="the task to score on (default: the run's own; needed for an adapter directory)")
    p.add_argument("--decoding", default=None,
                   help="comma list of strategies, e.g. greedy,top_k=50,top_p=0.9,temperature=0.7 (join knobs with "
                        "':'; default: greedy, or the run's own); not for tasks scored without generation")
    p.add_argument("--store", default="runs")
    p.add_argument("--base", help=base_help)
    p.add_argument("--limit-eval", type=_positive_int, default=None, help="evaluate a seeded subsample of N test examples")
    p.add_argument("--force", action="store_true", help="re-evaluate decodings the run already has (replacing them)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (progress goes to stderr)")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="run model-written code (code task); the run's stored setting never counts")
    p.set_defaults(func=evaluate_cmd)

    for name, helptext, fn in (("generate", "generate from a trained run or an adapter directory", generate_cmd),
                               ("chat", "interactive chat with a trained run or an adapter directory (streams tokens)",
                                chat_cmd)):
        g = sub.add_parser(name, parents=common, help=helptext)
        g.add_argument("run", help=adapter_help + ", or 'base:MODEL' for an untrained model")
        if name == "generate":
            g.add_argument("prompts", nargs="+", help="prompts; '-' reads one prompt from standard input (all of it)")
        g.add_argument("--store", default="runs")
        g.add_argument("--base", help=base_help)
        g.add_argument("--decoding", default="greedy", help="greedy, beam=4, top_k=50, top_p=0.9, temperature=0.7 …")
        g.add_argument("--max-new-tokens", type=_positive_int, default=128)
        g.add_argument("--system", default="", help="system message")
        g.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    console = logging.StreamHandler()
    console.setLevel(logging.INFO if verbose else logging.WARNING)  # run logs still reach log.txt
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[console])
    if not verbose:
        quiet_libraries()
    try:
        if args.command in ("generate", "chat", "evaluate"):
            check_decoding_flag(args)
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except BrokenPipeError:  # `peftlab ls runs | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 141
    except KeyboardInterrupt:
        print("\ncancelled (finished runs are kept; the interrupted run is recorded as cancelled)", file=sys.stderr)
        return 130
    except Exception as exc:  # every error is one line; -v shows the traceback
        if getattr(args, "json", False):  # a script reading stdout still gets one JSON document
            print(json.dumps({"ok": False, "error": error_line(exc)}))
        if verbose:
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
