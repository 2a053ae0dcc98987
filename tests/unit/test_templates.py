"""Cluster templates (cluster/templates/) rendered from the shipped recipes: they parse (YAML / `bash -n`),
ask for what the recipe needs, and run the recipe's entrypoint."""

import math
import re
import shlex
import subprocess

import pytest
import yaml

from cluster import templates
from cluster.runtime import ClusterError
from pipelines.remote import render
from pipelines.config import load_config
from pipelines.cli import main

SHAPES = [(0, 1), (1, 2), (4, 3)]  # (GPUs per node, nodes)
GPU_RECIPE = ["grpo.gpus=1", "grpo.num_workers=2", "grpo.rollout_workers=2"]


def _check_entrypoint(ep: str, recipe: str, overrides: list[str]) -> None:
    args = shlex.split(ep)
    assert args[:5] == ["python", "-m", "pipelines.cli", "run", recipe], ep
    assert "run.ray_address=auto" in args
    for o in overrides:
        assert o in args, (o, ep)


def _check_shape(cpus: int, gpus: int, nodes: int, recipe: str, overrides: list[str]) -> None:
    n = render.needs(load_config(recipe, overrides))
    assert cpus >= n.largest["CPU"] and cpus * nodes >= n.peak["CPU"]
    assert gpus * nodes >= n.peak.get("GPU", 0)


def _k8s(text: str, recipe: str, overrides: list[str], gpus: int, nodes: int) -> None:
    job = yaml.safe_load(text)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])
    spec = job["spec"]
    _check_entrypoint(spec["entrypoint"], recipe, overrides)
    assert f"run.output_dir={render.K8S_RUNS}" in spec["entrypoint"]  # relative output_dir: the shared volume
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "torch==2.13.0" in env["pip"] and not any(p.startswith("ray") for p in env["pip"])
    head = spec["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == nodes
    assert group["rayStartParams"]["num-gpus"] == str(gpus)
    (container,) = group["template"]["spec"]["containers"]
    limits = container["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == str(gpus) and limits["cpu"] == group["rayStartParams"]["num-cpus"]
    assert container["image"].endswith("-gpu") == bool(gpus)
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert render.K8S_RUNS in mounts
    _check_shape(int(limits["cpu"]), gpus, nodes, recipe, overrides)
    assert "WANDB_API_KEY=" not in text.replace("WANDB_API_KEY=...", "")  # secrets only via the Secret


def _slurm(text: str, recipe: str, overrides: list[str], gpus: int, nodes: int, tmp_path) -> None:
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert text.startswith("#!/usr/bin/env bash\n")
    directives = dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)$", text, re.M))
    assert directives["nodes"] == str(nodes) and directives["ntasks-per-node"] == "1"
    assert directives.get("gpus-per-node") == (str(gpus) if gpus else None)
    # every #SBATCH line comes before the first command, or Slurm ignores it
    first_command = min(i for i, line in enumerate(text.splitlines()) if line and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(text.splitlines()) if line.startswith("#SBATCH"))
    (ep,) = [line for line in text.splitlines() if line.startswith("python -m pipelines.cli run")]
    _check_entrypoint(ep, recipe, overrides)
    assert f"--num-gpus={gpus}" in text and f"--num-cpus={directives['cpus-per-task']}" in text
    _check_shape(int(directives["cpus-per-task"]), gpus, nodes, recipe, overrides)


def _ray_up(text: str, recipe: str, overrides: list[str], gpus: int, nodes: int) -> None:
    cfg = yaml.safe_load(text)
    assert cfg["max_workers"] == nodes and cfg["head_node_type"] == "head"
    assert "provider" not in cfg and "# provider:" in text  # a placeholder the user fills in
    worker = cfg["available_node_types"]["gpu_worker"]
    assert worker["min_workers"] == worker["max_workers"] == nodes
    assert worker["resources"]["GPU"] == gpus
    assert any("pip install" in c and "rayzero" in c for c in cfg["setup_commands"])
    (ep,) = [line.strip("# ") for line in text.splitlines() if line.startswith("#   python -m pipelines.cli run")]
    _check_entrypoint(ep, recipe, overrides)
    _check_shape(worker["resources"]["CPU"], gpus, nodes, recipe, overrides)


@pytest.mark.parametrize("recipe", ["tiny", "micro"])
@pytest.mark.parametrize("kind", sorted(templates.KINDS))
def test_render_shipped_recipes(kind, recipe, tmp_path):
    cases = [([], g, n) for g, n in SHAPES] + [(GPU_RECIPE, 2, 2)]
    for overrides, gpus, nodes in cases:
        text = render.render(kind, recipe, overrides, nodes=nodes, gpus=gpus)
        assert not templates._PLACEHOLDER.search(text)
        assert render.needs(load_config(recipe, overrides)).describe() in text
        if kind == "k8s":
            _k8s(text, recipe, overrides, gpus, nodes)
        elif kind == "slurm":
            _slurm(text, recipe, overrides, gpus, nodes, tmp_path)
        else:
            _ray_up(text, recipe, overrides, gpus, nodes)


def test_needs_follow_the_recipe():
    n = render.needs(load_config("micro", ["grpo.gpus=1", "grpo.num_workers=4", "grpo.rollout_workers=2",
                                           "sft.cpus=2"]))
    assert n.stages["grpo"] == {"CPU": 6.0, "GPU": 6.0}  # disaggregated: every worker its own CPU + GPU
    assert n.stages["sft"] == {"CPU": 2.0} and n.largest == {"CPU": 2.0, "GPU": 1.0}
    colocated = render.needs(load_config("micro", ["grpo.gpus=1", "grpo.num_workers=2", "grpo.rollout_workers=2",
                                                   "grpo.placement=colocated"]))
    assert colocated.stages["grpo"]["GPU"] == 2.0  # half a GPU each side
    off = render.needs(load_config("micro", ["grpo.enabled=false", "distill.enabled=false"]))
    assert list(off.stages) == ["sft"]


def test_render_refuses_what_does_not_fit():
    with pytest.raises(ClusterError, match="needs 4 GPU"):
        render.render("k8s", "micro", ["grpo.gpus=1", "grpo.num_workers=2", "grpo.rollout_workers=2"],
                      nodes=1, gpus=2)
    with pytest.raises(ClusterError, match="--cpus 1"):
        render.render("slurm", "tiny", [], nodes=4, gpus=0, cpus=1)
    with pytest.raises(ClusterError, match="unknown template kind"):
        render.render("nomad", "tiny", [], nodes=1, gpus=0)
    assert render.node_shape(load_config("tiny"), nodes=2, gpus=0)[0] == math.ceil(2.0)


def test_cli_render_writes_file(tmp_path, capsys):
    out = tmp_path / "job.sbatch"
    rc = main(["cluster", "render", "slurm", "--recipe", "micro", "sft.epochs=1", "--gpus", "1", "--nodes", "2",
               "-o", str(out)])
    assert rc == 0 and f"wrote {out}" in capsys.readouterr().err
    text = out.read_text()
    assert "#SBATCH --nodes=2" in text and "sft.epochs=1" in text
    assert "Rendered by: rayzero cluster render slurm --recipe micro sft.epochs=1" in text
