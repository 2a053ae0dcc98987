"""Rollout workers: generation engines hosted in a `cluster.actors.ActorPool`, each on its own device,
receiving the learner's weights after optimizer steps.

The engine is built inside the actor by a picklable factory the caller passes (`rl.rollout` provides
them), so this module stays free of model code. An engine has `generate(prompts, sampling, seed) ->
(completion_ids, logprobs)` and either `state_dict()` (its live tensors, which a sync writes into: the HF
engine) or `load_state_dict(partial_state)` plus, for a collective sync, `join_weight_group` /
`receive_weights(sent)` / `collective_ranks` (the vLLM engine, whose tensors are fused and
sharded under other names).

`RolloutPool.generate` shards a batch of token-id prompts contiguously across the workers and returns
the completions in the prompts' order. A worker that dies mid-call (node lost, OOM, `ray.kill`) is
replaced by the actor pool, given the latest weights (`_on_replace`), and its shard is generated again
with the same seed; the pool counts replacements. Weight sync (`sync_backend`) sends the weights in the
engines' dtype, in buckets of at most `bucket_bytes` (`cluster.weight_sync`): through the Ray object store
(one `ray.put` per bucket; every worker loads the buckets one by one) or a torch collective (one broadcast
per bucket: NCCL device-to-device on GPUs, gloo on CPUs). `last_sync` holds the seconds, bytes and buckets
of the latest sync.

Every sync is verified (`verify=True`): the learner's per-tensor checksums of each bucket as it left are
compared with what every engine reports holding (`cluster.weight_sync.verify`), and `verify_probe` has each
engine score a short fixed token sequence for the learner to compare with its own log-probs; either
mismatch is a `WeightSyncError` in one line naming the engine (and the bucket), never a silent stale policy.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any, Callable

import ray

from cluster.actors import DEAD, ActorPool

SYNC_BACKENDS = ("object_store", "gloo", "nccl")
KIND = "Rollout"  # the actors' class name: their processes are titled ray::Rollout


class RolloutWorker:
    """What each rollout actor hosts: one engine plus the version of the weights it holds."""

    def __init__(self, engine_factory: Callable[[], Any], num_threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, num_threads))
        self.engine = engine_factory()
        self.version = 0
        self.group = None  # this worker's end of the weight-sync collective, when one is used

    def generate(self, prompts: list[list[int]], sampling: Any, seed: int | None) -> list[tuple[list, list, int, dict]]:
        """One (completion_ids, logprobs, weights version, extras) per prompt; extras: what an engine returns
        beside the ids (a tool-calling engine's mask and call counts), else {}."""
        ids, lps, *rest = self.engine.generate(prompts, sampling, seed=seed)
        extras = rest[0] if rest else [{}] * len(ids)
        return [(i, lp, self.version, x) for i, lp, x in zip(ids, lps, extras)]

    def load_weights(self, buckets: list | dict, version: int, checksums: bool = True) -> list[list[list[int]]]:
        """Object-store sync: `buckets` are refs to small state dicts (or one whole state dict), loaded one
        at a time; together they must cover every tensor of the engine. Returns [per bucket, per tensor
        checksum] of what the engine holds after loading (vLLM: of what arrived), in a one-member list."""
        from cluster.weight_sync import checksum

        parts = buckets if isinstance(buckets, list) else [buckets]
        live = self.engine.state_dict() if hasattr(self.engine, "state_dict") else None
        seen: set[str] = set()
        sums = []
        for part in parts:
            bucket = ray.get(part) if isinstance(part, ray.ObjectRef) else part
            if live is None:
                self.engine.load_state_dict(bucket)  # its own loader takes any subset (vLLM)
            else:
                _copy_into(live, bucket)
            if checksums:
                sums.append([checksum(live[n] if live is not None and live[n].dtype == t.dtype else t)
                             for n, t in bucket.items()])
            seen.update(bucket)
            del bucket
        if live is not None and seen != set(live):
            missing, extra = sorted(set(live) - seen), sorted(seen - set(live))
            raise ValueError(f"weight sync does not match the engine: missing {missing[:5]}, unexpected {extra[:5]}")
        self.version = version
        return [sums]

    def join_group(self, host: str, port: int, rank: int, world: int, backend: str) -> None:
        self.close()
        if hasattr(self.engine, "join_weight_group"):  # vLLM: each tensor-parallel worker joins itself
            self.engine.join_weight_group(host, port, rank, world, backend)
            return
        from cluster.weight_sync import CollectiveGroup

        self.group = CollectiveGroup(host, port, rank, world, backend)

    def receive_weights(self, version: int, sent: list, checksums: bool = True) -> list[list[list[int]]]:
        """Receive a broadcast from the learner, bucket by bucket as `sent` (`cluster.weight_sync.plan`)
        lays it out: straight into the engine's parameters, or (vLLM) through its own loader. Returns the
        checksums of what each receiving process holds (one per tensor-parallel worker for vLLM)."""
        if hasattr(self.engine, "receive_weights"):
            members = self.engine.receive_weights(sent, checksums)
        else:
            members = [self.group.broadcast_state(self.engine.state_dict(), sent, checksums)["checksums"]]
        self.version = version
        return members

    def probe(self, tokens: list[int]) -> dict:
        """The engine's log-probs of tokens[1:] given their prefix (temperature 1), and its weights' dtype:
        what the learner compares with its own after a sync."""
        return {"logps": [float(x) for x in self.engine.score(tokens)], "dtype": str(self.engine.weights_dtype)}

    def weights(self) -> dict:
        """A CPU copy of the engine's weights (tests compare it with the learner's)."""
        return {k: v.detach().cpu().clone() for k, v in self.engine.state_dict().items()}

    def info(self) -> dict:
        return {"pid": os.getpid(), "version": self.version,
                "collective_ranks": int(getattr(self.engine, "collective_ranks", 1))}

    def close(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


def _put(bucket: dict):
    """One bucket into the object store (a seam: tests corrupt a bucket here, after its checksum was taken)."""
    return ray.put(bucket)


def _copy_into(live: dict, bucket: dict) -> None:
    import torch

    with torch.no_grad():
        for name, tensor in bucket.items():
            if name not in live:
                raise ValueError(f"weight sync sent {name!r}, which the engine does not have")
            live[name].copy_(tensor)


class RolloutPool:
    """`num_workers` rollout actors, each reserving `cpus_per_worker` CPUs and `gpus_per_worker` GPUs
    (fractional when colocated with the learner).

    `placement_group`, when given, pins worker i to bundle `bundle_offset + i` (`bundles_per_worker` > 1: an
    engine whose tensor-parallel workers take one bundle each owns that many consecutive bundles; see
    `cluster.placement.Reservation.rollout_args`); with `own_placement_group` (the default) the pool takes
    ownership of it: `shutdown` removes it, giving its CPUs/GPUs back to the stages that follow; a lent one
    (colocated workers in the learners' bundles) stays with its lender. `bucket_bytes` bounds one sync
    bucket."""

    def __init__(self, engine_factory: Callable[[], Any], *, num_workers: int = 1, cpus_per_worker: float = 1,
                 gpus_per_worker: float = 0, placement_group=None, bundle_offset: int = 0,
                 bundles_per_worker: int = 1, own_placement_group: bool = True, sync_backend: str = "object_store",
                 bucket_bytes: int | None = None, verify: bool = True) -> None:
        from cluster.weight_sync import BUCKET_BYTES

        if num_workers < 1:
            raise ValueError("rollout.num_workers must be >= 1")
        if sync_backend not in SYNC_BACKENDS:
            raise ValueError(f"sync_backend={sync_backend!r} is not one of {list(SYNC_BACKENDS)}")
        self.sync_backend = sync_backend
        self.bucket_bytes = BUCKET_BYTES if bucket_bytes is None else int(bucket_bytes)
        self.version = 0
        self.last_sync: dict = {}  # {"seconds", "bytes", "buckets"} of the latest sync
        self._weights_refs = None  # latest object-store buckets, for replacement workers
        self._last_state = None  # latest collective weights (and their dtype), resent after a regroup
        self._group = None  # the learner's end of the collective (made on first sync, in the learner process)
        self.verify = verify  # per-bucket checksums compared after every sync (cluster.weight_sync.verify)
        self._sent = None  # (plan, sender's checksums) of the latest sync
        factory = functools.partial(RolloutWorker, engine_factory, max(1, int(cpus_per_worker)))
        self.pool = ActorPool(factory, num_actors=num_workers, num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                              placement_group=placement_group, bundle_offset=bundle_offset,
                              bundles_per_actor=bundles_per_worker, release_placement_group=own_placement_group,
                              on_replace=self._on_replace, kind=KIND)

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

    def sync_weights(self, state: dict, version: int, dtype=None) -> float:
        """Push the learner's weights to every worker, floating tensors cast to `dtype` (the engines'; None:
        as they are), in buckets of at most `bucket_bytes`; returns the seconds (`last_sync` has the bytes
        and buckets too). `state` may hold GPU tensors: each bucket is cast on their device, then moved to
        the CPU (object store, gloo) or kept on the GPU (nccl)."""
        from cluster.weight_sync import checksum, plan, state_buckets

        start = time.perf_counter()
        self.version = version
        if self.sync_backend == "object_store":
            refs, moved, sums = [], 0, []
            for bucket in state_buckets(state, dtype, self.bucket_bytes):
                moved += sum(t.numel() * t.element_size() for t in bucket.values())
                if self.verify:
                    sums.append([checksum(t) for t in bucket.values()])  # as it leaves the learner
                refs.append(_put(bucket))
                del bucket
            self._weights_refs = refs  # (the previous version's buckets are freed here)
            self._sent = (plan(state, dtype, self.bucket_bytes), sums)
            self._verify(self.pool.call_all("load_weights", refs, version, self.verify))
            stats = {"bytes": moved, "buckets": len(refs)}
        else:
            self._last_state = (state, dtype)
            stats = self._broadcast(state, dtype, version)
        self.last_sync = {"seconds": time.perf_counter() - start, **stats}
        return self.last_sync["seconds"]

    def _verify(self, reports: list, workers: list | None = None) -> None:
        """Every worker's checksums (a list of members, each [per bucket [per tensor]]) against the sender's;
        raises `WeightSyncError` naming the first engine and bucket that differ."""
        if not self.verify:
            return
        from cluster.weight_sync import verify

        sent, expected = self._sent
        actors = self.pool.actors
        for i, members in enumerate(reports):
            index = actors.index(workers[i]) if workers is not None and workers[i] in actors else i
            for r, got in enumerate(members):
                verify(sent, expected, got, f"rollout-{index}" + (f" (tensor-parallel rank {r})" if len(members) > 1 else ""))

    def verify_probe(self, tokens: list[int], reference: list[float], tolerance: Callable[[str], float]) -> float:
        """Each engine scores `tokens` (`RolloutWorker.probe`); the mean |log-prob difference| from the
        learner's `reference` must be within `tolerance(engine weights' dtype)`, else `WeightSyncError` (one
        line naming the engine; the checksums already cleared every bucket, so the cause is the engine's
        loading or kernels). Returns the largest mean difference."""
        from cluster.weight_sync import WeightSyncError

        worst = 0.0
        for i, got in enumerate(self.pool.call_all("probe", tokens)):
            diffs = [abs(a - b) for a, b in zip(got["logps"], reference)]
            mean = sum(diffs) / max(1, len(diffs))
            limit = tolerance(got["dtype"])
            if len(got["logps"]) != len(reference) or not mean <= limit:  # (NaN fails too)
                buckets = len(self._sent[0]) if self._sent else 0
                raise WeightSyncError(
                    f"weight sync check failed: rollout engine rollout-{i} scores the {len(reference) + 1}-token probe "
                    f"{mean:.4g} nats/token away from the learner (tolerance {limit:g} for {got['dtype']} weights) "
                    f"although all {buckets} bucket(s) arrived intact (checksums match): the engine loads or computes "
                    f"them wrongly; stopping instead of training on its samples")
            worst = max(worst, mean)
        return worst

    def _broadcast(self, state: dict, dtype, version: int) -> dict:
        from cluster.weight_sync import CollectiveGroup, free_port, node_ip, plan

        workers = self.pool.actors
        if self._group is None:
            ranks = [info["collective_ranks"] for info in ray.get([w.call.remote("info") for w in workers])]
            host, port, world = node_ip(), free_port(), sum(ranks) + 1
            first = [1 + sum(ranks[:i]) for i in range(len(workers))]
            joins = [w.call.remote("join_group", host, port, first[i], world, self.sync_backend)
                     for i, w in enumerate(workers)]
            self._group = CollectiveGroup(host, port, 0, world, self.sync_backend)
            ray.get(joins)
        sent = plan(state, dtype, self.bucket_bytes)
        refs = [w.call.remote("receive_weights", version, sent, self.verify) for w in workers]
        stats = self._group.broadcast_state(state, sent, self.verify)
        self._sent = (sent, stats.pop("checksums"))
        self._verify(ray.get(refs), workers)
        return stats

    def _on_replace(self, actor) -> None:
        """A replacement worker gets the latest weights before it regenerates the dead worker's shard."""
        if self.sync_backend == "object_store":
            if self._weights_refs is not None:
                self._verify([ray.get(actor.call.remote("load_weights", self._weights_refs, self.version, self.verify))],
                             [actor])
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
        self._broadcast(*self._last_state, self.version)

    def generate(self, prompts: list[list[int]], sampling: Any, seed: int | None = None) -> dict:
        """Returns {"completion_ids", "logprobs", "versions"} in the order of `prompts`; `sampling` is passed
        to the engines as it is; worker i samples with seed `seed * 1009 + i` (None: unseeded)."""
        def args(i: int, shard: list) -> tuple:
            return shard, sampling, None if seed is None else seed * 1009 + i

        rows = self.pool.sharded("generate", prompts, args)
        return {"completion_ids": [r[0] for r in rows], "logprobs": [r[1] for r in rows],
                "versions": [r[2] for r in rows], "extras": [r[3] for r in rows]}

    def shutdown(self) -> None:
        """Stop the workers and release the placement group."""
        if self._group is not None:
            self._group.close()
            self._group = None
        self.pool.shutdown()
