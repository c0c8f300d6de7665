"""The code sandbox contains what generated programs commonly do wrong, and what an adversarial
program would try: the caller's secrets, files and processes stay out of its reach."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from peftlab.evaluation.sandbox import (
    ALLOW_CODE_EXECUTION_ENV,
    UnsafeCodeExecutionNotAllowed,
    check_humaneval,
    check_many,
    humaneval_program,
    isolation_prefix,
    landlock_abi,
    require_opt_in,
    run_program,
)

HAS_NETNS = "--net" in isolation_prefix()
HAS_PIDNS = "--pid" in isolation_prefix()
HAS_PROCNS = "--mount-proc" in isolation_prefix()
HAS_LANDLOCK = landlock_abi() >= 2
HAS_LANDLOCK_SIGNALS = landlock_abi() >= 6


def test_correct_program_passes():
    result = run_program("import math\nassert math.gcd(12, 18) == 6\nprint('ok')")
    assert result.passed and result.status == "passed"


def test_failing_assertion_fails_with_reason():
    result = run_program("assert 1 + 1 == 3, 'arithmetic is broken'")
    assert not result.passed and result.status == "failed"
    assert "AssertionError: arithmetic is broken" in result.detail


def test_syntax_error_fails():
    result = run_program("def f(:\n    pass")
    assert result.status == "failed" and "SyntaxError" in result.detail


def test_infinite_loop_times_out_within_limit():
    start = time.monotonic()
    result = run_program("while True:\n    pass", timeout_s=1.0)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - start < 3.0


def test_fallbacks_without_namespaces_or_pidfd(monkeypatch):
    """Machines without unshare or pidfds (older kernels, macOS-like setups) still work."""
    monkeypatch.delattr(os, "pidfd_open", raising=False)
    assert run_program("assert True", isolate=False).passed
    start = time.monotonic()
    assert run_program("while True:\n    pass", timeout_s=0.5, isolate=False).status == "timeout"
    assert time.monotonic() - start < 2.5


def _children_of_this_process() -> list[int]:
    path = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_fork_bomb_fails_and_leaves_the_test_process_unharmed():
    result = run_program("import os\nwhile True:\n    os.fork()", timeout_s=2.0)
    assert not result.passed
    assert result.status in {"failed", "timeout", "error"}
    # we can still start processes, and the sandbox left no children behind
    assert subprocess.run([sys.executable, "-c", "pass"], timeout=30).returncode == 0
    assert run_program("print('still fine')").passed
    assert _children_of_this_process() == []


@pytest.mark.parametrize(
    "program",
    [
        "import subprocess\nsubprocess.run(['echo', 'hi'])",
        "import os\nos.system('echo hi')",
        "import os\nos.kill(os.getppid(), 9)",
        "import ctypes",
        "exit(0)",
        "import sys\nsys.exit(0)",  # a completion must not skip the tests after it
    ],
)
def test_process_control_is_blocked(program):
    result = run_program(program)
    assert result.status == "failed", result


def test_writing_a_100mb_file_fails():
    result = run_program("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (100 * 2**20))")
    assert not result.passed
    assert "File too large" in result.detail or "MemoryError" in result.detail


@pytest.mark.parametrize(
    "template",
    [
        "import os\nos.remove({path!r})",
        "import os\nos.unlink({path!r})",
        "import pathlib\npathlib.Path({path!r}).unlink()",
        "import shutil\nshutil.rmtree({parent!r})",
        "import os\nos.rename({path!r}, 'stolen.txt')",
        "open({path!r}, 'w').write('overwritten')",
        "import os\nos.chmod({path!r}, 0)",
    ],
)
def test_files_outside_the_sandbox_are_protected(tmp_path, template):
    sentinel = tmp_path / "keep" / "sentinel.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("precious")
    result = run_program(template.format(path=str(sentinel), parent=str(sentinel.parent)))
    assert not result.passed and "outside the sandbox" in result.detail
    assert sentinel.read_text() == "precious"


def test_files_inside_the_sandbox_work():
    program = (
        "import os, shutil, tempfile\n"
        "d = tempfile.mkdtemp()\n"
        "open(os.path.join(d, 'a.txt'), 'w').write('x')\n"
        "os.rename(os.path.join(d, 'a.txt'), 'b.txt')\n"
        "os.remove('b.txt')\n"
        "shutil.rmtree(d)\n"
        "os.environ['X'] = '1'\n"  # libraries write os.environ on import; must not crash
    )
    assert run_program(program).passed


def test_environment_is_minimal():
    program = (
        "import os\n"
        # (LC_CTYPE may be added by the interpreter itself: PEP 538 locale coercion)
        "assert set(os.environ) <= {'PATH', 'LANG', 'PYTHONHASHSEED', 'HOME', 'TMPDIR', 'LC_CTYPE'}, os.environ\n"
        "assert os.environ['HOME'] == os.getcwd()\n"
        "assert os.environ['PYTHONHASHSEED'] == '0'\n"
        "assert hash('peftlab') == @HASH@\n"
    )
    seeded = subprocess.run([sys.executable, "-c", "print(hash('peftlab'))"], env={"PYTHONHASHSEED": "0"},
                            capture_output=True, text=True).stdout.strip()
    result = run_program(program.replace("@HASH@", seeded))
    assert result.passed, result


@pytest.fixture
def listening_port():
    """A real server on 127.0.0.1, so a connection would succeed if the sandbox let it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(5)
    stop = threading.Event()

    def accept_loop():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                pass

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def test_socket_to_localhost_fails(listening_port):
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {listening_port}), timeout=2)"
    with socket.create_connection(("127.0.0.1", listening_port), timeout=2):
        pass  # reachable from here
    assert not run_program(program).passed
    raw = f"import socket\ns = socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {listening_port}))"
    assert not run_program(raw).passed


@pytest.mark.skipif(not HAS_NETNS, reason="network namespaces unavailable here")
def test_network_namespace_blocks_sockets_without_the_guard(listening_port):
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {listening_port}), timeout=2)"
    result = run_program(program, guard=False)
    detail = result.detail.lower()
    assert not result.passed and ("unreachable" in detail or "refused" in detail), result


@pytest.mark.skipif(not HAS_PIDNS, reason="PID namespaces unavailable here")
def test_escaped_background_processes_are_killed():
    marker = f"{31 + uuid.uuid4().int % 1000 / 1000:.3f}"  # unique `sleep` argument
    program = (
        "import subprocess, time\n"
        f"subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
        "time.sleep(0.2)\n"
    )
    assert run_program(program, guard=False).passed
    time.sleep(0.2)
    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[:2] == [b"sleep", marker.encode()]:
            survivors.append(int(pid))
    for pid in survivors:  # clean up before failing
        os.kill(pid, 9)
    assert survivors == []


def test_allocating_4gb_fails_under_512mb():
    result = run_program("x = bytearray(4 * 1024**3)\nx[-1] = 1", memory_mb=512)
    assert not result.passed and "MemoryError" in result.detail


# ---------------------------------------------------------------------------------------
# HumanEval plumbing and opt-in
# ---------------------------------------------------------------------------------------

TOY = {
    "task_id": "Toy/0",
    "prompt": 'def add(a, b):\n    """Add two numbers."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}


def test_humaneval_program_layout():
    program = humaneval_program(TOY, "    return a + b\n")
    assert program == TOY["prompt"] + "    return a + b\n" + "\n" + TOY["test"] + "\n" + "check(add)"


def test_check_humaneval():
    assert check_humaneval(TOY, "    return a + b\n").passed
    assert check_humaneval(TOY, "    return a - b\n").status == "failed"
    # a demo block the model appended must not run (it would block on input())
    demo = "    return a + b\n\nif __name__ == '__main__':\n    input()\n"
    assert check_humaneval(TOY, demo).passed


def test_check_many_keeps_order():
    good, bad = "    return a + b\n", "    return None\n"
    results = check_many([(TOY, good), (TOY, bad), (TOY, good), (TOY, "    while True: pass\n")],
                         workers=2, timeout_s=1.0)
    assert [r.status for r in results] == ["passed", "failed", "passed", "timeout"]


def test_require_opt_in(monkeypatch):
    monkeypatch.delenv(ALLOW_CODE_EXECUTION_ENV, raising=False)
    with pytest.raises(UnsafeCodeExecutionNotAllowed) as info:
        require_opt_in(False)
    assert "--allow-code-execution" in str(info.value)
    assert "PEFTLAB_ALLOW_CODE_EXECUTION=1" in str(info.value)
    require_opt_in(True)
    monkeypatch.setenv(ALLOW_CODE_EXECUTION_ENV, "1")
    require_opt_in(False)


# ---------------------------------------------------------------------------------------
# Attacks on the caller: its secrets, its files, its processes. Each layer that claims to
# contain an attack is also tested alone (the others switched off), where this machine has it.
# ---------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
ALL, FALLBACK, GUARD_ONLY = "all layers", "no namespaces (fallback)", "guard only"
LANDLOCK_ONLY, NAMESPACES_ONLY, KERNEL_ONLY = "landlock only", "namespaces only", "namespaces + landlock, no guard"
LAYERS = {
    ALL: {},
    FALLBACK: {"isolate": False},
    GUARD_ONLY: {"isolate": False, "confine": False},
    LANDLOCK_ONLY: {"isolate": False, "guard": False},
    NAMESPACES_ONLY: {"guard": False, "confine": False},  # incl. the read-only mounts and own /proc
    KERNEL_ONLY: {"guard": False},
}
AVAILABLE = {ALL: True, FALLBACK: True, GUARD_ONLY: True, LANDLOCK_ONLY: HAS_LANDLOCK, NAMESPACES_ONLY: HAS_PROCNS,
             KERNEL_ONLY: HAS_PROCNS and HAS_LANDLOCK}


def _layer_params(*names):
    return [pytest.param(name, marks=pytest.mark.skipif(not AVAILABLE[name], reason=f"{name}: unavailable here"))
            for name in names]


_DRIVER = r"""
import json, os, sys
from peftlab.evaluation.sandbox import run_program

jobs, secret = json.loads(sys.argv[1]), sys.argv[2]
me, out = str(os.getpid()), {}
for name, program, kwargs in jobs:
    print(f"running {name}", file=sys.stderr, flush=True)
    r = run_program(program.replace("@DRIVER_PID@", me), capture_output=True, **kwargs)
    if name.startswith("control"):  # an unsandboxed read of our own environment: report only what it saw
        out[name] = {"saw_secret": secret in r.stdout}
    else:
        out[name] = {"status": r.status, "detail": r.detail, "stdout": r.stdout, "stderr": r.stderr}
print(json.dumps(out))
"""


def _run_from_driver(jobs: list, secret: str, env: dict | None = None) -> dict:
    """Run sandboxed programs from a child process whose pid replaces ``@DRIVER_PID@``.

    The secret is in that process's *initial* environment and on its command line, where a token
    exported in a shell really is (``monkeypatch.setenv`` changes ``os.environ`` but not
    ``/proc/<pid>/environ``); and a signal that escaped the sandbox could only kill the driver
    (its own session and process group), never pytest.
    """
    import peftlab

    src = str(Path(peftlab.__file__).resolve().parents[1])
    child_env = {**os.environ, **(env or {}), "HF_TOKEN": secret, "PYTHONPATH": src}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(jobs), secret], env=child_env,
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    last = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else ["?"]
    assert proc.returncode == 0, f"the driver (the sandbox's parent) died with {proc.returncode} while {last[0]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _secret_probe(targets: list[str]) -> str:
    """Every Python route to a file's contents, on each target; everything read goes to stdout,
    stderr and the error message (the detail recorded in samples.jsonl)."""
    return (
        "import io, _io, linecache, os, pathlib, shutil, sys, tokenize\n"
        f"TARGETS = {targets!r}\n"
        r'''
found = []

def attempt(route, read):
    try:
        data = read()
    except Exception as exc:
        found.append(f"{route}: {type(exc).__name__}: {exc}")
    else:
        found.append(f"{route}: " + (data.decode("latin-1") if isinstance(data, bytes) else str(data)))

def os_read(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)

def via_symlink(path, i):
    os.symlink(path, f"link{i}")
    return open(f"link{i}", "rb").read()

def via_copy(path, i):
    shutil.copyfile(path, f"copy{i}")
    return open(f"copy{i}", "rb").read()

for i, t in enumerate(TARGETS):
    attempt(f"open {t}", lambda: open(t, "rb").read())
    attempt(f"io.FileIO {t}", lambda: io.FileIO(t).read())
    attempt(f"_io.FileIO {t}", lambda: _io.FileIO(t).read())
    attempt(f"os.open {t}", lambda: os_read(t))
    attempt(f"pathlib {t}", lambda: pathlib.Path(t).read_bytes())
    attempt(f"io.open_code {t}", lambda: io.open_code(t).read())
    attempt(f"tokenize.open {t}", lambda: tokenize.open(t).read())
    attempt(f"linecache {t}", lambda: "".join(linecache.getlines(t)))
    attempt(f"symlink {t}", lambda: via_symlink(t, i))
    attempt(f"shutil.copyfile {t}", lambda: via_copy(t, i))
attempt("os.environ", lambda: repr(dict(os.environ)))
text = "\n".join(found)
print(text)
print(text, file=sys.stderr)
raise RuntimeError(" | ".join(found))
''')


ENV_TARGETS = [
    "/proc/@DRIVER_PID@/environ", "/proc/@DRIVER_PID@/cmdline", "/proc/@DRIVER_PID@/task/@DRIVER_PID@/environ",
    "/proc/PPID/environ", "/proc/PPID/cmdline", "/proc/1/environ", "/proc/1/cmdline",
    "/proc/self/environ", "/proc/thread-self/environ",
]


def _leaks(secret: str, result: dict) -> list[str]:
    return [where for where in ("detail", "stdout", "stderr") if secret in result[where]]


def test_the_callers_secrets_reach_no_output(tmp_path):
    """A token in the parent's environment, command line, home directory and HF_HOME stays out
    of the result, the error text, stdout and stderr, under every layer that claims it."""
    secret = f"hf_secret_{uuid.uuid4().hex}"
    home, hf_home = tmp_path / "home", tmp_path / "hf-home"
    (home / ".cache" / "huggingface").mkdir(parents=True)
    (home / ".cache" / "huggingface" / "token").write_text(secret)
    hf_home.mkdir()
    (hf_home / "token").write_text(secret)
    file_targets = [str(home / ".cache" / "huggingface" / "token"), str(hf_home / "token")]
    env_probe = "import os\nPPID = os.getppid()\n" + _secret_probe(ENV_TARGETS).replace(
        "TARGETS = ", "TARGETS = [t.replace('PPID', str(os.getppid())) for t in ", 1).replace(
        "]\n", "]]\n", 1)
    jobs = [["control: unsandboxed", "import sys\nsys.stdout.buffer.write(open('/proc/@DRIVER_PID@/environ', 'rb').read())",
             {"isolate": False, "guard": False, "confine": False}]]
    for name, kwargs in LAYERS.items():
        if not AVAILABLE[name]:
            continue
        jobs.append([f"environment, {name}", env_probe, kwargs])
        if name != NAMESPACES_ONLY:  # namespaces hide processes, not files
            jobs.append([f"files, {name}", _secret_probe(file_targets), kwargs])
    results = _run_from_driver(jobs, secret, env={"HOME": str(home), "HF_HOME": str(hf_home)})
    if not results.pop("control: unsandboxed")["saw_secret"]:
        pytest.skip("this machine hides a parent's environment from its children anyway: nothing to contain")
    assert len(results) == 2 * sum(AVAILABLE.values()) - AVAILABLE[NAMESPACES_ONLY]
    for name, result in results.items():
        assert result["status"] == "failed", (name, result["status"], result["detail"][:300])
        leaked = _leaks(secret, result)
        assert not leaked, f"{name}: the secret leaked into {leaked}"


@pytest.mark.parametrize("layers", _layer_params(ALL, FALLBACK))
def test_the_callers_environment_is_not_inherited(monkeypatch, layers):
    secret = f"hf_secret_{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("PEFTLAB_TEST_SECRET", secret)
    program = (
        "import os, sys\n"
        "print(dict(os.environ))\n"
        "print(open('/proc/self/environ', 'rb').read(), file=sys.stderr)\n"
        "raise RuntimeError(repr(dict(os.environ)))\n"
    )
    result = run_program(program, capture_output=True, **LAYERS[layers])
    assert result.status == "failed"
    assert not _leaks(secret, result.__dict__)


_KILL_PROBE = r"""
import os, signal
outcomes = []

def attempt(route, act):
    try:
        act()
    except Exception as exc:
        outcomes.append(f"{route}: {type(exc).__name__}: {exc}")
    else:
        outcomes.append(f"{route}: SENT")

parent = @DRIVER_PID@
attempt("os.kill(parent)", lambda: os.kill(parent, signal.SIGKILL))
attempt("os.kill(getppid())", lambda: os.kill(os.getppid(), signal.SIGKILL))
attempt("posix.kill(parent)", lambda: __import__("posix").kill(parent, signal.SIGKILL))
attempt("os.killpg(parent's group)", lambda: os.killpg(os.getpgid(parent), signal.SIGKILL))
attempt("pidfd_send_signal(parent)", lambda: signal.pidfd_send_signal(os.pidfd_open(parent), signal.SIGKILL))
raise RuntimeError(" | ".join(outcomes))
"""


def test_signals_cannot_reach_the_parent():
    """os.kill, killpg and pidfd_send_signal of the sandbox's parent fail under every layer that
    claims to contain them (a signal that got through would kill the driver, failing the test)."""
    jobs = []
    for name, kwargs in LAYERS.items():
        if AVAILABLE[name] and (name not in (LANDLOCK_ONLY, KERNEL_ONLY) or HAS_LANDLOCK_SIGNALS):
            jobs.append([name, _KILL_PROBE, kwargs])
    results = _run_from_driver(jobs, secret="-")
    assert set(results) == {job[0] for job in jobs}
    for name, result in results.items():
        assert result["status"] == "failed", (name, result)
        outcomes = result["detail"].split(" | ")
        sent = [o for o in outcomes if o.endswith(": SENT") and "getppid" not in o]
        assert not sent, f"{name}: {sent}"
        if name in (FALLBACK, GUARD_ONLY, LANDLOCK_ONLY):  # the parent is getppid() here
            assert not any(o.endswith(": SENT") for o in outcomes), f"{name}: {outcomes}"


_WRITE_PROBE = r"""
import _io, io, json, os, pathlib, shutil, sqlite3, tempfile
D, SKIP = @OUTSIDE@, @SKIP@
f = lambda route: os.path.join(D, route + ".txt")
new = lambda route: os.path.join(D, "new-" + route)
open("mine.txt", "w").write("mine")
os.mkdir("mine-tree")

def hard_link_then_write():
    os.link(f("os.link"), "hard-link")
    open("hard-link", "w").write("x")

def symlink_then_write():
    os.symlink(f("symlink-then-open"), "soft-link")
    open("soft-link", "w").write("x")

def symlink_then_hard_link():
    os.symlink(f("symlink-then-hard-link"), "soft-link-3")
    here = os.open(".", os.O_RDONLY)  # with dir fds os.link uses linkat(AT_SYMLINK_FOLLOW) ...
    os.link("soft-link-3", "hard-link-3", src_dir_fd=here, dst_dir_fd=here)  # ... to the outside file
    open("hard-link-3", "w").write("x")

def symlink_then_chmod():
    os.symlink(f("symlink-then-chmod"), "soft-link-2")
    os.chmod("soft-link-2", 0o777)

ROUTES = {
    "open-w": lambda: open(f("open-w"), "w").write("x"),
    "open-a-new": lambda: open(new("open-a"), "a").write("x"),
    "io.FileIO-new": lambda: io.FileIO(new("io.FileIO"), "w").write(b"x"),
    "io.FileIO-overwrite": lambda: io.FileIO(f("io.FileIO-overwrite"), "r+").write(b"XXXX"),
    "_io.FileIO": lambda: _io.FileIO(f("_io.FileIO"), "a").write(b"x"),
    "_io.open": lambda: _io.open(f("_io.open"), "w").write("x"),
    "os.open-create": lambda: os.write(os.open(new("os.open"), os.O_WRONLY | os.O_CREAT), b"x"),
    "os.open-trunc": lambda: os.open(f("os.open-trunc"), os.O_WRONLY | os.O_TRUNC),
    "os.open-dir_fd": lambda: os.write(os.open("os.open-dir_fd.txt", os.O_WRONLY | os.O_APPEND,
                                               dir_fd=os.open(D, os.O_RDONLY)), b"x"),
    "pathlib.write_text": lambda: pathlib.Path(f("pathlib.write_text")).write_text("x"),
    "pathlib.write_bytes-new": lambda: pathlib.Path(new("pathlib.write_bytes")).write_bytes(b"x"),
    "pathlib.open": lambda: pathlib.Path(f("pathlib.open")).open("a").write("x"),
    "pathlib.touch": lambda: pathlib.Path(new("pathlib.touch")).touch(),
    "pathlib.unlink": lambda: pathlib.Path(f("pathlib.unlink")).unlink(),
    "os.remove": lambda: os.remove(f("os.remove")),
    "os.unlink": lambda: os.unlink(f("os.unlink")),
    "os.rename-out": lambda: os.rename(f("os.rename-out"), "stolen.txt"),
    "os.rename-in": lambda: os.rename("mine.txt", new("os.rename-in")),
    "os.replace": lambda: os.replace("mine.txt", f("os.replace")),
    "os.rmdir": lambda: os.rmdir(os.path.join(D, "empty-dir")),
    "os.mkdir": lambda: os.mkdir(new("os.mkdir")),
    "os.makedirs": lambda: os.makedirs(os.path.join(new("os.makedirs"), "a", "b")),
    "os.symlink": lambda: os.symlink("/etc/passwd", new("os.symlink")),
    "os.link": hard_link_then_write,
    "symlink-then-open": symlink_then_write,
    "symlink-then-chmod": symlink_then_chmod,
    "symlink-then-hard-link": symlink_then_hard_link,
    "os.chmod": lambda: os.chmod(f("os.chmod"), 0o777),
    "os.truncate": lambda: os.truncate(f("os.truncate"), 0),
    "os.utime": lambda: os.utime(f("os.utime"), (0, 0)),
    "os.mkfifo": lambda: os.mkfifo(new("os.mkfifo")),
    "shutil.copy": lambda: shutil.copy("mine.txt", new("shutil.copy")),
    "shutil.copytree": lambda: shutil.copytree("mine-tree", new("shutil.copytree")),
    "shutil.move": lambda: shutil.move(f("shutil.move"), "moved.txt"),
    "shutil.rmtree": lambda: shutil.rmtree(os.path.join(D, "tree")),
    "tempfile.mkstemp": lambda: tempfile.mkstemp(dir=D),
    "tempfile.NamedTemporaryFile": lambda: tempfile.NamedTemporaryFile(dir=D, delete=False).write(b"x"),
    "sqlite3": lambda: sqlite3.connect(new("sqlite3")).execute("create table t (x)"),
}
results = {}
for route, act in ROUTES.items():
    if route in SKIP:
        continue
    try:
        act()
        results[route] = "DONE"
    except Exception as exc:
        results[route] = f"{type(exc).__name__}: {exc}"
print(json.dumps(results))
"""


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
            for p in sorted(root.rglob("*"))}


METADATA_ROUTES = {"os.chmod", "os.utime", "symlink-then-chmod"}


@pytest.mark.parametrize("layers", _layer_params(ALL, FALLBACK, GUARD_ONLY, LANDLOCK_ONLY, NAMESPACES_ONLY,
                                                 KERNEL_ONLY))
def test_no_route_writes_outside_the_sandbox(tmp_path, layers):
    """io.FileIO, os.open, pathlib, os.* path operations, shutil, tempfile, symlinks and hard
    links, sqlite3: nothing outside the sandbox directory is created, changed or removed.

    Landlock does not cover metadata (chmod, utime of files the caller owns), so alone it is
    tested without those routes: the read-only mounts and the guard contain them.
    """
    skip = METADATA_ROUTES if layers == LANDLOCK_ONLY else set()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "empty-dir").mkdir()
    (outside / "tree").mkdir()
    (outside / "tree" / "leaf.txt").write_text("leaf")
    program = _WRITE_PROBE.replace("@OUTSIDE@", repr(str(outside))).replace("@SKIP@", repr(skip))
    routes = [line.split('"')[1] for line in program.splitlines() if line.startswith('    "') and '": ' in line]
    for route in routes:
        (outside / f"{route}.txt").write_text("precious")
    before = _snapshot(outside)
    program = program.replace("import _io, io, json, os, pathlib, shutil, sqlite3, tempfile",
                              "import _io, io, json, os, pathlib, shutil, tempfile\n"
                              "try:\n    import sqlite3\nexcept ImportError as exc:\n"
                              "    class sqlite3:\n        def connect(*a, _exc=exc):\n            raise _exc")
    result = run_program(program, capture_output=True, **LAYERS[layers])
    assert result.passed, result
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(outcomes) == set(routes) - skip
    assert [route for route, outcome in outcomes.items() if outcome == "DONE"] == []
    assert _snapshot(outside) == before
    if LAYERS[layers].get("guard", True):  # the guard's refusals say why
        assert all("outside the sandbox" in o or "disabled in the peftlab sandbox" in o for o in outcomes.values()), outcomes


@pytest.mark.parametrize("layers", _layer_params(ALL, GUARD_ONLY, LANDLOCK_ONLY, NAMESPACES_ONLY, KERNEL_ONLY))
def test_no_device_node_can_be_made_and_opened(layers):
    """As root a device node in the sandbox directory would open raw disks and memory; made
    with /dev/null's numbers here, so that one that worked would still harm nothing."""
    program = (
        "import os, stat\n"
        "os.mknod('node', stat.S_IFCHR | 0o666, os.makedev(1, 3))\n"
        "open('node', 'rb').read(1)\n"
    )
    result = run_program(program, **LAYERS[layers])
    assert result.status == "failed", result


def test_a_symlink_inside_cannot_be_used_to_write_outside(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("precious")
    program = f"import os\nos.symlink({str(sentinel)!r}, 'link')\nopen('link', 'w').write('overwritten')"
    result = run_program(program)
    assert not result.passed and "outside the sandbox" in result.detail
    assert sentinel.read_text() == "precious"


@pytest.mark.skipif(landlock_abi() < 4, reason="Landlock TCP rules unavailable here")
def test_landlock_alone_blocks_tcp_without_a_network_namespace(listening_port):
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {listening_port}), timeout=2)"
    result = run_program(program, isolate=False, guard=False)
    assert not result.passed and "Permission denied" in result.detail, result


@pytest.mark.skipif(not HAS_PIDNS, reason="PID namespaces unavailable here")
def test_a_pid_namespace_comes_with_its_own_proc_where_possible():
    """A PID namespace under the host's /proc hides nothing (the original leak): wherever this
    machine can mount a fresh /proc, the sandbox must use it."""
    options = [o for o in isolation_prefix()[1:] if o != "--mount-proc"]
    probe = subprocess.run([isolation_prefix()[0], *options, "--mount-proc", sys.executable, "-S", "-c", "pass"],
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
    assert HAS_PROCNS == (probe.returncode == 0), isolation_prefix()


@pytest.mark.skipif(not HAS_PROCNS, reason="no mount namespace with its own /proc here")
def test_the_sandbox_sees_only_its_own_processes():
    program = "import os\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\nassert pids == [1, 2], pids"
    assert run_program(program, guard=False, confine=False).passed


LEGIT = r'''
import collections, functools, heapq, itertools, json, math, os, pathlib, random, re, shutil, string
import tempfile, threading


def has_close_elements(numbers, threshold):
    """Whether any two numbers are closer to each other than threshold."""
    return any(abs(a - b) < threshold for a, b in itertools.combinations(numbers, 2))


def words(text):
    return re.findall(r"[a-z]+", text.lower())


assert has_close_elements([1.0, 2.8, 3.0, 4.0], 0.3)
assert not has_close_elements([1.0, 2.0, 3.0], 0.5)
assert words("Hello, World!") == ["hello", "world"]
assert math.isclose(math.sqrt(2) ** 2, 2) and math.comb(5, 2) == 10
assert list(itertools.accumulate([1, 2, 3])) == [1, 3, 6]
assert collections.Counter("abca")["a"] == 2
assert heapq.nsmallest(2, [5, 1, 4]) == [1, 4]
assert functools.reduce(lambda a, b: a * b, range(1, 6)) == 120
assert string.ascii_lowercase[:3] == "abc"
random.seed(0)
assert 0 <= random.random() < 1 and len(os.urandom(8)) == 8
box = []
worker = threading.Thread(target=lambda: box.append(sum(range(10))))
worker.start()
worker.join()
assert box == [45]
work = tempfile.mkdtemp()
path = pathlib.Path(work, "data.json")
path.write_text(json.dumps({"a": 1}))
assert json.loads(path.read_text()) == {"a": 1}
with open(os.path.join(work, "log.txt"), "a") as f:
    f.write("x")
shutil.copy(path, pathlib.Path(work, "copy.json"))
os.rename(os.path.join(work, "copy.json"), "moved.json")
os.symlink("moved.json", "link.json")
assert open("link.json").read() == path.read_text()
os.chmod("moved.json", 0o600)
os.remove("link.json")
os.remove("moved.json")
with tempfile.NamedTemporaryFile("w") as tmp:
    tmp.write("y")
with open(os.devnull, "w") as null:
    print("quiet", file=null)
print(open("/dev/urandom", "rb").read(4) != b"", open(os.path.join(work, "log.txt")).read())
shutil.rmtree(work)
'''


@pytest.mark.parametrize("layers", _layer_params(*LAYERS))
def test_legitimate_humaneval_style_code_still_passes(layers):
    result = run_program(LEGIT, **LAYERS[layers])
    assert result.passed, result


def test_humaneval_problem_with_imports_passes_under_all_layers():
    problem = {
        "task_id": "Toy/1",
        "prompt": "import re\nfrom itertools import groupby\n\n\ndef run_lengths(text: str) -> list:\n"
                  '    """Lengths of the runs of equal letters, ignoring anything but letters."""\n',
        "test": "def check(candidate):\n    assert candidate('aab b!c') == [2, 2, 1]\n    assert candidate('') == []\n",
        "entry_point": "run_lengths",
    }
    completion = "    letters = re.sub('[^a-z]', '', text)\n    return [len(list(g)) for _, g in groupby(letters)]\n"
    assert check_humaneval(problem, completion).passed


# ---------------------------------------------------------------------------------------
# `peftlab evaluate` re-executes model code only with this command's opt-in
# ---------------------------------------------------------------------------------------


class _Reached(Exception):
    """Evaluation got past the opt-in check (to the runner, the data or the model)."""


@pytest.fixture
def code_run(tmp_path):
    """Make a finished `code` run whose stored config says allow_code_execution: true."""
    import dataclasses

    import yaml

    from peftlab.adapters import META_FILE
    from peftlab.config import load_experiment
    from peftlab.plan import expand

    def make(execute: bool = True) -> Path:
        rc = expand(load_experiment(REPO / "configs" / "code.yaml"))[0]
        task = dataclasses.replace(rc.task, args={**rc.task.args, "execute": execute})
        rc = dataclasses.replace(rc, task=task, eval=dataclasses.replace(rc.eval, allow_code_execution=True))
        run_dir = tmp_path / "runs" / rc.run_id()
        (run_dir / "adapter").mkdir(parents=True)
        (run_dir / "adapter" / META_FILE).write_text("{}")
        (run_dir / "config.yaml").write_text(yaml.safe_dump(rc.to_dict(), sort_keys=False))
        (run_dir / "result.json").write_text(json.dumps({"run_id": rc.run_id(), "status": "ok"}))
        return run_dir

    return make


@pytest.fixture
def nothing_loads(monkeypatch):
    """The runner (imported right after the check), the data and the model all raise _Reached."""
    import types

    from peftlab import lifecycle

    def reached(name):
        raise _Reached(name)

    runner = types.ModuleType("peftlab.runner")
    runner.__getattr__ = reached
    monkeypatch.setitem(sys.modules, "peftlab.runner", runner)
    monkeypatch.setattr(lifecycle, "load_run", lambda *args, **kwargs: reached("load_run"))
    monkeypatch.delenv(ALLOW_CODE_EXECUTION_ENV, raising=False)


def test_evaluate_refuses_code_runs_despite_the_stored_opt_in(code_run, nothing_loads):
    from peftlab.lifecycle import evaluate_run

    run_dir = code_run()
    with pytest.raises(UnsafeCodeExecutionNotAllowed) as info:
        evaluate_run(str(run_dir), "greedy")
    message = str(info.value)
    assert message.startswith(f"Re-evaluating run {run_dir.name} executes model-generated code")
    assert "--allow-code-execution" in message and "PEFTLAB_ALLOW_CODE_EXECUTION=1" in message
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")  # one sentence


def test_evaluate_cli_refusal_is_one_line_without_traceback(code_run, nothing_loads, capsys):
    from peftlab.cli import main

    run_dir = code_run()
    assert main(["evaluate", str(run_dir), "--decoding", "greedy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Re-evaluating run") and "--allow-code-execution" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_evaluate_takes_the_opt_in_from_this_command(code_run, nothing_loads, monkeypatch):
    import argparse

    from peftlab.cli.lifecycle import evaluate_cmd
    from peftlab.lifecycle import evaluate_run

    run_dir = code_run()
    with pytest.raises(_Reached):
        evaluate_run(str(run_dir), "greedy", allow_code_execution=True)
    args = argparse.Namespace(run=str(run_dir), decoding="greedy", store="runs", limit_eval=None,
                              allow_code_execution=True)
    with pytest.raises(_Reached):
        evaluate_cmd(args)
    monkeypatch.setenv(ALLOW_CODE_EXECUTION_ENV, "1")
    with pytest.raises(_Reached):
        evaluate_run(str(run_dir), "greedy")


def test_evaluate_without_execution_needs_no_opt_in(code_run, nothing_loads):
    from peftlab.lifecycle import evaluate_run

    with pytest.raises(_Reached):
        evaluate_run(str(code_run(execute=False)), "greedy")


def test_evaluate_cli_flag_reaches_the_opt_in(code_run, nothing_loads, capsys):
    from peftlab.cli import build_parser, main

    run_dir = code_run()
    argv = ["evaluate", str(run_dir), "--decoding", "greedy", "--allow-code-execution"]
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        capsys.readouterr()
        pytest.skip("`peftlab evaluate` has no --allow-code-execution flag yet (PEFTLAB_ALLOW_CODE_EXECUTION=1 works)")
    main(argv)
    err = capsys.readouterr().err
    assert "_Reached" in err and "Re-evaluating" not in err, err
