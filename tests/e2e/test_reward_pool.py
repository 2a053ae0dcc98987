"""Code rewards scored on the generic actor pool (cluster.actors.ActorPool hosting rewards.code.CodeScorer):
parallel scoring, replacement of killed actors, one retry, then None; no sandbox outlives its actor."""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path

import pytest
import ray

from cluster.actors import ActorPool
from rewards.code import code_scorer_factory
from rewards.registry import get_reward
from rewards.sandbox import MARKER

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")
ECHO = "```python\nprint(int(input()) * 2)\n```"
SLOW = "```python\nimport time\ntime.sleep({s})\nprint(int(input()) * 2)\n```"
CASES = [{"input": "3", "output": "6"}]


@pytest.fixture(scope="module")
def ray_session():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def scorer_pool(num_actors: int = 2) -> ActorPool:
    return ActorPool(code_scorer_factory(timeout_s=5.0, memory_mb=256), num_actors=num_actors, num_cpus=0.5)


def actor_pids(pool: ActorPool) -> list[int]:
    return ray.get([a.pid.remote() for a in pool.actors])


def sandboxes_of(pids: set[int]) -> set[int]:
    """Sandbox processes (their command line carries MARKER) descending from any of `pids`."""
    parent, cmd = {}, {}
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit():
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmd[int(p.name)] = (p / "cmdline").read_bytes()
        except (OSError, IndexError):
            pass

    def under(pid: int) -> bool:
        while pid > 1:
            if pid in pids:
                return True
            pid = parent.get(pid, 0)
        return False

    return {pid for pid, c in cmd.items() if MARKER.encode() in c and under(parent.get(pid, 0))}


def gone(pids: set[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(os.path.exists(f"/proc/{p}/cmdline") and Path(f"/proc/{p}/cmdline").read_bytes() for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_scores_a_batch_across_actors_and_shutdown_stops_the_sandboxes(ray_session):
    pool = scorer_pool()
    try:
        wrong = "```python\nprint(0)\n```"
        items = [(ECHO, CASES, None), (wrong, CASES, None), ("no code", CASES, None), (ECHO, "assert (", None)]
        assert pool.map("score", items) == [1.0, 0.0, 0.0, None]
        # two 0.6 s programs on two actors finish in about one program's time, not two
        t0 = time.monotonic()
        assert pool.map("score", [(SLOW.format(s=0.6), CASES, None)] * 2) == [1.0, 1.0]
        assert time.monotonic() - t0 < 1.15
        pids = set(actor_pids(pool))
        assert len(pids) == 2
        sandboxes = sandboxes_of(pids)
        assert len(sandboxes) >= 2  # one fork-server (at least) per actor, each under its actor
    finally:
        pool.shutdown()
    assert gone(sandboxes), "sandboxes outlived their actors"


def kill_slot(pool: ActorPool, slot: int, times: int, delay: float, retry_delay: float = 2.0) -> threading.Thread:
    """Kill the (up and busy) actor in `slot` after `delay`; then, `times - 1` more times, wait for its
    replacement and kill that `retry_delay` later, while the retried item runs (or before it starts:
    either way the retry dies)."""

    def killer() -> None:
        victim = pool.actors[slot]
        time.sleep(delay)
        ray.kill(victim)
        for _ in range(times - 1):
            deadline = time.monotonic() + 30
            while pool.actors[slot] is victim and time.monotonic() < deadline:
                time.sleep(0.02)
            victim = pool.actors[slot]
            time.sleep(retry_delay)
            ray.kill(victim)

    t = threading.Thread(target=killer)
    t.start()
    return t


def test_killed_actor_is_replaced_and_its_item_retried_once(ray_session):
    pool = scorer_pool()
    try:
        pids = set(actor_pids(pool))
        assert pool.map("score", [(ECHO, CASES, None)] * 2) == [1.0, 1.0]  # fork-servers up
        sandboxes = sandboxes_of(pids)
        killer = kill_slot(pool, slot=0, times=1, delay=0.3)
        got = pool.map("score", [(SLOW.format(s=1.0), CASES, None), (ECHO, CASES, None)])
        killer.join()
        assert got == [1.0, 1.0]
        assert pool.replacements == 1
        assert pool.map("score", [(ECHO, CASES, None)] * 2) == [1.0, 1.0]  # the replacement works
        killed = sandboxes - sandboxes_of(set(actor_pids(pool)))  # the first slot-0 actor's
        assert killed and gone(killed), "a killed actor's sandbox outlived it"
    finally:
        pool.shutdown()


def test_item_whose_retry_also_dies_scores_none(ray_session):
    pool = scorer_pool()
    try:
        actor_pids(pool)
        killer = kill_slot(pool, slot=0, times=2, delay=0.4)
        got = pool.map("score", [(SLOW.format(s=4.0), CASES, None), (ECHO, CASES, None)])
        killer.join()
        assert got == [None, 1.0]
        assert pool.replacements == 2
    finally:
        pool.shutdown()


def test_registry_reward_scores_through_the_pool(ray_session):
    pool = scorer_pool()
    try:
        fn = get_reward("code_accuracy", executor=functools.partial(pool.map, "score"), timeout_s=2.0)
        got = fn([ECHO, "```python\nprint(7)\n```"], tests=[CASES, CASES], prompts=["a", "b"], trainer_state=None)
        assert got == [1.0, 0.0]
    finally:
        pool.shutdown()
