"""The learner: a worker group of Ray actors in a placement group rayzero creates, with torch.distributed set
up by the group (verl and OpenRLHF build theirs the same way).

Why not Ray Train: its `TorchTrainer` creates its own placement group, so nothing else can be put into a
learner's bundle. Here the caller may lend the group a placement group (`cluster.placement.reserve`):
learner rank i runs in bundle i, and in colocated mode rollout worker i is started in the same bundle, so
the two share a node and, on GPUs, one GPU (each holds half of the bundle's GPU; Ray gives every actor of a
bundle that bundle's GPU id).

What every rank gets before the train function runs (the torchrun contract, which accelerate, DeepSpeed and
TRL read):
- `MASTER_ADDR` (rank 0's node), `MASTER_PORT` (a free port there), `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
  `LOCAL_WORLD_SIZE`, `NODE_RANK`; the default process group initialised with gloo on CPU, NCCL on GPU.
- GPUs: Ray assigns each learner its GPU; `CUDA_VISIBLE_DEVICES` is then widened to the GPUs Ray assigned to
  all of the group's learners on that node (sorted, as Ray Train does), so NCCL sees its peers and
  `LOCAL_RANK` is the index of this learner's own GPU in that list (`cuda:LOCAL_RANK` is its device).

Failures: any rank that dies or raises ends the attempt; every learner is killed at once (the others would
wait in a collective for the dead one) and, up to `max_failures` times, a fresh group starts in the same
bundles and calls the train function again, which resumes from its own checkpoints. Ctrl-C reaches the
caller as KeyboardInterrupt (the driver waits in short `ray.wait` slices on its main thread) after the
learners are killed. A killed driver takes its actors with it (Ray's owner fate-sharing; for a local Ray,
`cluster/lifetime.py` stops whatever is left of the session).
"""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta
from typing import Any, Callable, Sequence

import ray

from cluster.actors import DEAD, ActorPool
from cluster.runtime import check_resources

KIND = "Learner"  # the actors' class name: their processes are titled ray::Learner
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


class LearnerWorker:
    """What each learner actor hosts: where it runs, and the train function once its rank is known. Cheap
    to build (torch is imported when training starts), so placing a group costs no model loading."""

    def address(self) -> dict:
        """This actor's node, IP and the GPU ids Ray assigned to it (strings, as in CUDA_VISIBLE_DEVICES)."""
        return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "pid": os.getpid()}

    def free_port(self) -> int:
        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def run(self, job: tuple[Callable[[Any], Any], Any], env: dict[str, str], backend: str) -> Any:
        """Set this rank's environment, join the group's default process group, run `train_fn(config)`."""
        train_fn, config = job
        os.environ.update(env)
        import torch
        import torch.distributed as dist

        if backend == "nccl":
            torch.cuda.set_device(int(env["LOCAL_RANK"]))
        dist.init_process_group(backend, init_method="env://", rank=int(env["RANK"]),
                                world_size=int(env["WORLD_SIZE"]), timeout=PROCESS_GROUP_TIMEOUT)
        try:
            return train_fn(config)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()


def rank_envs(addresses: Sequence[dict], master_port: int) -> list[dict[str, str]]:
    """The torch.distributed environment of every rank; rank i is the learner whose address is
    `addresses[i]` (`LearnerWorker.address()`). Pure: the rules are in the module docstring."""
    if not addresses:
        return []
    nodes: list[str] = []
    for a in addresses:  # nodes numbered in order of their first rank
        if a["node_id"] not in nodes:
            nodes.append(a["node_id"])
    envs = []
    for rank, a in enumerate(addresses):
        same_ranks = [r for r, b in enumerate(addresses) if b["node_id"] == a["node_id"]]
        same = [addresses[r] for r in same_ranks]
        env = {"MASTER_ADDR": addresses[0]["ip"], "MASTER_PORT": str(master_port), "RANK": str(rank),
               "WORLD_SIZE": str(len(addresses)), "LOCAL_WORLD_SIZE": str(len(same)),
               "NODE_RANK": str(nodes.index(a["node_id"]))}
        gpus = sorted({g for b in same for g in b["gpu_ids"]}, key=_gpu_order)
        if a["gpu_ids"]:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            env["LOCAL_RANK"] = str(gpus.index(a["gpu_ids"][0]))
            env["ACCELERATE_TORCH_DEVICE"] = f"cuda:{env['LOCAL_RANK']}"
        else:
            env["LOCAL_RANK"] = str(same_ranks.index(rank))
        envs.append(env)
    return envs


def _gpu_order(gpu_id: str):
    return (0, int(gpu_id), "") if gpu_id.isdigit() else (1, 0, gpu_id)  # ids may be UUIDs


class LearnerGroup:
    """`num_workers` learner actors, each reserving `cpus` CPUs and `gpus` GPUs (fractions allowed: half a
    GPU beside a colocated rollout engine). Rank i runs in bundle `bundle_offset + i` of `placement_group`
    when one is lent (the lender removes it); without one the group reserves its own (one bundle per
    learner, packed onto as few nodes as possible) and removes it on `shutdown`."""

    def __init__(self, num_workers: int, *, cpus: float, gpus: float = 0.0, placement_group=None,
                 bundle_offset: int = 0, name: str = "learner", timeout_s: float = 120.0) -> None:
        if num_workers < 1:
            raise ValueError("a learner group needs num_workers >= 1")
        self.name, self.use_gpu = name, gpus > 0
        owned = placement_group is None
        if owned:
            from cluster.placement import reserve_bundles

            bundle = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
            placement_group = reserve_bundles([bundle] * num_workers, f"{name} ({num_workers} learner workers)",
                                              timeout_s=timeout_s)
        self.pool = ActorPool(LearnerWorker, num_actors=num_workers, num_cpus=cpus, num_gpus=gpus,
                              placement_group=placement_group, bundle_offset=bundle_offset,
                              release_placement_group=owned, kind=KIND)

    @property
    def restarts(self) -> int:
        return self.pool.restarts

    def addresses(self) -> list[dict]:
        """Where each rank runs: node id, IP, GPU ids (what Ray assigned), pid."""
        return [ray.get(a.call.remote("address")) for a in self.pool.actors]

    def envs(self) -> list[dict[str, str]]:
        addresses = self.addresses()
        port = ray.get(self.pool.actors[0].call.remote("free_port"))
        return rank_envs(addresses, port)

    def run(self, train_fn: Callable[[Any], Any], config: Any, max_failures: int = 0,
            say: Callable[[str], None] | None = None) -> list:
        """`train_fn(config)` on every rank; returns the ranks' results in rank order. A failed attempt (a
        rank died or raised) restarts the whole group, at most `max_failures` times; then the last
        failure is raised."""
        say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        backend = "nccl" if self.use_gpu else "gloo"
        job = ray.put((train_fn, config))  # shipped once, not once per rank
        while True:
            try:
                return _wait_all(self.pool.submit_each("run", [(job, env, backend) for env in self.envs()]))
            except Exception as e:  # noqa: BLE001 - a rank's error or death ends the attempt
                from cluster.weight_sync import WeightSyncError

                # A failed weight-sync check stops the run: a restart would resync and might hide the fault.
                if self.pool.restarts >= max_failures or isinstance(e, WeightSyncError):
                    raise
                say(f"{self.name}: a learner failed ({_one_line(e)}); restarting the group "
                    f"({self.pool.restarts + 1}/{max_failures}), it resumes from its latest checkpoint")
                self.pool.restart()

    def shutdown(self) -> None:
        """Kill the learners at once (a running train function is not waited for)."""
        self.pool.shutdown(timeout_s=0)


def _wait_all(refs: list, poll_s: float = 0.5, settle_s: float = 2.0) -> list:
    """Results of `refs` in order; raises the first failure as soon as it is known. Waits in short slices on
    the caller's thread, so Ctrl-C interrupts it. When a rank fails, the others get `settle_s` to fail too,
    and a rank's death is raised in preference to its peers' collective errors (the death is the cause)."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=len(pending), timeout=poll_s)
        for ref in done:
            try:
                ray.get(ref)
            except Exception as first:  # noqa: BLE001
                settled, _ = ray.wait(pending, num_returns=len(pending), timeout=settle_s) if pending else ([], [])
                for other in [*done, *settled]:
                    try:
                        ray.get(other)
                    except DEAD as death:
                        raise death from None
                    except Exception:  # noqa: BLE001 - a consequence, not the cause
                        pass
                raise first
    return ray.get(refs)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:300]


def run_worker_group(train_fn: Callable[[Any], Any], config: Any, *, num_workers: int,
                     resources_per_worker: dict[str, float], use_gpu: bool, name: str, max_failures: int = 0,
                     placement_group=None, bundle_offset: int = 0) -> list:
    """Run `train_fn(config)` on `num_workers` learner ranks with torch.distributed set up (gloo on CPU,
    NCCL on GPU) and return their results in rank order. `resources_per_worker` ({"CPU": c, "GPU": g}) is
    what each learner actor holds; with `placement_group` rank i runs in its bundle `bundle_offset + i`
    (see `cluster.placement.reserve`). `max_failures` restarts of the whole group are allowed (the
    function resumes from its checkpoints). The learners are gone when this returns or raises."""
    cpus, gpus = float(resources_per_worker.get("CPU", 1)), float(resources_per_worker.get("GPU", 0))
    if use_gpu and not gpus:
        gpus = 1.0
    if not use_gpu:
        gpus = 0.0
    if placement_group is None:
        check_resources(num_workers * cpus, num_workers * gpus, f"{name} ({num_workers} learner workers)")
    group = LearnerGroup(num_workers, cpus=cpus, gpus=gpus, placement_group=placement_group,
                         bundle_offset=bundle_offset, name=name)
    try:
        return group.run(train_fn, config, max_failures)
    finally:
        group.shutdown()


def worker_context() -> tuple[int, int, int]:
    """(world rank, world size, local rank) of the calling learner (read from the torch.distributed
    environment the group set, so it holds under torchrun too; a lone process is rank 0 of 1)."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
