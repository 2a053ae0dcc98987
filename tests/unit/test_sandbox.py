"""Adversarial tests for rewards/sandbox.py: one per protection, each with a real bwrap sandbox.

Every test checks the attack was contained, the status is the right one, and (via the `sandbox`
fixture) that no process of the sandbox outlives the run or the sandbox: its processes are found by its
bwrap's pid namespace, not by the shared sandbox uid, which other sandboxes on the machine also run as.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from rewards.sandbox import SANDBOX_UID, Sandbox, SandboxConfig, SandboxUnavailable

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")
CFG = SandboxConfig(timeout_s=2.0, cpu_s=1, memory_mb=256, file_mb=1, tmp_mb=8, max_procs=24)


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every host process: pid -> (parent pid, real uid, pid namespace)."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in (p / "status").read_text().splitlines() if ":" in line)
            out[int(p.name)] = (int(fields["PPid"]), int(fields["Uid"].split()[0]), os.readlink(p / "ns" / "pid"))
        except (OSError, KeyError, ValueError):
            pass
    return out


def _descendants(procs: dict[int, tuple[int, int, str]], root: int) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in procs.items() if ppid in frontier} - found
        found |= frontier
    return found


_NAMESPACES: dict[int, set[str]] = {}  # id(sandbox) -> the pid namespaces its bwraps made (a restart makes one)


def procs_of(*sandboxes: Sandbox) -> set[int]:
    """Host pids of these sandboxes: each one's bwrap and every process in the pid namespaces its bwraps made
    (an escaped, reparented or detached process stays in its namespace). Only these: other sandboxes on the
    machine (another xdist worker's code rewards run as the same uid) are not this test's to count."""
    procs, out = _processes(), set()
    for sb in sandboxes:
        seen = _NAMESPACES.setdefault(id(sb), set())
        bwrap = sb._proc.pid if sb._proc is not None and sb._proc.poll() is None else None
        if bwrap in procs:
            out.add(bwrap)
            seen |= {procs[pid][2] for pid in _descendants(procs, bwrap)} - {procs[bwrap][2]}
        out |= {pid for pid, (_, _, ns) in procs.items() if ns in seen}
    return out


def sandbox_uid_children() -> set[int]:
    """Sandbox-uid processes started (at any depth) by this test process."""
    procs = _processes()
    return {pid for pid in _descendants(procs, os.getpid()) if procs[pid][1] == SANDBOX_UID}


def wait_until(pred, timeout=5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


@pytest.fixture(scope="module")
def sandbox():
    from rewards.code import close_sandboxes

    close_sandboxes()  # the code-reward tests' sandboxes, when run in the same session
    assert wait_until(lambda: not sandbox_uid_children()), "stale sandbox processes from an earlier test"
    sb = Sandbox(CFG)
    yield sb
    procs_of(sb)  # notes its namespaces while it is up
    sb.close()
    assert wait_until(lambda: not procs_of(sb)), f"left behind after close: {procs_of(sb)}"


def _only_server_and_next_child(sb: Sandbox) -> bool:
    pids = procs_of(sb)
    if len(pids) != 3:
        return False
    procs = _processes()
    if not pids <= procs.keys():  # one of them exited between the two looks (a run being reaped): not settled yet
        return False
    bwrap = sb._proc.pid
    servers = [p for p in pids if procs[p][0] == bwrap]
    if len(servers) != 1:
        return False
    (server,) = servers
    (child,) = pids - {bwrap, server}
    # the child the server forked ahead of the next run: its child, a copy of its process (a run's leftover,
    # reparented to the server as the namespace's init, would be a fourth process or another command)
    try:
        return procs[child][0] == server and Path(f"/proc/{child}/cmdline").read_bytes() == Path(f"/proc/{server}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def only_server_left(sb: Sandbox) -> bool:
    # While a sandbox is up, exactly three of its processes exist: bwrap, the fork-server, and the child it
    # forked (after cleaning up the last run) for the next run, waiting for its job.
    return wait_until(lambda: _only_server_and_next_child(sb))


def run_io(sb: Sandbox, program: str, expected: str = "", stdin: str = ""):
    return sb.run(program, [{"input": stdin, "output": expected}])


def test_basic_io_and_asserts(sandbox):
    r = sandbox.run("print(sum(map(int, input().split())))", [{"input": "1 2", "output": "3\n\n"}, {"input": "2 2", "output": "5"}])
    assert r.tests == ["passed", "failed"] and r.status == "failed" and r.fraction == 0.5
    r = sandbox.run("def add(a, b):\n    return a + b\n", "def check(f):\n    assert f(1, 2) == 3\n", entry_point="add")
    assert r.status == "passed" and r.tests == ["passed"]
    # partial output must not pass (the anchors' zip() bug)
    assert run_io(sandbox, "print(1)", "1\n2").status == "failed"
    assert run_io(sandbox, "print(1); print(2)", "1").status == "failed"


def test_fork_bomb(sandbox):
    t0 = time.monotonic()
    r = run_io(sandbox, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert r.status == "timeout"
    assert time.monotonic() - t0 < CFG.timeout_s + 3
    assert only_server_left(sandbox)
    assert run_io(sandbox, "print('ok')", "ok").status == "passed"


def test_memory_bomb(sandbox):
    r = run_io(sandbox, "x = bytearray(1 << 34)")
    assert r.status == "memory"
    r = run_io(sandbox, "chunks = []\nwhile True:\n    chunks.append(b'x' * (1 << 24))\n")
    assert r.status == "memory"
    assert only_server_left(sandbox)


def test_infinite_loop_hits_cpu_limit(sandbox):
    r = run_io(sandbox, "while True:\n    pass\n")
    assert r.status == "timeout"
    assert only_server_left(sandbox)


def test_sleep_past_wall_limit(sandbox):
    t0 = time.monotonic()
    r = run_io(sandbox, "import time\ntime.sleep(60)\n")
    assert r.status == "timeout" and r.duration_s < CFG.timeout_s + 1
    assert time.monotonic() - t0 < CFG.timeout_s + 2
    assert only_server_left(sandbox)


def test_setsid_child_outliving_parent_is_killed_and_cannot_touch_next_run(sandbox):
    daemon = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(0.5)\n"
        "        open('/tmp/planted', 'w').write('x')\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('done')\n"
    )
    assert run_io(sandbox, daemon, "done").status == "passed"
    assert only_server_left(sandbox)
    time.sleep(0.7)
    r = run_io(sandbox, "import os\nprint(sorted(os.listdir('/tmp')), len([p for p in os.listdir('/proc') if p.isdigit()]))", "['run'] 2")
    assert r.status == "passed", r  # only the fork-server (pid 1) and this run exist; nothing was planted


def test_disk_fill(sandbox):
    r = run_io(sandbox, "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 65536)\n")
    assert r.status == "error" and "File too large" in r.stderr_tail
    many = "i = 0\nwhile True:\n    open(f'f{i}', 'wb').write(b'x' * 900000)\n    i += 1\n"
    r = run_io(sandbox, many)
    assert r.status == "error" and "No space left" in r.stderr_tail
    assert run_io(sandbox, "import os\nprint(os.listdir('/tmp'), os.listdir('/dev/shm'))", "['run'] []").status == "passed"
    assert only_server_left(sandbox)


def test_socket_connect_to_loopback_server(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    prog = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'stolen')\nprint('connected')\n"
    r = run_io(sandbox, prog, "connected")
    assert r.status == "error" and ("Network is unreachable" in r.stderr_tail or "refused" in r.stderr_tail)
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()
    assert only_server_left(sandbox)


def test_write_outside_temp_dir(sandbox, tmp_path):
    targets = ["/evil", "/usr/evil", "/etc/evil", "/proc/evil", str(tmp_path / "evil"), "/work/main/evil", "/root/evil"]
    prog = (
        "import os\n"
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        open(p, 'w').write('x')\n"
        "        print('WROTE', p)\n"
        "    except OSError:\n"
        "        print('blocked')\n"
    )
    r = run_io(sandbox, prog, "\n".join(["blocked"] * len(targets)))
    assert r.status == "passed", r
    assert not any(Path(p).exists() for p in targets)


def test_env_secret_and_netrc_are_invisible(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".netrc").write_text("machine api.example.com login me password hunter2\n")
    monkeypatch.setenv("RZ_TEST_SECRET_TOKEN", "s3cret-token")
    monkeypatch.setenv("HOME", str(home))
    prog = (
        "import os\n"
        "print(any('s3cret' in v or 'SECRET' in k for k, v in os.environ.items()))\n"
        f"for p in ['~/.netrc', {str(home / '.netrc')!r}, '/root/.netrc']:\n"
        "    try:\n"
        "        print(open(os.path.expanduser(p)).read())\n"
        "    except OSError:\n"
        "        print('unreadable')\n"
    )
    with Sandbox(CFG) as sb:  # a fresh sandbox started with the secret in the harness environment
        r = run_io(sb, prog, "False\nunreadable\nunreadable\nunreadable")
        assert r.status == "passed", r


def test_kill_parent_does_not_take_down_the_server(sandbox):
    assert run_io(sandbox, "print(1)", "1").status == "passed"  # started, whichever test of the module ran first
    pid_before, starts_before = sandbox.server_pid, sandbox.starts
    prog = "import os, signal\nfor s in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):\n    os.kill(os.getppid(), s)\nos.kill(1, signal.SIGKILL)\nprint('alive')\n"
    assert run_io(sandbox, prog, "alive").status == "passed"
    assert run_io(sandbox, "print(2)", "2").status == "passed"
    assert (sandbox.server_pid, sandbox.starts) == (pid_before, starts_before)
    assert only_server_left(sandbox)


def test_runs_leave_nothing_for_the_next_run(sandbox):
    plant = (
        "import ctypes, os\n"
        "open('/tmp/run/a', 'w').write('x'); open('/dev/shm/b', 'w').write('x'); os.mkdir('/tmp/c', 0)\n"
        "libc = ctypes.CDLL(None)\n"
        "print(libc.shmget(0x1234, 4096, 0o1666) >= 0)\n"  # IPC_CREAT | 0666
    )
    assert run_io(sandbox, plant, "True").status == "passed"
    check = (
        "import ctypes, os\n"
        "print(os.listdir('.'), os.listdir('/tmp'), os.listdir('/dev/shm'), ctypes.CDLL(None).shmget(0x1234, 0, 0))\n"
    )
    assert run_io(sandbox, check, "[] ['run'] [] -1").status == "passed"


def test_concurrent_sandboxes_cannot_see_each_other(sandbox):
    # A run in another sandbox is busy while this one lists every process it can see.
    other = Sandbox(CFG)
    t = threading.Thread(target=run_io, args=(other, "import time\ntime.sleep(1.5)\n"))
    t.start()
    time.sleep(0.8)
    r = run_io(sandbox, "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == sorted({1, os.getpid()}))", "True")
    t.join()
    other.close()
    assert r.status == "passed", r


def test_asserts_exit_early_earns_nothing(sandbox):
    r = sandbox.run("import os\nos._exit(0)\n", "assert f(1) == 2\nassert f(2) == 3\n")
    assert r.tests == ["failed", "failed"]
    r = sandbox.run("def f(x):\n    return x + 1\n", "assert f(1) == 2\nassert f(2) == 4\nwhile True: pass\nassert f(3) == 4\n")
    assert r.tests == ["passed", "failed", "timeout"] and r.status == "timeout"


def test_missing_bwrap_raises(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        Sandbox(CFG).run("print(1)", [{"input": "", "output": "1"}])


def test_no_leftover_processes_after_close(sandbox):
    assert only_server_left(sandbox)
    sb = Sandbox(CFG)
    assert run_io(sb, "import subprocess\nsubprocess.Popen(['sleep', '60'], start_new_session=True)\nprint(1)", "1").status == "passed"
    assert only_server_left(sb)
    sb.close()
    assert wait_until(lambda: not procs_of(sb)), procs_of(sb)
    assert only_server_left(sandbox), "closing one sandbox leaves the other alone"


def test_malformed_tests_raise_value_error(sandbox):
    with pytest.raises(ValueError):
        sandbox.run("x = 1", "assert (")
    with pytest.raises(ValueError):
        sandbox.run("x = 1", "x = 2\n")
    with pytest.raises(ValueError):
        sandbox.run("x = 1", [])
    assert os.getuid() == 0 or True  # documented: non-root harnesses run the sandbox as their own uid


# -- results compared as plain data (rewards/_plain_asserts.py) ---------------------------------------
LIARS = {  # each program's add(a, b) returns R(0), which claims to be whatever the test expects
    "eq": "class R:\n    def __init__(self, v):\n        pass\n    def __eq__(self, other):\n        return True\n"
          "    __hash__ = object.__hash__\n",
    "ne": "class R:\n    def __init__(self, v):\n        pass\n    def __ne__(self, other):\n        return False\n"
          "    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n",
    "bool": "class R:\n    def __init__(self, v):\n        pass\n    def __bool__(self):\n        return True\n"
            "    def __contains__(self, item):\n        return True\n",
    "int": "class R(int):\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n        return False\n"
           "    __hash__ = int.__hash__\n",
}
LIAR_TESTS = ("assert add(1, 2) == 3\nassert 3 == add(1, 2)\nassert not (add(1, 2) != 3)\nassert add(1, 2)\n"
              "assert 3 in add(1, 2) or add(1, 2) == 3\nassert [add(1, 2)] == [3]\nassert {'sum': add(1, 2)} == {'sum': 3}\n")


@pytest.mark.parametrize("kind", sorted(LIARS))
def test_results_that_lie_about_equality_fail(sandbox, kind):
    program = LIARS[kind] + "def add(a, b):\n    return R(0)\n"
    r = sandbox.run(program, LIAR_TESTS)
    assert r.tests == ["failed"] * 7, (kind, r)
    humaneval = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
    assert sandbox.run(program, humaneval, entry_point="add").tests == ["failed"]


def test_lies_survive_no_rebinding_of_builtins_or_ast(sandbox):
    # The program patches what the comparison helpers and the assert rewriting use; both were bound or
    # done before it ran, so the lie still fails.
    program = LIARS["eq"] + (
        "import ast, builtins\n"
        "builtins.type = lambda *a: int\n"
        "builtins.issubclass = lambda *a: True\n"
        "ast.NodeTransformer.visit = lambda self, node: node\n"
        "def add(a, b):\n    globals().clear()\n    return R(0)\n"
    )
    r = sandbox.run(program, "assert add(1, 2) == 3\nassert add(2, 2) == 4\n")
    assert r.tests == ["failed", "failed"], r


def test_honest_results_still_compare_as_before(sandbox):
    program = (
        "import collections\n"
        "class N(int):\n    pass\n"
        "P = collections.namedtuple('P', 'x y')\n"
        "class Box:\n    pass\n"
        "def n(): return N(3)\n"
        "def p(): return P(1, 2)\n"
        "def gen(): return (i * i for i in range(3))\n"
        "def box(): return Box()\n"
        "def counts(): return collections.Counter('aab')\n"
        "def nan(): return float('nan')\n"
    )
    tests = ("assert n() == 3\nassert p() == (1, 2)\nassert list(gen()) == [0, 1, 4]\nassert box() is not None\n"
             "assert counts() == {'a': 2, 'b': 1}\nassert type(n()) == N\nassert sorted(counts()) == ['a', 'b']\n"
             "assert nan() != nan()\nassert abs(n() - 3.0) < 1e-9\nassert not []\n")
    r = sandbox.run(program, tests)
    assert r.tests == ["passed"] * 10, r
    r = sandbox.run(program, "assert box() == box()\nassert p() == (1, 3)\n")  # a non-builtin in a comparison fails
    assert r.tests == ["failed", "failed"], r


def test_preloaded_modules_are_fresh_in_every_run(sandbox):
    # The server imports common modules once before forking: each run still gets its own random state, and
    # what one run does to a preloaded module is gone in the next.
    draw = "import random, sys\nsys.stderr.write(str(random.random()))\n"
    assert len({run_io(sandbox, draw).stderr_tail for _ in range(4)}) == 4
    assert run_io(sandbox, "import math\nmath.pi = 3\n").status == "passed"
    assert sandbox.run("import math\ndef f():\n    return math.pi\n", "assert f() > 3.1\n").status == "passed"
