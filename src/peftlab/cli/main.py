"""`peftlab`: one subcommand per verb (run, sweep, report, ls, validate, data, adapters, generate, chat)."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from typing import Any, Callable

from peftlab.cli.checks import check_decoding_flag
from peftlab.cli.data import cmd_data_prepare, cmd_data_show
from peftlab.cli.experiment import cmd_run, cmd_sweep, cmd_validate
from peftlab.cli.lifecycle import chat_cmd, evaluate_cmd, generate_cmd, merge_cmd, show_cmd
from peftlab.cli.store import cmd_ls, cmd_report
from peftlab.logs import quiet_libraries

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
    p.set_defaults(func=cmd_sweep)

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
    a.set_defaults(func=show_cmd)
    a = asub.add_parser("merge", help="merge into the base weights and write a plain Hugging Face model")
    a.add_argument("run", help="run id or run directory")
    a.add_argument("--out", required=True)
    a.add_argument("--store", default="runs")
    a.add_argument("--atol", type=_tolerance, default=None, help="tolerance for the logits check")
    a.set_defaults(func=merge_cmd)

    p = sub.add_parser("evaluate", help="re-evaluate a finished run's adapter under decoding strategies (no retraining)")
    p.add_argument("run", help="run id or run directory")
    p.add_argument("--decoding", required=True,
                   help="comma list of strategies, e.g. greedy,top_k=50,top_p=0.9,temperature=0.7 (join knobs with ':')")
    p.add_argument("--store", default="runs")
    p.add_argument("--limit-eval", type=_positive_int, default=None, help="evaluate a seeded subsample of N test examples")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="run model-written code (code task); the run's stored setting never counts")
    p.set_defaults(func=evaluate_cmd)

    for name, helptext, fn in (("generate", "generate from a trained run", generate_cmd),
                               ("chat", "interactive chat with a trained run (streams tokens)", chat_cmd)):
        g = sub.add_parser(name, help=helptext)
        g.add_argument("run", help="run id, run directory, or 'base:MODEL' for an untrained model")
        if name == "generate":
            g.add_argument("prompts", nargs="+")
        g.add_argument("--store", default="runs")
        g.add_argument("--decoding", default="greedy", help="greedy, beam=4, top_k=50, top_p=0.9, temperature=0.7 …")
        g.add_argument("--max-new-tokens", type=_positive_int, default=128)
        g.add_argument("--system", default="", help="system message")
        g.set_defaults(func=fn)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = logging.StreamHandler()
    console.setLevel(logging.INFO if args.verbose else logging.WARNING)  # run logs still reach log.txt
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, handlers=[console])
    quiet_libraries()
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
