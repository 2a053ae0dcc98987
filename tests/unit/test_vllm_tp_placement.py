"""vLLM tensor parallelism > 1 inside a Ray placement group, checked without a GPU against what vLLM requires
there (vllm/v1/executor/ray_utils.py `initialize_ray_cluster`, and its RLHF examples):

- the engine runs `distributed_executor_backend="ray"`, whose executor reuses the current placement group;
- no bundle of that group holds more than one GPU ("Placement group bundle cannot have more than 1 GPU"),
  and it has at least tensor_parallel_size GPU bundles;
- `VLLM_RAY_BUNDLE_INDICES` names exactly tensor_parallel_size distinct bundles, this engine's own, each
  with one GPU, and the driver (the rollout actor) holds no GPU itself, sitting in the first of them.

cluster.placement decides the bundles (`engine_bundles`, `Reservation.rollout_args`), cluster.actors which
bundles an actor owns (`slot_bundles`), rl.vllm_engine the engine's arguments (`engine_launch`); tensor
parallelism 1 keeps its one {CPU, GPU: 1} bundle and vLLM's default in-process executor."""

import pytest

from cluster import actors, placement
from rl import vllm_engine
from rl.vllm_engine import VLLMParams, engine_launch


def vllm_accepts(bundles: list[dict], indices: list[int], tp: int) -> None:
    """vLLM's checks for an engine inside a placement group, as initialize_ray_cluster makes them."""
    gpu_bundles = 0
    for b in bundles:
        assert b.get("GPU", 0) <= 1, f"vLLM: placement group bundle cannot have more than 1 GPU: {b}"
        gpu_bundles += bool(b.get("GPU", 0))
    assert tp <= gpu_bundles, "vLLM: the number of required GPUs exceeds the GPU bundles of the group"
    assert len(indices) == tp and len(set(indices)) == tp
    assert all(bundles[i].get("GPU", 0) == 1 for i in indices)


@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_engines_get_one_gpu_bundle_per_worker_and_the_ray_executor(tp):
    p = placement.plan("disaggregated", num_learners=2, learner_cpus=8, num_rollout=3, rollout_cpus=4, use_gpu=True,
                       rollout_gpus=tp)
    bundles = p.bundles()
    args = placement.Reservation(p, learners="pg").rollout_args()
    assert args["gpus_per_worker"] == 0 and args["cpus_per_worker"] == 4  # the driver actor holds no GPU
    assert args["bundles_per_worker"] == tp and args["bundle_offset"] == 2
    assert p.total == {"CPU": 2 * 8 + 3 * 4, "GPU": 2 + 3 * tp}
    owned = []
    for slot in range(3):
        indices = actors.slot_bundles(args["bundle_offset"], slot, args["bundles_per_worker"])
        owned += indices
        assert bundles[indices[0]] == {"CPU": 4, "GPU": 1}  # where the actor itself sits: its CPUs and a GPU
        vllm_accepts(bundles, indices, tp)
        launch = engine_launch("/m", VLLMParams(tensor_parallel_size=tp), seed=1, bundle_indices=indices)
        assert launch.kwargs["distributed_executor_backend"] == "ray" and launch.kwargs["tensor_parallel_size"] == tp
        assert launch.env == {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, indices)), "VLLM_RAY_PER_WORKER_GPUS": "1",
                              "CUDA_VISIBLE_DEVICES": None}
    assert len(set(owned)) == 3 * tp and min(owned) == 2 and max(owned) == len(bundles) - 1  # disjoint, after the learners'
    assert placement.Plan.rollout_bundle.fget(p) == {"CPU": 4, "GPU": tp}  # what one node must hold for one engine


def test_tensor_parallel_one_is_unchanged():
    p = placement.plan("disaggregated", num_learners=1, learner_cpus=2, num_rollout=2, rollout_cpus=3, use_gpu=True)
    assert p.bundles()[1:] == [{"CPU": 3, "GPU": 1}] * 2 and p.engine_gpus == 0
    args = placement.Reservation(p, learners="pg").rollout_args()
    assert (args["gpus_per_worker"], args["bundles_per_worker"]) == (1, 1)
    launch = engine_launch("/m", VLLMParams(), seed=3, bundle_indices=[1])
    assert "distributed_executor_backend" not in launch.kwargs and launch.env == {}
    assert launch.kwargs == dict(model="/m", tensor_parallel_size=1, gpu_memory_utilization=0.4, dtype="bfloat16",
                                 seed=3, max_model_len=None, enable_prefix_caching=True, enable_sleep_mode=False,
                                 enforce_eager=False, logprobs_mode="processed_logprobs",
                                 worker_extension_cls=vllm_engine.EXTENSION)
    # outside a placement group vLLM picks its own executor for TP > 1 (multiprocessing on visible GPUs)
    assert "distributed_executor_backend" not in engine_launch("/m", VLLMParams(tensor_parallel_size=2)).kwargs
    cpu = placement.plan("disaggregated", num_learners=1, learner_cpus=1, num_rollout=1, rollout_cpus=1, use_gpu=False,
                         rollout_gpus=2)
    assert cpu.bundles() == [{"CPU": 1}, {"CPU": 1}]  # no GPUs: nothing to split


def test_bundles_that_do_not_match_the_tensor_parallel_size_fail_in_one_line():
    with pytest.raises(ValueError, match=r"tensor_parallel_size=2 needs 2 distinct placement-group bundles") as e:
        engine_launch("/m", VLLMParams(tensor_parallel_size=2), bundle_indices=[3])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="distinct"):
        engine_launch("/m", VLLMParams(tensor_parallel_size=2), bundle_indices=[3, 3])


def test_the_bundle_variable_is_the_same_name_on_both_sides(monkeypatch):
    assert actors.BUNDLES_ENV == vllm_engine.BUNDLES_ENV  # cluster/ and rl/ never import each other
    monkeypatch.setenv(actors.BUNDLES_ENV, "4,5")
    assert vllm_engine.bundles_from_env() == [4, 5]
    monkeypatch.delenv(actors.BUNDLES_ENV)
    assert vllm_engine.bundles_from_env() is None
