"""Writing and locking files safely: the one atomic write and the one file lock peftlab uses.

* `atomic_open` / `atomic_write_text`: write to a temp file in the same directory, flush and
  `fsync` it, then `os.replace` it over the target (atomic on POSIX): a reader or a crash sees the
  old file or the new one, never half of one; on any error the temp file is removed and the old
  file is left as it was. The file ends up with the mode a plain `open` would give it
  (`0o666 & ~umask`), not the temp file's private 0600.
* `FileLock`: an advisory `flock` on a lock file, non-blocking (`acquire() -> bool`) or blocking
  (`with FileLock(path):`); the kernel drops it when the process dies, so a crash never leaves a
  stale lock.

This module sits on the lowest floor: it imports nothing of peftlab's.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

try:  # POSIX advisory locks
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking, atomic writes still hold
    fcntl = None  # type: ignore[assignment]


@functools.lru_cache(maxsize=1)
def current_umask() -> int:
    """The process's umask, read once (`current_umask.cache_clear()` re-reads it).

    Linux reports it in /proc/self/status; elsewhere it is read by setting it and putting it back
    at once, which is why the answer is cached rather than read on every write.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less the umask (0o644 under umask 022)."""
    return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """A file handle whose contents replace `path` atomically (with fsync) when the block ends cleanly.

    The temp file is private (mkstemp's 0600) while it is written; the finished file gets the mode
    of any new file (`new_file_mode()`), so other users read results and reports as the umask allows.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), new_file_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> os.stat_result:
    """Write `text` to `path` atomically (see `atomic_open`); returns the written file's stat."""
    with atomic_open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        st = os.fstat(fh.fileno())
    return st


class FileLock:
    """An exclusive advisory `flock` on `path` (the lock file is created if needed).

    `acquire()` does not wait (False: another process holds it); `with FileLock(path):` waits.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh: Any = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")

    def acquire(self, blocking: bool = False) -> bool:
        self._open()
        if fcntl is None:  # pragma: no cover
            return True
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            return False
        return True

    def release(self) -> None:
        if self._fh is not None:
            if fcntl is not None:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def held_elsewhere(self) -> bool:
        """Whether another open lock (another process) holds it; writes nothing (a missing file: no)."""
        if fcntl is None:  # pragma: no cover
            return False
        try:
            fh = open(self.path, "rb")
        except OSError:
            return False
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        finally:
            fh.close()  # closing drops the probe's lock
        return False

    def __enter__(self) -> "FileLock":
        self.acquire(blocking=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
