"""`rayzero cluster plan RECIPE [overrides] --nodes M --gpus-per-node N [--cpus-per-node C] [--json]`: where
every actor of every stage would land on a cluster of M nodes x N GPUs, found by running the real placement
code on a simulated Ray cluster (`cluster.simulate`: fake GPUs, nothing touches CUDA).

What is placed is what each stage declares (`Stage.resources(cfg).actors`: learner-<i>, rollout-<i>,
reward-<i>, or <stage>-0 for a stage that runs as one task). A stage's learners and rollout workers in
placement groups (`Stage.placement_plan`: GRPO's) go through the same functions it uses at run time
(`pipelines.stages.grpo.plan` -> `cluster.placement.reserve`
-> a `cluster.learners.LearnerGroup` and the rollout workers in `Reservation.rollout_args`); its reward actors
and every other stage's actors are started with their own CPUs/GPUs, as `cluster.actors.ActorPool` /
`cluster.runtime.run_task` start them. Stages run one after another, so each is placed on the empty cluster.
A stage whose actors do not all run at once (distill: rollout workers sample, then `distill-0` trains;
its declared peak is less than the sum of its actors) is placed one kind of actor at a time.

Whatever does not fit fails in one line naming it (stage, actor or bundle, the fields to change) before
Ray starts when it can be known from the numbers alone, else when Ray cannot place it.
"""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from typing import Any

from cluster.runtime import ClusterError, check_resources
from pipelines import memory_plan
from pipelines.config import PipelineConfig, load_config

EPS = 1e-9


@dataclass(frozen=True)
class StagePlan:
    name: str
    label: str  # e.g. "grpo (colocated)"
    phases: list  # lists of pipelines.stages.base.Actor started together
    cpus: float  # the stage's declared peak
    gpus: float
    fields: tuple[str, str] = ("its gpus", "its workers/cpus")  # what a resource error names (Stage.fields)
    bundles: Any = None  # the stage's cluster.placement.Plan when it reserves learner/rollout bundles (Stage.placement)


def stages(cfg: PipelineConfig) -> list[StagePlan]:
    from pipelines.driver import enabled_stages

    out = []
    for stage in enabled_stages(cfg):
        res = stage.resources(cfg)
        actors = list(res.actors)
        together = (sum(a.cpus for a in actors) <= res.cpus + EPS and sum(a.gpus for a in actors) <= res.gpus + EPS)
        if together:
            phases = [actors]
        else:  # one kind (name prefix) at a time, in declaration order
            kinds: dict[str, list] = {}
            for a in actors:
                kinds.setdefault(a.name.rsplit("-", 1)[0], []).append(a)
            phases = list(kinds.values())
        out.append(StagePlan(stage.name, stage.plan_label(cfg), phases, float(res.cpus), float(res.gpus),
                             fields=stage.fields(), bundles=stage.placement_plan(cfg)))
    return out


def default_cpus(plans: list[StagePlan]) -> int:
    """CPUs per node when not given: enough for any one stage on one node (CPUs never decide the plan)."""
    return max([1] + [math.ceil(sum(a.cpus for a in phase) - EPS) for s in plans for phase in s.phases])


def check_fit(cfg: PipelineConfig, plans: list[StagePlan], nodes: int, gpus: int, cpus: float) -> None:
    """What can be known from the numbers alone: each stage's totals, each learner/rollout bundle and every
    other actor on one node. Raises ClusterError (one line)."""
    from cluster import placement

    if nodes < 1:
        raise ClusterError(f"--nodes {nodes}: need at least one node")
    if gpus < 0 or cpus <= 0:
        raise ClusterError(f"--gpus-per-node {gpus} / --cpus-per-node {cpus:g}: GPUs must be >= 0 and CPUs > 0")
    have = {"CPU": nodes * cpus, "GPU": float(nodes * gpus)}
    shape = f"{nodes} node(s) x {gpus} GPU(s), {cpus:g} CPU(s) each"
    for s in plans:
        try:
            check_resources(s.cpus, s.gpus, f"stage {s.name}", have=have, fields=s.fields)
        except ClusterError as e:
            raise ClusterError(f"{e} ({shape})") from None
        if s.bundles is not None:
            try:
                placement.check(s.bundles, have, nodes=[{"CPU": cpus, "GPU": gpus}] * nodes)
            except ClusterError as e:
                raise ClusterError(f"stage {s.name}: {e} ({shape})") from None
        for phase in s.phases:
            for a in phase:
                if s.bundles is not None and a.name.startswith(("learner-", "rollout-")):
                    continue  # checked as bundles above
                if a.gpus > gpus + EPS or a.cpus > cpus + EPS:
                    raise ClusterError(f"stage {s.name}: {a.name} needs {a.cpus:g} CPU(s) and {a.gpus:g} GPU(s) on one "
                                       f"node, but a node has {cpus:g} and {gpus} ({shape})")


def plan(recipe: str, overrides: list[str], *, nodes: int, gpus_per_node: int, cpus_per_node: float | None = None,
         timeout_s: float = 30.0, gpu_memory_gib: float | None = None,
         prompt_tokens: int = memory_plan.PROMPT_TOKENS) -> dict[str, Any]:
    """{"stages": {stage: [{"actor", "node", "gpu", "memory_gib"}, ...]}, "cluster": {...}} for `recipe` +
    `overrides` on a simulated cluster; raises ClusterError or MemoryPlanError (one line) for what does not
    fit. `gpu_memory_gib`: GiB of one GPU (default run.gpu_memory_gib; 0 = no memory plan)."""
    cfg = load_config(recipe, overrides)
    plans = stages(cfg)
    cpus = float(cpus_per_node) if cpus_per_node else float(default_cpus(plans))
    check_fit(cfg, plans, nodes, gpus_per_node, cpus)
    card = memory_plan.gpu_gib_of(cfg, gpu_memory_gib) if gpus_per_node else 0.0
    memory_plan.check(cfg, card, prompt_tokens)  # the numbers alone, before the simulated cluster starts
    placed = place_stages(cfg, plans, nodes, gpus_per_node, cpus, timeout_s)
    loads = add_memory(cfg, plans, placed, card, prompt_tokens) if card > 0 else {}
    for r in (r for rows in placed.values() for r in rows if "memory_gib" not in r):  # no memory plan asked for
        r["memory_gib"] = None if r["gpu"] is not None else 0.0
    return {"stages": placed, "gpus": loads,
            "cluster": {"nodes": nodes, "gpus_per_node": gpus_per_node, "cpus_per_node": cpus, "gpu_memory_gib": card}}


def add_memory(cfg: PipelineConfig, plans: list[StagePlan], placed: dict[str, list[dict]], gpu_gib: float,
               prompt_tokens: int = memory_plan.PROMPT_TOKENS) -> dict[str, dict[str, float]]:
    """Give every placed row its `memory_gib` (per GPU it holds; 0 without a GPU; None when the model's shape
    is unknown) and check the actors that share a GPU in one phase, as placed, fit `gpu_gib`. Returns
    {stage: {"node N GPU G": GiB}}."""
    on_gpu: dict[str, dict[str, list[str]]] = {}  # stage -> GPU label -> actors of one phase
    for s in plans:
        for p, phase in enumerate(s.phases):
            names = {a.name for a in phase}
            for r in placed[s.name]:
                if r["actor"] in names:
                    for gpu in (r.get("gpus") or ([] if r["gpu"] is None else [r["gpu"]])):
                        on_gpu.setdefault(s.name, {}).setdefault(f"{p}:node {r['node']} GPU {gpu}", []).append(r["actor"])
    groups = {stage: [(label.split(":", 1)[1], names) for label, names in g.items()] for stage, g in on_gpu.items()}
    est = memory_plan.check(cfg, gpu_gib, prompt_tokens, groups=lambda stage, _: groups.get(stage, []))
    for stage, rows in placed.items():
        for r in rows:
            e = est.get(stage, {}).get(r["actor"])
            r["memory_gib"] = round(e.total, 1) if e else (None if r["gpu"] is not None else 0.0)
    loads: dict[str, dict[str, float]] = {}
    for stage, pairs in groups.items():
        for label, names in pairs:
            total = round(memory_plan.load(cfg, stage, names, est.get(stage, {})), 1)
            loads.setdefault(stage, {})[label] = max(total, loads.get(stage, {}).get(label, 0.0))
    return loads


def place_stages(cfg: PipelineConfig, plans: list[StagePlan], nodes: int, gpus: int, cpus: float,
                 timeout_s: float = 30.0) -> dict[str, list[dict]]:
    from cluster import simulate

    simulate.default_env()
    # Ray prints its own notes (e.g. the raylet's worker start-up warnings) on stdout: they go to stderr,
    # so stdout holds the plan alone (--json is parsed by scripts).
    with contextlib.redirect_stdout(sys.stderr), simulate.fake_cluster(nodes, gpus, cpus) as node_ids:
        return place_on(cfg, plans, node_ids, timeout_s)


def place_on(cfg: PipelineConfig, plans: list[StagePlan], node_ids: list[str], timeout_s: float = 30.0
             ) -> dict[str, list[dict]]:
    """Place `plans` on the connected (simulated) cluster whose worker nodes are `node_ids`."""
    from cluster import simulate
    from cluster.placement import PlacementError

    out: dict[str, list[dict]] = {}
    for s in plans:
        rows = []
        for phase in s.phases:
            wants = [simulate.Want(a.name, a.cpus, a.gpus) for a in phase]
            bundles = s.bundles if any(a.name.startswith("learner-") for a in phase) else None
            try:
                landed = simulate.place(wants, bundles, node_ids, timeout_s)
            except PlacementError as e:
                raise ClusterError(f"stage {s.name}: {e}") from None
            for spot in landed:
                row = {"actor": spot.name, "node": spot.node, "gpu": spot.gpus[0] if spot.gpus else None}
                if len(spot.gpus) > 1:
                    row["gpus"] = list(spot.gpus)
                rows.append(row)
        out[s.name] = rows
    return out


def render_text(recipe: str, result: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    c = result["cluster"]
    lines = [f"rayzero cluster plan {recipe}: {c['nodes']} node(s) x {c['gpus_per_node']} GPU(s), "
             f"{c['cpus_per_node']:g} CPU(s) each (simulated; Ray's own placement)"]
    for stage, rows in result["stages"].items():
        lines.append((labels or {}).get(stage, stage))
        width = max([len(r["actor"]) for r in rows] + [5])
        for r in rows:
            gpu = "-" if r["gpu"] is None else ",".join(map(str, r.get("gpus", [r["gpu"]])))
            gib = r.get("memory_gib")
            memory = "" if r["gpu"] is None or not c.get("gpu_memory_gib") else (
                "  ? GiB (model shape unknown)" if gib is None else f"  {gib:.1f} GiB")
            lines.append(f"  {r['actor']:<{width}}  node {r['node']}  gpu {gpu:<3}{memory}".rstrip())
        loads = result.get("gpus", {}).get(stage)
        if loads:
            label, most = max(loads.items(), key=lambda kv: kv[1])
            lines.append(f"  fullest GPU: {label}, {most:.1f} of {c['gpu_memory_gib']:g} GiB (estimated)")
    return "\n".join(lines) + "\n"
