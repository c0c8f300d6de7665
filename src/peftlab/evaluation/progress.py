"""Progress of an evaluation: examples scored so far in each phase, told to whoever watches.

Scoring and generation loops call `advance(n)` after each batch; a task names its phases
(`phase("test", 200)`), so a watcher (the sweep's live line, `peftlab evaluate`) can show
"test 120/200, 6.1/s, ETA 0:13" instead of sitting silent for minutes.
"""

from __future__ import annotations

from typing import Callable

#: callback(phase, examples done, examples in the phase)
ProgressCallback = Callable[[str, float, int], None]


class EvalProgress:
    """Counts the examples scored in the current phase and reports each change to `callback`."""

    def __init__(self, callback: ProgressCallback | None = None) -> None:
        self.callback = callback
        self.name = ""
        self.total = 0
        self.done = 0.0

    def phase(self, name: str, total: int) -> EvalProgress:
        """Start a phase of `total` examples (reported at 0 done)."""
        self.name, self.total, self.done = name, int(total), 0.0
        self._report()
        return self

    def advance(self, n: float = 1) -> None:
        self.done = min(self.done + n, float(self.total)) if self.total else self.done + n
        self._report()

    def _report(self) -> None:
        if self.callback is not None:
            self.callback(self.name, self.done, self.total)
