"""vLLM rollout engine. Here (no vLLM, no GPU): its settings validate, asking for it fails in one line,
and its state-dict-free collective receive path (the worker extension's methods, with a plain HF model
standing in for vLLM's model runner) takes the learner's broadcast from cluster.weight_sync over gloo.
With vLLM on a CUDA machine, the engine itself is exercised end to end."""

import importlib.util
import threading
from types import SimpleNamespace

import pytest
import torch

from rl.modeling import build_tiny_model, train_tokenizer
from rl.rollout import SamplingParams, check_engine, engine_factory
from rl.vllm_engine import VLLMParams, WeightSyncExtension

HAVE_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.mark.parametrize("params,message", [
    (VLLMParams(tensor_parallel_size=0), "vllm.tensor_parallel_size=0 must be an integer >= 1"),
    (VLLMParams(gpu_memory_utilization=1.5), "vllm.gpu_memory_utilization=1.5 must be within (0, 1]"),
    (VLLMParams(sleep_level=3), "vllm.sleep_level=3 is not one of: 0, 1, 2"),
    (VLLMParams(dtype="int4"), "vllm.dtype='int4' is not one of"),
])
def test_vllm_params_validate(params, message):
    from rl.grpo import GRPOParams

    VLLMParams().validate()
    with pytest.raises(ValueError) as e:
        GRPOParams(vllm=params).validate()
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.skipif(HAVE_VLLM, reason="vLLM is installed here: the missing-vLLM message cannot be checked")
def test_missing_vllm_fails_in_one_line(tmp_path):
    from rl.vllm_engine import VLLMEngine

    for attempt in (lambda: check_engine("vllm"), lambda: engine_factory("vllm", str(tmp_path), use_gpu=True),
                    lambda: VLLMEngine(str(tmp_path))):
        with pytest.raises(RuntimeError) as e:
            attempt()
        assert "\n" not in str(e.value) and "vLLM is not installed" in str(e.value)
        assert e.value.__cause__ is None and e.value.__suppress_context__  # no ImportError chained below it


def _tok():
    return train_tokenizer([f"{a} plus {b} is {a + b}." for a in range(9) for b in range(9)], 300)


def test_extension_receives_a_cluster_broadcast_without_a_state_dict():
    from cluster.weight_sync import CollectiveGroup, free_port, plan

    tok = _tok()
    learner = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                               max_position=64, seed=1)
    rollout = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                               max_position=64, seed=2)
    # What a learner sends: mixed dtypes (bf16 for the engines, one fp32 tensor) and an integer buffer.
    state = {k: v.to(torch.bfloat16) for k, v in learner.state_dict().items()}
    state["model.norm.weight"] = learner.state_dict()["model.norm.weight"].float()
    state["step"] = torch.tensor([7, 8], dtype=torch.int64)
    loaded: list[tuple[str, torch.Tensor]] = []

    class StandIn:  # vLLM's model runner stand-in: load_weights takes (HF name, tensor) pairs
        def load_weights(self, weights):
            weights = list(weights)
            loaded.extend(weights)
            rollout.load_state_dict({n: t for n, t in weights if n != "step"}, strict=False)

    worker = type("Worker", (WeightSyncExtension,), {})()
    worker.model_runner = SimpleNamespace(model=StandIn())
    port, errors = free_port(), []

    sender_sums: list = []

    def learner_side():
        try:
            group = CollectiveGroup("127.0.0.1", port, 0, 2, "gloo")
            sender_sums.extend(group.broadcast_state(state, plan(state, bucket_bytes=256))["checksums"])
            group.close()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    sender = threading.Thread(target=learner_side)
    sender.start()
    assert worker.rayzero_join_group("127.0.0.1", port, 1, 2, "gloo") == 1
    received = worker.rayzero_receive(plan(state, bucket_bytes=256))
    sender.join(timeout=60)
    assert not errors, errors
    # The receiver's checksums (rl.weight_wire) equal the sender's (cluster.weight_sync), bucket by bucket.
    assert received == sender_sums and sum(len(b) for b in received) == len(state)
    got = dict(loaded)
    assert got.keys() == state.keys()
    for name, tensor in state.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name
    for name, tensor in rollout.state_dict().items():  # the stand-in model now holds the learner's weights
        torch.testing.assert_close(tensor, state[name].float())


needs_vllm_gpu = pytest.mark.skipif(not (HAVE_VLLM and torch.cuda.is_available()),
                                    reason="needs vLLM and a CUDA GPU: the vLLM engine is not exercised here")


@needs_vllm_gpu
def test_vllm_engine_generates_loads_weights_and_sleeps(tmp_path):
    from rl.vllm_engine import VLLMEngine

    tok = _tok()
    model = build_tiny_model(tok, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                             max_position=128, seed=0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    engine = VLLMEngine(str(tmp_path), VLLMParams(gpu_memory_utilization=0.2, sleep_level=1, enforce_eager=True))
    prompts = [tok("3 plus 4 is", add_special_tokens=False)["input_ids"]] * 4
    sp = SamplingParams(max_new_tokens=8, temperature=0.8)
    ids, lps = engine.generate(prompts, sp, seed=0)
    assert len({tuple(i) for i in ids}) > 1, "a group's copies of one prompt must get different samples"
    assert all(len(i) == len(lp) and all(x <= 0 for x in lp) for i, lp in zip(ids, lps))
    assert not engine.weights_awake  # slept after generating
    # Processed log-probs: those of logits / temperature under the HF model (bf16 tolerance).
    with torch.no_grad():
        logits = model.cuda()(torch.tensor([prompts[0] + ids[0]], device="cuda")).logits[0, len(prompts[0]) - 1:-1]
    ref = (logits.float() / 0.8).log_softmax(-1).gather(-1, torch.tensor(ids[0], device="cuda")[:, None]).squeeze(-1)
    torch.testing.assert_close(torch.tensor(lps[0]), ref.cpu(), atol=0.1, rtol=0.1)
    greedy = SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1)
    before = engine.generate(prompts[:1], greedy)[0]
    other = build_tiny_model(tok, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128,
                             max_position=128, seed=5)
    engine.load_state_dict(other.state_dict())
    after = engine.generate(prompts[:1], greedy)[0]
    assert after != before  # new weights, and no stale prefix-cache blocks
    # The post-sync probe: vLLM's prompt log-probs match the HF model's within the bf16 tolerance.
    from rl.rollout import probe_tokens, probe_tolerance

    probe = probe_tokens(tok.vocab_size)
    with torch.no_grad():
        ref = other.cuda()(torch.tensor([probe], device="cuda")).logits[0, :-1].float().log_softmax(-1)
    ref = ref.gather(-1, torch.tensor(probe[1:], device="cuda")[:, None]).squeeze(-1).cpu()
    diff = (torch.tensor(engine.score(probe)) - ref).abs().mean()
    assert diff <= probe_tolerance("float32")(engine.weights_dtype), float(diff)
