"""Fork-server that runs *inside* the bubblewrap sandbox (see rewards/sandbox.py for the threat model).

It is started as PID 1 of the sandbox's PID namespace (`bwrap --as-pid-1`) with the system Python in
isolated mode, and talks to the harness over fds 0/1 with length-prefixed JSON. Per request it forks one
child per stdin/stdout case (or one child for a block of assert tests). After every child, no matter how
it ended, it SIGKILLs every other process in the namespace, reaps them, wipes the writable tmpfs mounts
and removes SysV IPC objects, so nothing a run starts or leaves behind survives into the next run.

Why PID 1: the kernel drops signals sent to a namespace's init from inside the namespace unless init
installed a handler, so a run cannot kill or stop the server (`os.kill(os.getppid(), 9)` is a no-op).
Why non-dumpable: a same-uid run could otherwise ptrace the server or open /proc/1/fd and /proc/1/mem.
This file is stdlib-only: it runs under /usr/bin/python3, not the project venv.
"""

import ctypes
import json
import os
import resource
import selectors
import shutil
import signal
import struct
import sys
import time
import traceback

WRITABLE = ("/tmp", "/dev/shm")
MEMORY_EXIT = 97  # the child's exit code for an uncaught MemoryError (a run faking it only hurts itself)
_libc = ctypes.CDLL(None, use_errno=True)


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


def _wipe(path):
    def unlock(_func, p, _exc):  # a run may chmod 000 its own dirs; we are the same uid, so undo it
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, onerror=unlock_once)
            else:
                os.unlink(p)
        except OSError:
            pass

    def unlock_once(_func, p, _exc):
        try:
            os.chmod(p, 0o700)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else os.unlink(p)
        except OSError:
            pass

    for name in os.listdir(path):
        p = os.path.join(path, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, onerror=unlock)
        else:
            try:
                os.unlink(p)
            except OSError:
                pass
    if os.listdir(path):  # something resisted deletion: never hand a dirty sandbox to the next run
        raise RuntimeError(f"could not wipe {path}")


def _remove_sysv_ipc():
    # SysV objects outlive processes; RLIMIT_MSGQUEUE=0 already blocks POSIX queues, /dev/shm is wiped.
    for kind, fn in (("shm", "shmctl"), ("msg", "msgctl"), ("sem", "semctl")):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            ident = int(row.split()[1])
            if kind == "sem":
                _libc.semctl(ident, 0, 0)  # IPC_RMID == 0
            else:
                getattr(_libc, fn)(ident, 0, None)


def _cleanup():
    """Kill every process in the namespace but us, reap them, wipe what runs could write."""
    try:
        os.kill(-1, signal.SIGKILL)  # from PID 1: every process in this PID namespace except itself
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    for path in WRITABLE:
        _wipe(path)
    _remove_sysv_ipc()


def _compiled(src):
    """A test statement compiled so that its asserts compare plain data, or the error compiling it raised."""
    try:
        return compile_test(src)  # noqa: F821  (defined in rewards/_plain_asserts.py, prepended to this source)
    except Exception as e:
        return e


def _child(code, stdin_r, stdout_w, stderr_w, result_w, req, statements):
    """In the forked child: drop to a fresh session and limits, then run the program (never returns)."""
    try:
        os.setsid()  # own process group, so the server can kill it as a unit
        os.dup2(stdin_r, 0)
        os.dup2(stdout_w, 1)
        os.dup2(stderr_w, 2)
        if result_w is not None:
            os.dup2(result_w, 3)
        os.closerange(4 if result_w is not None else 3, 65536)
        run_dir = "/tmp/run"
        os.mkdir(run_dir, 0o700)
        os.chdir(run_dir)
        os.umask(0o077)
        os.environ.clear()
        os.environ.update(PATH="/usr/bin:/bin", HOME=run_dir, TMPDIR=run_dir, LANG="C.UTF-8")
        lim = req["limits"]
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
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False, buffering=1)
        sys.argv = ["solution.py"]
        g = {"__name__": "__main__" if statements is None else "__solution__", "__builtins__": __builtins__}
    except BaseException:
        os._exit(120)
    status = 0
    try:
        # Tests are compiled before the program runs, so nothing it does (patching `ast`, builtins) can
        # change how their asserts compare (compile_test: rewards/_plain_asserts.py, prepended to this file).
        tests = [(_compiled(src), is_test) for src, is_test in statements or ()]
        exec(code, g)
        if statements is not None:
            for i, (test, is_test) in enumerate(tests):
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
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except MemoryError:
        status = MEMORY_EXIT
    except BaseException:
        traceback.print_exc()
        status = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(status & 0xFF)


def _supervise(pid, stdin_w, stdin_data, readers, deadline, out_limit):
    """Feed stdin, collect outputs until the child exits or the wall deadline passes."""
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
    while not exited and not over:
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
    timed_out = not exited and not over
    if not exited:
        os.kill(-1, signal.SIGKILL)  # the child and anything it started, whatever process group they moved to
    _, wstatus = os.waitpid(pid, 0)
    sel.close()
    os.close(pidfd)
    if stdin_open:
        os.close(stdin_w)
    return wstatus, timed_out, over, bufs


def _classify(wstatus, timed_out, over):
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


def _run_one(code, req, stdin_data, statements):
    """Fork one child, supervise it, clean up the namespace. Returns (status, buffers)."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe() if statements is not None else (None, None)
    pid = os.fork()
    if pid == 0:
        os.close(in_w), os.close(out_r), os.close(err_r)
        if res_r is not None:
            os.close(res_r)
        _child(code, in_r, out_w, err_w, res_w, req, statements)
    for fd in (in_r, out_w, err_w, res_w):
        if fd is not None:
            os.close(fd)
    readers = {"stdout": out_r, "stderr": err_r}
    if res_r is not None:
        readers["results"] = res_r
    deadline = time.monotonic() + req["limits"]["timeout_s"]
    try:
        wstatus, timed_out, over, bufs = _supervise(pid, in_w, stdin_data, readers, deadline, req["limits"]["output_bytes"])
    finally:
        for fd in readers.values():
            os.close(fd)
        _cleanup()
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
    if req["mode"] == "exec":  # a tool call: run once, hand back what it printed (cut at the output limit)
        status, bufs = _run_one(code, req, b"", None)
        limit = req["limits"]["output_bytes"]
        return {"status": status, "tests": [], "stdout": bufs["stdout"][:limit].decode(errors="replace"),
                "stderr": bufs["stderr"].decode(errors="replace")[-2000:], "duration_s": time.monotonic() - t0}
    if req["mode"] == "io":
        for case in req["cases"]:
            status, bufs = _run_one(code, req, case["input"].encode(), None)
            stderr = bufs["stderr"].decode(errors="replace")[-2000:] or stderr
            if status == "ok":
                got = bufs["stdout"].decode(errors="replace")
                status = "passed" if _normalise(got) == _normalise(case["output"]) else "failed"
            tests.append(status)
    else:
        stmts = [tuple(s) for s in req["statements"]]
        status, bufs = _run_one(code, req, b"", stmts)
        stderr = bufs["stderr"].decode(errors="replace")[-2000:]
        reported = {}
        for line in bufs["results"].decode(errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                reported[int(parts[0])] = parts[1]
        for i, (_, is_test) in enumerate(stmts):
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


if __name__ == "__main__":
    main()
