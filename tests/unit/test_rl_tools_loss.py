"""GRPO on a multi-turn tool sample trains on the model's own tokens only: TRL's loss (through rayzero's trainer,
TRL's own log-probs and rl.lean_loss alike), given the rollout's model-token mask (`tool_mask`, from the
rollout_func's `env_mask`), equals the loss written by hand over the model's tokens alone, in value, gradient
and entropy; without the mask it differs (the test can fail)."""

import pytest
import torch

from rl.grpo import GRPOParams, make_grpo_trainer
from rl.modeling import build_tiny_model, train_tokenizer
from rl.tools import TAGS

ROWS = [{"prompt": f"What is {i}*{i + 3}?\n", "answer": str(i * (i + 3))} for i in range(8)]
TEMPERATURE = 0.7


@pytest.fixture(scope="module")
def tok():
    texts = [r["prompt"] + f"<python>print({i}*{i + 3})</python><output>{r['answer']}</output><answer>{r['answer']}</answer>"
             for i, r in enumerate(ROWS)]
    return train_tokenizer(texts * 4, 300, extra_tags=TAGS)


def _multi_turn_batch(tok):
    """Two rows of hand-built trajectories: call, tool output (mask 0), answer; right-padded as TRL pads."""
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    rows = []
    for i, (call, out, ans) in enumerate([("<python>print(3*6)</python>", "<output>18</output>", "<answer>18</answer>"),
                                         ("<python>print(5*8)</python>", "<output>40 and more text</output>",
                                          "<answer>41</answer><answer>40</answer>")]):
        ids = enc(call) + enc(out) + enc(ans) + [tok.eos_token_id]
        mask = [1] * len(enc(call)) + [0] * len(enc(out)) + [1] * (len(enc(ans)) + 1)
        rows.append((enc(ROWS[i]["prompt"]), ids, mask))
    pw = max(len(p) for p, _, _ in rows)
    cw = max(len(c) for _, c, _ in rows)
    batch = {k: [] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "tool_mask")}
    for p, c, m in rows:
        batch["prompt_ids"].append([tok.pad_token_id] * (pw - len(p)) + p)
        batch["prompt_mask"].append([0] * (pw - len(p)) + [1] * len(p))
        batch["completion_ids"].append(c + [tok.pad_token_id] * (cw - len(c)))
        batch["completion_mask"].append([1] * len(c) + [0] * (cw - len(c)))
        batch["tool_mask"].append(m + [1] * (cw - len(c)))  # TRL pads tool_mask with 1 (completion_mask rules there)
    batch = {k: torch.tensor(v) for k, v in batch.items()}
    batch["advantages"] = torch.tensor([0.7, -1.3])
    batch["num_items_in_batch"] = (batch["completion_mask"] * batch["tool_mask"]).sum()
    return batch


def _model(tok):
    return build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=96, seed=0)


def _trainer_loss(tok, tmp_path, batch, **fields):
    model = _model(tok)
    p = GRPOParams(max_steps=1, num_generations=2, prompts_per_step=1, max_completion_length=40,
                   temperature=TEMPERATURE, precision="fp32", dtype="float32", **fields)
    trainer = make_grpo_trainer(model, tok, ROWS, [lambda completions, **_: [0.0] * len(completions)], [1.0], tmp_path, p)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: q.grad.detach().clone() for n, q in trainer.model.named_parameters()}
    return loss.detach(), grads, trainer._metrics["train"]["entropy"][-1]


def _hand_loss(tok, batch):
    """DAPO's loss written out over the model's tokens only: -sum(A * ratio) / (number of model tokens), with
    ratio = exp(logp - logp.detach()) (value 1, gradient d logp); tool tokens are simply left out of both sums."""
    model = _model(tok)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, :-1] / TEMPERATURE
    c = batch["completion_ids"].shape[1]
    logp_all = logits[:, -c:].float().log_softmax(-1)
    logps = logp_all.gather(-1, batch["completion_ids"][..., None]).squeeze(-1)
    own = (batch["completion_mask"] * batch["tool_mask"]).bool()  # the model's tokens
    ratio = torch.exp(logps - logps.detach())
    loss = -(batch["advantages"][:, None] * ratio)[own].sum() / own.sum()
    loss.backward()
    entropy = -(logp_all.exp() * logp_all).sum(-1)[own].mean().item()
    return loss.detach(), {n: q.grad.detach().clone() for n, q in model.named_parameters()}, entropy


@pytest.mark.parametrize("lean", [False, True], ids=["trl_logps", "lean_logps"])
def test_tool_tokens_are_out_of_the_loss_gradient_and_entropy(tok, tmp_path, lean):
    batch = _multi_turn_batch(tok)
    assert (batch["tool_mask"] == 0).sum() > 0
    ref_loss, ref_grads, ref_entropy = _hand_loss(tok, batch)
    loss, grads, entropy = _trainer_loss(tok, tmp_path, batch, lean_logps=lean)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-5)
    assert entropy == pytest.approx(ref_entropy, rel=1e-4)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, atol=1e-6, rtol=1e-4, msg=name)

    # the same batch with the tool tokens counted as the model's: a different loss (the mask is what matters)
    unmasked = {**batch, "tool_mask": torch.ones_like(batch["tool_mask"])}
    unmasked["num_items_in_batch"] = batch["completion_mask"].sum()
    loss2, grads2, _ = _trainer_loss(tok, tmp_path / "unmasked", unmasked, lean_logps=lean)
    assert not all(torch.allclose(grads2[n], g, atol=1e-6) for n, g in ref_grads.items())


def test_sequence_level_ratio_ignores_tool_tokens(tok, tmp_path):
    """GSPO's sequence-level importance weight averages log-ratios over the mask: shifting the old log-probs
    of tool tokens only must change nothing."""
    batch = _multi_turn_batch(tok)
    base = _trainer_loss(tok, tmp_path / "a", {**batch, "old_per_token_logps": torch.full(batch["tool_mask"].shape, -2.0)},
                         importance_sampling_level="sequence")[0]
    shifted = torch.full(batch["tool_mask"].shape, -2.0) + 5.0 * (1 - batch["tool_mask"])
    moved = _trainer_loss(tok, tmp_path / "b", {**batch, "old_per_token_logps": shifted},
                          importance_sampling_level="sequence")[0]
    torch.testing.assert_close(base, moved)
