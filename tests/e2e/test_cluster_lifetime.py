"""A local Ray started by `cluster.runtime.connect()` lives only as long as its driver: a driver killed
with SIGKILL leaves no process of its Ray session behind (agents, actors, a Train-like learner that would
otherwise go on writing), while other Ray instances on the machine, and a cluster a killed driver had only
connected to, stay up; the killed session's folder is removed, no other. Real processes, real Ray; nothing is mocked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parents[2]

# The learner's work runs in a non-daemon thread, as a Ray Train worker's training loop does: it outlives
# the worker's core when the raylet goes, which is why such a learner kept writing checkpoints before.
LOCAL_DRIVER = textwrap.dedent("""
    import os, sys, threading, time
    import ray
    from cluster.runtime import connect

    connect(num_cpus=2)

    @ray.remote(num_cpus=0.25)
    class Idle:
        def pid(self):
            return os.getpid()

    @ray.remote(num_cpus=0.25)
    def learner(path):
        def beat():
            while True:
                with open(path, "a") as f:
                    f.write("beat\\n")
                time.sleep(0.2)
        t = threading.Thread(target=beat)
        t.start()
        t.join()

    idle = Idle.remote()
    ray.get(idle.pid.remote())
    learner.remote(sys.argv[1])
    time.sleep(600)
""")

CLIENT_DRIVER = textwrap.dedent("""
    import os, sys, time
    import ray
    from cluster.runtime import connect

    connect(address=sys.argv[1])

    @ray.remote(num_cpus=0.1)
    class Idle:
        def pid(self):
            return os.getpid()

    print(ray.get(Idle.remote().pid.remote()), flush=True)
    time.sleep(600)
""")


def proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time in ticks, command line) of every live (non-zombie) process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if stat[0] not in ("Z", "X"):
            out[int(entry)] = (int(stat[1]), int(stat[19]), cmdline)
    return out


def descendants(root: int) -> dict[tuple[int, int], str]:
    """(pid, start time) -> command line of every live descendant of `root`."""
    table, found, frontier = proc_table(), {}, {root}
    while frontier:
        kids = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier and (pid, table[pid][1]) not in found}
        found.update({(pid, table[pid][1]): table[pid][2] for pid in kids})
        frontier = kids
    return found


def still_alive(procs: dict[tuple[int, int], str]) -> list[str]:
    """The start of the command line of each process of `procs` that still runs."""
    table = proc_table()
    return [cmd[:60].strip() for (pid, start), cmd in procs.items() if pid in table and table[pid][1] == start]


def wait_for(condition, timeout_s: float):
    """condition()'s first truthy value within `timeout_s`, else its last (falsy) one."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.25)
    return value


@pytest.fixture
def short_tmp():
    """A fresh folder under /tmp with a short path: Ray's socket paths under it must fit in 107 bytes."""
    path = tempfile.mkdtemp(prefix="rz-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def driver_env(ray_tmpdir: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "RAY_TMPDIR": ray_tmpdir, "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def bystander():
    """This test process's own local Ray (another session directory): it must outlive every kill below."""
    # Same auth mode as the process's other sessions (Ray keeps it per process); the client driver below
    # inherits it from our environment.
    context = ray.init(address="local", num_cpus=1, include_dashboard=False, configure_logging=False)

    @ray.remote(num_cpus=0.1)
    class Witness:
        def pid(self) -> int:
            return os.getpid()

    witness = Witness.remote()
    ray.get(witness.pid.remote())
    yield context.address_info["gcs_address"], witness, context.address_info["session_dir"]
    ray.shutdown()


def test_killed_driver_takes_its_local_ray_session_with_it(bystander, short_tmp):
    _, witness, bystander_session = bystander
    tmp = short_tmp
    heartbeat = Path(tmp) / "heartbeat"
    log = Path(tmp) / "driver.log"
    with log.open("w") as out:
        driver = subprocess.Popen([sys.executable, "-c", LOCAL_DRIVER, str(heartbeat)], cwd=ROOT,
                                  env=driver_env(tmp, RAY_AUTH_MODE="disabled"),  # its own Ray, on loopback
                                  stdout=out, stderr=subprocess.STDOUT)
    procs: dict[tuple[int, int], str] = {}
    try:
        assert wait_for(lambda: heartbeat.exists() or driver.poll() is not None, 120), "no heartbeat in 120 s"
        assert driver.poll() is None, log.read_text()
        session = os.path.realpath(Path(tmp) / "ray" / "session_latest")
        # Everything the session runs now descends from the driver: GCS, raylet, dashboard, agents, workers.
        def started() -> dict:
            found = descendants(driver.pid)
            titles = " ".join(found.values())
            return found if "ray::learner" in titles and "ray::DashboardAgent" in titles else {}

        procs = wait_for(started, 30)
        assert procs, f"the learner and the agents did not start: {descendants(driver.pid).values()}"
        driver.send_signal(signal.SIGKILL)
        driver.wait()

        def session_gone() -> bool:
            return not still_alive(procs) and not any(session in cmd for _, _, cmd in proc_table().values())

        assert wait_for(session_gone, 30), f"left running 30 s after the driver was killed: {still_alive(procs)}"
        beats = heartbeat.read_text().count("beat")
        time.sleep(1.0)
        assert heartbeat.read_text().count("beat") == beats, "the learner still writes after its driver died"
        # Its session folder goes too (they piled up in the temp folder, one per run); only its own.
        assert wait_for(lambda: not os.path.exists(session), 30), f"{session} is left behind"
        assert os.path.isdir(bystander_session), "another Ray's session folder was removed"
    finally:
        for pid, start in procs:  # on failure, stop what this test started (and only that)
            if still_alive({(pid, start): ""}):
                os.kill(pid, signal.SIGKILL)
        if driver.poll() is None:
            driver.kill()
    assert ray.get(witness.pid.remote(), timeout=30) > 0  # the unrelated local Ray is untouched


def test_killed_client_driver_leaves_the_cluster_it_connected_to_running(bystander, short_tmp):
    address, witness, _ = bystander
    tmp = short_tmp
    log = Path(tmp) / "driver.log"
    with log.open("w") as err:
        driver = subprocess.Popen([sys.executable, "-c", CLIENT_DRIVER, address], env=driver_env(tmp), cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = driver.stdout.readline()
        assert line.strip().isdigit(), log.read_text()
        client_actor = int(line)
        watchdogs = [cmd for _, _, cmd in proc_table().values() if f"lifetime.py {driver.pid} " in cmd]
        assert not watchdogs, "a watchdog was started for a cluster this driver only connected to"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # Ray itself stops the dead driver's (non-detached) actor on the cluster ...
        assert wait_for(lambda: client_actor not in proc_table(), 30), "the dead driver's actor still runs"
        time.sleep(2.0)  # ... and nothing else: give a wrongly started watchdog time to do harm
    finally:
        if driver.poll() is None:
            driver.kill()
    assert ray.get(witness.pid.remote(), timeout=30) > 0
    assert ray.cluster_resources().get("CPU") == 1
