"""math-verify in a killable child process: the client (`MathVerifyWorker`, `call_all`) used by rewards/math.py,
and the child's `main()` (this file run as a script; one JSON request per line).

math-verify's own timeouts use SIGALRM, which raises off the main thread and cancels outer alarms, so
they are disabled here and the parent enforces the deadline by killing this process instead. An
address-space limit turns `10^{10^{10^{10}}}`-style blow-ups into a quick MemoryError.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import resource
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_WORKER_PATH = str(Path(__file__).resolve())


class MathVerifyWorker:
    """A persistent math-verify process. `call` is thread-safe; on a deadline the process is killed
    (a replacement starts importing at once, so the next call does not pay the whole start-up)."""

    def __init__(self, memory_mb: int = 2048) -> None:
        self.memory_mb = memory_mb
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self._ready = False
        self.restarts = 0

    def _spawn(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-I", _WORKER_PATH, str(self.memory_mb)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        self._buf, self._ready = b"", False

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                self._proc.kill()
            except ProcessLookupError:
                pass
            self._proc.wait()
            self._proc.stdin.close()
            self._proc.stdout.close()
            self._proc = None

    def _readline(self, deadline: float) -> bytes | None:
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("math-verify worker exited")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def prestart(self) -> None:
        """Start the process now, without waiting for it: its imports (sympy, ~1-3 s) then overlap with the
        caller's own start-up instead of stalling the first batch that needs math-verify."""
        if not self._lock.acquire(blocking=False):
            return  # a call holds it: the process is up or being started
        try:
            if self._proc is None or self._proc.poll() is not None:
                self._kill()
                self._spawn()
        finally:
            self._lock.release()

    def ready(self) -> bool:
        """Started and done with its imports; never blocks (False while another thread is using it)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._proc is None or self._proc.poll() is not None:
                return False
            fd = self._proc.stdout.fileno()
            while not self._ready and b"\n" not in self._buf and select.select([fd], [], [], 0)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return False
                self._buf += chunk
            if not self._ready and b"\n" in self._buf:
                _, self._buf = self._buf.split(b"\n", 1)  # the ready line
                self._ready = True
            return self._ready
        finally:
            self._lock.release()

    def call(self, req: dict, timeout_s: float) -> dict | None:
        """The worker's answer, or None when it did not answer within `timeout_s`."""
        with self._lock:
            for attempt in (1, 2):  # a worker that died (killed from outside, thread exit) gets one retry
                try:
                    if self._proc is None or self._proc.poll() is not None:
                        self._kill()
                        self._spawn()
                    if not self._ready:  # start-up (imports) is not charged to the item's budget
                        if self._readline(time.monotonic() + 120) is None:
                            raise EOFError("math-verify worker did not start")
                        self._ready = True
                    self._proc.stdin.write(json.dumps(req).encode() + b"\n")
                    self._proc.stdin.flush()
                    line = self._readline(time.monotonic() + timeout_s)
                except (EOFError, BrokenPipeError, OSError):
                    self._kill()
                    if attempt == 2:
                        raise
                    continue
                if line is None:
                    self._kill()
                    self.restarts += 1
                    self._spawn()  # warm up the replacement in the background
                    return None
                return json.loads(line)
        return None

    def close(self) -> None:
        with self._lock:
            self._kill()


def call_all(workers: list[MathVerifyWorker], reqs: list[dict], timeout_s: float) -> list[dict | None]:
    """Answers to `reqs` (each with its own `timeout_s` budget), spread over the workers that are up: one
    thread per worker pulls the next request, so a batch uses as many cores as there are workers."""
    out: list[dict | None] = [None] * len(reqs)
    if not reqs:
        return out
    # Only workers that are up take part: one still importing (first use, or the replacement of a worker
    # killed at a deadline) would hold its share of the batch for seconds; it warms up for later batches.
    ready = [w for w in workers if w.ready()]
    for w in workers:
        if w not in ready:
            w.prestart()
    workers = ready or workers[:1]
    if len(workers) == 1 or len(reqs) <= 1:
        return [workers[0].call(r, timeout_s) for r in reqs]
    it = iter(range(len(reqs)))
    lock = threading.Lock()
    errors: list[BaseException] = []

    def drain(worker: MathVerifyWorker) -> None:
        try:
            while True:
                with lock:
                    i = next(it, None)
                if i is None:
                    return
                out[i] = worker.call(reqs[i], timeout_s)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=drain, args=(w,), daemon=True) for w in workers[: len(reqs)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def main() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the scorer
    memory_mb = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    logging.disable(logging.CRITICAL)  # "timeout is disabled" warnings on every call
    sys.setrecursionlimit(10_000)
    from math_verify import parse, verify

    golds: dict[str, list | None] = {}

    def parse_gold(g: str) -> list | None:
        if g not in golds:
            if len(golds) > 20_000:
                golds.clear()
            parsed = parse(f"${g}$", parsing_timeout=None)
            # Only a sympy result counts: math-verify falls back to the raw string for text it cannot
            # parse, and comparing two such strings is how a broken gold answer scored 1.0.
            golds[g] = parsed if parsed and not isinstance(parsed[0], str) else None
        return golds[g]

    for warm in ("1", "\\frac{\\sqrt{2}}{2}", "2\\pi", "x^2+1", "[1,2]", "(1,2)", "x=3", "\\{1,2\\}"):
        verify(parse(f"${warm}$", parsing_timeout=None), parse(f"${warm}$", parsing_timeout=None), timeout_seconds=None)
    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            gold = parse_gold(req["gold"])
            if req.get("pred") is None:
                resp = {"gold_ok": gold is not None}
            elif gold is None:
                resp = {"v": None}
            else:
                pred = parse(f"${req['pred']}$", parsing_timeout=None)
                resp = {"v": 1.0 if verify(gold, pred, timeout_seconds=None) else 0.0}
        except MemoryError:
            resp = {"v": 0.0, "error": "memory"} if req.get("pred") is not None else {"gold_ok": False}
        except Exception as e:  # math-verify bugs on odd input: the completion did not verify
            resp = {"v": 0.0, "error": type(e).__name__} if req.get("pred") is not None else {"gold_ok": False}
        out.write(json.dumps(resp) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
