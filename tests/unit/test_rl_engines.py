"""Generation helpers on a tiny real model: the HF rollout engine's log-probs (both decoders) are those of the distribution
it samples from (temperature, top-k, top-p), stay right for completions in the thousands of tokens (kept
one step at a time, not as full-vocabulary scores), and inputs follow the model's device."""

import pytest
import torch

from rl.modeling import build_tiny_model, load_policy, train_tokenizer
from rl.rollout import HFEngine, SamplingParams

TEXTS = [f"{a} plus {b} is {a + b}." for a in range(12) for b in range(12)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, 300)


def _reference(model, prompt, completion, sp, eos_banned=None):
    """Teacher-forced log-probs of `completion` under the processed distribution."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1:-1].float()
    if eos_banned is not None:
        logits[:, eos_banned] = -float("inf")
    logits = logits / sp.temperature
    if sp.top_k:
        kth = logits.topk(sp.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion).unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("decoder", ["rayzero", "generate"])
@pytest.mark.parametrize("sp", [SamplingParams(max_new_tokens=6, temperature=0.7, top_k=5),
                                SamplingParams(max_new_tokens=6, temperature=1.3)])
def test_logprobs_are_those_of_the_processed_distribution(tok, sp, decoder):
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    engine = HFEngine(model, tok.pad_token_id, [tok.eos_token_id], decoder=decoder)
    prompts = [tok(f"{i} plus {i + 1} is", add_special_tokens=False)["input_ids"] for i in range(5)]
    ids, lps = engine.generate(prompts, sp, seed=1)
    for p, c, lp in zip(prompts, ids, lps):
        assert len(c) == len(lp) >= 1
        torch.testing.assert_close(torch.tensor(lp), _reference(model, p, c, sp), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("decoder", ["rayzero", "generate"])
def test_completions_in_the_thousands(tok, decoder):
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=1400, seed=0)
    if decoder == "generate":
        model.generation_config.min_new_tokens = 1200  # EOS banned until then: every row runs the full length
        engine, banned = HFEngine(model, tok.pad_token_id, [tok.eos_token_id], decoder="generate"), tok.eos_token_id
    else:  # rl.decoding follows only the SamplingParams: no stop token, so every row runs the full length
        engine, banned = HFEngine(model, tok.pad_token_id, []), None
    sp = SamplingParams(max_new_tokens=1200, temperature=1.0)
    prompts = [tok("3 plus 4 is", add_special_tokens=False)["input_ids"]] * 2
    ids, lps = engine.generate(prompts, sp, seed=0)
    assert [len(c) for c in ids] == [1200, 1200] and [len(lp) for lp in lps] == [1200, 1200]
    torch.testing.assert_close(torch.tensor(lps[0]), _reference(model, prompts[0], ids[0], sp, banned),
                               atol=1e-3, rtol=1e-3)


def test_load_policy_dtype_and_attention(tok, tmp_path):
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    m, _ = load_policy(tmp_path, "bfloat16", attn_implementation="eager")
    assert m.dtype == torch.bfloat16 and m.config._attn_implementation == "eager"
    from rl.precision import bf16_native

    m, _ = load_policy(tmp_path, "auto")  # CPU: bf16 where its matmuls are native, else fp32; SDPA
    assert m.dtype == (torch.bfloat16 if bf16_native() else torch.float32)
    assert m.config._attn_implementation == "sdpa"


def test_dynamic_sampling_pads_a_round_to_whole_micro_batches():
    from rl import dynamic_sampling as ds

    kept = {"prompt_ids": torch.tensor([[1, 2]] * 3), "prompt_mask": torch.ones(3, 2, dtype=torch.long),
            "completion_ids": torch.tensor([[3, 4]] * 3), "completion_mask": torch.ones(3, 2, dtype=torch.long),
            "advantages": torch.tensor([1.0, -1.0, 0.5])}
    filler = {k: v[:2] for k, v in kept.items()} | {"num_items_in_batch": torch.tensor(4)}
    out = ds.pad_rows_to_multiple(kept, filler, 4, pad_token_id=0)
    assert out["advantages"].tolist() == [1.0, -1.0, 0.5, 0.0]
    assert out["completion_mask"].sum() == 6 and int(ds.loss_tokens(out)) == 6  # the padding row is inert
    assert ds.pad_rows_to_multiple(kept, filler, 3, pad_token_id=0) is kept


def test_dynamic_sampling_with_micro_batches_steps(tmp_path, tok):
    import zlib

    from rl.grpo import GRPOParams, make_grpo_trainer

    # Every step sees all four prompts; only one group can vary, so a round keeps 4 rows (or falls back to
    # one zero-signal group of 4): not a multiple of the 8 micro-batches.
    rows = [{"prompt": f"{i} plus {i} is", "kind": "vary" if i == 0 else "const"} for i in range(4)]

    def reward(completions, kind, **_):
        return [1.0 if k == "const" else float(zlib.crc32(c.encode()) % 2) for c, k in zip(completions, kind)]

    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    p = GRPOParams(max_steps=2, num_generations=4, prompts_per_step=4, max_completion_length=6, logging_steps=1,
                   dynamic_sampling=True, max_resample_rounds=0, micro_batch_size=2)
    trainer = make_grpo_trainer(model, tok, rows, [reward], [1.0], tmp_path, p, seed=0)
    assert trainer.args.steps_per_generation == 8  # groups of 4 kept: padded up to a multiple of 8
    seen = []  # rows of every micro-batch the loss is computed on
    loss = trainer.compute_loss
    trainer.compute_loss = lambda model, inputs, **kw: seen.append(len(inputs["advantages"])) or loss(model, inputs, **kw)
    trainer.train()
    assert trainer.state.global_step == 2 and len(seen) == 16
    kept = [h["dynamic_sampling/batch_rows"] for h in trainer.state.log_history if "dynamic_sampling/batch_rows" in h]
    assert min(seen) >= 1, seen  # no empty micro-batch
    assert [sum(seen[:8]), sum(seen[8:])] == [-(-k // 8) * 8 for k in kept], (seen, kept)  # nothing dropped
