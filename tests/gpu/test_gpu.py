"""GPU paths (HF engine on CUDA, NCCL weight sync, ZeRO-2 over NCCL). They run where a CUDA GPU is
present and are skipped, saying so, everywhere else: never faked on CPU."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU on this machine: GPU rollout/NCCL/ZeRO paths not exercised")


def test_hf_engine_generates_on_cuda():
    from rl.modeling import build_tiny_model, train_tokenizer
    from rl.rollout import HFEngine, SamplingParams

    tok = train_tokenizer([f"{a} plus {b}" for a in range(9) for b in range(9)], 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0).cuda()
    engine = HFEngine(model, tok.pad_token_id, [tok.eos_token_id])
    ids, lps = engine.generate([tok("1 plus", add_special_tokens=False)["input_ids"]] * 4,
                               SamplingParams(max_new_tokens=5), seed=0)
    assert len(ids) == 4 and all(len(i) == len(lp) for i, lp in zip(ids, lps))


def test_nccl_collective_group_requires_cuda_members():
    from cluster.weight_sync import CollectiveGroup, free_port

    # A one-member group broadcasts to itself: exercises NCCL group creation and the flatten/unflatten path.
    group = CollectiveGroup("127.0.0.1", free_port(), 0, 1, "nccl")
    state = {"w": torch.arange(6.0, device="cuda").view(2, 3)}
    group.broadcast_state(state)
    assert state["w"].sum().item() == 15.0
    group.close()
