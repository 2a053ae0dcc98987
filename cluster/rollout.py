"""Rollout workers as Ray actors: each owns a generation engine on its own device and receives the
learner's weights after optimizer steps.

The engine is built inside the actor by a picklable factory the caller passes (`rl.rollout` provides
them), so this module stays free of model code. An engine has `generate(prompts, sampling, seed) ->
(completion_ids, logprobs)` and `load_state_dict(state)`.

`RolloutPool.generate` splits a batch of token-id prompts evenly across the workers and returns the
completions in the prompts' order. A worker that dies mid-call (node lost, OOM, `ray.kill`) is replaced
by a fresh actor, given the latest weights, and its prompts are generated again; the pool counts
replacements. Weight sync (`sync_backend`) goes through the Ray object store (one `ray.put` of the
state dict; every worker loads the same object, zero-copy on a node) or a torch collective
(`cluster.weight_sync`: NCCL device-to-device on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)


def split_evenly(n: int, parts: int) -> list[slice]:
    """Contiguous slices of range(n) whose sizes differ by at most one, in order."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (i < extra)
        out.append(slice(start, start + size))
        start += size
    return out


@ray.remote
class RolloutWorker:
    def __init__(self, engine_factory: Callable[[], Any], num_threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.engine = engine_factory()
        self.version = 0

    def generate(self, prompts: list[list[int]], sampling: Any, seed: int | None) -> tuple[list, list, int]:
        ids, lps = self.engine.generate(prompts, sampling, seed=seed)
        return ids, lps, self.version

    def load_weights(self, state: dict, version: int) -> int:
        self.engine.load_state_dict(state)
        self.version = version
        return version

    def join_group(self, host: str, port: int, rank: int, world: int, backend: str) -> None:
        from cluster.weight_sync import CollectiveGroup

        if getattr(self, "group", None) is not None:
            self.group.close()
        self.group = CollectiveGroup(host, port, rank, world, backend)

    def receive_weights(self, version: int) -> int:
        """Receive a broadcast from the learner straight into the engine's parameters."""
        self.group.broadcast_state(self.engine.state_dict())
        self.version = version
        return version

    def info(self) -> dict:
        return {"pid": os.getpid(), "version": self.version}


class RolloutPool:
    """`num_workers` rollout actors, each reserving `cpus_per_worker` CPUs and `gpus_per_worker` GPUs
    (fractional when colocated with the learner).

    `placement_group`, when given, pins worker i to bundle `bundle_offset + i` (see
    `cluster.placement`)."""

    def __init__(self, engine_factory: Callable[[], Any], *, num_workers: int = 1, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0, placement_group=None, bundle_offset: int = 0,
                 sync_backend: str = "object_store") -> None:
        if num_workers < 1:
            raise ValueError("rollout.num_workers must be >= 1")
        if sync_backend not in ("object_store", "gloo", "nccl"):
            raise ValueError(f"sync_backend={sync_backend!r} is not one of ['object_store', 'gloo', 'nccl']")
        self.sync_backend = sync_backend
        self._group = None  # the learner's end of the collective (made on first sync, in the learner process)
        self._last_state = None
        self.factory = engine_factory
        self.cpus, self.gpus = cpus_per_worker, gpus_per_worker
        self.pg, self.bundle_offset = placement_group, bundle_offset
        self.replacements = 0
        self.version = 0
        self.closed = False
        self._weights_ref = None  # latest synced weights, for replacement workers
        self.workers = [self._new_worker(i) for i in range(num_workers)]
        ray.get([w.info.remote() for w in self.workers])  # fail here, not mid-training, if a worker cannot start

    def _new_worker(self, slot: int):
        opts: dict = {"num_cpus": self.cpus, "num_gpus": self.gpus, "max_restarts": 0}
        if self.pg is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=self.bundle_offset + slot)
        threads = max(1, int(self.cpus))
        worker = RolloutWorker.options(**opts).remote(self.factory, threads)
        if self._weights_ref is not None:
            ray.get(worker.load_weights.remote(self._weights_ref, self.version))
        return worker

    def __getstate__(self):  # the collective's sockets stay in the process that made them
        return {**self.__dict__, "_group": None}

    def sync_weights(self, state: dict, version: int) -> float:
        """Push a state dict (CPU tensors; GPU tensors with nccl) to every worker; returns the seconds."""
        start = time.perf_counter()
        self.version = version
        if self.sync_backend == "object_store":
            self._weights_ref = ray.put(state)
            ray.get([w.load_weights.remote(self._weights_ref, version) for w in self.workers])
        else:
            self._last_state = state
            self._broadcast(state, version)
        return time.perf_counter() - start

    def _broadcast(self, state: dict, version: int) -> None:
        from cluster.weight_sync import CollectiveGroup, free_port, node_ip

        if self._group is None:
            host, port, world = node_ip(), free_port(), len(self.workers) + 1
            joins = [w.join_group.remote(host, port, i + 1, world, self.sync_backend)
                     for i, w in enumerate(self.workers)]
            self._group = CollectiveGroup(host, port, 0, world, self.sync_backend)
            ray.get(joins)
        refs = [w.receive_weights.remote(version) for w in self.workers]
        self._group.broadcast_state(state)
        ray.get(refs)

    def _regroup(self) -> None:
        """After a replacement the collective's membership is stale: rebuild it and resend the weights."""
        if self.sync_backend == "object_store" or self._group is None:
            return
        self._group.close()
        self._group = None
        for w in self.workers:
            try:
                ray.get(w.info.remote())
            except _DEAD:
                pass
        if self._last_state is not None:
            self._broadcast(self._last_state, self.version)

    def generate(self, prompts: list[list[int]], sampling: Any, seed: int | None = None) -> dict:
        """Returns {"completion_ids", "logprobs", "versions"} in the order of `prompts`; `sampling` is passed
        to the engines as it is."""
        parts = split_evenly(len(prompts), len(self.workers))
        sp = sampling
        results: list = [None] * len(parts)
        pending = {self._call(i, prompts[s], sp, seed): i for i, s in enumerate(parts) if s.stop > s.start}
        for i, s in enumerate(parts):
            if s.stop == s.start:
                results[i] = ([], [], self.version)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            i = pending.pop(ref)
            try:
                results[i] = ray.get(ref)
            except _DEAD:
                if self.closed:
                    raise RuntimeError("the rollout pool was shut down while generating") from None
                # The worker is gone: replace it (with the latest weights) and generate its share again.
                self.workers[i] = self._new_worker(i)
                self.replacements += 1
                if pending:  # let the other workers finish before the group is rebuilt around them
                    ray.wait(list(pending), num_returns=len(pending))
                self._regroup()
                pending[self._call(i, prompts[parts[i]], sp, seed)] = i
        out = {"completion_ids": [], "logprobs": [], "versions": []}
        for ids, lps, version in results:
            out["completion_ids"] += ids
            out["logprobs"] += lps
            out["versions"] += [version] * len(ids)
        return out

    def _call(self, i: int, prompts: list, sp: dict, seed: int | None):
        return self.workers[i].generate.remote(prompts, sp, None if seed is None else seed * 1009 + i)

    def shutdown(self) -> None:
        self.closed = True
        if self._group is not None:
            self._group.close()
            self._group = None
        for w in self.workers:
            ray.kill(w)
