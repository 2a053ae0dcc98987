"""ActorPool GPU reservations on a simulated GPU cluster (`ray.cluster_utils.Cluster` with fake GPUs: this
checks placement, not CUDA): whole-GPU actors in a placement group get distinct GPUs, and shutdown gives
the group's GPUs back."""

from __future__ import annotations

import sys
import time

import pytest
import ray
from ray import cloudpickle
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group, placement_group_table

from cluster.actors import ActorPool

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class GpuProbe:
    def gpus(self) -> list:
        return [str(g) for g in ray.get_gpu_ids()]


@pytest.fixture(scope="module")
def gpu_cluster():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0})
    cluster.add_node(num_cpus=1, num_gpus=4)
    ray.init(address=cluster.address)
    yield
    ray.shutdown()
    cluster.shutdown()


def test_gpu_actors_in_an_owned_placement_group_get_distinct_gpus_and_give_them_back(gpu_cluster):
    pg = placement_group([{"CPU": 0.1, "GPU": 1}] * 3)
    ray.get(pg.ready())
    pool = ActorPool(GpuProbe, num_actors=3, num_cpus=0.1, num_gpus=1, placement_group=pg,
                     release_placement_group=True)
    got = pool.call_all("gpus")
    assert all(len(ids) == 1 for ids in got) and len({ids[0] for ids in got}) == 3
    assert ray.available_resources().get("GPU", 0) == 1
    pool.shutdown()
    assert placement_group_table(pg)["state"] == "REMOVED"
    deadline = time.monotonic() + 10
    while ray.available_resources().get("GPU", 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("GPU", 0) == 4


class EngineProbe:
    """Stands in for a vLLM engine with tensor parallelism in a rollout actor: builds its launch arguments as
    the real engine does (rl.vllm_engine.engine_launch, bundles from the actor's environment), checks the
    current placement group as vLLM's Ray executor does, and starts one GPU worker per named bundle as that
    executor does (num_gpus=1, num_cpus=0, pinned to the bundle)."""

    def __init__(self, tp: int) -> None:
        import os

        from ray.util import get_current_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rl.vllm_engine import VLLMParams, bundles_from_env, engine_launch

        launch = engine_launch("/m", VLLMParams(tensor_parallel_size=tp), bundle_indices=bundles_from_env())
        pg = get_current_placement_group()
        assert pg is not None and all(b.get("GPU", 0) <= 1 for b in pg.bundle_specs)  # vLLM's own check
        indices = [int(i) for i in launch.env["VLLM_RAY_BUNDLE_INDICES"].split(",")]
        worker = ray.remote(num_cpus=0, num_gpus=1)(GpuProbe)
        self.workers = [worker.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
            placement_group=pg, placement_group_bundle_index=i)).remote() for i in indices]
        self.info = {"backend": launch.kwargs.get("distributed_executor_backend"), "indices": indices,
                     "own_gpus": [str(g) for g in ray.get_gpu_ids()], "bundles": pg.bundle_specs,
                     "cuda_unset": launch.env.get("CUDA_VISIBLE_DEVICES", "kept") is None, "pid": os.getpid()}

    def where(self) -> dict:
        return {**self.info, "worker_gpus": ray.get([w.gpus.remote() for w in self.workers])}


def test_a_tensor_parallel_engine_starts_one_gpu_worker_per_bundle_of_its_own(gpu_cluster):
    import functools

    from cluster import placement

    p = placement.plan("disaggregated", num_learners=1, learner_cpus=0.1, num_rollout=1, rollout_cpus=0.1,
                       use_gpu=True, rollout_gpus=2)
    placed = placement.reserve(p, timeout_s=30)
    try:
        args = placed.rollout_args()
        pool = ActorPool(functools.partial(EngineProbe, 2), num_actors=1, num_cpus=args["cpus_per_worker"],
                         num_gpus=args["gpus_per_worker"], placement_group=args["placement_group"],
                         bundle_offset=args["bundle_offset"], bundles_per_actor=args["bundles_per_worker"])
        (got,) = pool.call_all("where")
        assert got["backend"] == "ray" and got["indices"] == [1, 2] and got["cuda_unset"], got
        assert got["own_gpus"] == []  # vLLM's driver holds no GPU; its two workers hold one each
        assert all(len(g) == 1 for g in got["worker_gpus"]) and len({g[0] for g in got["worker_gpus"]}) == 2, got
        pool.shutdown()
    finally:
        placed.release()
