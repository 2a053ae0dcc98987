"""The Ray reward pool: parallel scoring, replacement of dead actors, one retry, then None."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from rewards.pool import RewardPool  # noqa: E402
from rewards.registry import get_reward  # noqa: E402
from rewards.sandbox import MARKER, SandboxConfig  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")
CFG = SandboxConfig(timeout_s=5.0, cpu_s=2, memory_mb=256)
ECHO = "```python\nprint(int(input()) * 2)\n```"
SLOW = "```python\nimport time\ntime.sleep({s})\nprint(int(input()) * 2)\n```"
CASES = [{"input": "3", "output": "6"}]


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    from rewards.code import close_sandboxes

    close_sandboxes()  # in-process sandboxes of other test modules in this session
    deadline = time.monotonic() + 10
    while sandbox_procs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sandbox_procs(), "sandboxes outlived their actors"


def sandbox_procs() -> list[str]:
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and MARKER.encode() in (p / "cmdline").read_bytes():
                out.append(p.name)
        except OSError:
            pass
    return out


def test_scores_a_batch_across_actors(ray_session):
    pool = RewardPool(num_actors=2, num_cpus=0.5, config=CFG)
    try:
        wrong = "```python\nprint(0)\n```"
        got = pool.score([ECHO, wrong, "no code", ECHO], [CASES, CASES, CASES, "assert ("])
        assert got == [1.0, 0.0, 0.0, None]
        # two 0.6 s programs on two actors finish in about one program's time, not two
        t0 = time.monotonic()
        assert pool.score([SLOW.format(s=0.6)] * 2, [CASES] * 2) == [1.0, 1.0]
        assert time.monotonic() - t0 < 1.15
        pids = ray.get([a.pid.remote() for a in pool.actors])
        assert len(set(pids)) == 2
    finally:
        pool.shutdown()


def kill_slot_when(pool: RewardPool, slot: int, times: int, delay: float, retry_delay: float = 2.0) -> threading.Thread:
    """Kill the (up and busy) actor in `slot` after `delay`; then, `times - 1` more times, wait for its
    replacement and kill that `retry_delay` later, while the retried item runs (or before it starts:
    either way the retry dies)."""

    def killer():
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


def test_dead_actor_is_replaced_and_its_work_retried(ray_session):
    pool = RewardPool(num_actors=2, num_cpus=0.5, config=CFG)
    try:
        ray.get([a.pid.remote() for a in pool.actors])
        killer = kill_slot_when(pool, slot=0, times=1, delay=0.3)
        got = pool.score([SLOW.format(s=1.0), ECHO], [CASES, CASES])
        killer.join()
        assert got == [1.0, 1.0]
        assert pool.replacements == 1
        assert pool.score([ECHO, ECHO], [CASES, CASES]) == [1.0, 1.0]  # the replacement works
    finally:
        pool.shutdown()


def test_item_whose_retry_also_dies_scores_none(ray_session):
    pool = RewardPool(num_actors=2, num_cpus=0.5, config=CFG)
    try:
        ray.get([a.pid.remote() for a in pool.actors])
        killer = kill_slot_when(pool, slot=0, times=2, delay=0.4)
        got = pool.score([SLOW.format(s=4.0), ECHO], [CASES, CASES])
        killer.join()
        assert got == [None, 1.0]
        assert pool.replacements == 2
    finally:
        pool.shutdown()


def test_registry_builds_a_pooled_reward(ray_session):
    fn = get_reward("code_accuracy", ray_actors=2, actor_cpus=0.25, timeout_s=2.0)
    try:
        assert fn([ECHO, "```python\nprint(7)\n```"], tests=[CASES, CASES], prompts=["a", "b"], trainer_state=None) == [1.0, 0.0]
    finally:
        fn.pool.shutdown()
