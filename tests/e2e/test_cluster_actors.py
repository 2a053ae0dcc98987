"""cluster.actors.ActorPool on a real local Ray: per-item fan-out, sharded batches, broadcast, replacement
of dead actors (the item retried once, then None; a shard regenerated), the on_replace hook, graceful
shutdown that closes hosted objects and releases the pool's placement group."""

from __future__ import annotations

import functools
import os
import sys
import time
from pathlib import Path

import pytest
import ray
from ray import cloudpickle
from ray.util.placement_group import placement_group, placement_group_table

from cluster.actors import ActorPool

# Ray workers cannot import this test module by name: ship its classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Probe:
    """A hosted object that reports where it ran, can kill its own actor, and leaves a file on close()."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = Path(log_dir)

    def work(self, x: int, seconds: float = 0.0, die: str = "") -> tuple[int, int]:
        """2x and this actor's pid. `die="always"` kills the actor's process; a path kills it only the
        first time (the file records that it happened)."""
        if die == "always" or (die and not os.path.exists(die)):
            if die != "always":
                Path(die).touch()
            os._exit(1)
        time.sleep(seconds)
        return x * 2, os.getpid()

    def work_shard(self, xs: list[int], die: str = "") -> list[tuple[int, int]]:
        return [self.work(x, die=die) for x in xs]

    def placement(self) -> str | None:
        return ray.get_runtime_context().get_placement_group_id()

    def close(self) -> None:
        (self.log_dir / f"closed-{os.getpid()}").touch()


class Broken:
    def __init__(self) -> None:
        raise ValueError("cannot build this engine")


@pytest.fixture(scope="module")
def ray_local():
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def log_dir(tmp_path) -> str:
    return str(tmp_path)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def pids_gone(pids, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(map(alive, pids))


def test_map_runs_items_in_parallel_in_order_and_a_slow_item_holds_up_only_its_actor(ray_local, log_dir):
    pool = ActorPool(functools.partial(Probe, log_dir), num_actors=2, num_cpus=0.25)
    try:
        start = time.monotonic()
        out = pool.map("work", [(0, 1.5), (1, 0.1), (2, 0.1), (3, 0.1)])
        elapsed = time.monotonic() - start
        assert [r[0] for r in out] == [0, 2, 4, 6]
        # Items 1-3 went to the free actor while item 0 slept: ~1.5 s, where round-robin takes ~1.6 s and
        # one actor alone 1.8 s.
        assert out[1][1] == out[2][1] == out[3][1] != out[0][1]
        assert elapsed < 1.75, elapsed
        assert pool.map("work", []) == []
    finally:
        pool.shutdown()


def test_map_retries_an_item_once_on_a_fresh_actor_then_gives_none(ray_local, log_dir):
    replaced = []
    pool = ActorPool(functools.partial(Probe, log_dir), num_actors=2, num_cpus=0.25, on_replace=replaced.append)
    try:
        before = pool.map("work", [(0,), (1,)])
        once = os.path.join(log_dir, "died-once")
        out = pool.map("work", [(1, 0.0, "always"), (2,), (3, 0.0, once)])
        assert out[0] is None  # died, retried on a fresh actor, died again: "cannot be computed"
        assert [r[0] for r in out[1:]] == [4, 6]
        assert os.path.exists(once) and out[2][1] not in {pid for _, pid in before}  # the retry ran on a new actor
        assert pool.replacements == 3 and len(replaced) == 3
        assert set(replaced) >= set(pool.actors)  # the hook saw every actor now in the pool
        assert [r[0] for r in pool.map("work", [(5,), (6,)])] == [10, 12]  # the pool is whole again
    finally:
        pool.shutdown()


def test_sharded_keeps_batch_order_and_regenerates_a_dead_actors_shard(ray_local, log_dir):
    replaced = []
    pool = ActorPool(functools.partial(Probe, log_dir), num_actors=3, num_cpus=0.25, on_replace=replaced.append)
    try:
        first = pool.call_all("work", 0)
        once = os.path.join(log_dir, "shard-died-once")
        out = pool.sharded("work_shard", list(range(7)), lambda i, shard: (shard, once if i == 1 else ""))
        assert [r[0] for r in out] == [2 * x for x in range(7)]
        pids = [pid for _, pid in out]
        # Contiguous shards 3/2/2; shard 1 came from the replacement of actor 1.
        assert pids[0] == pids[1] == pids[2] == first[0][1] and pids[5] == pids[6] == first[2][1]
        assert pids[3] == pids[4] not in {pid for _, pid in first}
        assert pool.replacements == 1 and replaced == [pool.actors[1]]
        assert [r[0] for r in pool.sharded("work_shard", [4])] == [8]  # fewer items than actors
        with pytest.raises(ray.exceptions.RayActorError):
            pool.sharded("work_shard", list(range(6)), lambda i, shard: (shard, "always" if i == 2 else ""),
                         max_retries=1)
        assert pool.replacements == 3
    finally:
        pool.shutdown()


def test_call_all_replaces_a_dead_actor_and_shutdown_closes_objects_and_releases_the_group(ray_local, log_dir):
    pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5}])
    ray.get(pg.ready())
    pool = ActorPool(functools.partial(Probe, log_dir), num_actors=2, num_cpus=0.5, placement_group=pg,
                     release_placement_group=True)
    assert pool.call_all("placement") == [pg.id.hex()] * 2
    victim = pool.call_all("work", 0)[0][1]
    ray.kill(pool.actors[0])
    assert pids_gone([victim])  # (ray.kill is asynchronous)
    out = pool.call_all("work", 3)
    assert [r[0] for r in out] == [6, 6] and pool.replacements == 1
    pids = [pid for _, pid in out]
    pool.shutdown()
    assert sorted(p.name for p in Path(log_dir).glob("closed-*")) == sorted(f"closed-{p}" for p in pids)
    assert pids_gone(pids)
    assert placement_group_table(pg)["state"] == "REMOVED"
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2
    pool.shutdown()  # twice is fine
    with pytest.raises(RuntimeError, match="shut down"):
        pool.map("work", [(1,)])


def test_a_pool_dropped_without_shutdown_still_closes_its_objects(ray_local, log_dir):
    pool = ActorPool(functools.partial(Probe, log_dir), num_actors=1, num_cpus=0.25)
    [(_, pid)] = pool.call_all("work", 0)
    del pool  # the handles go out of scope: Ray ends the actor gracefully, through __ray_shutdown__
    closed = Path(log_dir) / f"closed-{pid}"
    deadline = time.monotonic() + 15
    while not closed.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert closed.exists() and pids_gone([pid])


def test_bundle_offset_and_a_placement_group_the_pool_was_only_lent(ray_local, log_dir):
    # Bundle 0 is too small for an actor: the pool starts only if it uses bundles 1 and 2.
    pg = placement_group([{"CPU": 0.1}, {"CPU": 0.25}, {"CPU": 0.25}])
    ray.get(pg.ready())
    pool = ActorPool(functools.partial(Probe, log_dir), num_actors=2, num_cpus=0.25, placement_group=pg,
                     bundle_offset=1)
    assert pool.call_all("placement") == [pg.id.hex()] * 2
    pool.shutdown()
    assert placement_group_table(pg)["state"] == "CREATED"  # the caller's to remove
    ray.util.remove_placement_group(pg)


def test_a_factory_that_fails_fails_in_the_constructor(ray_local):
    with pytest.raises(ray.exceptions.RayActorError, match="cannot build this engine"):
        ActorPool(Broken, num_actors=2, num_cpus=0.25)
    with pytest.raises(ValueError, match="num_actors"):
        ActorPool(Broken, num_actors=0)
