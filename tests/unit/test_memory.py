"""The memory plan: rl.memory's estimator against published figures (the ZeRO paper's Figure 1, DeepSpeed's own
estimators, Qwen2.5-7B's parameter count) and pipelines.memory_plan on a Qwen2.5-7B config.json alone: a full
fine-tune on one 80 GB GPU is refused in one line naming the GPU and a fix; ZeRO-3 over 8 learners colocated
with 8 vLLM engines fits; CPU recipes read nothing; `rayzero run` refuses before Ray starts."""

from __future__ import annotations

import dataclasses
import json

import pytest

from pipelines import memory_plan as mp
from pipelines.config import ConfigError, load_config
from rl import memory as mem

QWEN7B = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28,
          "num_attention_heads": 28, "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
          "max_position_embeddings": 32768, "tie_word_embeddings": False}
COLOCATED_ZERO3 = ["grpo.num_workers=8", "grpo.rollout_workers=8", "grpo.placement=colocated", "grpo.zero_stage=3"]


@pytest.fixture(scope="module")
def qwen7b(tmp_path_factory):
    """A model folder holding only Qwen2.5-7B's config.json."""
    folder = tmp_path_factory.mktemp("qwen7b")
    (folder / "config.json").write_text(json.dumps(QWEN7B))
    return str(folder)


def _vllm(cfg):
    # grpo.rollout_engine=vllm is refused at load where vLLM is not installed (here): the planner is a
    # function of the config, so the loaded config is switched to vLLM engines directly.
    return dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, rollout_engine="vllm"))


def test_zero_paper_figure_1():
    # Rajbhandari et al. 2020, Figure 1: 7.5B parameters, N = 64, K = 12 (decimal GB per device).
    fig = {0: 120.0, 1: 31.4, 2: 16.6, 3: 1.9}
    for stage, gb in fig.items():
        states = mem.model_states(7.5e9, zero_stage=stage, data_parallel=64, optimizer_bytes=8, master_bytes=4)
        assert sum(states.values()) / 1e9 == pytest.approx(gb, abs=0.05), stage


def test_7b_full_fine_tune_zero3_on_8_gpus():
    # 16 bytes per parameter (2 + 2 + K=12) split over 8 GPUs: 14 GB per GPU for a 7B model.
    assert sum(mem.model_states(7e9, zero_stage=3, data_parallel=8, optimizer_bytes=8, master_bytes=4).values()) == 14e9
    q = mem.ModelShape.from_config(QWEN7B)
    assert q.params == pytest.approx(7.6155e9, rel=1e-4)  # the model card: 7.61B (6.53B without embeddings)
    assert q.params - 2 * q.vocab * q.hidden == pytest.approx(6.53e9, rel=1e-3)
    # The planner's bf16 learner: + an fp32 gradient per master (DeepSpeed's 18-byte count) + the gathered
    # embedding: 20 bytes/param / 8 + 4 x 545M = 21.2 GB per GPU.
    t = mem.training(q, mem.Training(zero_stage=3, data_parallel=8, weight_bytes=2, master_weights=True))
    states = sum(v for k, v in t.parts.items() if k not in ("activations", "runtime")) * mem.GIB
    assert states == pytest.approx(20 * q.params / 8 + 4 * q.largest_layer, rel=1e-9)
    assert 14e9 < states < 22e9


def test_matches_deepspeeds_own_estimators():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as ds3
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs as ds2

    q = mem.ModelShape.from_config(QWEN7B)
    p, big = q.params, q.largest_layer

    def ours(stage, **kw):
        return sum(mem.model_states(p, zero_stage=stage, data_parallel=8, optimizer_bytes=8, master_bytes=8,
                                    largest_layer=big, **kw).values())

    assert ours(2) == pytest.approx(ds2(p, num_gpus_per_node=8, cpu_offload=False)[1], rel=1e-6)
    assert ours(2, offload_optimizer=True) == pytest.approx(ds2(p, num_gpus_per_node=8, cpu_offload=True)[1], rel=1e-6)
    assert ours(3, offload_optimizer=True) == pytest.approx(
        ds3(p, big, num_gpus_per_node=8, cpu_offload=True, cpu_offload_params=False)[1], rel=1e-6)
    assert ours(3, offload_optimizer=True, offload_params=True) == pytest.approx(
        ds3(p, big, num_gpus_per_node=8, cpu_offload=True, cpu_offload_params=True)[1], rel=1e-6)
    # Stage 3 without offload: DeepSpeed's 18 P/N leaves out the 16-bit weights' share, counted here.
    assert ours(3) == pytest.approx(ds3(p, big, num_gpus_per_node=8, cpu_offload=False)[1] + 2 * p / 8, rel=1e-6)


def test_lora_trains_only_the_adapter_and_checkpointing_saves_activations():
    q = mem.ModelShape.from_config(QWEN7B)
    full = mem.training(q, mem.Training(weight_bytes=2, master_weights=True, micro_batch=4, seq_len=1024,
                                        activation_bytes=2))
    lora = mem.training(q, mem.Training(weight_bytes=2, master_weights=True, lora_r=16, micro_batch=4, seq_len=1024,
                                        activation_bytes=2))
    adapter = q.lora_params(16)
    assert adapter == 28 * 16 * sum(a + b for a, b in q.linears().values())  # ~40M
    assert lora.parts["gradients"] * mem.GIB == 4 * adapter and lora.parts["optimizer"] * mem.GIB == 8 * adapter
    assert lora.parts["weights"] * mem.GIB == 2 * q.params + 4 * adapter and lora.parts["masters"] == 0
    assert full.total - lora.total > 100  # GiB: the full fine-tune's gradients, Adam state and masters
    ckpt = mem.training(q, mem.Training(weight_bytes=2, micro_batch=4, seq_len=1024, activation_bytes=2,
                                        gradient_checkpointing=True))
    assert ckpt.parts["activations"] < full.parts["activations"] / 4
    # Activations grow with the micro-batch (the logit tile aside).
    a1, a2 = (mem.activations(q, b, 1024) - 2 * mem.LOGIT_TILE * q.vocab * 4 for b in (2, 4))
    assert a2 == pytest.approx(2 * a1)


def test_vllm_share_and_colocation():
    q = mem.ModelShape.from_config(QWEN7B)
    v = mem.vllm(q, gpu_gib=80, utilization=0.4)
    assert v.total == pytest.approx(32.0) and v.parts["weights"] == pytest.approx(2 * q.params / mem.GIB)
    assert v.parts["kv_cache"] == pytest.approx(32.0 - 2 * q.params / mem.GIB) and not v.problem
    assert "leaves" in mem.vllm(q, gpu_gib=80, utilization=0.15).problem  # 12 GiB cannot hold 14.2 GiB of weights
    learner = mem.Estimate({"states": 20.0, "activations": 13.0}, idle=20.0)
    # Alternating: the learner at its peak beside the awake engine; a sleeping engine frees its share.
    assert mem.gpu_total([learner, v]) == pytest.approx(33.0 + 32.0)
    asleep = mem.vllm(q, gpu_gib=80, utilization=0.4, sleeping=True)
    assert mem.gpu_total([learner, asleep]) == pytest.approx(max(33.0, 20.0 + 32.0))
    assert mem.gpu_total([learner, v], concurrent=True) == pytest.approx(65.0)


def test_7b_full_fine_tune_zero0_on_one_80gb_gpu_is_refused_in_one_line(qwen7b):
    cfg = load_config("qwen2.5-0.5b-gsm8k", [f"model.path={qwen7b}"])
    assert (cfg.grpo.num_workers, cfg.grpo.gpus, cfg.grpo.zero_stage, cfg.grpo.lora.r) == (1, 1, 0, 0)
    with pytest.raises(mp.MemoryPlanError) as e:
        mp.check(cfg)
    line = str(e.value)
    assert "\n" not in line and line.startswith("stage grpo, the GPU of learner-0: needs ~")
    assert "more than the card's 80 GiB" in line
    assert "it fits with grpo.offload_optimizer=true grpo.zero_stage=1" in line  # a knob, checked to fit
    # The knob really makes it fit; so does LoRA.
    mp.check(load_config("qwen2.5-0.5b-gsm8k", [f"model.path={qwen7b}", "grpo.offload_optimizer=true",
                                                 "grpo.zero_stage=1"]))
    mp.check(load_config("qwen2.5-0.5b-gsm8k", [f"model.path={qwen7b}", "grpo.lora.r=16"]))
    # A bigger card (or no check) accepts it; a negative card is a config error at load.
    mp.check(cfg, gpu_gib=0)
    mp.check(load_config("qwen2.5-0.5b-gsm8k", [f"model.path={qwen7b}", "run.gpu_memory_gib=192"]))
    with pytest.raises(ConfigError, match=r"^run.gpu_memory_gib=-1.0: must be >= 0$"):
        load_config("qwen2.5-0.5b-gsm8k", [f"model.path={qwen7b}", "run.gpu_memory_gib=-1"])
    assert mp.check(load_config("qwen2.5-0.5b-gsm8k", [f"model.path={qwen7b}", "run.gpu_memory_gib=0"])) == {}


def test_7b_zero3_on_8_learners_colocated_with_8_vllm_engines_fits(qwen7b):
    cfg = _vllm(load_config("qwen2.5-math-1.5b-r1zero", [f"model.path={qwen7b}", *COLOCATED_ZERO3, "distill.enabled=false"]))
    est = mp.check(cfg)
    assert set(est["grpo"]) == {f"{k}-{i}" for k in ("learner", "rollout") for i in range(8)}
    for pair in mp.declared_groups(cfg, "grpo", list(est["grpo"])):
        assert len(pair) == 2 and mp.load(cfg, "grpo", pair, est["grpo"]) <= 80
    assert est["grpo"]["rollout-0"].total == pytest.approx(0.4 * 80)  # vLLM's gpu_memory_utilization share
    # The same with ZeRO-0 does not fit, and ZeRO-3 is the named fix.
    with pytest.raises(mp.MemoryPlanError, match=r"GPU of learner-0 and rollout-0: needs .* it fits with grpo.zero_stage=3"):
        mp.check(dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, zero_stage=0)))
    # A vLLM share too small for the weights: the knob is gpu_memory_utilization.
    small = dataclasses.replace(cfg.grpo.vllm, gpu_memory_utilization=0.1)
    with pytest.raises(mp.MemoryPlanError, match=r"rollout-0: vLLM's share .* grpo.vllm.gpu_memory_utilization=0.2"):
        mp.check(dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, vllm=small)))


def test_cpu_recipes_read_nothing(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a CPU recipe must not read any model config")

    monkeypatch.setattr(mp, "model_config", boom)
    for recipe in ("tiny", "micro"):
        assert mp.check(load_config(recipe)) == {}


def test_hub_id_offline_and_uncached_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    cfg = load_config("qwen2.5-0.5b-gsm8k", ["model.path=rayzero-test/no-such-model", "sft.enabled=false",
                                             "distill.enabled=false", "eval.gpus=0"])
    with pytest.raises(mp.MemoryPlanError) as e:
        mp.check(cfg)
    assert "\n" not in str(e.value) and str(e.value).startswith("model.path=rayzero-test/no-such-model: its config.json "
                                                                "is not in the Hugging Face cache and the hub is offline")


def test_rayzero_run_refuses_before_ray_starts(qwen7b, tmp_path, capsys):
    import ray

    from pipelines.cli import main

    code = main(["run", "qwen2.5-0.5b-gsm8k", f"model.path={qwen7b}", f"run.output_dir={tmp_path}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("rayzero: error: stage grpo, the GPU of learner-0: needs ~")
    assert not ray.is_initialized()
    assert not (tmp_path / "qwen2.5-0.5b-gsm8k").exists()  # before anything was written


def test_a_config_without_the_needed_numbers_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({k: v for k, v in QWEN7B.items() if k != "intermediate_size"}))
    with pytest.raises(mp.MemoryPlanError, match=r"^model.path=.*: its config.json has no usable 'intermediate_size'"):
        mp.check(load_config("qwen2.5-0.5b-gsm8k", [f"model.path={tmp_path}"]))


def test_a_tensor_parallel_engine_is_planned_on_its_gpus(qwen7b):
    """A vLLM engine over 2 GPUs holds no GPU itself (its two one-GPU bundles do, cluster/placement.py), yet the
    memory plan still counts it: each of its GPUs carries vLLM's share."""
    cfg = _vllm(load_config("qwen2.5-math-1.5b-r1zero", [f"model.path={qwen7b}", "grpo.zero_stage=3", "grpo.num_workers=4",
                                                        "grpo.rollout_workers=2", "distill.enabled=false"]))
    cfg = dataclasses.replace(cfg, grpo=dataclasses.replace(
        cfg.grpo, vllm=dataclasses.replace(cfg.grpo.vllm, tensor_parallel_size=2)))
    est = mp.estimates(cfg, 80)
    assert {"rollout-0", "rollout-1"} <= set(est["grpo"])  # before: left out of the plan
    assert est["grpo"]["rollout-0"].total == pytest.approx(cfg.grpo.vllm.gpu_memory_utilization * 80)
