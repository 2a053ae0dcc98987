"""Where GRPO's learner and rollout workers run: resource plans and Ray placement groups.

Two modes, as in verl/OpenRLHF:

- `colocated`: one rollout engine per learner worker, on the same device. On GPUs each side asks for
  half a GPU so Ray packs them together (the engine must fit beside the learner: HF engines do, vLLM
  needs `gpu_memory_utilization` set low). On CPUs the engine borrows the learner's cores: generation
  and training alternate, so they do not compete unless overlap is on.
- `disaggregated`: rollout workers get their own devices (whole GPUs, or their own CPUs), in their own
  placement group, so generation never waits for the learner's memory.

The plan is computed before anything starts and checked against the cluster, so a cluster that is too
small fails with one line that says what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from cluster.runtime import ClusterError

MODES = ("colocated", "disaggregated")


class PlacementError(ClusterError):
    """The cluster cannot hold the learner and rollout workers the recipe asks for."""


@dataclass(frozen=True)
class Plan:
    learner: dict  # resources of one learner worker (Ray Train's resources_per_worker)
    rollout: dict  # resources of one rollout worker
    num_learners: int
    num_rollout: int
    mode: str

    @property
    def total(self) -> dict:
        out: dict = {}
        for res, n in ((self.learner, self.num_learners), (self.rollout, self.num_rollout)):
            for k, v in res.items():
                out[k] = out.get(k, 0) + v * n
        return out


def plan(mode: str, *, num_learners: int, learner_cpus: float, num_rollout: int, rollout_cpus: float,
         use_gpu: bool) -> Plan:
    if mode not in MODES:
        raise PlacementError(f"grpo.placement={mode!r} is not one of {list(MODES)}")
    if mode == "colocated":
        if num_rollout != num_learners:
            raise PlacementError(f"colocated placement puts one rollout worker beside each learner worker: "
                                 f"rollout_workers={num_rollout} must equal num_workers={num_learners}")
        gpu = {"GPU": 0.5} if use_gpu else {}
        return Plan({"CPU": learner_cpus, **gpu}, {"CPU": 0, **gpu}, num_learners, num_rollout, mode)
    gpu = {"GPU": 1} if use_gpu else {}
    return Plan({"CPU": learner_cpus, **gpu}, {"CPU": rollout_cpus, **gpu}, num_learners, num_rollout, mode)


def check(p: Plan, available: dict | None = None) -> None:
    """Raises PlacementError naming every resource the cluster lacks for plan `p`."""
    have = ray.cluster_resources() if available is None else available
    short = [f"{k} {v:g} (cluster has {have.get(k, 0):g})" for k, v in p.total.items() if have.get(k, 0) < v]
    if short:
        raise PlacementError(f"GRPO {p.mode} placement of {p.num_learners} learner + {p.num_rollout} rollout "
                             f"workers needs {', '.join(short)}; lower grpo.num_workers/rollout_workers or "
                             f"their CPUs, or add nodes")


def rollout_group(p: Plan, timeout_s: float = 60.0):
    """A placement group with one bundle per rollout worker (PACK: same node where possible)."""
    from ray.util.placement_group import placement_group, remove_placement_group

    bundles = [{k: v for k, v in p.rollout.items() if v} or {"CPU": 0.001} for _ in range(p.num_rollout)]
    pg = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise PlacementError(f"rollout placement group {bundles} was not scheduled within {timeout_s:g}s "
                             f"(cluster resources now: {ray.available_resources()})")
    return pg
