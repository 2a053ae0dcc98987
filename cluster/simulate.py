"""Placement on a simulated cluster (`rayzero cluster plan`): a `ray.cluster_utils.Cluster` on this machine
whose worker nodes declare fake GPUs, and the real placement code run against it.

Nothing touches CUDA: Ray only counts GPUs and hands out their ids, which is all placement decides. Each
actor a stage would start is started the way the stage starts it (the GRPO learners as a
`cluster.learners.LearnerGroup` in the bundles `cluster.placement.reserve` made, rollout workers in the
bundles `Reservation.rollout_args` names, every other actor or task with its own CPUs/GPUs), but hosts a
`Probe` that only reports the node and GPU ids Ray gave it. Placing is cheap: no model is loaded.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import ray

from cluster.actors import ActorPool
from cluster.placement import Plan, PlacementError, reserve
from cluster.runtime import tie_to_this_process


@dataclass(frozen=True)
class Want:
    """One actor or task to place: its name and resources."""

    name: str
    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class Landed:
    name: str
    node: int | str  # index of the worker node (in the order they were added); "head" if it landed there
    gpus: tuple[int, ...]  # GPU ids on that node (empty: a CPU actor)


class Probe:
    """What every simulated actor hosts: where Ray put it."""

    def where(self) -> dict:
        return {"node_id": ray.get_runtime_context().get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


@contextlib.contextmanager
def fake_cluster(nodes: int, gpus_per_node: int, cpus_per_node: float) -> Iterator[list[str]]:
    """A local Ray cluster of a head (no CPUs or GPUs: nothing is placed there) and `nodes` worker nodes
    with `cpus_per_node` CPUs and `gpus_per_node` fake GPUs each; yields the worker nodes' ids in order. The
    driver is connected to it; everything stops when the block ends (or, through the watchdog, when this
    process dies)."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        raise RuntimeError("a simulated cluster needs a process without a Ray connection")
    from cluster.weight_sync import free_port

    # A free dashboard port: a fixed one (8265) may belong to another Ray on this machine.
    head = {"num_cpus": 0, "num_gpus": 0, "include_dashboard": False, "dashboard_port": free_port()}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        ids = [cluster.add_node(num_cpus=cpus_per_node, num_gpus=gpus_per_node).node_id for _ in range(nodes)]
        context = ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        tie_to_this_process(context.address_info["session_dir"])
        cluster.wait_for_nodes()
        yield ids
    finally:
        ray.shutdown()
        cluster.shutdown()


def place(wants: Sequence[Want], grpo: Plan | None = None, node_ids: Sequence[str] = (),
          timeout_s: float = 30.0) -> list[Landed]:
    """Start one stage's actors at once as the stage would (see the module docstring), report where each
    landed, and stop them. `grpo`: the GRPO placement plan; its learners and rollout workers are the
    `wants` named learner-<i> / rollout-<i>. Raises PlacementError naming what could not be placed within
    `timeout_s` (the cluster is idle: whatever fits is placed in well under a second)."""
    found: dict[str, dict] = {}
    stops: list = []
    try:
        rest = list(wants)
        if grpo is not None:
            from cluster.learners import LearnerGroup

            rest = [w for w in wants if not w.name.startswith(("learner-", "rollout-"))]
            placed = reserve(grpo, timeout_s)
            stops.append(placed.release)
            group = LearnerGroup(grpo.num_learners, cpus=grpo.learner.get("CPU", 0), gpus=grpo.learner.get("GPU", 0),
                                 name="plan", **placed.learner_args())
            stops.append(group.shutdown)
            found.update({f"learner-{i}": a for i, a in enumerate(group.addresses())})
            if grpo.num_rollout:
                args = placed.rollout_args()
                pool = _probes(grpo.num_rollout, args["cpus_per_worker"], args["gpus_per_worker"], "Rollout",
                               f"GRPO {grpo.mode} rollout workers", timeout_s, placement_group=args["placement_group"],
                               bundle_offset=args["bundle_offset"], bundles_per_actor=args["bundles_per_worker"])
                stops.append(pool.shutdown)
                found.update({f"rollout-{i}": w for i, w in enumerate(pool.call_all("where"))})
        for run in _runs(rest):  # actors alike (reward-0..n, rollout-0..n) start together, in one pool
            first = run[0]
            what = first.name if len(run) == 1 else f"{first.name}..{run[-1].name}"
            pool = _probes(len(run), first.cpus, first.gpus, "Probe", what, timeout_s)
            stops.append(pool.shutdown)
            found.update({w.name: where for w, where in zip(run, pool.call_all("where"))})
    finally:
        for stop in reversed(stops):
            stop()
    _wait_idle()  # the next stage starts on an empty cluster, as it does at run time
    index = {nid: i for i, nid in enumerate(node_ids)}
    return [Landed(w.name, index.get(found[w.name]["node_id"], "head"),
                   tuple(sorted(int(g) for g in found[w.name]["gpu_ids"]))) for w in wants]


def _wait_idle(timeout_s: float = 15.0) -> None:
    """Until every CPU and GPU is free again (killing actors and removing placement groups is asynchronous)."""
    import time

    total = ray.cluster_resources()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        free = ray.available_resources()
        if all(free.get(k, 0) >= total.get(k, 0) - 1e-6 for k in ("CPU", "GPU")):
            return
        time.sleep(0.1)


def _runs(wants: Sequence[Want]) -> list[list[Want]]:
    out: list[list[Want]] = []
    for w in wants:
        prev = out[-1][-1] if out else None
        if prev and (prev.cpus, prev.gpus, prev.name.rsplit("-", 1)[0]) == (w.cpus, w.gpus, w.name.rsplit("-", 1)[0]):
            out[-1].append(w)
        else:
            out.append([w])
    return out


def _probes(n: int, cpus: float, gpus: float, kind: str, what: str, timeout_s: float, **pg) -> ActorPool:
    try:
        return ActorPool(Probe, num_actors=n, num_cpus=cpus, num_gpus=gpus, kind=kind, start_timeout_s=timeout_s, **pg)
    except ray.exceptions.GetTimeoutError:
        res = ", ".join(f"{k} {v:g}" for k, v in (("CPU", cpus), ("GPU", gpus)) if v)
        raise PlacementError(f"{what} ({res or 'no resources'} each) could not be placed within {timeout_s:g}s: the "
                             f"nodes are too small or already full") from None


def default_env() -> None:
    """A simulated cluster lives on loopback: no token authentication (set before Ray starts, once per
    process; Ray keeps the mode per process)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
