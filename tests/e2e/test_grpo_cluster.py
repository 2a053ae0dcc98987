"""GRPO at cluster scale on a real local Ray, micro recipe: rollout pool (disaggregated and colocated in
the learners' bundles), DDP and DeepSpeed ZeRO-2/3 learners with 2 CPU workers in rayzero's learner group
(cluster/learners.py), a killed ZeRO-2 learner group restarted and resumed, the ZeRO-3 learner syncing to a
pool. Every GRPO variant starts from the SFT stage of the session's shared micro run (tests/e2e/micro_run.py,
which is itself the ZeRO-3 + rollout pool run). Marked slow; CI runs it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from cluster import placement
from tests.conftest import ROOT
from tests.e2e.helpers import run_from_sft

pytestmark = pytest.mark.slow
GRPO_ONLY = ["distill.enabled=false", "run.num_cpus=2", "grpo.max_steps=3", "grpo.prompts_per_step=4"]


@pytest.fixture
def sft_run(micro):
    """The finished micro SFT stage every GRPO variant below starts from (run_from_sft copies it)."""
    return micro.run_dir


def _cmd(out: Path, name: str, overrides) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "run", "micro", f"run.name={name}", f"run.output_dir={out}",
            *overrides]


ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _rayzero(out: Path, name: str, *overrides: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out, name, overrides), cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=ENV, **kw)


def _start_and_wait_for_checkpoint(run: Path, args: list[str], step: int, **popen_kw) -> subprocess.Popen:
    """Start the pipeline in the background and return once GRPO wrote checkpoint-`step` to the end (the
    trainer writes trainer_state.json last: a kill before it would leave a checkpoint no run resumes from)."""
    proc = subprocess.Popen(_cmd(run.parent, run.name, args), cwd=ROOT, **{"env": ENV, **popen_kw})
    ckpt = run / "grpo.checkpoints" / f"checkpoint-{step}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (ckpt / "trainer_state.json").exists():
        time.sleep(0.2)
    assert ckpt.exists(), f"no {ckpt.name} appeared"
    return proc


def _grpo_metrics(run: Path) -> dict:
    return json.loads((run / "grpo" / "manifest.json").read_text())["metrics"]


def test_placement_plans_and_clear_errors():
    p = placement.plan("disaggregated", num_learners=2, learner_cpus=1, num_rollout=3, rollout_cpus=2, use_gpu=True)
    assert p.total == {"CPU": 8, "GPU": 5}
    c = placement.plan("colocated", num_learners=2, learner_cpus=1, num_rollout=2, rollout_cpus=2, use_gpu=True)
    assert c.total == {"CPU": 2, "GPU": 2.0}  # half a GPU each side, one engine per learner device
    assert c.bundles() == [{"CPU": 1, "GPU": 1.0}] * 2  # learner i and rollout worker i: one bundle, one GPU
    with pytest.raises(placement.PlacementError, match="must equal num_workers=2"):
        placement.plan("colocated", num_learners=2, learner_cpus=1, num_rollout=1, rollout_cpus=1, use_gpu=False)
    with pytest.raises(placement.PlacementError, match=r"GPU 5 \(cluster has 1\)"):
        placement.check(p, {"CPU": 64, "GPU": 1})
    placement.check(p, {"CPU": 8, "GPU": 5})


def test_too_small_cluster_fails_before_any_work(sft_run):
    run = run_from_sft(sft_run, "small")
    proc = _rayzero(run.parent, "small", *GRPO_ONLY, "grpo.rollout_workers=4", "grpo.rollout_cpus=2")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "stage grpo needs 9 CPU(s) but the Ray cluster has 2" in last and "grpo.rollout_cpus" in last, last
    assert (run / "sft" / "manifest.json").exists() and not (run / "grpo").exists()


def _assert_consolidated_and_trained(run: Path, stage: int, steps: int) -> None:
    m = _grpo_metrics(run)
    assert m["steps"] == steps and m["num_workers"] == 2 and m["zero_stage"] == stage
    # The saved folder is one consolidated checkpoint (ZeRO-3 shards gathered), loadable without DeepSpeed.
    model = AutoModelForCausalLM.from_pretrained(run / "grpo")
    sft = AutoModelForCausalLM.from_pretrained(run / "sft")
    assert sum(p.numel() for p in model.parameters()) == m["params"]
    moved = [n for (n, p), (_, q) in zip(model.named_parameters(), sft.named_parameters()) if not p.equal(q)]
    assert moved, "GRPO under DDP/ZeRO should have changed the weights"


def test_zero3_learner_and_rollout_pool_of_the_shared_micro_run(micro):
    """The shared micro run: a 2-rank ZeRO-3 learner feeding a disaggregated Ray rollout pool (the shards are
    gathered for every sync); then distillation ran, so the pool's placement group gave its CPUs back."""
    _assert_consolidated_and_trained(micro.run_dir, 3, 3)
    assert (micro.run_dir / "distill" / "manifest.json").exists()
    m = _grpo_metrics(micro.run_dir)
    assert m["rollout_workers"] == 1
    logged = [h for h in m["log"] if "rollout/generate_s" in h]
    assert logged and all(h["rollout/policy_lag"] == 0 for h in logged)
    assert sum(1 for h in m["log"] if h.get("rollout/sync_s", 0) > 0) == 2  # before steps 2 and 3
    # Each sync verified under ZeRO-3 (the learner's probe forward is collective), and TIS weighted every step.
    assert all("rollout/probe_logp_diff" in h for h in m["log"] if h.get("rollout/sync_s", 0) > 0), m["log"]
    assert all("tis/ratio_mean" in h and "tis/capped_frac" in h for h in logged), logged


def test_colocated_rollout_workers_in_the_learners_bundles(sft_run):
    """Colocated on CPUs: rollout worker i starts in learner i's bundle (0 CPUs of its own), the pool syncs
    from the 2-rank learner every step, in bf16 buckets."""
    run = run_from_sft(sft_run, "coloc")
    proc = _rayzero(run.parent, "coloc", *GRPO_ONLY, "grpo.num_workers=2", "grpo.cpus=0.75", "grpo.rollout_workers=2",
                    "grpo.placement=colocated")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = _grpo_metrics(run)
    assert m["steps"] == 3 and m["num_workers"] == 2 and m["rollout_workers"] == 2
    synced = [h for h in m["log"] if h.get("rollout/sync_s", 0) > 0]
    assert len(synced) == 2 and all(h["rollout/sync_mb"] > 0 for h in synced)


def test_a_weight_sync_corrupted_in_transit_stops_the_run_in_one_line(sft_run):
    """The first sync's bucket changes after the learner's checksum (tests/e2e/corrupt_sync/sitecustomize.py, on
    the learners' PYTHONPATH): the run stops with one line naming the engine and the bucket, no learner restart
    (max_failures=1 would otherwise retry), no GRPO stage written."""
    run = run_from_sft(sft_run, "corrupt")
    env = {**ENV, "PYTHONPATH": f"{ROOT / 'tests' / 'e2e' / 'corrupt_sync'}:{ROOT}"}
    args = [*GRPO_ONLY, "grpo.rollout_workers=1", "grpo.rollout_cpus=0.5", "grpo.max_failures=1"]
    proc = subprocess.run(_cmd(run.parent, "corrupt", args), cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    # The error line (a Ray worker's log line forwarded late may still follow it on stderr).
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rayzero: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "rayzero: error: grpo: weight sync check failed: rollout engine rollout-0 holds different weights than the "
        "learner sent in bucket 1/1"), proc.stderr[-3000:]
    assert "restarting the group" not in proc.stderr and not (run / "grpo").exists()


def test_a_killed_zero2_learner_group_is_restarted_and_resumes_from_its_checkpoint(sft_run):
    """DeepSpeed ZeRO-2 over 2 CPU ranks (plain DDP runs in the colocated test above, ZeRO-3 in the shared micro
    run); both ranks are killed mid-run, as on a node failure: the group restarts and resumes."""
    run = run_from_sft(sft_run, "learner")
    args = [*GRPO_ONLY, "grpo.max_steps=6", "grpo.save_steps=2", "grpo.max_failures=1", "grpo.num_workers=2",
            "grpo.cpus=1", "grpo.zero_stage=2"]
    ray_tmp = tempfile.mkdtemp(prefix="rzl-", dir="/tmp")  # this run's Ray, so we kill only its learners
    try:
        proc = _start_and_wait_for_checkpoint(run, args, 2, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                              text=True, env={**ENV, "RAY_TMPDIR": ray_tmp})
        pids = _learners_of(ray_tmp)
        assert len(pids) == 2, f"expected this run's 2 learner ranks, found {pids}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    assert _grpo_metrics(run)["resumed_from"]
    _assert_consolidated_and_trained(run, 2, 6)


def _learners_of(ray_tmp: str) -> list[int]:
    """Learner processes (`ray::Learner`, cluster/learners.py) of the Ray session living under `ray_tmp`
    (they keep its log files open)."""
    real, found = os.path.realpath(ray_tmp), []
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::Learner"):
                continue
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        if any(link.startswith(real + "/") for link in links):
            found.append(pid)
    return found
