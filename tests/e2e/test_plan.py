"""`rayzero cluster plan` on simulated clusters of 1 x 8 and 2 x 8 fake GPUs (ray.cluster_utils.Cluster: the
real placement code, no CUDA): the shipped GPU recipes place every actor they declare, no GPU holds more
than its capacity, colocated learners share node and GPU with exactly one rollout engine each (also across
two nodes), disaggregated pools are packed per node; the memory plan of a Qwen2.5-7B config.json (ZeRO-3 over 8
learners colocated with 8 vLLM engines: every GPU within 80 GiB); the CLI's --json (each actor's memory_gib)
and text output, and its one-line refusals of what does not fit (GPUs, and a GPU's memory)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

from cluster import simulate
from pipelines.config import load_config
from pipelines.remote import plan as plan_cmd

ROOT = Path(__file__).resolve().parents[2]
GPU_RECIPES = ["qwen2.5-0.5b-gsm8k", "qwen2.5-coder-1.5b-mbpp", "qwen2.5-math-1.5b-r1zero"]
CPUS = 64  # per node: enough for any stage of these recipes, so GPUs decide the placement
COLOCATED = ["grpo.num_workers=8", "grpo.rollout_workers=8", "grpo.placement=colocated"]
# Model folders holding only config.json (all the memory plan reads): Qwen2.5-7B's and Qwen2.5-0.5B's numbers.
QWEN = {"model_type": "qwen2", "tie_word_embeddings": False}
QWEN7B = {**QWEN, "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
          "intermediate_size": 18944, "vocab_size": 152064}
QWEN05B = {**QWEN, "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
           "intermediate_size": 4864, "vocab_size": 151936, "tie_word_embeddings": True}


def _config_folder(tmp_path: Path, name: str, config: dict) -> str:
    """A model folder holding only config.json: all the memory plan reads."""
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(config))
    return str(tmp_path / name)


@pytest.fixture(scope="module", params=[(1, 8), (2, 8)], ids=["1x8", "2x8"])
def fake(request):
    """A simulated cluster of `nodes` x 8 GPUs: (nodes, gpus per node, worker node ids)."""
    nodes, gpus = request.param
    tmp = tempfile.mkdtemp(prefix="rzpl-", dir="/tmp")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp  # this cluster's own session folder
    try:
        with simulate.fake_cluster(nodes, gpus, CPUS) as ids:
            yield nodes, gpus, ids
    finally:
        if old is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old
        shutil.rmtree(tmp, ignore_errors=True)


def _place(recipe: str, overrides: list[str], fake, cfg=None) -> dict[str, list[dict]]:
    nodes, gpus, ids = fake
    cfg = cfg or load_config(recipe, overrides)
    plans = plan_cmd.stages(cfg)
    plan_cmd.check_fit(cfg, plans, nodes, gpus, CPUS)
    placed = plan_cmd.place_on(cfg, plans, ids)
    # Every declared actor, once, in declaration order.
    for s in plans:
        assert [r["actor"] for r in placed[s.name]] == [a.name for phase in s.phases for a in phase]
    return placed


def _check_capacity(stage_rows: list[dict], declared: dict[str, float], nodes: int, gpus: int) -> None:
    load = defaultdict(float)
    for r in stage_rows:
        assert r["node"] in range(nodes), r
        if declared[r["actor"]]:
            assert r["gpu"] in range(gpus), r
            load[(r["node"], r["gpu"])] += declared[r["actor"]]
        else:
            assert r["gpu"] is None, r
    assert all(v <= 1.0 + 1e-9 for v in load.values()), dict(load)


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_shipped_gpu_recipes_place_every_actor_within_capacity(fake, recipe):
    nodes, gpus, _ = fake
    cfg = load_config(recipe)
    placed = _place(recipe, [], fake)
    for s in plan_cmd.stages(cfg):
        for phase in s.phases:  # actors of one phase hold their GPUs at the same time
            names = {a.name for a in phase}
            _check_capacity([r for r in placed[s.name] if r["actor"] in names], {a.name: a.gpus for a in phase},
                            nodes, gpus)
    if cfg.grpo.rollout_workers and cfg.grpo.placement == "disaggregated":
        grpo = placed["grpo"]
        learners = {(r["node"], r["gpu"]) for r in grpo if r["actor"].startswith("learner-")}
        rollouts = {(r["node"], r["gpu"]) for r in grpo if r["actor"].startswith("rollout-")}
        assert not learners & rollouts  # generation never shares a learner's GPU
        # Packed: the stage fits on one node here, so it is on one node (the weight sync stays there).
        assert len({n for n, _ in learners | rollouts}) == 1


def _colocation(rows: list[dict]) -> None:
    learners = {r["actor"].split("-")[1]: (r["node"], r["gpu"]) for r in rows if r["actor"].startswith("learner-")}
    rollouts = {r["actor"].split("-")[1]: (r["node"], r["gpu"]) for r in rows if r["actor"].startswith("rollout-")}
    assert learners == rollouts  # learner i and rollout worker i: same node, same GPU
    assert len(set(learners.values())) == len(learners)  # one learner (and one engine) per GPU


def test_colocated_learners_share_node_and_gpu_with_exactly_one_engine(fake, tmp_path):
    nodes, gpus, _ = fake
    # Qwen2.5-7B (a folder holding only its config.json), ZeRO-3 over the 8 learners, each beside a vLLM engine
    # (refused at load where vLLM is missing, as here: the placement and memory plan are functions of the config).
    q7, q05 = _config_folder(tmp_path, "q7", QWEN7B), _config_folder(tmp_path, "q05", QWEN05B)
    cfg = load_config("qwen2.5-math-1.5b-r1zero", [*COLOCATED, "grpo.zero_stage=3", f"model.path={q7}",
                                                   f"distill.students={{s: {{kind: hf, path: {q05}}}}}"])
    cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, rollout_engine="vllm"))
    placed = _place("", [], fake, cfg)
    rows = placed["grpo"]
    _colocation(rows)
    assert {r["node"] for r in rows} == {rows[0]["node"]}  # 8 bundles of one GPU: packed onto one node
    # The memory plan of that placement: every actor has its estimate, every GPU fits 80 GiB.
    loads = plan_cmd.add_memory(cfg, plan_cmd.stages(cfg), placed, 80.0)
    assert all(r["memory_gib"] > 0 for rows in placed.values() for r in rows)
    assert all(r["memory_gib"] == 32.0 for r in rows if r["actor"].startswith("rollout-"))  # 0.4 x 80 GiB
    assert len(loads["grpo"]) == 8 and all(20 < v <= 80 for v in loads["grpo"].values()), loads
    assert all(0 < v <= 80 for stage in loads.values() for v in stage.values())
    if nodes == 2:  # 16 pairs need both nodes: colocation holds across them
        rows = _place("qwen2.5-math-1.5b-r1zero", ["grpo.num_workers=16", "grpo.rollout_workers=16",
                                                   "grpo.placement=colocated"], fake)["grpo"]
        _colocation(rows)
        assert {r["node"] for r in rows} == {0, 1} and len(rows) == 32


def test_disaggregated_stage_fills_both_nodes_when_it_must(fake):
    nodes, _, _ = fake
    if nodes == 1:
        pytest.skip("needs two nodes")
    rows = _place("qwen2.5-math-1.5b-r1zero", ["grpo.num_workers=8", "grpo.rollout_workers=8"], fake)["grpo"]
    # 8 + 8 whole GPUs on 2 x 8: every GPU of both nodes holds exactly one worker.
    assert sorted((r["node"], r["gpu"]) for r in rows) == [(n, g) for n in (0, 1) for g in range(8)]


def _cli(*args: str) -> subprocess.CompletedProcess:
    tmp = tempfile.mkdtemp(prefix="rzpc-", dir="/tmp")
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled"}
        return subprocess.run([sys.executable, "-m", "pipelines.cli", "cluster", "plan", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_cli_json_and_one_line_refusals(tmp_path):
    # The CLI's own plumbing (the 2 x 8 placements themselves are checked in-process above): a small
    # colocated plan, so the simulated cluster starts few actors. Models: folders holding only config.json.
    q05, q7 = _config_folder(tmp_path, "q05", QWEN05B), _config_folder(tmp_path, "q7", QWEN7B)
    proc = _cli("qwen2.5-math-1.5b-r1zero", "grpo.num_workers=2", "grpo.rollout_workers=2", "grpo.placement=colocated",
                "distill.rollout_workers=2", f"model.path={q05}", f"distill.students={{s: {{kind: hf, path: {q05}}}}}",
                "--nodes", "2", "--gpus-per-node", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert list(out) == ["stages", "gpus"] and list(out["stages"]) == ["grpo", "distill", "eval"]
    for rows in out["stages"].values():
        assert all(set(r) == {"actor", "node", "gpu", "memory_gib"} and r["memory_gib"] > 0 for r in rows)
    assert all(0 < v <= 80 for loads in out["gpus"].values() for v in loads.values())
    _colocation(out["stages"]["grpo"])
    # A 7B full fine-tune (ZeRO-0) on one 80 GB GPU: one line naming the GPU, the estimate and a knob.
    proc = _cli("qwen2.5-0.5b-gsm8k", f"model.path={q7}", "--nodes", "1", "--gpus-per-node", "1")
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("rayzero: error: stage grpo, the GPU of learner-0: needs ~") and "80 GiB" in line, line
    assert "it fits with grpo.offload_optimizer=true grpo.zero_stage=1" in line
    # More GPUs than the cluster has: one line naming the fields, before Ray starts (seconds).
    proc = _cli("qwen2.5-math-1.5b-r1zero", "grpo.num_workers=8", "grpo.rollout_workers=8", "--nodes", "1",
                "--gpus-per-node", "8")
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("rayzero: error: stage grpo needs 16 GPU(s) but the Ray cluster has 8; lower grpo.gpus"), line
    # A micro-batch that does not divide the batch: the config's own one line (no cluster involved).
    proc = _cli("qwen2.5-math-1.5b-r1zero", "grpo.micro_batch_size=7", "--nodes", "1", "--gpus-per-node", "8")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "grpo.micro_batch_size=7" in proc.stderr


def test_text_output_names_every_actor_with_its_node_and_gpu():
    result = {"stages": {"grpo": [{"actor": "learner-0", "node": 0, "gpu": 3}, {"actor": "reward-0", "node": 1,
                                                                                  "gpu": None}]},
              "cluster": {"nodes": 2, "gpus_per_node": 8, "cpus_per_node": 64.0}}
    text = plan_cmd.render_text("r", result, {"grpo": "grpo (colocated)"})
    assert text.splitlines() == ["rayzero cluster plan r: 2 node(s) x 8 GPU(s), 64 CPU(s) each (simulated; Ray's "
                                 "own placement)", "grpo (colocated)", "  learner-0  node 0  gpu 3",
                                 "  reward-0   node 1  gpu -"]
    # With a memory plan: each GPU actor's estimate and the fullest GPU of the stage.
    result["stages"]["grpo"][0]["memory_gib"], result["stages"]["grpo"][1]["memory_gib"] = 33.5, 0.0
    result["cluster"]["gpu_memory_gib"], result["gpus"] = 80.0, {"grpo": {"node 0 GPU 3": 60.0}}
    assert plan_cmd.render_text("r", result).splitlines()[2:] == [
        "  learner-0  node 0  gpu 3    33.5 GiB", "  reward-0   node 1  gpu -",
        "  fullest GPU: node 0 GPU 3, 60.0 of 80 GiB (estimated)"]
