"""Weight-sync verification pieces (no Ray here; the pool end to end is in tests/e2e/test_rollout.py): the
sender's and the vLLM receiver's checksums agree on every dtype and catch one flipped bit or two swapped
rows; `verify` names the engine, the bucket and the tensor in one line; the probe's tolerance by dtype;
truncated importance sampling's ratio and its config field."""

import pytest
import torch

from cluster import weight_sync
from rl import tis, weight_wire
from rl.grpo import GRPOParams
from rl.rollout import PROBE_TOKENS, probe_tokens, probe_tolerance


def _tensors():
    g = torch.Generator().manual_seed(0)
    yield torch.randn(37, 5, generator=g)
    yield torch.randn(3, 1000, generator=g).to(torch.bfloat16)
    yield torch.randn(11, generator=g).half()
    yield torch.randint(-2**40, 2**40, (9,), generator=g)
    yield torch.rand(13, generator=g) > 0.5
    yield torch.tensor(3.5)
    yield torch.zeros(0, 4)
    yield torch.randn(1 << 21, 5, generator=g).to(torch.bfloat16)  # 20 MiB: more than two 1 Mi-word slices


def test_sender_and_receiver_checksums_agree_and_catch_small_changes():
    for t in _tensors():
        a = weight_sync.checksum(t)
        assert a == weight_wire.checksum(t) == weight_sync.checksum(t.clone()), t.dtype
        if t.numel() < 2:
            continue
        flipped = t.clone().reshape(-1)
        flipped.view(torch.uint8)[t.element_size() - 1] ^= 1  # one bit of the first element
        assert weight_sync.checksum(flipped) != a, t.dtype
        if t.dim() == 2 and t.shape[0] > 1 and not torch.equal(t[0], t[1]):
            assert weight_sync.checksum(t[[1, 0, *range(2, t.shape[0])]]) != a, t.dtype  # swapped rows


def test_verify_names_engine_bucket_and_tensor_in_one_line():
    state = {f"layer{i}.weight": torch.randn(8, 8) for i in range(6)}
    sent = weight_sync.plan(state, torch.bfloat16, bucket_bytes=300)
    assert len(sent) >= 3
    expected = [[weight_sync.checksum(state[n].to(torch.bfloat16)) for n, _ in bucket] for _, bucket in sent]
    weight_sync.verify(sent, expected, [list(b) for b in expected], "rollout-0")  # a clean sync passes
    got = [list(b) for b in expected]
    got[2][-1] += 1
    with pytest.raises(weight_sync.WeightSyncError) as e:
        weight_sync.verify(sent, expected, got, "rollout-1")
    line = str(e.value)
    name = sent[2][1][-1][0]
    assert "\n" not in line and "rollout engine rollout-1" in line and f"bucket 3/{len(sent)}" in line, line
    assert f"first mismatch: {name}" in line, line
    with pytest.raises(weight_sync.WeightSyncError, match="reported 2 bucket"):
        weight_sync.verify(sent, expected, got[:2], "rollout-0")


def test_probe_is_fixed_and_its_tolerance_is_the_coarser_dtypes():
    assert probe_tokens(300) == probe_tokens(300) and len(probe_tokens(300)) == PROBE_TOKENS
    assert max(probe_tokens(50)) < 50
    assert probe_tolerance("float32")("float32") == 1e-3
    assert probe_tolerance("float32")("bfloat16") == probe_tolerance("bfloat16")("float32") == 0.1


def test_truncated_ratio_caps_and_ignores_padding():
    learner = torch.tensor([[-1.0, -1.0, -1.0, 0.0]])
    sampling = torch.tensor([[-1.0, -2.0, -0.5, 5.0]])  # ratios 1, e, e^-0.5, padding
    mask = torch.tensor([[1, 1, 1, 0]])
    w, capped = tis.truncated_ratio(learner, sampling, mask, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, torch.e ** -0.5, 1.0]]))
    assert int(capped) == 1
    nan = torch.tensor([[float("nan"), -1.0, -1.0, 0.0]])  # a token the engine gave no log-prob for: no weight change
    assert tis.truncated_ratio(learner, nan, mask, cap=2.0)[0][0, 0] == 1.0


@pytest.mark.parametrize("cap,message", [(0.5, "tis_cap=0.5 must be 0 (off) or >= 1"), (-1.0, "tis_cap=-1.0 must be >= 0"),
                                         (float("inf"), "tis_cap=inf must be a finite number")])
def test_tis_cap_is_validated(cap, message):
    GRPOParams(tis_cap=0.0).validate()
    GRPOParams(tis_cap=1.0).validate()
    with pytest.raises(ValueError) as e:
        GRPOParams(tis_cap=cap).validate()
    assert str(e.value).startswith(message), str(e.value)


def test_tis_cap_reaches_trls_own_fields(tmp_path):
    from rl.grpo import grpo_config

    on = grpo_config(tmp_path, GRPOParams(tis_cap=2.5, prompts_per_step=2, num_generations=4), use_cpu=True)
    assert on.vllm_importance_sampling_correction and on.vllm_importance_sampling_clip_max == 2.5
    assert on.vllm_importance_sampling_mode == "token_truncate"
    off = grpo_config(tmp_path, GRPOParams(tis_cap=0.0, prompts_per_step=2, num_generations=4), use_cpu=True)
    assert not off.vllm_importance_sampling_correction


@pytest.mark.parametrize("cap", [3.0, 0.0])
def test_in_learner_decoder_batches_are_weighted_too(tmp_path, cap):
    """The in-learner decoder (rl.decoding, no rollout pool) records its log-probs, so TIS weights its batches
    as well: ~1 there (the learner's own weights, other kernels), none capped; off with tis_cap=0."""
    from rl import trl_compat as compat
    from rl.grpo import make_grpo_trainer
    from rl.modeling import build_tiny_model, train_tokenizer

    rows = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(8)]
    tok = train_tokenizer([r["prompt"] for r in rows] * 4, 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=64,
                             seed=0)
    p = GRPOParams(max_steps=1, num_generations=4, prompts_per_step=2, max_completion_length=6, logging_steps=1,
                   tis_cap=cap)
    trainer = make_grpo_trainer(model, tok, rows, [lambda completions, **_: [float(len(c)) for c in completions]],
                                [1.0], tmp_path, p, seed=0)
    trainer.model.train()
    out = trainer._generate_and_score_completions([{"prompt": r["prompt"]} for r in rows[:2] for _ in range(4)])
    m = compat.metrics(trainer)
    if cap:
        assert out["advantages"].shape == out["completion_mask"].shape
        assert abs(m["tis/ratio_mean"][-1] - 1) < 0.01 and m["tis/capped_frac"][-1] == 0.0
    else:
        assert out["advantages"].dim() == 1 and "tis/ratio_mean" not in m
