"""Checks on command-line values that run before anything loads: directories, decoding lists, experiments."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from peftlab.config import ConfigError, ExperimentConfig, load_experiment, parse_decodings, split_decodings


def check_dir(path: str | Path, flag: str, writes: bool = True) -> None:
    """A directory peftlab will write: not a file, not under a file, and (when `writes`) writable.

    Checked before any run starts, so a wrong path is one sentence, not a failure after training.
    """
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


def check_decoding_flag(args: argparse.Namespace) -> None:
    """`generate`/`chat`/`evaluate --decoding …`: parse every strategy before a model is loaded."""
    text = getattr(args, "decoding", None)
    if text is not None:
        parse_decodings(text)


def load_for_cli(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment of `run`/`sweep`/`validate`, with every check that needs no model, and its
    store and report paths checked before anything runs."""
    sets = list(args.sets)
    if getattr(args, "decoding", None) is not None:
        sets.append(f"eval.decoding={split_decodings(args.decoding)}")
    if getattr(args, "allow_code_execution", False):
        sets.append("eval.allow_code_execution=true")
    exp = load_experiment(args.config, args.preset, sets)
    if getattr(args, "store", None) is not None:
        if not args.store.strip():
            raise ConfigError("--store: empty path; give the run store directory")
        exp = dataclasses.replace(exp, output_dir=args.store)
    writes = getattr(args, "command", None) == "run" or (getattr(args, "command", None) == "sweep"
                                                          and not getattr(args, "dry_run", False))
    check_dir(exp.output_dir, "--store" if getattr(args, "store", None) else "output_dir", writes)
    if getattr(args, "report_dir", None) is not None:
        check_dir(args.report_dir, "--report", writes)
    return exp
