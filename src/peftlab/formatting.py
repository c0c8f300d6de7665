"""Human-readable numbers, durations and sizes: the one home for every formatter peftlab prints with.

Two families, because two audiences: the terminal (`fmt_*`: compact, fixed shapes such as `04:30`)
and the report's tables (`human_*`, `fmt_sig`: significant digits, a dash for a missing value).
"""

from __future__ import annotations

import math
from typing import Any


# ------------------------------------------------------------------------------------ terminal
def fmt_duration(seconds: float | None) -> str:
    """`mm:ss`, or `h:mm:ss` from an hour on; `--:--` when unknown."""
    if seconds is None:
        return "--:--"
    seconds = int(round(max(seconds, 0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def fmt_elapsed(seconds: float) -> str:
    """A run's time: `12.3s` under a minute, `mm:ss` above."""
    return f"{seconds:.1f}s" if seconds < 60 else fmt_duration(seconds)


def fmt_value(value: Any) -> str:
    """A grid or config value: floats shortest (`0.001`, `1e-05`), everything else as text."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def fmt_number(value: Any, digits: int = 4) -> str:
    """A metric or rate: floats to `digits` significant digits, everything else as text."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def fmt_bytes(n: float | int | None) -> str:
    """Binary units for files and memory: `512 B`, `1.5 KiB` … `3.2 GiB`; `n/a` when unknown."""
    if n is None:
        return "n/a"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def fmt_gib(n: float | int) -> str:
    """Peak memory on a summary line: `1.25GiB`."""
    return f"{n / 2**30:.2f}GiB"


# ------------------------------------------------------------------------------------ report tables
def fmt_sig(x: float | None, sig: int = 4) -> str:
    """Significant-digit formatting without scientific notation for everyday magnitudes."""
    if x is None:
        return "—"
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    mag = math.floor(math.log10(abs(x)))
    if mag >= 6 or mag <= -5:
        return f"{x:.{sig - 1}e}"
    decimals = max(0, sig - 1 - mag)
    return f"{x:.{decimals}f}"


def human_bytes(n: float | None) -> str:
    """Binary units (KiB, MiB, GiB) because memory and files are measured that way."""
    if n is None:
        return "—"
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    x, i = float(n), 0
    while abs(x) >= 1024 and i < len(units) - 1:
        x, i = x / 1024, i + 1
    return f"{int(x)} B" if i == 0 else f"{x:.3g} {units[i]}"


def human_count(n: float | None) -> str:
    """Parameter counts the way papers write them: 1.23M, 135M, 4.6K."""
    if n is None:
        return "—"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}"


def human_duration(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 60:
        return f"{s:.3g} s"
    if s < 3600:
        return f"{s / 60:.3g} min"
    return f"{s / 3600:.3g} h"


def human_pct(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}%"


def human_rate(r: float | None) -> str:
    if r is None:
        return "—"
    return f"{fmt_sig(r / 1000, 3)}k" if abs(r) >= 1000 else fmt_sig(r, 3)


__all__ = ["fmt_duration", "fmt_elapsed", "fmt_value", "fmt_number", "fmt_bytes", "fmt_gib", "fmt_sig",
           "human_bytes", "human_count", "human_duration", "human_pct", "human_rate"]
