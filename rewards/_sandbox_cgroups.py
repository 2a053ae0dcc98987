"""The cgroups that cap one code sandbox (rewards/sandbox.py) as a whole, where the v1 hierarchy is writable (it
is when the harness is root): a `pids` cgroup, so a fork bomb stays inside its own sandbox instead of
exhausting the sandbox uid's processes for the node, and a `memory` cgroup capping its tmpfs + processes."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path


class SandboxCgroups:
    """Per-sandbox v1 `pids` and `memory` cgroups under the harness's own cgroups, where writable, named
    `<prefix>-<unique>`; empty, old folders of other `<prefix>-*` sandboxes are removed on the way."""

    def __init__(self, prefix: str, max_procs: int, memory_bytes: int) -> None:
        self.dirs: list[Path] = []
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        own = {}
        try:
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                _, ctrls, path = line.split(":", 2)
                for c in ctrls.split(","):
                    own[c] = path
        except OSError:
            return
        for ctrl, knob, value in (("pids", "pids.max", max_procs), ("memory", "memory.limit_in_bytes", memory_bytes)):
            base = Path("/sys/fs/cgroup", ctrl, own.get(ctrl, "/").lstrip("/"))
            self._remove_stale(base, prefix)
            d = base / name
            try:
                d.mkdir()
                (d / knob).write_text(str(value))
                self.dirs.append(d)
            except OSError:
                self._rmdir(d)

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def kill_all(self) -> None:
        for d in self.dirs:
            try:
                for pid in (d / "cgroup.procs").read_text().split():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(200):  # tasks leave the cgroup asynchronously after SIGKILL
                if self._rmdir(d):
                    break
                self.kill_all()
                time.sleep(0.01)

    @classmethod
    def _remove_stale(cls, base: Path, prefix: str) -> None:
        # Sandboxes whose owner died without close() (ray.kill of an actor) leave empty cgroup dirs.
        # Only old ones: a fresh dir may belong to a sandbox that has not joined it yet.
        try:
            for d in base.glob(f"{prefix}-*"):
                if time.time() - d.stat().st_mtime > 60 and not (d / "cgroup.procs").read_text().strip():
                    cls._rmdir(d)
        except OSError:
            pass

    @staticmethod
    def _rmdir(d: Path) -> bool:
        try:
            d.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False
