"""Bucketed learner -> rollout weight sync (cluster.weight_sync, cluster.rollout) on a real local Ray, CPU:
an fp32 learner's weights arrive in bf16 engines exactly as the learner's weights cast to bf16, in several
buckets (a small bucket size forces them), through the object store and through gloo; a replacement
worker gets every bucket; a plan is bounded by the bucket size and covers every tensor once."""

from __future__ import annotations

import random

import pytest
import ray
import torch

from cluster import weight_sync
from cluster.rollout import RolloutPool
from rl.modeling import load_policy
from rl.rollout import engine_factory
from tests.e2e.helpers import kill_and_wait, local_ray, save_tiny_policy

TEXTS = [f"{a} plus {b} is {a + b}." for a in range(12) for b in range(12)]
BUCKET = 4096  # bytes: the tiny model's embeddings alone are ~19 KB in bf16, so a sync takes many buckets


@pytest.fixture(scope="module")
def ray_local():
    yield from local_ray()


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return save_tiny_policy(tmp_path_factory.mktemp("policy"), TEXTS, num_layers=2)


def _learner(policy_dir, seed: int) -> dict:
    """An fp32 learner whose weights moved away from the checkpoint the engines loaded."""
    model, _ = load_policy(policy_dir, "float32")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_engines_hold(pool: RolloutPool, state: dict) -> None:
    for got in pool.pool.call_all("weights"):
        assert got.keys() == state.keys()
        for name, tensor in state.items():
            assert got[name].dtype == torch.bfloat16, name
            assert torch.equal(got[name], tensor.to(torch.bfloat16)), name


@pytest.mark.parametrize("backend", ["object_store", "gloo"])
def test_bucketed_bf16_sync_equals_the_learners_weights(ray_local, policy_dir, backend):
    pool = RolloutPool(engine_factory("hf", str(policy_dir), dtype="bfloat16"), num_workers=2, cpus_per_worker=0.25,
                       sync_backend=backend, bucket_bytes=BUCKET)
    try:
        state = _learner(policy_dir, 1)
        expected_buckets = len(weight_sync.plan(state, torch.bfloat16, BUCKET))
        assert expected_buckets > 3
        seconds = pool.sync_weights(state, version=1, dtype=torch.bfloat16)
        assert seconds > 0 and pool.last_sync["buckets"] == expected_buckets
        assert pool.last_sync["bytes"] == sum(t.numel() * 2 for t in state.values())  # bf16: half of fp32
        _assert_engines_hold(pool, state)
        # A second sync (new weights) and a replacement worker: the new worker gets every bucket too.
        state = _learner(policy_dir, 2)
        pool.sync_weights(state, version=2, dtype=torch.bfloat16)
        kill_and_wait(pool.workers[1])
        pool.pool.call_all("info")  # the dead worker is replaced here and given the latest weights
        assert pool.replacements == 1
        _assert_engines_hold(pool, state)
        assert {i["version"] for i in pool.pool.call_all("info")} == {2}
    finally:
        pool.shutdown()


def test_a_sync_that_does_not_cover_the_engine_fails_clearly(ray_local, policy_dir):
    pool = RolloutPool(engine_factory("hf", str(policy_dir), dtype="bfloat16"), num_workers=1, cpus_per_worker=0.25,
                       bucket_bytes=BUCKET)
    try:
        state = _learner(policy_dir, 3)
        state.pop(sorted(state)[0])
        with pytest.raises(ValueError, match="missing"):
            pool.sync_weights(state, version=1, dtype=torch.bfloat16)
    finally:
        pool.shutdown()


def test_bucket_plan_is_bounded_and_covers_every_tensor_once():
    rng = random.Random(0)
    dtypes = [torch.float32, torch.bfloat16, torch.int64]
    for trial in range(50):
        state = {f"t{rng.randrange(10**6)}": torch.zeros(tuple(rng.randint(1, 40) for _ in range(rng.randint(0, 3))),
                                                           dtype=rng.choice(dtypes)) for _ in range(rng.randint(1, 30))}
        for bucket_bytes in (0, 1, 64, 1000, 10**9):
            sent = weight_sync.plan(state, None, bucket_bytes)
            for dtype, bucket in sent:  # bounded, except a tensor larger than a bucket travels alone
                size = weight_sync.bucket_bytes_of(bucket, getattr(torch, dtype))
                assert len(bucket) == 1 or bucket_bytes <= 0 or size <= bucket_bytes, (trial, bucket_bytes)
                assert {str(state[n].dtype) for n, _ in bucket} == {f"torch.{dtype}"}
            assert sorted(n for _, b in sent for n, _ in b) == sorted(state)


def test_one_bucket_per_dtype_when_unbounded_as_before():
    state = {"b": torch.zeros(2, dtype=torch.bfloat16), "a": torch.zeros(3), "c": torch.zeros(1)}
    assert weight_sync.plan(state) == [("float32", [("a", (3,)), ("c", (1,))]), ("bfloat16", [("b", (2,))])]
    # Sent as bf16, every floating tensor joins one dtype; an integer buffer would keep its own.
    assert [d for d, _ in weight_sync.plan(state, torch.bfloat16)] == ["bfloat16"]


def test_gloo_sync_of_fp32_weights_into_bf16_engines_converts_instead_of_breaking(ray_local, policy_dir):
    """A learner that sends its own dtype (no `dtype` given) to engines of another one: receivers take
    what was sent (they are told the dtypes) and convert into their tensors."""
    pool = RolloutPool(engine_factory("hf", str(policy_dir), dtype="bfloat16"), num_workers=1, cpus_per_worker=0.25,
                       sync_backend="gloo", bucket_bytes=BUCKET)
    try:
        state = _learner(policy_dir, 4)
        pool.sync_weights(state, version=1)
        assert pool.last_sync["bytes"] == sum(t.numel() * 4 for t in state.values())  # fp32 on the wire
        _assert_engines_hold(pool, state)
    finally:
        pool.shutdown()
