"""The command line: argument parsing, every verb, terminal display. Nothing else in peftlab imports it.

    main.py        the parser, `main`, one-line errors and exit codes
    experiment.py  run, sweep, validate (run and sweep share `executors.claim_and_run`)
    store.py       ls, report
    data.py        data prepare, data show
    lifecycle.py   adapters show|merge, generate, chat, evaluate
    display.py     summary lines, the sweep's plan, live progress (the executors' ProgressListener)
    checks.py      checks on paths, decoding lists and the experiment before anything loads
"""

from peftlab.cli.main import build_parser, error_line, main

__all__ = ["main", "build_parser", "error_line"]
