"""rl/ on a CUDA device: models load in bf16 with SDPA/FlashAttention, generation helpers put their inputs
on the model's device, the HF rollout engine runs there, and SFT/GRPO pick the GPU when the caller does
not force the CPU. Skipped, saying so, where there is no CUDA GPU (never faked on CPU)."""

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU on this machine: rl/ device paths (bf16 weights, inputs on "
                                       "the model's device, GPU training) not exercised")

ROWS = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i), "completion": f" {2 * i}."} for i in range(8)]


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    from rl.modeling import build_tiny_model, train_tokenizer

    d = tmp_path_factory.mktemp("policy")
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in ROWS] * 4, 300)
    build_tiny_model(tok, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position=128,
                     seed=0).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_load_generate_and_engine_on_cuda(policy_dir):
    from rl.generation import generate
    from rl.modeling import load_policy
    from rl.rollout import SamplingParams, engine_factory

    model, tok = load_policy(policy_dir, "auto", device="cuda")
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    assert model.config._attn_implementation in ("sdpa", "flash_attention_2")
    outs = generate(model, tok, [r["prompt"] for r in ROWS], num_samples=2, temperature=1.0, max_new_tokens=6)
    assert len(outs) == len(ROWS) and all(len(o) == 2 for o in outs)
    engine = engine_factory("hf", str(policy_dir), use_gpu=True)()
    assert engine.device.type == "cuda" and engine.model.dtype == torch.bfloat16
    ids, lps = engine.generate([tok("1 plus 1 is", add_special_tokens=False)["input_ids"]] * 4,
                               SamplingParams(max_new_tokens=2000, temperature=1.0), seed=0)
    assert all(len(i) == len(lp) for i, lp in zip(ids, lps))


def test_grpo_and_sft_train_on_the_gpu_by_default(policy_dir, tmp_path):
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.modeling import load_policy
    from rl.sft import SFTParams, sft_train

    model, tok = load_policy(policy_dir)
    sft_train(model, tok, ROWS, tmp_path / "sft", SFTParams(max_steps=2, batch_size=4, micro_batch_size=2, bf16=True,
                                                            gradient_checkpointing=True))
    assert next(model.parameters()).device.type == "cuda"

    def reward(completions, answer, **_):
        return [float(a in c) for c, a in zip(completions, answer)]

    model, tok = load_policy(policy_dir)
    p = GRPOParams(max_steps=2, num_generations=4, prompts_per_step=2, max_completion_length=16, micro_batch_size=2,
                   bf16=True, gradient_checkpointing=True, logging_steps=1)
    trainer = make_grpo_trainer(model, tok, ROWS, [reward], [1.0], tmp_path / "grpo", p)
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.args.device.type == "cuda"
