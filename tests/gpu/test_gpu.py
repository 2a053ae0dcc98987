"""GPU paths, run where a CUDA GPU is present (scripts/gpu_check.sh runs them on a bare GPU machine) and
skipped, saying so, everywhere else: never faked on CPU.

- engines and sync: the HF engine generating on CUDA in bf16; NCCL weight-sync groups broadcasting bf16
  buckets on the device (one member on one GPU; two processes when there are two GPUs: NCCL refuses two
  ranks on one device);
- the learner group (cluster/learners.py) on a GPU: NCCL process group, Ray's GPU assignment widened to
  CUDA_VISIBLE_DEVICES, LOCAL_RANK = its device; a colocated learner and rollout engine sharing one GPU;
- a step of every stage on CUDA in bf16 (the micro recipe through the real CLI), GRPO learners on ZeRO-2
  and ZeRO-3 (ZeRO-3 also with optimizer and parameter offload), with LoRA, a ZeRO-3 learner syncing to a
  colocated rollout engine, and TRL's own vLLM inside the learner (colocate mode; needs vLLM).

Pipeline tests need the full stack (ray, trl, deepspeed, datasets); each is skipped with the reason when
a package is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.gpu.support import GPU_MODEL, device_identity

ROOT = Path(__file__).resolve().parents[2]
HAVE_CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA GPU on this machine: GPU rollout/NCCL/ZeRO/LoRA "
                                                      "paths not exercised (scripts/gpu_check.sh runs them on one)")
GPU_COUNT = torch.cuda.device_count() if HAVE_CUDA else 0


def run_from_sft(*args, **kwargs):
    # tests.e2e.helpers imports ray: a bare GPU machine may lack it, and the tests that need ray skip first
    from tests.e2e.helpers import run_from_sft as real

    return real(*args, **kwargs)


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"not installed here: {', '.join(missing)} (scripts/gpu_check.sh installs them from wheels)")


# --- engines and weight sync -------------------------------------------------------------------------------

def _tiny(seed: int = 0):
    from rl.modeling import build_tiny_model, train_tokenizer

    tok = train_tokenizer([f"{a} plus {b} is {a + b}." for a in range(9) for b in range(9)], 300)
    return build_tiny_model(tok, hidden_size=128, num_layers=2, num_heads=2, intermediate_size=256, max_position=64,
                            seed=seed), tok


def test_hf_engine_generates_on_cuda_in_bf16():
    from rl.rollout import HFEngine, SamplingParams

    model, tok = _tiny()
    engine = HFEngine(model.to("cuda", torch.bfloat16), tok.pad_token_id, [tok.eos_token_id])
    ids, lps = engine.generate([tok("1 plus", add_special_tokens=False)["input_ids"]] * 4,
                               SamplingParams(max_new_tokens=5), seed=0)
    assert len(ids) == 4 and all(len(i) == len(lp) for i, lp in zip(ids, lps))
    assert engine.device.type == "cuda" and next(engine.model.parameters()).dtype == torch.bfloat16


def test_nccl_group_broadcasts_bf16_buckets_on_the_device():
    from cluster.weight_sync import CollectiveGroup, free_port, plan

    # A one-member group broadcasts to itself: NCCL group creation and the bucketed cast/flatten path on CUDA.
    group = CollectiveGroup("127.0.0.1", free_port(), 0, 1, "nccl")
    state = {"a.w": torch.arange(6.0, device="cuda").view(2, 3), "b.w": torch.ones(1000, device="cuda"),
             "step": torch.tensor([3], device="cuda")}
    stats = group.broadcast_state(state, plan(state, torch.bfloat16, bucket_bytes=64))
    assert stats["buckets"] >= 3 and stats["bytes"] == (6 + 1000) * 2 + 8
    assert state["a.w"].sum().item() == 15.0
    group.close()


def _nccl_receiver(port: int, q) -> None:
    import torch

    from cluster.weight_sync import CollectiveGroup, plan

    torch.cuda.set_device(1)
    state = {"w": torch.zeros(4096, dtype=torch.bfloat16, device="cuda"), "v": torch.zeros(7, dtype=torch.bfloat16,
                                                                                            device="cuda")}
    group = CollectiveGroup("127.0.0.1", port, 1, 2, "nccl")
    group.broadcast_state(state, plan(state, bucket_bytes=1024))  # the sender's plan: it sends bf16 too
    q.put((state["w"].float().sum().item(), state["v"].float().sum().item()))
    group.close()


@pytest.mark.skipif(GPU_COUNT < 2, reason="a 2-process NCCL sync needs 2 GPUs (NCCL refuses two ranks on one GPU)")
def test_nccl_bucketed_sync_between_two_gpus():
    import torch.multiprocessing as mp

    from cluster.weight_sync import CollectiveGroup, free_port, plan

    ctx = mp.get_context("spawn")
    port, q = free_port(), ctx.Queue()
    proc = ctx.Process(target=_nccl_receiver, args=(port, q))
    proc.start()
    torch.cuda.set_device(0)
    state = {"w": torch.full((4096,), 0.5, device="cuda"), "v": torch.arange(7.0, device="cuda")}
    group = CollectiveGroup("127.0.0.1", port, 0, 2, "nccl")
    stats = group.broadcast_state(state, plan(state, torch.bfloat16, bucket_bytes=1024))
    assert q.get(timeout=120) == (2048.0, 21.0) and stats["buckets"] >= 8
    proc.join(timeout=60)
    group.close()


# --- the learner group on a GPU ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_gpu():
    _need("ray")
    import ray

    tmp = tempfile.mkdtemp(prefix="rzgpu-", dir="/tmp")
    ray.init(address="local", include_dashboard=False, configure_logging=False, _temp_dir=tmp)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def _nccl_rank(config: dict) -> dict:
    import torch
    import torch.distributed as dist

    from cluster.learners import worker_context

    rank, world, local = worker_context()
    t = torch.ones(1, device=f"cuda:{local}")
    dist.all_reduce(t)
    return {"rank": rank, "sum": t.item(), "backend": dist.get_backend(), "device": torch.cuda.current_device(),
            "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "name": torch.cuda.get_device_name()}


def test_learner_group_runs_nccl_on_its_gpus(ray_gpu):
    from ray import cloudpickle

    from cluster.learners import run_worker_group

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    n = min(GPU_COUNT, 2)
    out = run_worker_group(_nccl_rank, {}, num_workers=n, resources_per_worker={"CPU": 1, "GPU": 1}, use_gpu=True,
                           name="gpu-test")
    assert [r["rank"] for r in out] == list(range(n)) and all(r["sum"] == n and r["backend"] == "nccl" for r in out)
    assert len({r["visible"] for r in out}) == 1 and len(out[0]["visible"].split(",")) == n


class _GpuWhere:
    def where(self):
        import ray
        import torch

        from tests.gpu.support import device_identity

        return [str(g) for g in ray.get_gpu_ids()], device_identity(torch.cuda.get_device_properties(0).uuid)


def test_colocated_learner_and_engine_share_one_physical_gpu(ray_gpu):
    from ray import cloudpickle

    from cluster import placement
    from cluster.actors import ActorPool
    from cluster.learners import LearnerGroup

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    p = placement.plan("colocated", num_learners=1, learner_cpus=1, num_rollout=1, rollout_cpus=0, use_gpu=True)
    placed = placement.reserve(p)
    try:
        group = LearnerGroup(1, cpus=1, gpus=0.5, **placed.learner_args())
        args = placed.rollout_args()
        pool = ActorPool(_GpuWhere, num_actors=1, num_cpus=args["cpus_per_worker"], num_gpus=args["gpus_per_worker"],
                         placement_group=args["placement_group"], kind="Rollout")
        (engine_gpus, engine_uuid), = pool.call_all("where")
        learner = group.addresses()[0]
        assert learner["gpu_ids"] == engine_gpus and len(engine_gpus) == 1
        # the same physical device: its UUID as the engine saw it (its device 0) and as this process sees it
        assert engine_uuid == device_identity(torch.cuda.get_device_properties(int(engine_gpus[0])).uuid)
        pool.shutdown()
        group.shutdown()
    finally:
        placed.release()


# --- every stage on CUDA, through the real CLI -------------------------------------------------------------

GPU_STAGES = [*GPU_MODEL, "sft.gpus=1", "sft.bf16=true", "grpo.gpus=1", "grpo.bf16=true", "distill.gpus=1",
              "distill.rollout_gpus=1", "distill.bf16=true", "run.num_cpus=4", "run.wandb_mode=disabled"]


def _cli(out: Path, name: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": tempfile.mkdtemp(prefix="rzg-", dir="/tmp"),
           "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(ROOT / "tests" / "gpu" / "cli.py"), "run", "micro", f"run.name={name}",
                           f"run.output_dir={out}", *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def micro_gpu(tmp_path_factory):
    _need("ray", "trl", "datasets", "deepspeed")
    out = tmp_path_factory.mktemp("gpu-runs")
    proc = _cli(out, "gpu", *GPU_STAGES)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "gpu"


def _metrics(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "manifest.json").read_text())["metrics"]


def test_every_stage_runs_a_step_on_cuda_in_bf16(micro_gpu):
    for stage in ("sft", "grpo", "distill"):
        assert (micro_gpu / stage / "manifest.json").exists(), stage
    assert _metrics(micro_gpu, "grpo")["steps"] >= 1


GRPO_ONLY = [*GPU_STAGES, "distill.enabled=false", "grpo.max_steps=3", "grpo.prompts_per_step=4"]


@pytest.mark.parametrize("stage", [2, 3])
def test_grpo_zero_learner_on_cuda(micro_gpu, stage):
    run = run_from_sft(micro_gpu, f"zero{stage}")
    proc = _cli(run.parent, run.name, *GRPO_ONLY, f"grpo.zero_stage={stage}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = _metrics(run, "grpo")
    assert m["steps"] == 3 and m["zero_stage"] == stage


def test_grpo_zero3_learner_syncs_to_a_colocated_engine_on_cuda(micro_gpu):
    run = run_from_sft(micro_gpu, "zero3pool")
    proc = _cli(run.parent, run.name, *GRPO_ONLY, "grpo.zero_stage=3", "grpo.rollout_workers=1",
                "grpo.placement=colocated", "grpo.sync_backend=collective")
    assert proc.returncode == 0, proc.stderr[-4000:]
    synced = [h for h in _metrics(run, "grpo")["log"] if h.get("rollout/sync_s", 0) > 0]
    assert len(synced) == 2 and all(h["rollout/sync_mb"] > 0 for h in synced)


def test_grpo_with_lora_on_cuda(micro_gpu):
    run = run_from_sft(micro_gpu, "lora")
    proc = _cli(run.parent, run.name, *GRPO_ONLY, "grpo.lora.r=8")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _metrics(run, "grpo")["steps"] == 3 and (run / "grpo" / "adapter").exists()


def test_grpo_zero3_with_cpu_offload_on_cuda(micro_gpu):
    run = run_from_sft(micro_gpu, "offload")
    proc = _cli(run.parent, run.name, *GRPO_ONLY, "grpo.zero_stage=3", "grpo.offload_optimizer=true",
                "grpo.offload_params=true")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert _metrics(run, "grpo")["steps"] == 3


def test_grpo_with_trl_in_learner_vllm_on_cuda(micro_gpu):
    """grpo.rollout_engine=vllm without rollout workers: TRL's GRPOTrainer(use_vllm=True, vllm_mode=colocate)
    starts vLLM beside the learner on its GPU and pushes the weights into it every step."""
    _need("vllm")
    run = run_from_sft(micro_gpu, "trlvllm")
    proc = _cli(run.parent, run.name, *GRPO_ONLY, "grpo.rollout_engine=vllm", "grpo.vllm.gpu_memory_utilization=0.3",
                "grpo.vllm.sleep_level=2")
    assert proc.returncode == 0, proc.stderr[-4000:]
    m = _metrics(run, "grpo")
    assert m["steps"] == 3 and m["rollout_workers"] == 0
