"""The code sandbox contains what generated programs commonly do wrong."""

from __future__ import annotations

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
    require_opt_in,
    run_program,
)

HAS_NETNS = "--net" in isolation_prefix()
HAS_PIDNS = "--pid" in isolation_prefix()


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
