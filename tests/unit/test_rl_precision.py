"""bf16 where it is native, and a bf16 learner that loses no update: rl.precision.

- `bf16_native` / `resolve_precision("auto")` follow the CPU flags (AVX512-BF16 / AMX-BF16), fp32 without;
- `MasterWeightAdamW` on bf16 parameters follows fp32 AdamW exactly on its fp32 masters (same gradients),
  where plain AdamW on bf16 weights loses small updates to rounding; its state dict carries the masters;
- a GRPO trainer with precision=bf16 trains on bf16 weights and hands the policy back in fp32 equal to
  its master weights.
"""

import pytest
import torch

from rl import precision
from rl.precision import MasterWeightAdamW, bf16_native, master_adamw_like, resolve_precision


def test_auto_is_bf16_only_where_bf16_is_native(monkeypatch):
    precision._cpu_flags.cache_clear()
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert not bf16_native() and resolve_precision("auto") == "fp32"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert bf16_native() and resolve_precision("auto") == "bf16"
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset({"amx_bf16", "amx_tile"}))
    assert bf16_native("cpu") and resolve_precision("fp32") == "fp32"
    with pytest.raises(ValueError, match="precision='fp16'"):
        resolve_precision("fp16")


def _grads(step: int, shapes):
    g = torch.Generator().manual_seed(step)
    return [torch.randn(s, generator=g) for s in shapes]


def test_master_weights_follow_fp32_adamw_exactly():
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(64, 32) * 0.05), torch.nn.Parameter(torch.randn(32))]
    exact = [p.detach().clone() for p in ref]
    low = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in ref]
    opt_ref = torch.optim.AdamW(ref, lr=1e-5, weight_decay=0.01)
    opt = MasterWeightAdamW(low, init={id(q): e for q, e in zip(low, exact)}, lr=1e-5, weight_decay=0.01)
    plain = [torch.nn.Parameter(p.detach().to(torch.bfloat16)) for p in ref]
    opt_plain = torch.optim.AdamW(plain, lr=1e-5, weight_decay=0.01)
    for step in range(5):
        for group in (ref, low, plain):
            for q, g in zip(group, _grads(step, [q.shape for q in ref])):
                q.grad = g.to(torch.bfloat16).to(q.dtype)  # the gradient a bf16 backward gives, for all
        opt_ref.step(), opt.step(), opt_plain.step()
        opt_ref.zero_grad(), opt.zero_grad(), opt_plain.zero_grad()
    for r, m, q in zip(ref, opt.masters, low):
        torch.testing.assert_close(m, r.detach(), atol=0, rtol=0)  # same fp32 trajectory
        torch.testing.assert_close(q.detach(), r.detach().to(torch.bfloat16), atol=0, rtol=0)  # rounded once
    assert all(q.grad is None for q in low)
    # Plain AdamW on bf16 weights: most 1e-5-sized steps round away.
    stuck = sum(int((q.detach() == e.to(torch.bfloat16)).sum()) for q, e in zip(plain, exact))
    assert stuck > 0.5 * sum(e.numel() for e in exact)


def test_state_dict_carries_the_masters():
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    opt = MasterWeightAdamW([p], lr=1e-3)
    p.grad = torch.ones(4, dtype=torch.bfloat16)
    opt.step()
    state = opt.state_dict()
    q = torch.nn.Parameter(torch.zeros(4, dtype=torch.bfloat16))
    other = MasterWeightAdamW([q], lr=1e-3)
    other.load_state_dict(state)
    torch.testing.assert_close(other.masters[0], opt.masters[0], atol=0, rtol=0)
    torch.testing.assert_close(q.detach(), opt.masters[0].to(torch.bfloat16), atol=0, rtol=0)
    assert other.state[other.masters[0]]["step"] == 1


def test_master_adamw_like_keeps_groups_and_hyperparameters():
    a, b = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16)), torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))
    base = torch.optim.AdamW([{"params": [a], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0}], lr=3e-4,
                             betas=(0.9, 0.95), eps=1e-7)
    opt = master_adamw_like(base)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert all(g["lr"] == 3e-4 and g["betas"] == (0.9, 0.95) and g["eps"] == 1e-7 for g in opt.param_groups)
    assert opt.model_params == [a, b] and all(m.dtype == torch.float32 for m in opt.masters)
    with pytest.raises(ValueError, match="Adam"):
        master_adamw_like(torch.optim.SGD([a], lr=0.1))


def test_bf16_grpo_learner_returns_fp32_master_weights(tmp_path):
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.modeling import build_tiny_model, train_tokenizer

    rows = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(8)]
    tok = train_tokenizer([r["prompt"] + " " + r["answer"] for r in rows] * 4, 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dtypes = []
    model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    p = GRPOParams(max_steps=2, learning_rate=1e-3, num_generations=4, prompts_per_step=2, max_completion_length=6,
                   precision="bf16")
    trainer = make_grpo_trainer(model, tok, rows, [lambda completions, **_: [float(len(c)) for c in completions]],
                                [1.0], tmp_path, p)
    trainer.train()
    opt = trainer.optimizer.optimizer
    assert isinstance(opt, MasterWeightAdamW) and set(dtypes) == {torch.bfloat16}
    masters = {id(q): m for q, m in zip(opt.model_params, opt.masters)}
    for q in model.parameters():
        assert q.dtype == torch.float32
        torch.testing.assert_close(q.detach(), masters[id(q)], atol=0, rtol=0)
    assert any(not v.equal(before[k]) for k, v in model.state_dict().items())


def test_bf16_gradients_accumulate_in_fp32_over_8_micro_batches(tmp_path, monkeypatch):
    """One optimizer step over 8 micro-batches with bf16 weights: the gradient AdamW receives on the fp32
    masters must be the fp32 sum of the 8 micro-batch gradients (each as bf16 backward made it). Reference: their
    exact (float64) sum. Tolerance: 1e-6 of the summed magnitudes, elementwise (fp32 rounding of 8 additions is
    < 8 * 2^-24 ~ 5e-7); summing in the model's bf16 .grad instead rounds each addition to 2^-9 (~2e-3)."""
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.modeling import build_tiny_model, train_tokenizer

    rows = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(8)]
    tok = train_tokenizer([r["prompt"] + " " + r["answer"] for r in rows] * 4, 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    p = GRPOParams(max_steps=1, learning_rate=1e-3, num_generations=4, prompts_per_step=4, micro_batch_size=2,
                   max_completion_length=6, precision="bf16", temperature=1.0)
    trainer = make_grpo_trainer(model, tok, rows, [lambda completions, **_: [float(len(c) % 3) for c in completions]],
                                [1.0], tmp_path, p)
    assert trainer.args.gradient_accumulation_steps == 8
    trainer.args.max_grad_norm = 1e9  # clipping runs but scales by exactly 1
    params = [q for q in model.parameters() if q.requires_grad]
    micro = {id(q): [] for q in params}
    for q in params:  # each backward's gradient for q, before it is added anywhere
        q.register_hook(lambda g, q=q: micro[id(q)].append(g.detach().clone()))
    seen = {}
    real_step = torch.optim.AdamW.step

    def spy(opt, *a, **k):
        if isinstance(opt, MasterWeightAdamW):
            for q, m in zip(opt.model_params, opt.masters):
                seen[id(q)] = None if m.grad is None else m.grad.detach().clone()
        return real_step(opt, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    trainer.train()
    assert len(micro[id(params[0])]) == 8 and len(seen) == len(params)
    worst = 0.0
    for q in params:
        gs = micro[id(q)]
        assert gs and all(g.dtype == torch.bfloat16 for g in gs)
        exact = torch.stack([g.double() for g in gs]).sum(0)
        scale = torch.stack([g.double().abs() for g in gs]).sum(0)
        got = seen[id(q)]
        assert got is not None and got.dtype == torch.float32
        err = (got.double() - exact).abs()
        assert bool((err <= 1e-6 * scale + 1e-30).all()), f"max error {float(err.max()):.3g} vs sum of |g| {float(scale.max()):.3g}"
        worst = max(worst, float((err / scale.clamp(min=1e-30)).max()))
    assert worst < 1e-6
