"""Rollout workers: generation engines hosted in a `cluster.actors.ActorPool`, each on its own device,
receiving the learner's weights after optimizer steps.

The engine is built inside the actor by a picklable factory the caller passes (`rl.rollout` provides
them), so this module stays free of model code. An engine has `generate(prompts, sampling, seed) ->
(completion_ids, logprobs)`, `load_state_dict(state)` and `state_dict()`.

`RolloutPool.generate` shards a batch of token-id prompts contiguously across the workers and returns
the completions in the prompts' order. A worker that dies mid-call (node lost, OOM, `ray.kill`) is
replaced by the actor pool, given the latest weights (`_on_replace`), and its shard is generated again
with the same seed; the pool counts replacements. Weight sync (`sync_backend`) goes through the Ray
object store (one `ray.put` of the state dict; every worker loads the same object, zero-copy on a node)
or a torch collective (`cluster.weight_sync`: NCCL device-to-device on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import ray

from cluster.actors import DEAD, ActorPool

SYNC_BACKENDS = ("object_store", "gloo", "nccl")


class RolloutWorker:
    """What each rollout actor hosts: one engine plus the version of the weights it holds."""

    def __init__(self, engine_factory: Callable[[], Any], num_threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.engine = engine_factory()
        self.version = 0
        self.group = None  # this worker's end of the weight-sync collective, when one is used

    def generate(self, prompts: list[list[int]], sampling: Any, seed: int | None) -> list[tuple[list, list, int]]:
        """One (completion_ids, logprobs, weights version) per prompt."""
        ids, lps = self.engine.generate(prompts, sampling, seed=seed)
        return [(i, lp, self.version) for i, lp in zip(ids, lps)]

    def load_weights(self, state: dict, version: int) -> int:
        self.engine.load_state_dict(state)
        self.version = version
        return version

    def join_group(self, host: str, port: int, rank: int, world: int, backend: str) -> None:
        from cluster.weight_sync import CollectiveGroup

        self.close()
        self.group = CollectiveGroup(host, port, rank, world, backend)

    def receive_weights(self, version: int) -> int:
        """Receive a broadcast from the learner straight into the engine's parameters."""
        self.group.broadcast_state(self.engine.state_dict())
        self.version = version
        return version

    def info(self) -> dict:
        return {"pid": os.getpid(), "version": self.version}

    def close(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


class RolloutPool:
    """`num_workers` rollout actors, each reserving `cpus_per_worker` CPUs and `gpus_per_worker` GPUs
    (fractional when colocated with the learner).

    `placement_group`, when given, pins worker i to bundle `bundle_offset + i` (see
    `cluster.placement`); the pool takes ownership of it: `shutdown` removes it, giving its CPUs/GPUs
    back to the stages that follow."""

    def __init__(self, engine_factory: Callable[[], Any], *, num_workers: int = 1, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0, placement_group=None, bundle_offset: int = 0,
                 sync_backend: str = "object_store") -> None:
        if num_workers < 1:
            raise ValueError("rollout.num_workers must be >= 1")
        if sync_backend not in SYNC_BACKENDS:
            raise ValueError(f"sync_backend={sync_backend!r} is not one of {list(SYNC_BACKENDS)}")
        self.sync_backend = sync_backend
        self.version = 0
        self._weights_ref = None  # latest object-store weights, for replacement workers
        self._last_state = None  # latest collective weights, resent after a regroup
        self._group = None  # the learner's end of the collective (made on first sync, in the learner process)
        factory = functools.partial(RolloutWorker, engine_factory, max(1, int(cpus_per_worker)))
        self.pool = ActorPool(factory, num_actors=num_workers, num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                              placement_group=placement_group, bundle_offset=bundle_offset,
                              release_placement_group=True, on_replace=self._on_replace)

    @property
    def workers(self) -> list:
        return self.pool.actors

    @property
    def replacements(self) -> int:
        return self.pool.replacements

    @property
    def pg(self):
        """The placement group the pool holds; None without one or once `shutdown` released it."""
        return self.pool.placement_group

    def __getstate__(self):  # the collective's sockets stay in the process that made them
        return {**self.__dict__, "_group": None}

    def sync_weights(self, state: dict, version: int) -> float:
        """Push a state dict (CPU tensors; GPU tensors with nccl) to every worker; returns the seconds."""
        start = time.perf_counter()
        self.version = version
        if self.sync_backend == "object_store":
            self._weights_ref = ray.put(state)
            self.pool.call_all("load_weights", self._weights_ref, version)
        else:
            self._last_state = state
            self._broadcast(state, version)
        return time.perf_counter() - start

    def _broadcast(self, state: dict, version: int) -> None:
        from cluster.weight_sync import CollectiveGroup, free_port, node_ip

        workers = self.pool.actors
        if self._group is None:
            host, port, world = node_ip(), free_port(), len(workers) + 1
            joins = [w.call.remote("join_group", host, port, i + 1, world, self.sync_backend)
                     for i, w in enumerate(workers)]
            self._group = CollectiveGroup(host, port, 0, world, self.sync_backend)
            ray.get(joins)
        refs = [w.call.remote("receive_weights", version) for w in workers]
        self._group.broadcast_state(state)
        ray.get(refs)

    def _on_replace(self, actor) -> None:
        """A replacement worker gets the latest weights before it regenerates the dead worker's shard."""
        if self.sync_backend == "object_store":
            if self._weights_ref is not None:
                ray.get(actor.call.remote("load_weights", self._weights_ref, self.version))
            return
        if self._group is None:
            return
        # The collective's membership is stale: rebuild it around the new worker. Every member must be
        # idle first (joining queues behind generation, and the group's rendezvous has a timeout).
        for w in self.pool.actors:
            try:
                ray.get(w.call.remote("info"))
            except DEAD:
                pass
        self._group.close()
        self._group = None
        self._broadcast(self._last_state, self.version)

    def generate(self, prompts: list[list[int]], sampling: Any, seed: int | None = None) -> dict:
        """Returns {"completion_ids", "logprobs", "versions"} in the order of `prompts`; `sampling` is passed
        to the engines as it is; worker i samples with seed `seed * 1009 + i` (None: unseeded)."""
        def args(i: int, shard: list) -> tuple:
            return shard, sampling, None if seed is None else seed * 1009 + i

        rows = self.pool.sharded("generate", prompts, args)
        return {"completion_ids": [r[0] for r in rows], "logprobs": [r[1] for r in rows],
                "versions": [r[2] for r in rows]}

    def shutdown(self) -> None:
        """Stop the workers and release the placement group."""
        if self._group is not None:
            self._group.close()
            self._group = None
        self.pool.shutdown()
