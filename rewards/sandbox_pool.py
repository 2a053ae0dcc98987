"""Sandboxes side by side: a batch of runs spread over a few fork-servers, in one process.

A sandbox runs one program at a time, and a run's cost is mostly process work (fork, copy-on-write faults,
cleanup) on one core while the harness waits. A batch scorer (`code_accuracy` in-process) therefore keeps
`size` sandboxes, each with its own fork-server, namespaces and cleanup (rewards/sandbox.py; they share
nothing writable), and one thread per sandbox takes the next item of the batch: while one server runs a
program, another cleans up after its last run or runs the next. Results come back in the batch's order.
On 2 cores, 2 sandboxes score HumanEval's canonical solutions ~1.3x as fast as one (docs/perf.md).
"""

from __future__ import annotations

import os
import threading
from typing import Callable, Sequence, TypeVar

from rewards.sandbox import Sandbox, SandboxConfig

Item = TypeVar("Item")
Out = TypeVar("Out")
# More sandboxes than cores only queue on the CPU; a GPU node scores code in its Ray reward pool (cluster/).
DEFAULT_SIZE = max(1, min(2, os.cpu_count() or 1))


class SandboxPool:
    """`size` sandboxes under one config; `map` spreads a batch over them. Thread-safe (calls queue)."""

    def __init__(self, config: SandboxConfig | None = None, size: int = DEFAULT_SIZE) -> None:
        if size < 1:
            raise ValueError(f"a sandbox pool needs at least one sandbox, got size={size}")
        self.sandboxes = [Sandbox(config) for _ in range(size)]
        self._lock = threading.Lock()

    def map(self, fn: Callable[[Sandbox, Item], Out], items: Sequence[Item]) -> list[Out]:
        """`fn(sandbox, item)` for every item, each on whichever sandbox is free next; results in item order.
        An exception from `fn` is raised here after the other threads finished their current item."""
        with self._lock:
            out: list = [None] * len(items)
            errors: list[BaseException] = []
            nxt = iter(range(len(items)))
            take = threading.Lock()

            def work(sandbox: Sandbox) -> None:
                while not errors:
                    with take:
                        i = next(nxt, None)
                    if i is None:
                        return
                    try:
                        out[i] = fn(sandbox, items[i])
                    except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread below
                        errors.append(e)

            busy = self.sandboxes[:max(1, min(len(self.sandboxes), len(items)))]
            threads = [threading.Thread(target=work, args=(sb,), daemon=True) for sb in busy[1:]]
            for t in threads:
                t.start()
            work(busy[0])  # the caller's thread drives the first sandbox
            for t in threads:
                t.join()
            if errors:
                raise errors[0]
            return out

    def close(self) -> None:
        for sb in self.sandboxes:
            sb.close()

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
