"""Watchdog that ties a local Ray session to the process that started it.

Ray's own fate sharing (PR_SET_PDEATHSIG on GCS, raylet, dashboard) does not reach everything: when
the driver is killed with SIGKILL, the raylet's agents (`ray::DashboardAgent`, `ray::RuntimeEnvAgent`)
stay up, and a Ray Train worker goes on training and writing checkpoints, because its training runs in
a non-daemon thread that outlives the worker's core. `cluster.runtime.connect` therefore starts this
script, detached into its own session, for every local Ray it starts:

    python lifetime.py <driver pid> <session dir> <ray package dir>

It waits for the driver to exit (any way: normal exit, exception, SIGKILL), then stops exactly that
session's processes: Ray processes (`ray::…`/`ray-dashboard-…` titles, or running code from Ray's
package) whose command line or open files name the session directory, plus their descendants. Other
Ray sessions on the machine have other session directories and are never touched; neither is a
cluster the driver merely connected to (no watchdog is started for one).

Then it removes the session directory itself (Ray leaves one `session_*` folder per start in the system
temp folder, and they pile up across runs), unless the driver asked to keep its logs (`KEEP_MARKER`, for
a run that ended with an unexpected error).

Standard library only: it starts in milliseconds and holds no Ray state.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import sys
import time
from pathlib import Path

GRACE_S = 3.0  # SIGTERM first (workers flush and stop their sandboxes), SIGKILL whoever is left after this
KEEP_MARKER = "rayzero_keep_logs"  # a file in the session directory: leave the directory (its logs) in place
SWEEPS = 3  # a process can be mid-spawn when the driver dies: look again until nothing of the session is left


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    stat = _read(Path(f"/proc/{pid}/stat"))
    fields = stat.rsplit(")", 1)[-1].split()  # the name in parentheses may hold spaces
    return int(fields[1]) if len(fields) > 1 else 0


def _alive(pid: int) -> bool:
    fields = _read(Path(f"/proc/{pid}/stat")).rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] not in ("Z", "X")  # a zombie has exited; only its parent can reap it


def _names_session(pid: int, cmdline: str, pattern: re.Pattern, session_dir: str) -> bool:
    if pattern.search(cmdline):
        return True
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to inspect
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target == session_dir or target.startswith(session_dir + "/"):
            return True
    return False


def session_processes(session_dir: str, ray_dir: str, exclude: set[int]) -> list[int]:
    """Pids of the live processes of the Ray session in `session_dir` (see the module docstring)."""
    real = os.path.realpath(session_dir)
    names = {re.escape(session_dir), re.escape(real)}
    pattern = re.compile(r"(?:%s)(?![\w.-])" % "|".join(names))
    parents, members = {}, set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in exclude:
            continue
        pid = int(entry)
        cmdline = _read(Path(f"/proc/{pid}/cmdline"))
        if not cmdline or not _alive(pid):
            continue
        parents[pid] = _parent(pid)
        is_ray = cmdline.startswith(("ray::", "ray-dashboard-")) or ray_dir in cmdline
        if is_ray and _names_session(pid, cmdline, pattern, real):
            members.add(pid)
    grew = True
    while grew:  # descendants (e.g. the dashboard's module processes), to a fixpoint
        new = {pid for pid, ppid in parents.items() if ppid in members and pid not in members}
        members |= new
        grew = bool(new)
    return sorted(members)


def wait_for_exit(pid: int) -> None:
    """Block until process `pid` has exited (returns at once if it already has)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd (old kernel): poll
        while _alive(pid):
            time.sleep(0.5)
        return
    select.select([fd], [], [])  # a pidfd turns readable when its process exits
    os.close(fd)


def terminate(pids: list[int], grace_s: float = GRACE_S) -> None:
    """SIGTERM `pids`, then SIGKILL those still alive after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


def _log(session_dir: str, message: str) -> None:
    try:
        with open(os.path.join(session_dir, "logs", "rayzero_watchdog.log"), "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
    except OSError:
        pass


def main(argv: list[str]) -> None:
    driver, session_dir, ray_dir = int(argv[0]), argv[1], argv[2]
    # Detach: the caller waits only for this parent, and the watchdog is nobody's child to reap.
    if os.fork():
        os._exit(0)
    wait_for_exit(driver)
    for _ in range(SWEEPS):
        pids = session_processes(session_dir, ray_dir, exclude={os.getpid()})
        if not pids:
            break
        _log(session_dir, f"driver {driver} exited; stopping {len(pids)} process(es) of this session: {pids}")
        terminate(pids)
        time.sleep(0.5)
    remove_session(session_dir)


def remove_session(session_dir: str) -> None:
    """Delete the session directory (and Ray's `session_latest` link when it still points to it), unless its
    driver left `KEEP_MARKER` there."""
    if os.path.exists(os.path.join(session_dir, KEEP_MARKER)):
        return
    if not os.path.basename(session_dir).startswith("session_"):  # not a Ray session folder: never delete it
        return
    latest = os.path.join(os.path.dirname(session_dir), "session_latest")
    try:
        if os.path.realpath(latest) == os.path.realpath(session_dir):
            os.unlink(latest)
    except OSError:
        pass
    shutil.rmtree(session_dir, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
