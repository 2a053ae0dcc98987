"""Rollout workers on a real local Ray: order, log-probs, weight sync, worker death, TRL's rollout_func."""

import pytest
import ray
import torch

from cluster.actors import split_evenly
from cluster.rollout import RolloutPool
from rl.modeling import load_policy
from rl.rollout import HFEngine, SamplingParams, check_engine, engine_factory, make_rollout_func
from tests.e2e.helpers import kill_and_wait, local_ray, save_tiny_policy

TEXTS = [f"{a} plus {b} is {a + b}." for a in range(12) for b in range(12)]
GREEDY = SamplingParams(max_new_tokens=6, temperature=1.0, top_k=1)


@pytest.fixture(scope="module")
def ray_local():
    yield from local_ray()


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return save_tiny_policy(tmp_path_factory.mktemp("policy"), TEXTS, num_layers=1)


def _prompts(tok, n=7):
    return [tok(f"{i} plus {i + 1} is", add_special_tokens=False)["input_ids"] for i in range(n)]


def _local(model, tok):
    return HFEngine(model, tok.pad_token_id, [tok.eos_token_id])


def test_split_evenly_covers_in_order():
    parts = split_evenly(7, 3)
    assert [(s.start, s.stop) for s in parts] == [(0, 3), (3, 5), (5, 7)]
    assert [(s.start, s.stop) for s in split_evenly(1, 3)] == [(0, 1), (1, 1), (1, 1)]


def test_vllm_engine_where_missing_fails_clearly():
    try:
        import vllm  # noqa: F401
        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="vLLM is not installed"):
        check_engine("vllm")
    with pytest.raises(ValueError, match="'hf', 'vllm'"):
        check_engine("sglang")


def test_pool_returns_completions_in_prompt_order_with_sampling_logprobs(ray_local, policy_dir):
    model, tok = load_policy(policy_dir)
    pool = RolloutPool(engine_factory("hf", policy_dir, dtype="float32"), num_workers=2, cpus_per_worker=0.5)
    prompts = _prompts(tok)
    out = pool.generate(prompts, GREEDY)
    expect, _ = _local(model, tok).generate(prompts, GREEDY)
    assert out["completion_ids"] == expect and out["versions"] == [0] * len(prompts)
    # Sampled (T=1, no top-k): the returned log-probs are the model's log-probs of the sampled tokens.
    sampled = pool.generate(prompts, SamplingParams(max_new_tokens=6, temperature=1.0), seed=3)
    for p, c, lp in zip(prompts, sampled["completion_ids"], sampled["logprobs"]):
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1:-1].log_softmax(-1)
        ref = logits.gather(-1, torch.tensor(c).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(torch.tensor(lp), ref, atol=1e-4)
    pool.shutdown()


def test_weight_sync_changes_what_workers_generate_and_survives_a_killed_worker(ray_local, policy_dir):
    model, tok = load_policy(policy_dir)
    pool = RolloutPool(engine_factory("hf", policy_dir, dtype="float32"), num_workers=2, cpus_per_worker=0.5)
    prompts = _prompts(tok)
    before = pool.generate(prompts, GREEDY)["completion_ids"]
    # A different policy, as after some optimizer steps.
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    seconds = pool.sync_weights({k: v.clone() for k, v in model.state_dict().items()}, version=5)
    assert seconds > 0
    expect, _ = _local(model, tok).generate(prompts, GREEDY)
    after = pool.generate(prompts, GREEDY)
    assert after["completion_ids"] == expect != before and set(after["versions"]) == {5}
    # Kill a worker: its share is generated again by a replacement that holds the synced weights.
    kill_and_wait(pool.workers[1])
    again = pool.generate(prompts, GREEDY)
    assert again["completion_ids"] == expect and set(again["versions"]) == {5}
    assert pool.replacements == 1
    pool.shutdown()


def _reward(completions, answer, **_):
    return [float(a in c) + 0.1 * len(c) for c, a in zip(completions, answer)]


def _train_through(pool, policy_dir, out, *, steps: int, rows: int, overlap: bool = False):
    """TRL's GRPOTrainer on a fresh copy of the policy, generating on `pool`; returns the trained trainer."""
    from rl.grpo import GRPOParams, make_grpo_trainer

    model, tok = load_policy(policy_dir)
    data = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(rows)]
    p = GRPOParams(max_steps=steps, learning_rate=1e-2, num_generations=4, prompts_per_step=2,
                   max_completion_length=6, logging_steps=1)
    trainer = make_grpo_trainer(model, tok, data, [_reward], [1.0], out, p,
                                rollout_func=make_rollout_func(pool, sync_every=1, overlap=overlap))
    trainer.train()
    return trainer


def test_trl_grpo_trains_through_the_pool_with_weights_synced_each_step(ray_local, policy_dir, tmp_path):
    pool = RolloutPool(engine_factory("hf", policy_dir, dtype="float32"), num_workers=2, cpus_per_worker=0.5)
    trainer = _train_through(pool, policy_dir, tmp_path, steps=3, rows=8)
    assert trainer.state.global_step == 3
    assert pool.version == 2  # synced before generating steps 2 and 3
    logs = [h for h in trainer.state.log_history if "rollout/generate_s" in h]
    assert len(logs) == 3 and all(h["rollout/policy_lag"] == 0 for h in logs)
    assert any("rollout/sync_s" in h for h in logs)
    # The workers now hold the learner's step-2 weights exactly.
    w = ray.get(pool.workers[0].call.remote("info"))
    assert w["version"] == 2
    pool.shutdown()


def test_overlap_generates_one_step_ahead_with_lag_never_above_one(ray_local, policy_dir, tmp_path):
    pool = RolloutPool(engine_factory("hf", policy_dir, dtype="float32"), num_workers=1, cpus_per_worker=0.5)
    trainer = _train_through(pool, policy_dir, tmp_path, steps=4, rows=16, overlap=True)
    logs = [h for h in trainer.state.log_history if "rollout/policy_lag" in h]
    lags = [h["rollout/policy_lag"] for h in logs]
    versions = [h["rollout/policy_version"] for h in logs]
    # Step 1 has nothing prefetched (lag 0); every later batch was sampled by the weights one step old.
    assert lags == [0.0, 1.0, 1.0, 1.0], lags
    assert versions == [0.0, 0.0, 1.0, 2.0], versions
    pool.shutdown()


def test_collective_weight_sync_over_gloo_and_regroup_after_a_killed_worker(ray_local, policy_dir):
    model, tok = load_policy(policy_dir)
    pool = RolloutPool(engine_factory("hf", policy_dir, dtype="float32"), num_workers=2, cpus_per_worker=0.5, sync_backend="gloo")
    prompts = _prompts(tok)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pool.sync_weights(state, version=3)
    expect, _ = _local(model, tok).generate(prompts, GREEDY)
    out = pool.generate(prompts, GREEDY)
    assert out["completion_ids"] == expect and set(out["versions"]) == {3}
    kill_and_wait(pool.workers[0])
    again = pool.generate(prompts, GREEDY)  # replacement joins a rebuilt group and gets the weights again
    assert again["completion_ids"] == expect and pool.replacements == 1
    pool.sync_weights(state, version=4)  # the rebuilt group keeps working
    assert set(pool.generate(prompts, GREEDY)["versions"]) == {4}
    pool.shutdown()
