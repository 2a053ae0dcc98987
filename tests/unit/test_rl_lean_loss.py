"""The lean learner step (rl.lean_loss through rl.grpo's trainer) computes TRL's loss: same batch, same weights,
the loss and every parameter's gradient equal TRL 1.16's own within tolerance; only completion positions are
projected through the LM head; no second forward for old log-probs when num_iterations == 1."""

import pytest
import torch

from rl.grpo import GRPOParams, make_grpo_trainer
from rl.modeling import build_tiny_model, train_tokenizer

ROWS = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(8)]


def _reward(completions, answer, **_):
    return [float(a in c) for c, a in zip(completions, answer)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([r["prompt"] + " " + r["answer"] for r in ROWS] * 4, 300)


def _batch(tok, seed=0, rows=8, prompt_width=7, completion_width=9):
    """A TRL-shaped rollout batch: prompts left-padded, completions right-padded, lengths all different."""
    g = torch.Generator().manual_seed(seed)
    vocab = len(tok)
    prompt_ids = torch.full((rows, prompt_width), tok.pad_token_id)
    prompt_mask = torch.zeros(rows, prompt_width, dtype=torch.long)
    completion_ids = torch.full((rows, completion_width), tok.pad_token_id)
    completion_mask = torch.zeros(rows, completion_width, dtype=torch.long)
    for r in range(rows):
        p = 2 + (r * 3) % (prompt_width - 1)
        c = 1 + (r * 5) % completion_width
        prompt_ids[r, prompt_width - p:] = torch.randint(5, vocab, (p,), generator=g)
        prompt_mask[r, prompt_width - p:] = 1
        completion_ids[r, :c] = torch.randint(5, vocab, (c,), generator=g)
        completion_mask[r, :c] = 1
    advantages = torch.randn(rows, generator=g)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": advantages,
            "num_items_in_batch": completion_mask.sum()}


def _loss_and_grads(tok, tmp_path, dtype, **fields):
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0).to(dtype)
    p = GRPOParams(max_steps=1, num_generations=4, prompts_per_step=2, max_completion_length=9, temperature=0.7,
                   precision="fp32", dtype="float32", **fields)
    trainer = make_grpo_trainer(model, tok, ROWS, [_reward], [1.0], tmp_path, p)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, _batch(tok))
    loss.backward()
    grads = {n: q.grad.detach().float().clone() for n, q in trainer.model.named_parameters()}
    entropy = trainer._metrics["train"]["entropy"][-1]
    return loss.detach().float(), grads, entropy


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_lean_loss_equals_trls_loss_and_gradients_fp32(tok, tmp_path, loss_type):
    ref_loss, ref_grads, ref_entropy = _loss_and_grads(tok, tmp_path / "trl", torch.float32, lean_logps=False,
                                                       loss_type=loss_type)
    loss, grads, entropy = _loss_and_grads(tok, tmp_path / "lean", torch.float32, lean_logps=True, length_buckets=3,
                                           loss_type=loss_type)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    assert entropy == pytest.approx(ref_entropy, rel=1e-5)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-4, msg=name)


def test_lean_loss_equals_trls_loss_and_gradients_bf16_weights(tok, tmp_path):
    """With bf16 weights both paths round the logits to bf16 (TRL's CPU path then accumulates the gradient
    matmuls in fp32, the lean one in bf16 as nn.Linear would): equal to bf16 precision."""
    ref_loss, ref_grads, _ = _loss_and_grads(tok, tmp_path / "trl", torch.bfloat16, lean_logps=False)
    loss, grads, _ = _loss_and_grads(tok, tmp_path / "lean", torch.bfloat16, lean_logps=True, length_buckets=3)
    torch.testing.assert_close(loss, ref_loss, atol=2e-3, rtol=2e-2)
    for name, g in ref_grads.items():
        scale = g.abs().max().clamp(min=1e-6)
        assert (grads[name] - g).abs().max() / scale < 0.05, name


def test_only_completion_positions_reach_the_head_and_no_old_logps_forward(tok, tmp_path):
    from rl import lean_loss

    seen, calls = [], []
    real = lean_loss.SelectedLogProbs.apply

    def spy(hidden, *args):
        seen.append(hidden.shape[0])
        return real(hidden, *args)

    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    p = GRPOParams(max_steps=1, num_generations=4, prompts_per_step=2, max_completion_length=6, num_iterations=1,
                   tis_cap=0)  # TIS on would add its one old-logps forward (rl/tis.py)
    trainer = make_grpo_trainer(model, tok, ROWS, [_reward], [1.0], tmp_path, p)
    inner = trainer._get_per_token_logps_and_entropies
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: calls.append(torch.is_grad_enabled()) or inner(*a, **k)
    lean_loss.SelectedLogProbs.apply = spy
    try:
        trainer.current_gradient_accumulation_steps = 1
        batch = _batch(tok)
        trainer.compute_loss(trainer.model, batch)
        assert sum(seen) == int(batch["completion_mask"].sum())  # not every position of the padded batch
        seen.clear(), calls.clear()
        trainer.train()  # one step: generation, scoring, one loss forward (with grad), no old-logps forward
        assert calls == [True]
    finally:
        lean_loss.SelectedLogProbs.apply = real
