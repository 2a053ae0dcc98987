"""TRL's GRPO variants chosen from the recipe each train a real step on a tiny model."""

import pytest

from rl.grpo import GRPOParams, grpo_config, make_grpo_trainer
from rl.modeling import build_tiny_model, load_policy, save_tokenizer, train_tokenizer

ROWS = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(8)]


def _reward(completions, answer, **_):
    return [float(a in c) + 0.1 * len(c) for c, a in zip(completions, answer)]


@pytest.mark.parametrize("variant", [
    {"loss_type": "grpo"}, {"loss_type": "dr_grpo"}, {"loss_type": "bnpo"},
    {"loss_type": "dapo", "epsilon_high": 0.28},  # clip-higher
    {"beta": 0.04},  # KL to a frozen reference model
    {"importance_sampling_level": "sequence", "num_iterations": 2},  # GSPO, with a reused batch
])
def test_variant_trains_a_step(variant, tmp_path):
    tok = train_tokenizer([r["prompt"] + " " + r["answer"] for r in ROWS] * 4, 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    # From a folder, as in the pipeline: TRL re-loads the KL reference model from the policy's path.
    save_tokenizer(tok, tmp_path / "policy", ROWS[0]["prompt"])
    model.save_pretrained(tmp_path / "policy")
    model, tok = load_policy(tmp_path / "policy")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = GRPOParams(max_steps=2, learning_rate=1e-2, num_generations=4, prompts_per_step=2,
                   max_completion_length=6, logging_steps=1, **variant)
    args = grpo_config(tmp_path, p)
    for k, v in variant.items():
        assert getattr(args, k if k != "epsilon" else "epsilon") == v
    trainer = make_grpo_trainer(model, tok, ROWS, [_reward], [1.0], tmp_path, p)
    if p.beta:
        assert trainer.ref_model is not None
    trainer.train()
    assert trainer.state.global_step == 2
    changed = [k for k, v in trainer.model.state_dict().items() if not v.equal(before[k])]
    assert changed, f"{variant} did not update the policy"
    if p.beta:
        assert any("kl" in h for h in trainer.state.log_history)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_bf16_autocast_keeps_fp32_master_weights(tmp_path, precision):
    """grpo.bf16: the loss and the in-learner generation compute in bf16, the optimizer updates fp32
    weights: under autocast over fp32 weights (precision=fp32, accelerate patches the forward) or on bf16
    weights with fp32 master copies in the optimizer (precision=bf16); the policy comes back in fp32."""
    import torch

    tok = train_tokenizer([r["prompt"] + " " + r["answer"] for r in ROWS] * 4, 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    seen = []
    # TRL's loss forward fuses the lm_head, so watch the last MLP.
    model.model.layers[-1].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    p = GRPOParams(max_steps=2, learning_rate=1e-2, num_generations=4, prompts_per_step=2,
                   max_completion_length=6, logging_steps=1, bf16=True, precision=precision)
    trainer = make_grpo_trainer(model, tok, ROWS, [_reward], [1.0], tmp_path, p)
    assert trainer.args.bf16 == (precision == "fp32")  # autocast only over fp32 weights
    trainer.train()
    assert {dtype for _, dtype in seen} == {torch.bfloat16}, seen  # generation and loss forwards
    assert any(grad for grad, _ in seen) and not all(grad for grad, _ in seen)
    assert all(v.dtype == torch.float32 for v in trainer.model.state_dict().values())
    assert any(not v.equal(before[k]) for k, v in trainer.model.state_dict().items())
