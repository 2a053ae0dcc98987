"""Run untrusted model-written programs against tests, in a bubblewrap sandbox with a fork-server.

How a run is confined (each layer is exercised by one adversarial test in tests/unit/test_sandbox.py):

* **Namespaces** (`bwrap --unshare-all --disable-userns`): own network namespace with only a down
  loopback (no sockets reach the host or the internet), own PID namespace (a run sees only its sandbox),
  own IPC/UTS/cgroup namespaces, and no further user namespaces inside.
* **Filesystem**: a read-only bind of `/usr` (and the `/bin`, `/lib*` symlinks into it) plus a few
  harmless files from `/etc`; nothing else of the host exists inside (no `/root`, `/home`, `/work`, no
  project tree, no `~/.netrc`, no Ray or wandb state). `/tmp` and `/dev/shm` are size-capped tmpfs.
  Each run gets a fresh `/tmp/run` as cwd, `HOME` and `TMPDIR`.
* **Identity**: when the harness is root it drops to uid/gid 65534 with no groups and no capabilities
  (`setpriv`) *before* bwrap, so the kernel's per-user limits (RLIMIT_NPROC) apply and nothing runs as
  root in any namespace; bwrap also drops all capabilities and sets no_new_privs.
* **Environment**: `--clearenv`; a run sees only PATH, HOME, TMPDIR and LANG. No tokens, no secrets.
* **Limits per run** (rlimits set in the forked child): CPU seconds, address space, file size, process
  count, no core dumps, no POSIX message queues. Per sandbox, when the v1 cgroup hierarchy is writable
  (it is when the harness is root here): a `pids` cgroup (fork bombs stay inside their own sandbox
  instead of exhausting uid 65534 for the node) and a `memory` cgroup (caps tmpfs + processes), made by
  rewards/_sandbox_cgroups.py.
* **Wall clock**: the fork-server kills the run (and every other process in the namespace) at the
  deadline; the harness kills the whole bwrap tree if the server itself stops answering. bwrap runs with
  `--die-with-parent`, so a dying harness takes its sandbox with it.
* **Isolation between runs**: the fork-server is PID 1 of the namespace (a run cannot signal it) and is
  non-dumpable (a run cannot ptrace it or read its fds/memory). Runs are strictly sequential within a
  sandbox; after each, the server SIGKILLs every other process in the namespace (so `setsid`/double
  fork daemons die), reaps them, empties `/tmp` and `/dev/shm` and deletes SysV IPC objects, so a run
  cannot see, signal or leave anything for the next one. Different sandboxes share nothing writable.

* **Results compared as plain data** (rewards/_plain_asserts.py): every `assert` of the test code is
  rewritten before the program runs so that what it compares or tests for truth is first reduced to
  builtin data (numbers, strings, None and containers of those; subclasses copied into their base type).
  A returned object whose `__eq__`/`__ne__`/`__bool__` always says yes, or an `int` subclass that lies,
  fails the assert instead of passing it; a non-builtin object in a comparison fails it too.

What it does NOT protect against (be honest about the remaining attack surface):

* **Kernel exploits**: namespaces share the host kernel; there is no seccomp filter and no VM boundary.
  Treat it as strong isolation for *model-written* code, not for a motivated human attacker.
* **Forging assert results in-process**: assert-style tests run in the same interpreter as the program
  (as in HumanEval's harness). A program can make tests *fail* trivially and exit early (which scores
  unreported tests as failed, so `os._exit(0)` earns nothing), but a program that deliberately
  attacks the harness (walks frames or `gc` to patch the compiled tests, writes fake lines to fd 3) could
  forge passes. Lies that builtins turn into plain data before a comparison sees them are not caught
  either: `len()` trusts `__len__`, `float()`/`math.isclose` trust `__float__`, `isinstance` trusts
  `__class__`, arithmetic on a program's object (`abs(x - 0.5) < 1e-6`) runs its `__sub__`. stdin/stdout cases are
  compared by the server outside the run's process, so they cannot be forged this way.
* **Side channels** (timing, CPU contention between sandboxes on one node) and resource use below the
  limits. Without a writable cgroup, fork bombs are capped only by the shared uid-65534 RLIMIT_NPROC
  (so one sandbox's bomb can make a concurrent sandbox's fork fail until the bomb's run is killed).
* **Reads of world-readable system files under /usr** (package docs, libraries): they are public anyway.
* A harness that is not root runs the sandbox as its own uid (RLIMIT_NPROC is then shared with it).
"""

from __future__ import annotations

import ast
import concurrent.futures
import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from rewards._sandbox_cgroups import SandboxCgroups

Status = Literal["passed", "failed", "timeout", "memory", "error"]
SANDBOX_UID = 65534
CLEANUP_FAILED = 75  # the server's exit code when it could not clean up after a run (rewards/_sandbox_server.py)
MARKER = "rayzero-sandbox"  # in every sandbox command line, so tests and operators can find leftovers
# The server runs from source inside the sandbox (no project files there): the plain-data assert rewriting
# it uses (rewards/_plain_asserts.py) and its cleanup between runs (rewards/_sandbox_cleanup.py) are prepended.
_SERVER_SRC = "\n\n".join(Path(__file__).with_name(f).read_text()
                          for f in ("_plain_asserts.py", "_sandbox_cleanup.py", "_sandbox_server.py"))
# bwrap's --die-with-parent is the kernel's parent-death signal, which fires when the *thread* that started
# it exits: a sandbox first used from a short-lived thread (a batch's worker) would be SIGKILLed under its
# next run. So every sandbox is started from one long-lived thread (one per process: a forked child has none).
_SPAWNER: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None


def _spawner() -> concurrent.futures.ThreadPoolExecutor:
    global _SPAWNER
    if _SPAWNER is None or _SPAWNER[0] != os.getpid():
        _SPAWNER = (os.getpid(), concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sandbox-spawner"))
    return _SPAWNER[1]


_ETC_FILES = ("ld.so.cache", "ld.so.conf", "localtime", "passwd", "group", "nsswitch.conf")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here; code is never run unsandboxed instead."""


@dataclass(frozen=True)
class SandboxConfig:
    timeout_s: float = 5.0  # wall clock per stdin/stdout case, or per block of assert tests
    cpu_s: int = 5
    memory_mb: int = 1024  # address space per run
    file_mb: int = 16  # largest file a run may write
    tmp_mb: int = 64  # size of /tmp and of /dev/shm
    max_procs: int = 32  # processes per sandbox (pids cgroup) / per run (RLIMIT_NPROC fallback)
    output_kb: int = 1024  # stdout beyond this fails the test
    python: str = "/usr/bin/python3"  # must live under a read-only bound path; stdlib only by default
    extra_ro_binds: tuple[str, ...] = ()


@dataclass
class RunResult:
    status: Status
    tests: list[Status] = field(default_factory=list)  # one outcome per test, in order
    stderr_tail: str = ""
    duration_s: float = 0.0

    @property
    def passed(self) -> int:
        return sum(t == "passed" for t in self.tests)

    @property
    def fraction(self) -> float:
        return self.passed / len(self.tests) if self.tests else 0.0


@dataclass(frozen=True)
class ExecResult:
    """One program run as a tool: status "ok" | "error" | "timeout" | "memory" | "failed" (output over the limit)."""

    status: str
    stdout: str = ""
    stderr: str = ""
    duration_s: float = 0.0


@functools.lru_cache(maxsize=1024)  # a GRPO group sends one row's tests once per sample
def split_assert_tests(tests: str, entry_point: str | None = None) -> tuple[tuple[str, bool], ...]:
    """Top-level statements of assert-style test code as (source, is_test). `assert` statements and bare
    calls (`check(f)`) are tests; imports/defs/assignments are setup. With `entry_point`, HumanEval/MBPP
    style `check(entry_point)` is appended. Raises ValueError for test code that does not parse."""
    try:
        tree = ast.parse(tests)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ValueError(f"test code does not parse: {e}") from None
    out = [(ast.unparse(node), isinstance(node, ast.Assert) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call))) for node in tree.body]
    if entry_point:
        if not entry_point.isidentifier():
            raise ValueError(f"entry_point {entry_point!r} is not an identifier")
        out.append((f"check({entry_point})", True))
    if not any(is_test for _, is_test in out):
        raise ValueError("test code contains no assert statement or check call")
    return tuple(out)


class Sandbox:
    """One bwrap sandbox holding a fork-server; `run()` is thread-safe (runs are serialised)."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._cg: SandboxCgroups | None = None
        self.server_pid: int | None = None
        self._nproc = 0
        self.starts = 0  # how many fork-servers this sandbox started (restarts after kills show up here)

    # -- lifecycle -------------------------------------------------------------------------------
    def _command(self) -> list[str]:
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            raise SandboxUnavailable("bubblewrap (`bwrap`) is not installed: `apt-get install bubblewrap`; refusing to run code unsandboxed")
        c = self.config
        cmd = []
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise SandboxUnavailable("running as root needs `setpriv` (util-linux) to drop to an unprivileged uid")
            cmd += [setpriv, f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"]
        cmd += [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session", "--as-pid-1", "--cap-drop", "ALL", "--clearenv",
                "--ro-bind", "/usr", "/usr"]
        for link in ("bin", "lib", "lib64", "sbin"):
            p = Path("/", link)
            if p.is_symlink():
                cmd += ["--symlink", os.readlink(p), str(p)]
            elif p.is_dir():
                cmd += ["--ro-bind", str(p), str(p)]
        for name in _ETC_FILES:
            if Path("/etc", name).exists():
                cmd += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for path in c.extra_ro_binds:
            cmd += ["--ro-bind", path, path]
        size = str(c.tmp_mb * 1024 * 1024)
        cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp", "--size", size, "--tmpfs", "/dev/shm",
                "--remount-ro", "/", "--chdir", "/tmp", "--", c.python, "-I", "-S", "-B", "-c", _SERVER_SRC, MARKER]
        return cmd

    def _start(self) -> None:
        cmd = self._command()
        c = self.config
        self._cg = SandboxCgroups(MARKER, c.max_procs, (c.memory_mb + 2 * c.tmp_mb + 256) << 20)
        if self._cg.dirs:
            # Join the cgroups before bwrap forks, via a tiny shell (preexec_fn is unsafe with threads).
            cmd = ["/bin/sh", "-c", 'for f in $RZ_CGROUPS; do echo $$ > "$f" || exit 111; done; exec "$@"', "sh", *cmd]
        env = {"PATH": "/usr/bin:/bin", "RZ_CGROUPS": " ".join(self._cg.procs_files)}
        self._proc = _spawner().submit(subprocess.Popen, cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, start_new_session=True, close_fds=True).result()
        self.starts += 1
        try:
            hello = self._recv(deadline=time.monotonic() + 30)
        except (TimeoutError, EOFError) as e:
            err = self._proc.stderr.read().decode(errors="replace") if self._proc.poll() is not None else ""
            self.close()
            raise SandboxUnavailable(f"sandbox failed to start ({e}): {err.strip()[-500:]}") from None
        self.server_pid = hello["ready"]
        if os.geteuid() == 0:
            # uid 65534 is shared by every sandbox on the node: with a pids cgroup the rlimit is only a
            # backstop; without one it is the fork-bomb limit (see "does NOT protect" above).
            self._nproc = 4096 if self._cg.dirs else c.max_procs * 8
        else:
            self._nproc = _count_procs(os.getuid()) + c.max_procs

    def close(self) -> None:
        """Kill the sandbox and everything in it; idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap; --die-with-parent + PID-ns teardown kill the rest
            except ProcessLookupError:
                pass
            proc.wait()
            for f in (proc.stdin, proc.stdout, proc.stderr):
                f.close()
        if self._cg is not None:
            self._cg.kill_all()
            self._cg.remove()
            self._cg = None

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    # -- protocol --------------------------------------------------------------------------------
    def _recv(self, deadline: float) -> dict:
        fd = self._proc.stdout.fileno()
        head = self._read(fd, 4, deadline)
        return json.loads(self._read(fd, struct.unpack("<I", head)[0], deadline))

    @staticmethod
    def _read(fd: int, n: int, deadline: float) -> bytes:
        import select

        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError("sandbox server did not answer in time")
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise EOFError("sandbox server exited")
            buf += chunk
        return bytes(buf)

    # -- running ---------------------------------------------------------------------------------
    def run(self, program: str, tests: str | Sequence[dict], entry_point: str | None = None) -> RunResult:
        """Run `program` against assert-style test code (str) or stdin/stdout cases ([{input, output}]).
        Raises ValueError for malformed tests (the caller scores those None), SandboxUnavailable if no
        sandbox can be made; every outcome of the program itself comes back as a RunResult."""
        c = self.config
        req: dict[str, Any] = {"program": program, "limits": self._limits()}
        if isinstance(tests, str):
            req.update(mode="assert", statements=split_assert_tests(tests, entry_point))
            budget = c.timeout_s
        else:
            cases = [{"input": str(t["input"]), "output": str(t["output"])} for t in tests]
            if not cases:
                raise ValueError("no test cases")
            req.update(mode="io", cases=cases)
            budget = c.timeout_s * len(cases)
        t0 = time.monotonic()
        resp = self._request(req, budget)
        if isinstance(resp, Exception):
            status: Status = "timeout" if isinstance(resp, TimeoutError) else "error"
            return RunResult(status, [status] * self._n_tests(req), f"sandbox: {resp}", time.monotonic() - t0)
        tests_out: list[Status] = resp["tests"]
        status = resp["status"] or _overall(tests_out)
        return RunResult(status, tests_out if resp["status"] is None else [status] * self._n_tests(req), resp["stderr"][-2000:], time.monotonic() - t0)

    def execute(self, program: str) -> "ExecResult":
        """Run `program` once with empty stdin (a tool call): its stdout up to `output_kb` (status "failed"
        when it printed more, cut there), its stderr tail, and how it ended ("ok", "error" for an exception
        or a non-zero exit, "timeout", "memory"). Never raises for anything the program does."""
        t0 = time.monotonic()
        resp = self._request({"program": program, "mode": "exec", "limits": self._limits()}, self.config.timeout_s)
        if isinstance(resp, Exception):
            return ExecResult("timeout" if isinstance(resp, TimeoutError) else "error", "", f"sandbox: {resp}",
                              time.monotonic() - t0)
        return ExecResult(resp["status"], resp.get("stdout", ""), resp["stderr"], time.monotonic() - t0)

    def _limits(self) -> dict:
        c = self.config
        return {"timeout_s": c.timeout_s, "cpu_s": c.cpu_s, "memory_bytes": c.memory_mb << 20, "file_bytes": c.file_mb << 20,
                "nproc": 0, "output_bytes": c.output_kb << 10}

    def _request(self, req: dict, budget: float):
        """One request to the fork-server (started if needed): its response, or the exception that ended it
        (the server is wedged or gone: it cannot be killed from inside, so this is the host's doing or a limit
        hit the server; it is started afresh next time)."""
        with self._lock:
            for attempt in (1, 2):
                if self._proc is None or self._proc.poll() is not None:
                    self.close()
                    self._start()
                req["limits"]["nproc"] = self._nproc
                data = json.dumps(req).encode()
                try:
                    self._proc.stdin.write(struct.pack("<I", len(data)) + data)
                    self._proc.stdin.flush()
                    return self._recv(deadline=time.monotonic() + budget + 5.0)
                except (TimeoutError, EOFError, BrokenPipeError, OSError) as e:
                    # A server that could not clean up after the previous run exits before reading this
                    # request (CLEANUP_FAILED): this run is not at fault, so it is sent once more, to a fresh one.
                    failed = self._cleanup_failed() if isinstance(e, (EOFError, BrokenPipeError)) else False
                    self.close()
                    if not failed or attempt == 2:
                        return e
            raise AssertionError("unreachable")

    def _cleanup_failed(self) -> bool:
        try:
            return self._proc.wait(timeout=5) == CLEANUP_FAILED
        except subprocess.TimeoutExpired:
            return False

    @staticmethod
    def _n_tests(req: dict) -> int:
        return len(req["cases"]) if req["mode"] == "io" else sum(t for _, t in req["statements"])


def _count_procs(uid: int) -> int:
    n = 0
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and p.stat().st_uid == uid:
                n += 1
        except OSError:
            pass
    return n


def _overall(tests: list[Status]) -> Status:
    if tests and all(t == "passed" for t in tests):
        return "passed"
    for s in ("memory", "timeout", "error"):
        if s in tests:
            return s
    return "failed"
