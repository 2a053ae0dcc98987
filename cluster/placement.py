"""Where GRPO's learner and rollout workers run: resource plans and the Ray placement groups that hold them.

Two modes, as in verl/OpenRLHF:

- `colocated`: one rollout engine per learner worker, on the same device. Learner i and rollout worker i
  share bundle i of the learners' placement group ({CPU: the learner's CPUs, GPU: 1}); each asks for half
  of the bundle's GPU, and Ray gives both actors of a bundle the bundle's GPU: same node, same GPU, and no
  other learner or engine on it (the engine must fit beside the learner: HF engines do, vLLM needs
  `gpu_memory_utilization` set low). On CPUs the engine borrows the learner's cores (0 CPUs of its own):
  generation and training alternate, so they do not compete unless overlap is on.
- `disaggregated`: rollout workers get their own devices (whole GPUs, as many as an engine's tensor
  parallelism; or their own CPUs), so generation never waits for the learner's memory. An engine with
  tensor parallelism > 1 gets one bundle per GPU (`engine_bundles`): vLLM's Ray executor, which starts its
  TP workers inside the current placement group, refuses a bundle with more than one GPU and places one
  worker per bundle; the rollout actor itself (vLLM's driver) holds no GPU, in the first. Their bundles
  follow the learners' in the same placement group (PACK): the whole stage on one node when it fits there
  (weight sync stays on the node), else on as few nodes as possible.

The plan is computed before anything starts (`plan`) and checked against the cluster (`check`: totals, and
every bundle must fit on one node), so a cluster that is too small fails with one line that says what is
missing; `reserve` then creates the placement group, and the learner group (`cluster.learners`) and the
rollout pool (`cluster.rollout`) are started inside them. `rayzero cluster plan` runs the same functions on
a simulated cluster (`cluster.simulate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import ray

from cluster.runtime import ClusterError

MODES = ("colocated", "disaggregated")
MIN_BUNDLE_CPU = 0.001  # Ray refuses an empty bundle; a 0-CPU actor still fits in this one


class PlacementError(ClusterError):
    """The cluster cannot hold the learner and rollout workers the recipe asks for."""


@dataclass(frozen=True)
class Plan:
    learner: dict  # resources of one learner actor
    rollout: dict  # resources of one rollout actor
    num_learners: int
    num_rollout: int
    mode: str
    engine_gpus: int = 0  # GPUs a rollout engine's own workers hold, one bundle each (0: the actor holds them)

    @property
    def total(self) -> dict:
        out: dict = {}
        for res, n in ((self.learner, self.num_learners), (self.rollout, self.num_rollout),
                       ({"GPU": self.engine_gpus}, self.num_rollout)):
            for k, v in res.items():
                if v:
                    out[k] = out.get(k, 0) + v * n
        return out

    @property
    def learner_bundle(self) -> dict:
        """Bundle i of the learners' placement group: learner i, and rollout worker i when colocated."""
        parts = (self.learner, self.rollout) if self.mode == "colocated" else (self.learner,)
        return _bundle(parts)

    @property
    def rollout_bundles(self) -> list[dict]:
        """The bundles one disaggregated rollout worker owns (`engine_bundles`)."""
        return engine_bundles(self.rollout, self.engine_gpus)

    @property
    def rollout_bundle(self) -> dict:
        """What one disaggregated rollout worker reserves in all (its bundles must share a node)."""
        return _bundle(self.rollout_bundles)

    def bundles(self) -> list[dict]:
        """Every bundle the plan reserves: the learners' then (disaggregated) the rollout workers'."""
        rollout = self.rollout_bundles * self.num_rollout if self.mode == "disaggregated" else []
        return [self.learner_bundle] * self.num_learners + rollout


def _bundle(parts: Sequence[dict]) -> dict:
    out: dict = {}
    for res in parts:
        for k, v in res.items():
            out[k] = out.get(k, 0) + v
    out = {k: v for k, v in out.items() if v}
    return out if out.get("CPU") else {**out, "CPU": MIN_BUNDLE_CPU}


def engine_bundles(actor: dict, engine_gpus: int = 0) -> list[dict]:
    """The bundles of one rollout engine. `engine_gpus` 0: one bundle holding the actor's own resources
    (tensor parallelism 1, or an engine on CPUs). `engine_gpus` N > 0 (vLLM tensor parallelism N in a
    placement group): N bundles of one GPU each, the first also holding the actor's CPUs; the actor
    (vLLM's driver) asks for no GPU and vLLM's Ray executor puts TP worker j in bundle j (rl.vllm_engine)."""
    if not engine_gpus:
        return [_bundle((actor,))]
    if actor.get("GPU"):
        raise PlacementError("a rollout actor whose engine workers hold its GPUs must not hold one itself")
    return [_bundle((actor, {"GPU": 1}))] + [{"GPU": 1}] * (int(engine_gpus) - 1)


def plan(mode: str, *, num_learners: int, learner_cpus: float, num_rollout: int, rollout_cpus: float,
         use_gpu: bool, rollout_gpus: int = 1) -> Plan:
    """Resources of each learner and rollout actor. `rollout_gpus`: GPUs one rollout engine spans (its
    tensor-parallel size) on GPUs; a colocated engine has exactly its learner's one GPU."""
    if mode not in MODES:
        raise PlacementError(f"grpo.placement={mode!r} is not one of {list(MODES)}")
    if rollout_gpus < 1 or rollout_gpus != int(rollout_gpus):
        raise PlacementError(f"grpo.vllm.tensor_parallel_size={rollout_gpus!r}: must be a whole number >= 1")
    if mode == "colocated":
        if num_rollout != num_learners:
            raise PlacementError(f"colocated placement puts one rollout worker beside each learner worker: "
                                 f"rollout_workers={num_rollout} must equal num_workers={num_learners}")
        if use_gpu and rollout_gpus > 1:
            raise PlacementError(f"grpo.vllm.tensor_parallel_size={rollout_gpus} is larger than the 1 GPU of a "
                                 f"colocated bundle (learner i and its engine share one GPU); use "
                                 f"grpo.placement=disaggregated or tensor_parallel_size=1")
        gpu = {"GPU": 0.5} if use_gpu else {}
        return Plan({"CPU": learner_cpus, **gpu}, {"CPU": 0, **gpu}, num_learners, num_rollout, mode)
    gpu = {"GPU": 1} if use_gpu else {}
    if use_gpu and rollout_gpus > 1:  # tensor parallelism: one bundle per GPU, held by the engine's workers
        return Plan({"CPU": learner_cpus, **gpu}, {"CPU": rollout_cpus}, num_learners, num_rollout, mode,
                    engine_gpus=int(rollout_gpus))
    return Plan({"CPU": learner_cpus, **gpu}, {"CPU": rollout_cpus, **gpu}, num_learners, num_rollout, mode)


def cluster_nodes() -> list[dict]:
    """Total resources of each live node of the connected cluster."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check(p: Plan, available: dict | None = None, nodes: Sequence[dict] | None = None) -> None:
    """Raises PlacementError naming what the cluster lacks for plan `p`: a resource in total, or a node
    big enough for one bundle (a bundle never spans nodes). `available`: the cluster's totals (default:
    the connected cluster's); `nodes`: each node's resources (checked only when given)."""
    have = ray.cluster_resources() if available is None else available
    short = [f"{k} {v:g} (cluster has {have.get(k, 0):g})" for k, v in p.total.items() if have.get(k, 0) < v - 1e-9]
    if short:
        raise PlacementError(f"GRPO {p.mode} placement of {p.num_learners} learner + {p.num_rollout} rollout "
                             f"workers needs {', '.join(short)}; lower grpo.num_workers/rollout_workers or "
                             f"their CPUs, or add nodes")
    if nodes is None:
        return
    for what, bundle in (("learner", p.learner_bundle), ("rollout", p.rollout_bundle)):
        if what == "rollout" and (p.mode == "colocated" or not p.num_rollout):
            continue
        if not any(all(n.get(k, 0) >= v - 1e-9 for k, v in bundle.items()) for n in nodes):
            biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
            fields = "grpo.cpus" if what == "learner" else "grpo.rollout_cpus or grpo.vllm.tensor_parallel_size"
            raise PlacementError(f"one GRPO {what} bundle needs {_fmt(bundle)} on a single node, but the largest "
                                 f"node has {_fmt({k: biggest.get(k, 0) for k in bundle})}; lower {fields}, "
                                 f"or add bigger nodes")


def _fmt(res: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in res.items())


def reserve_bundles(bundles: list[dict], what: str, timeout_s: float = 120.0, strategy: str = "PACK"):
    """A placement group of `bundles` (PACK: as few nodes as possible), once Ray has scheduled it; a group
    not scheduled within `timeout_s` is removed and reported in one line."""
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        shapes = ", ".join(f"{bundles.count(b)} x {{{_fmt(b)}}}" for b in _unique(bundles))
        raise PlacementError(f"{what}: bundles {shapes} could not be placed within "
                             f"{timeout_s:g}s (free now: {_fmt(_rounded(ray.available_resources()))}); "
                             f"the cluster is too small or too fragmented for them")
    return pg


def _unique(bundles: list[dict]) -> list[dict]:
    out: list[dict] = []
    for b in bundles:
        if b not in out:
            out.append(b)
    return out


def _rounded(res: dict) -> dict:
    return {k: round(v, 3) for k, v in sorted(res.items()) if k in ("CPU", "GPU")}


@dataclass
class Reservation:
    """The placement group one GRPO stage holds (`reserve`): bundle i = learner i, plus rollout worker i
    when colocated; disaggregated, rollout worker j has bundle `num_learners + j` of the same group."""

    plan: Plan
    learners: Any

    def learner_args(self) -> dict:
        """Keyword arguments of `cluster.learners.run_worker_group` / `LearnerGroup` for the learners."""
        return {"placement_group": self.learners, "bundle_offset": 0}

    def rollout_args(self) -> dict:
        """Keyword arguments of `cluster.rollout.RolloutPool` for the rollout workers: rollout worker i in
        bundle i (colocated: learner i's bundle) or `num_learners + i*k` (disaggregated: its own k bundles,
        k = 1, or the engine's tensor-parallel size on GPUs)."""
        coloc = self.plan.mode == "colocated"
        return {"placement_group": self.learners, "bundle_offset": 0 if coloc else self.plan.num_learners,
                "bundles_per_worker": 1 if coloc else len(self.plan.rollout_bundles), "own_placement_group": False,
                "cpus_per_worker": self.plan.rollout.get("CPU", 0), "gpus_per_worker": self.plan.rollout.get("GPU", 0)}

    def release(self) -> None:
        """Remove the placement group (the actors in it are killed by Ray); safe to call twice."""
        from ray.util.placement_group import remove_placement_group

        if self.learners is not None:
            remove_placement_group(self.learners)
            self.learners = None


def reserve(p: Plan, timeout_s: float = 120.0) -> Reservation:
    """Create and wait for the placement group of plan `p` (see `Reservation`)."""
    what = f"GRPO {p.mode} placement ({p.num_learners} learner + {p.num_rollout} rollout workers)"
    return Reservation(p, reserve_bundles(p.bundles(), what, timeout_s))
