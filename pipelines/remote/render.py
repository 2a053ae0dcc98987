"""`rayzero cluster render`: fill a cluster template (cluster/templates/) from a recipe's resource needs.

What a recipe needs is what its stages declare (`Stage.resources`, the same declaration the driver checks
against the cluster before the first stage starts). Stages run one at a time, so a cluster must hold the
largest stage (`peak`) and every single worker must fit on one node (`largest`).

The templates run the same command `rayzero submit` does: `python -m pipelines.cli run <recipe>
run.ray_address=auto <overrides>` (= `rayzero run`, without needing the console script installed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from cluster.runtime import ClusterError
from pipelines.config import PipelineConfig, load_config, recipe_path

REPO = Path(__file__).resolve().parents[2]
K8S_RUNS = "/mnt/runs"  # where the RayJob mounts its shared runs volume


@dataclasses.dataclass(frozen=True)
class Needs:
    stages: dict[str, dict[str, float]]  # what each enabled stage holds at once
    largest: dict[str, float]  # the biggest single task/worker (must fit on one node)

    @property
    def peak(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for res in self.stages.values():
            for k, v in res.items():
                out[k] = max(out.get(k, 0.0), v)
        return out

    def describe(self) -> str:
        fmt = lambda r: ", ".join(f"{k} {v:g}" for k, v in r.items() if v) or "nothing"  # noqa: E731
        stages = "; ".join(f"{s}: {fmt(r)}" for s, r in self.stages.items())
        return f"{stages}; largest single worker: {fmt(self.largest)}"


def needs(cfg: PipelineConfig) -> Needs:
    """Resources per enabled stage, as the stages declare them (pipelines/stages/)."""
    from pipelines.driver import enabled_stages

    stages: dict[str, dict[str, float]] = {}
    largest: dict[str, float] = {}
    for stage in enabled_stages(cfg):
        res = stage.resources(cfg)
        stages[stage.name] = {"CPU": float(res.cpus), **({"GPU": float(res.gpus)} if res.gpus else {})}
        for a in res.actors:
            largest["CPU"] = max(largest.get("CPU", 0.0), float(a.cpus))
            if a.gpus:
                largest["GPU"] = max(largest.get("GPU", 0.0), float(a.gpus))
    return Needs(stages, largest)


def cluster_recipe(recipe: str) -> str:
    """The recipe as the cluster sees it: a shipped name, or a path relative to the repository."""
    path = recipe_path(recipe).resolve()
    if path.parent == (REPO / "pipelines" / "recipes").resolve():
        return path.stem
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        raise ClusterError(f"recipe file {path} is outside the repository {REPO}, so the cluster would not "
                           f"have it; copy it into the repo (e.g. pipelines/recipes/)") from None


def entrypoint(recipe: str, overrides: list[str] | tuple[str, ...], extra: tuple[str, ...] = ()) -> str:
    """The command the cluster runs: `rayzero run` connecting to the cluster it runs on."""
    args = [cluster_recipe(recipe), *overrides, *extra]
    if not any(a.startswith("run.ray_address=") for a in args):
        args.insert(1, "run.ray_address=auto")
    return shlex.join(["python", "-m", "pipelines.cli", "run", *args])


def _dns_name(text: str, limit: int = 40) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", name)[:limit].rstrip("-") or "rayzero"


def node_shape(cfg: PipelineConfig, nodes: int, gpus: int, cpus: int | None = None) -> tuple[int, int]:
    """(CPUs per node, memory GiB per node) for `nodes` nodes of `gpus` GPUs that hold the recipe's largest
    stage; raises ClusterError naming what is short."""
    n = needs(cfg)
    if nodes < 1:
        raise ClusterError(f"--nodes {nodes}: need at least one node")
    if gpus < 0:
        raise ClusterError(f"--gpus {gpus}: must be >= 0")
    need_gpu, big_gpu = n.peak.get("GPU", 0.0), n.largest.get("GPU", 0.0)
    if need_gpu and (nodes * gpus < need_gpu or gpus < big_gpu):
        raise ClusterError(f"the recipe needs {need_gpu:g} GPU(s) at once ({n.describe()}) but --nodes {nodes} "
                           f"--gpus {gpus} gives {nodes * gpus}; raise --gpus/--nodes or lower grpo.num_workers/"
                           f"rollout_workers")
    need_cpu = max(math.ceil(n.largest.get("CPU", 0.0)), math.ceil(n.peak.get("CPU", 0.0) / nodes), 1)
    if cpus is not None and cpus < math.ceil(n.largest.get("CPU", 0.0)):
        raise ClusterError(f"--cpus {cpus}: a single worker of the recipe needs {n.largest['CPU']:g} CPUs on one "
                           f"node ({n.describe()}); raise --cpus or lower the stage's CPUs")
    if cpus is not None and cpus * nodes < n.peak.get("CPU", 0.0):
        raise ClusterError(f"--cpus {cpus} x --nodes {nodes}: the recipe needs {n.peak['CPU']:g} CPUs at once "
                           f"({n.describe()}); raise --cpus/--nodes")
    cpus = cpus or need_cpu
    return cpus, max(8, 4 * cpus + 32 * gpus)


def values(kind: str, recipe: str, overrides: list[str], *, nodes: int, gpus: int, cpus: int | None = None,
           image: str = "", pip: bool = True, working_dir_uri: str = "", time_limit: str = "24:00:00",
           command: str = "") -> dict[str, Any]:
    """Placeholder values of template `kind` for `recipe` + `overrides` on `nodes` x `gpus`."""
    from cluster.jobs import pinned_requirements
    from cluster.templates import ray_image, ray_version

    cfg = load_config(recipe, overrides)
    per_node_cpus, mem_gib = node_shape(cfg, nodes, gpus, cpus)
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    base_image = ray_image(py)
    extra: tuple[str, ...] = ()
    output_dir = cfg.run.output_dir
    if kind == "k8s" and not Path(output_dir).is_absolute():
        output_dir = K8S_RUNS
        extra = (f"run.output_dir={K8S_RUNS}",)
    ep = entrypoint(recipe, overrides, extra)
    pins = pinned_requirements(REPO / "pyproject.toml") if pip else []
    common = {
        "recipe": cluster_recipe(recipe), "command": command or "rayzero cluster render", "needs": needs(cfg).describe(),
        "nodes": nodes, "gpus": gpus, "cpus": per_node_cpus, "entrypoint": ep,
        "name": _dns_name(f"rayzero-{Path(recipe).stem}-{cfg.run.name}"), "output_dir": output_dir,
    }
    if kind == "k8s":
        return {**common, "entrypoint_yaml": json.dumps(ep), "recipe_label": _dns_name(Path(recipe).stem, 63),
                "image": image or (base_image + ("-gpu" if gpus else "")), "head_image": image or base_image,
                "ray_version": ray_version(), "head_cpus": 2, "head_memory": "8Gi", "memory": f"{mem_gib}Gi",
                "wandb_project": cfg.run.wandb_project, "runs_mount": K8S_RUNS,
                "runtime_env_working_dir": (f"    working_dir: {json.dumps(working_dir_uri)}" if working_dir_uri else
                                            '    working_dir: "https://example.com/REPLACE-WITH/rayzero.zip"  '
                                            "# a zip of this repo; delete if the image has rayzero"),
                "runtime_env_pip": (f"    pip: {json.dumps(pins)}" if pins else
                                    "    # pip: none, the image already has rayzero's stack")}
    if kind == "slurm":
        return {**common, "memory_slurm": f"{mem_gib}G", "time": time_limit, "port": 6379, "dashboard_port": 8265,
                "sbatch_gpus": f"#SBATCH --gpus-per-node={gpus}" if gpus else "# (no GPUs requested: --gpus 0)"}
    if kind == "ray-up":
        return {**common, "image": image or (base_image + ("-gpu" if gpus else "")), "ray_version": ray_version(),
                "memory": f"{mem_gib} GiB", "repo_dir": str(REPO),
                "recipe_and_overrides": shlex.join([cluster_recipe(recipe), *overrides])}
    raise ClusterError(f"unknown template kind '{kind}'; choose one of: k8s, slurm, ray-up")


def render(kind: str, recipe: str, overrides: list[str], **kwargs: Any) -> str:
    from cluster import templates

    templates.template_path(kind)  # unknown kinds fail before any work
    return templates.render(kind, values(kind, recipe, overrides, **kwargs))
