"""TRL's own vLLM inside the learner (grpo.rollout_engine=vllm, no rollout workers): the GRPOConfig the
builder makes carries TRL's use_vllm / vllm_mode / vllm_* fields for colocate and server mode (checked here
without vLLM: nothing starts it), settings that mode would silently ignore are refused naming the field,
and a learner without CUDA or vLLM stops in one line before TRL builds anything. With vLLM on a CUDA
machine, tests/gpu/test_gpu.py runs a GRPO stage on it."""

import importlib.util

import pytest
import torch

from rl.grpo import GRPOParams, grpo_config, make_grpo_trainer
from rl.trl_vllm import GRPOVLLMParams, check_in_learner, check_runtime, grpo_config_args

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
SMALL = dict(max_steps=1, prompts_per_step=2, num_generations=2, logging_steps=1)


def test_colocate_mapping_reaches_grpo_config(tmp_path):
    p = GRPOParams(**SMALL, vllm=GRPOVLLMParams(gpu_memory_utilization=0.25, tensor_parallel_size=2,
                                                max_model_len=512, sleep_level=2))
    args = grpo_config(tmp_path, p, use_cpu=True, world_size=2, use_vllm=True)
    assert (args.use_vllm, args.vllm_mode) == (True, "colocate")
    assert (args.vllm_gpu_memory_utilization, args.vllm_tensor_parallel_size) == (0.25, 2)
    assert args.vllm_max_model_length == 512 and args.vllm_enable_sleep_mode is True


def test_server_mapping_reaches_grpo_config(tmp_path):
    p = GRPOParams(**SMALL, vllm=GRPOVLLMParams(mode="server", server_host="10.0.0.7", server_port=8011,
                                                server_timeout_s=30.0))
    args = grpo_config(tmp_path, p, use_cpu=True, use_vllm=True)
    assert (args.use_vllm, args.vllm_mode, args.vllm_server_host, args.vllm_server_port) == (True, "server", "10.0.0.7", 8011)
    assert args.vllm_server_timeout == 30.0
    assert "vllm_gpu_memory_utilization" not in grpo_config_args(p.vllm)  # the server's own flag


def test_without_use_vllm_trl_generates_itself(tmp_path):
    args = grpo_config(tmp_path, GRPOParams(**SMALL, vllm=GRPOVLLMParams(mode="server")), use_cpu=True)
    assert args.use_vllm is False


@pytest.mark.parametrize("params,workers,message", [
    (GRPOVLLMParams(mode="bogus"), 1, "vllm.mode='bogus' is not one of: colocate, server"),
    (GRPOVLLMParams(server_port=70000), 1, "vllm.server_port=70000 must be within [1, 65535]"),
    (GRPOVLLMParams(server_host=" "), 1, "vllm.server_host=' ' must name a host"),
    (GRPOVLLMParams(tensor_parallel_size=2), 3, "vllm.tensor_parallel_size=2 must divide the learner ranks"),
    (GRPOVLLMParams(sleep_level=1), 1, "vllm.sleep_level=1 must be 0 or 2"),
    (GRPOVLLMParams(dtype="bfloat16"), 1, "vllm.dtype='bfloat16' cannot be set for TRL's in-learner vLLM"),
    (GRPOVLLMParams(enforce_eager=True), 1, "vllm.enforce_eager=True cannot be set"),
    (GRPOVLLMParams(mode="server", tensor_parallel_size=2), 2,
     "vllm.tensor_parallel_size=2 is set on the server's command line in vllm.mode=server (trl vllm-serve "
     "--tensor-parallel-size"),
    (GRPOVLLMParams(mode="server", gpu_memory_utilization=0.9), 1, "vllm.gpu_memory_utilization=0.9 is set on the server"),
    (GRPOVLLMParams(mode="server", sleep_level=2), 1, "vllm.sleep_level=2 must be 0 in vllm.mode=server"),
])
def test_settings_the_mode_would_ignore_are_refused(params, workers, message):
    with pytest.raises(ValueError) as e:
        check_in_learner(params, workers)
    assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)


def test_sane_settings_pass():
    check_in_learner(GRPOVLLMParams(), 1)
    check_in_learner(GRPOVLLMParams(tensor_parallel_size=2, sleep_level=2, gpu_memory_utilization=0.3), 4)
    check_in_learner(GRPOVLLMParams(mode="server", server_host="gpu-7", server_port=8001), 8)


def test_no_cuda_stops_in_one_line_before_trl_builds_the_trainer(tmp_path):
    from rl.modeling import build_tiny_model, train_tokenizer

    with pytest.raises(RuntimeError) as e:
        check_runtime(use_cpu=True)
    assert "needs a CUDA GPU" in str(e.value) and "\n" not in str(e.value)
    tok = train_tokenizer([f"{a} plus {b} is {a + b}." for a in range(9) for b in range(9)], 300)
    model = build_tiny_model(tok, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position=64, seed=0)
    rows = [{"prompt": "1 plus 2 is", "answer": "3"}] * 2
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        make_grpo_trainer(model, tok, rows, [lambda completions, **kw: [0.0] * len(completions)], [1.0], tmp_path,
                          GRPOParams(**SMALL), use_cpu=True, use_vllm=True)


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here: the missing-vLLM line cannot be checked")
def test_missing_vllm_stops_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError) as e:
        check_runtime(use_cpu=False)
    msg = str(e.value)
    assert "vLLM is not installed" in msg and "\n" not in msg and e.value.__suppress_context__
