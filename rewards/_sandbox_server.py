"""Fork-server that runs *inside* the bubblewrap sandbox (see rewards/sandbox.py for the threat model).

It is started as PID 1 of the sandbox's PID namespace (`bwrap --as-pid-1`) with the system Python in
isolated mode, and talks to the harness over fds 0/1 with length-prefixed JSON. Per request it runs one
child per stdin/stdout case (or one child for a block of assert tests). After every child, no matter how
it ended, it SIGKILLs every other process in the namespace, reaps them, wipes the writable tmpfs mounts
and removes SysV IPC objects, so nothing a run starts or leaves behind survives into the next run; this
happens after the answer is sent (the harness reads it meanwhile) and always before the next child is
forked or handed a job (`settle`). An assert run is answered as soon as every test has reported, without
waiting for the child's exit. Then, with the namespace clean, it forks the next run's child, which
sets itself up and waits for its job (program, compiled tests, limits) on a pipe: the fork is off the
critical path. Common stdlib modules are imported once here (HumanEval's `typing` costs ~20 ms cold).

Why PID 1: the kernel drops signals sent to a namespace's init from inside the namespace unless init
installed a handler, so a run cannot kill or stop the server (`os.kill(os.getppid(), 9)` is a no-op).
Why non-dumpable: a same-uid run could otherwise ptrace the server or open /proc/1/fd and /proc/1/mem.
This file is stdlib-only: it runs under /usr/bin/python3, not the project venv.
"""

import ctypes
import json
import marshal
import os
import resource
import selectors
import signal
import struct
import sys
import time
import traceback

CLEANUP_FAILED = 75  # the server's exit code when it could not clean up after a run (the harness retries)
MEMORY_EXIT = 97  # the child's exit code for an uncaught MemoryError (a run faking it only hurts itself)
_libc = ctypes.CDLL(None, use_errno=True)
# _cleanup (between runs: kill, reap, wipe) lives in rewards/_sandbox_cleanup.py, prepended to this source.


def _send(fd, obj):
    data = json.dumps(obj).encode()
    buf = struct.pack("<I", len(data)) + data
    while buf:
        buf = buf[os.write(fd, buf):]


def _recv(fd):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    return json.loads(_read_exact(fd, struct.unpack("<I", head)[0]))


def _read_exact(fd, n):
    chunks, got = [], 0
    while got < n:
        b = os.read(fd, n - got)
        if not b:
            return None
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


_COMPILED = {}  # statement source -> (True, unbound code) or (False, source): a GRPO group repeats a row's tests
_COMPILED_MAX = 4096


def _compiled(src):
    """A test statement compiled (placeholders unbound, so marshal can send it to the run) or, if it does not
    compile, its source for the run to compile and fail on. Compiled here in the server, which never runs
    untrusted code, so nothing a program does (patching `ast`, builtins) can change how the asserts
    compare; cached because the same tests come once per sample."""
    hit = _COMPILED.get(src)
    if hit is None:
        try:
            hit = (True, compile_test_unbound(src))  # noqa: F821  (rewards/_plain_asserts.py, prepended to this source)
        except Exception:
            hit = (False, src)
        if len(_COMPILED) >= _COMPILED_MAX:
            _COMPILED.clear()
        _COMPILED[src] = hit
    return hit


def _bound(ok, code_or_src):
    """In the run, before the program starts: the test statement ready to exec, or the error compiling it."""
    if ok:
        return _bind(code_or_src)  # noqa: F821  (rewards/_plain_asserts.py)
    try:
        return compile_test(code_or_src)  # noqa: F821  (raises again: it did not compile in the server)
    except Exception as e:
        return e


def _preload():
    """Import what programs and tests commonly import (HumanEval prompts: `from typing import List`, ~20 ms
    cold, paid again by every forked child otherwise) and freeze the heap so that a child's garbage
    collections do not touch (and copy) the server's pages. A child's changes to these modules stay in
    the child (fork copies on write), so this shares nothing between runs; `random` reseeds itself in every
    forked child (its own os.register_at_fork hook)."""
    import gc
    for name in _PRELOAD:
        try:
            __import__(name)
        except Exception:
            pass
    gc.collect()
    gc.freeze()


# What HumanEval/MBPP programs and tests import most; each module makes every fork a little slower, so
# big ones seldom used (decimal, statistics, dataclasses, hashlib: +4 MB) are left to the runs that need them.
_PRELOAD = ("typing", "re", "collections", "itertools", "functools", "math", "heapq", "bisect", "string", "random",
            "copy")


def _child(stdin_r, stdout_w, stderr_w, result_w, job_r):
    """In the forked child: fresh session, fds and environment; then wait for the job (the program, the
    tests, the limits), set the limits and run it (never returns). Everything before the wait runs while
    the harness is still busy with the previous result, off the critical path."""
    try:
        _isolate(stdin_r, stdout_w, stderr_w, result_w, job_r)
        job = _wait_for_job()
        code, lim = job["code"], job["limits"]
        statements = None if job["stmts"] is None else [(_bound(ok, c), is_test) for ok, c, is_test in job["stmts"]]
        if statements is None:
            os.close(3)
        for res, val in (
            (resource.RLIMIT_CPU, (lim["cpu_s"], lim["cpu_s"] + 1)),
            (resource.RLIMIT_AS, (lim["memory_bytes"],) * 2),
            (resource.RLIMIT_FSIZE, (lim["file_bytes"],) * 2),
            (resource.RLIMIT_NPROC, (lim["nproc"],) * 2),
            (resource.RLIMIT_NOFILE, (256, 256)),
            (resource.RLIMIT_CORE, (0, 0)),
            (resource.RLIMIT_MSGQUEUE, (0, 0)),
        ):
            resource.setrlimit(res, val)
        g = {"__name__": "__main__" if statements is None else "__solution__", "__builtins__": __builtins__}
    except BaseException:
        os._exit(120)
    status = _run_job(code, statements, g)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(status & 0xFF)


def _isolate(stdin_r, stdout_w, stderr_w, result_w, job_r):
    """The child's own process group, fds 0-4 (stdin, stdout, stderr, results, job) and a private run folder.
    Its environment and sys.std* objects were made once in the server (`_run_environment`) and came with the
    fork: made here, they cost ~200 copy-on-write page faults per run (~0.8 ms in a VM)."""
    os.setsid()  # own process group, so the server can kill it as a unit
    os.dup2(stdin_r, 0)
    os.dup2(stdout_w, 1)
    os.dup2(stderr_w, 2)
    os.dup2(result_w, 3)
    os.dup2(job_r, 4)
    os.closerange(5, 65536)
    os.mkdir(RUN_DIR, 0o700)
    os.chdir(RUN_DIR)
    os.umask(0o077)


RUN_DIR = "/tmp/run"


def _run_environment():
    """In the server, once: the environment and sys.stdin/stdout/stderr every run starts with. The std objects
    wrap fds 0-2, which in a child are its pipes (`_isolate`); they are made while 0-2 are a pipe too, so
    that they see what they will see in a child (not seekable, not a tty). The server itself never uses them."""
    os.environ.clear()
    os.environ.update(PATH="/usr/bin:/bin", HOME=RUN_DIR, TMPDIR=RUN_DIR, LANG="C.UTF-8")
    r, w = os.pipe()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    os.dup2(r, 0), os.dup2(w, 1), os.dup2(w, 2)
    sys.stdin = open(0, "r", encoding="utf-8", closefd=False)  # LANG=C.UTF-8 anyway; skips the locale lookup
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)
    sys.argv = ["solution.py"]
    for fd, old in zip((0, 1, 2), saved):
        os.dup2(old, fd)
        os.close(old)
    os.close(r), os.close(w)


def _wait_for_job():
    """The job the server writes on fd 4 (then closes); EOF alone means no job will come: exit quietly."""
    chunks = []
    while True:
        b = os.read(4, 1 << 20)
        if not b:
            break
        chunks.append(b)
    if not chunks:
        os._exit(0)
    os.close(4)
    return marshal.loads(b"".join(chunks))


def _run_job(code, statements, g):
    """Runs the program, then each statement (a test reports on fd 3); returns the exit status."""
    try:
        # Tests are compiled before the program runs, so nothing it does (patching `ast`, builtins) can
        # change how their asserts compare (compile_test: rewards/_plain_asserts.py, prepended to this file).
        exec(code, g)
        if statements is not None:
            for i, (test, is_test) in enumerate(statements):
                try:
                    if isinstance(test, BaseException):
                        raise test
                    exec(test, g)
                    if is_test:
                        os.write(3, f"{i} passed\n".encode())
                except BaseException as e:  # a failing test must not stop the others
                    if not is_test:
                        raise
                    kind = "memory" if isinstance(e, MemoryError) else "failed"
                    os.write(3, f"{i} {kind} {type(e).__name__}\n".encode())
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except MemoryError:
        return MEMORY_EXIT
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _supervise(pid, stdin_w, stdin_data, readers, deadline, out_limit, answers=0):
    """Feed stdin, collect outputs until the child exits or the wall deadline passes, or (assert mode) until
    the run has reported `answers` test lines: the verdict is then complete, so the server answers without
    waiting for the child to exit (tearing down a process is ~0.5 ms, as much as a short run); `_cleanup`
    kills and reaps it after the answer is sent. Returns wstatus None in that case.

    Long because it is one select loop whose state (stdin left to write, the output buffers, the exit,
    overflow and reported flags) every branch updates; in parts, each would take and return all of it."""
    sel = selectors.DefaultSelector()
    pidfd = os.pidfd_open(pid)
    sel.register(pidfd, selectors.EVENT_READ, "exit")
    bufs = {name: bytearray() for name in readers}
    for name, fd in readers.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, name)
    if stdin_data:
        os.set_blocking(stdin_w, False)
        sel.register(stdin_w, selectors.EVENT_WRITE, "stdin")
    else:
        os.close(stdin_w)
    pending, exited, over, stdin_open = memoryview(stdin_data), False, False, bool(stdin_data)
    reported = False
    while not exited and not over and not reported:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, _ in sel.select(left):
            tag = key.data
            if tag == "exit":
                exited = True
            elif tag == "stdin":
                try:
                    pending = pending[os.write(stdin_w, pending[:65536]):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:  # the program stopped reading; that is its business
                    pending = pending[:0]
                if not len(pending):
                    sel.unregister(stdin_w)
                    os.close(stdin_w)
                    stdin_open = False
            else:
                try:
                    chunk = os.read(key.fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    sel.unregister(key.fd)
                    continue
                bufs[tag] += chunk
                if tag == "results" and bufs[tag].count(b"\n") >= answers:
                    reported = True
                if tag == "stderr" and len(bufs[tag]) > 8192:
                    del bufs[tag][:-4096]
                elif tag != "stderr" and len(bufs[tag]) > out_limit:
                    over = True
    for name, fd in readers.items():  # whatever the child wrote just before exiting
        try:
            while len(bufs[name]) <= out_limit + 65536:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                bufs[name] += chunk
        except OSError:
            pass
        if name != "stderr" and len(bufs[name]) > out_limit:
            over = True
    timed_out = not exited and not over and not reported
    if not exited:
        os.kill(-1, signal.SIGKILL)  # the child and anything it started, whatever process group they moved to
    wstatus = None if reported and not exited else os.waitpid(pid, 0)[1]
    sel.close()
    os.close(pidfd)
    if stdin_open:
        os.close(stdin_w)
    return wstatus, timed_out, over, bufs


def _classify(wstatus, timed_out, over):
    if wstatus is None:  # answered before it exited: every test reported (the status is not used)
        return "ok"
    if timed_out:
        return "timeout"
    if over:
        return "failed"
    if os.WIFSIGNALED(wstatus):
        sig = os.WTERMSIG(wstatus)
        if sig == signal.SIGXCPU:
            return "timeout"
        return "memory" if sig == signal.SIGKILL else "error"  # SIGKILL we did not send = OOM killer
    code = os.WEXITSTATUS(wstatus)
    return "memory" if code == MEMORY_EXIT else ("ok" if code == 0 else "error")


_DIRTY = False  # a run ended and the namespace is not cleaned up yet (`settle`)
_ZYGOTE = None  # a child forked ahead of the next run, waiting for its job: (pid, stdin_w, out_r, err_r, res_r, job_w)


def _spawn():
    """Fork a run child that prepares itself and then waits for its job on a pipe."""
    (in_r, in_w), (out_r, out_w), (err_r, err_w), (res_r, res_w), (job_r, job_w) = (os.pipe() for _ in range(5))
    pid = os.fork()
    if pid == 0:
        for fd in (in_w, out_r, err_r, res_r, job_w):
            os.close(fd)
        _child(in_r, out_w, err_w, res_w, job_r)
    for fd in (in_r, out_w, err_w, res_w, job_r):
        os.close(fd)
    return pid, in_w, out_r, err_r, res_r, job_w


def settle():
    """Clean up after the last run, if not done yet: kill and reap what is left of it, wipe /tmp and /dev/shm
    (`_cleanup`). Called after its answer is sent (off the harness's critical path) and, at the latest,
    before the next run's child is forked or handed a job."""
    global _DIRTY
    if _DIRTY:
        _cleanup()  # noqa: F821  (rewards/_sandbox_cleanup.py)
        _DIRTY = False


def prefork():
    """Fork the next run's child now (after a cleanup, while the harness reads the last answer), so that
    the fork and the child's setup overlap the harness's work instead of adding to each run. Only ever
    one, and only while no program runs: it is forked after `_cleanup` and is the next run's child."""
    global _ZYGOTE
    if _ZYGOTE is None:
        _ZYGOTE = _spawn()


def _run_one(job, req, stdin_data, answers=0):
    """Hand `job` (marshalled program, tests, limits) to the waiting child (or a fresh one) and supervise it;
    the namespace is cleaned up by `settle` (after the answer is sent). Returns (status, buffers)."""
    global _ZYGOTE, _DIRTY
    settle()  # the case before (io mode runs one child per case)
    (pid, in_w, out_r, err_r, res_r, job_w), _ZYGOTE = _ZYGOTE or _spawn(), None
    readers = {"stdout": out_r, "stderr": err_r}
    if req["mode"] == "assert":
        readers["results"] = res_r
    else:
        os.close(res_r)
    deadline = time.monotonic() + req["limits"]["timeout_s"]
    try:
        try:
            view = memoryview(job)
            while view:
                view = view[os.write(job_w, view):]
        except OSError:  # the child is gone (killed from outside): supervise sees its exit status
            pass
        os.close(job_w)
        wstatus, timed_out, over, bufs = _supervise(pid, in_w, stdin_data, readers, deadline, req["limits"]["output_bytes"],
                                                    answers)
    finally:
        for fd in readers.values():
            os.close(fd)
        _DIRTY = True
    return _classify(wstatus, timed_out, over), bufs


def _normalise(text):
    # Exact compare after trailing-whitespace normalisation: per-line rstrip, trailing blank lines dropped.
    return "\n".join(line.rstrip() for line in text.rstrip().splitlines())


def handle(req):
    t0 = time.monotonic()
    try:
        code = compile(req["program"], "<solution>", "exec")
    except (SyntaxError, ValueError, OverflowError, RecursionError, MemoryError) as e:
        return {"status": "error", "tests": [], "stderr": f"{type(e).__name__}: {e}", "duration_s": 0.0}
    tests, stderr = [], ""
    stmts = None if req["mode"] in ("io", "exec") else [(*_compiled(src), is_test) for src, is_test in req["statements"]]
    job = marshal.dumps({"code": code, "stmts": stmts, "limits": req["limits"]})
    if req["mode"] == "exec":  # a tool call: run once, hand back what it printed (cut at the output limit)
        status, bufs = _run_one(job, req, b"")
        limit = req["limits"]["output_bytes"]
        return {"status": status, "tests": [], "stdout": bufs["stdout"][:limit].decode(errors="replace"),
                "stderr": bufs["stderr"].decode(errors="replace")[-2000:], "duration_s": time.monotonic() - t0}
    if req["mode"] == "io":
        for case in req["cases"]:
            status, bufs = _run_one(job, req, case["input"].encode())
            stderr = bufs["stderr"].decode(errors="replace")[-2000:] or stderr
            if status == "ok":
                got = bufs["stdout"].decode(errors="replace")
                status = "passed" if _normalise(got) == _normalise(case["output"]) else "failed"
            tests.append(status)
    else:
        status, bufs = _run_one(job, req, b"", answers=sum(is_test for _, _, is_test in stmts))
        stderr = bufs["stderr"].decode(errors="replace")[-2000:]
        reported = {}
        for line in bufs["results"].decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                reported[int(parts[0])] = parts[1]
        for i, (_, _, is_test) in enumerate(stmts):
            if is_test:
                # A test with no report did not finish: it hit the run's fate (timeout, memory, exit).
                tests.append(reported.get(i, status if status in ("timeout", "memory") else "failed"))
    return {"status": None, "tests": tests, "stderr": stderr, "duration_s": time.monotonic() - t0}


def main():
    _libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace or /proc/1/{mem,fd} from same-uid runs
    for sig in (signal.SIGPIPE, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    rfd, wfd = os.dup(0), os.dup(1)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0), os.dup2(null, 1)
    os.set_inheritable(rfd, False), os.set_inheritable(wfd, False)
    _run_environment()
    _preload()
    prefork()
    _send(wfd, {"ready": os.getpid()})
    while True:
        req = _recv(rfd)
        if req is None:
            return
        try:
            resp = handle(req)
        except Exception as e:
            # An infrastructure failure (e.g. a wipe that did not complete) comes back as an error, and
            # the server exits so that the harness starts a clean sandbox instead of reusing this one.
            _send(wfd, {"status": "error", "tests": [], "stderr": f"sandbox server: {type(e).__name__}: {e}", "duration_s": 0.0})
            return
        _send(wfd, resp)
        try:
            settle()
        except Exception:
            # The namespace could not be cleaned (a wipe that did not complete): exit with CLEANUP_FAILED
            # instead of answering the next request from a dirty sandbox; the harness starts a clean one
            # and sends that request again (rewards/sandbox.py).
            sys.exit(CLEANUP_FAILED)
        try:
            prefork()
        except OSError:  # e.g. fork refused: the next run forks (and reports the failure) itself
            pass


if __name__ == "__main__":
    main()
