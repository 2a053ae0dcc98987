"""Rollout workers on a real local Ray: order, log-probs, weight sync, worker death, TRL's rollout_func; every
sync verified (a bucket corrupted in transit or an engine that loads wrongly stops training in one line);
truncated importance sampling against a rollout policy one step stale."""

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


def _train_through(pool, policy_dir, out, *, steps: int, rows: int, overlap: bool = False, tis_cap: float = 3.0,
                   train: bool = True):
    """TRL's GRPOTrainer on a fresh copy of the policy, generating on `pool`; returns the trained trainer."""
    from rl.grpo import GRPOParams, make_grpo_trainer

    model, tok = load_policy(policy_dir)
    data = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(rows)]
    p = GRPOParams(max_steps=steps, learning_rate=1e-2, num_generations=4, prompts_per_step=2,
                   max_completion_length=6, logging_steps=1, tis_cap=tis_cap)
    trainer = make_grpo_trainer(model, tok, data, [_reward], [1.0], out, p,
                                rollout_func=make_rollout_func(pool, sync_every=1, overlap=overlap))
    if train:
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
    # Every sync was verified: checksums inside sync_weights, then the probe within its tolerance.
    probed = [h["rollout/probe_logp_diff"] for h in logs if "rollout/probe_logp_diff" in h]
    assert len(probed) == 2 and all(0 <= d < 0.1 for d in probed), probed
    # The workers now hold the learner's step-2 weights exactly.
    w = ray.get(pool.workers[0].call.remote("info"))
    assert w["version"] == 2
    pool.shutdown()


def test_overlap_generates_one_step_ahead_and_tis_corrects_the_lag(ray_local, policy_dir, tmp_path, monkeypatch):
    """Overlap: every batch after the first is sampled by weights one step stale. Truncated importance
    sampling (cap 1.0, so that capping shows) weights each token by min(pi_learner / pi_rollout, cap): ~1 at
    lag 0 (the same weights, other kernels), visibly not 1 at lag 1, and those weights are what TRL's loss
    receives (its (B, T) advantages = A * w)."""
    from rl import tis

    seen = []  # (advantages TRL computed, advantages after TIS, completion mask) per generation round

    def recording(trainer, out):
        before = out["advantages"].clone()
        after = tis.apply.__wrapped__(trainer, out)
        seen.append((before, after["advantages"].clone(), after["completion_mask"].clone()))
        return after

    recording.__wrapped__ = tis.apply
    monkeypatch.setattr(tis, "apply", recording)
    pool = RolloutPool(engine_factory("hf", policy_dir, dtype="float32"), num_workers=1, cpus_per_worker=0.5)
    trainer = _train_through(pool, policy_dir, tmp_path, steps=4, rows=16, overlap=True, tis_cap=1.0)
    pool.shutdown()
    logs = [h for h in trainer.state.log_history if "rollout/policy_lag" in h]
    lags = [h["rollout/policy_lag"] for h in logs]
    versions = [h["rollout/policy_version"] for h in logs]
    # Step 1 has nothing prefetched (lag 0); every later batch was sampled by the weights one step old.
    assert lags == [0.0, 1.0, 1.0, 1.0], lags
    assert versions == [0.0, 0.0, 1.0, 2.0], versions
    assert all(0 < h["tis/capped_frac"] < 1 and h["tis/ratio_mean"] <= 1.0 for h in logs), logs
    assert len(seen) == 4
    spread = []
    for before, after, mask in seen:
        assert after.shape == mask.shape and before.dim() == 1
        live = (mask > 0) & (before[:, None] != 0)
        w = after[live] / before[:, None].expand_as(after)[live]
        assert (w <= 1.0 + 1e-6).all() and (w > 0).all()  # capped at 1.0, never negative
        spread.append(float((w - 1).abs().max()))
    # Lag 0: the learner's and the engine's log-probs of the same weights agree (bf16/fp32 kernels: < 1 %);
    # the stale batches (steps 3, 4: weights one update behind) are reweighted by several percent.
    assert spread[0] < 0.01 and min(spread[2:]) > 0.03, spread


def test_a_bucket_corrupted_in_transit_stops_training_in_one_line(ray_local, policy_dir, tmp_path, monkeypatch):
    """Object store: one bucket's bytes change after the learner took its checksum (as a bad transfer would);
    the engine's checksums differ for that bucket and training stops naming the engine and the bucket."""
    import cluster.rollout as rollout
    from cluster.weight_sync import WeightSyncError

    puts = []

    def corrupting_put(bucket):
        puts.append(len(bucket))
        if len(puts) == 3:  # the third bucket of the first sync
            name = next(iter(bucket))
            bucket = {**bucket, name: bucket[name].clone().index_fill_(0, torch.tensor([0]), 0.5)}
        return ray.put(bucket)

    monkeypatch.setattr(rollout, "_put", corrupting_put)
    pool = RolloutPool(engine_factory("hf", policy_dir, dtype="float32"), num_workers=1, cpus_per_worker=0.5,
                       bucket_bytes=4096)
    try:
        with pytest.raises(WeightSyncError) as e:
            _train_through(pool, policy_dir, tmp_path, steps=2, rows=8)
    finally:
        pool.shutdown()
    line = str(e.value)
    assert "\n" not in line and len(puts) > 3, (line, puts)
    assert f"rollout engine rollout-0 holds different weights than the learner sent in bucket 3/{len(puts)}" in line, line


def test_collective_sync_corrupted_in_flight_and_an_engine_that_loads_wrongly_are_caught(ray_local, policy_dir):
    """gloo: a bucket altered on the wire after its checksum -> the bucket is named; then weights that arrive
    intact but are not what the engine computes with (loaded wrongly afterwards) -> the probe names the engine."""
    from cluster.weight_sync import WeightSyncError
    from rl.rollout import probe_tokens, probe_tolerance

    model, tok = load_policy(policy_dir, "float32")
    pool = RolloutPool(engine_factory("hf", policy_dir, dtype="float32"), num_workers=1, cpus_per_worker=0.5,
                       sync_backend="gloo", bucket_bytes=4096)
    try:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        pool.sync_weights(state, version=1)  # clean: passes
        probe = probe_tokens(model.config.vocab_size)
        with torch.no_grad():
            ref = model(torch.tensor([probe])).logits[0, :-1].log_softmax(-1)
        ref = ref.gather(-1, torch.tensor(probe[1:])[:, None]).squeeze(-1).tolist()
        assert pool.verify_probe(probe, ref, probe_tolerance("float32")) < 1e-4  # fp32 both sides

        group, real, calls = pool._group, pool._group.pg, []

        class OnTheWire:  # rank 0's process group, changing the 2nd bucket after the sender's checksum
            def broadcast(self, tensors, opts):
                calls.append(1)
                if len(calls) == 2:
                    tensors[0][:3] += 1.0
                return real.broadcast(tensors, opts)

        group.pg = OnTheWire()
        with pytest.raises(WeightSyncError, match=r"rollout engine rollout-0 holds different weights .* bucket 2/"):
            pool.sync_weights(state, version=2)
        group.pg = real

        pool.sync_weights(state, version=3)  # intact again
        wrong = {k: v + 0.05 for k, v in state.items()}  # what a loader mix-up would leave in the engine
        pool.pool.call_all("load_weights", wrong, 3)
        with pytest.raises(WeightSyncError) as e:
            pool.verify_probe(probe, ref, probe_tolerance("float32"))
        assert "rollout engine rollout-0 scores the 24-token probe" in str(e.value) and "\n" not in str(e.value)
    finally:
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
