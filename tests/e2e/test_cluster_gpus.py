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
