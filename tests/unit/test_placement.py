"""cluster.placement and the cluster-fit checks without a Ray cluster: what each bundle holds in colocated
and disaggregated mode, the one-line errors (more GPUs than the cluster has, a bundle larger than any node,
tensor parallelism larger than a colocated bundle), and the GRPO stage's declared actors."""

import pytest

from cluster import placement
from cluster.runtime import ClusterError, check_resources
from pipelines.config import load_config
from pipelines.remote import plan as plan_cmd
from pipelines.stages.grpo import GRPOStage, plan as grpo_plan

GPU8 = ["grpo.gpus=1", "grpo.num_workers=8", "grpo.rollout_workers=8", "grpo.prompts_per_step=8"]


def test_colocated_bundle_holds_one_learner_and_its_engine_on_one_gpu():
    p = placement.plan("colocated", num_learners=4, learner_cpus=8, num_rollout=4, rollout_cpus=4, use_gpu=True)
    assert p.learner == {"CPU": 8, "GPU": 0.5} and p.rollout == {"CPU": 0, "GPU": 0.5}
    assert p.bundles() == [{"CPU": 8, "GPU": 1.0}] * 4  # a whole GPU per bundle: no two bundles share one
    cpu = placement.plan("colocated", num_learners=2, learner_cpus=1, num_rollout=2, rollout_cpus=1, use_gpu=False)
    assert cpu.bundles() == [{"CPU": 1}] * 2  # the engine borrows its learner's cores


def test_disaggregated_rollout_bundles_are_their_own_and_span_the_engines_gpus():
    p = placement.plan("disaggregated", num_learners=2, learner_cpus=8, num_rollout=3, rollout_cpus=4, use_gpu=True,
                       rollout_gpus=2)
    # one bundle per GPU of each engine (vLLM's Ray executor refuses a bundle with more; tests/unit/test_vllm_tp_placement)
    assert p.bundles() == [{"CPU": 8, "GPU": 1}] * 2 + [{"CPU": 4, "GPU": 1}, {"GPU": 1}] * 3
    assert p.total == {"CPU": 28, "GPU": 8}


def test_tensor_parallel_larger_than_a_colocated_bundle_fails_in_one_line():
    with pytest.raises(placement.PlacementError) as e:
        placement.plan("colocated", num_learners=2, learner_cpus=1, num_rollout=2, rollout_cpus=1, use_gpu=True,
                       rollout_gpus=2)
    assert "grpo.vllm.tensor_parallel_size=2 is larger than the 1 GPU" in str(e.value) and "\n" not in str(e.value)


def test_a_bundle_larger_than_every_node_is_named():
    p = placement.plan("disaggregated", num_learners=1, learner_cpus=4, num_rollout=1, rollout_cpus=4, use_gpu=True,
                       rollout_gpus=4)
    with pytest.raises(placement.PlacementError, match="rollout bundle needs CPU 4, GPU 4 on a single node, but the "
                                                       "largest node has CPU 16, GPU 2"):
        placement.check(p, {"CPU": 64, "GPU": 8}, nodes=[{"CPU": 16, "GPU": 2}] * 4)
    placement.check(p, {"CPU": 64, "GPU": 8}, nodes=[{"CPU": 16, "GPU": 4}] * 2)


def test_check_resources_names_the_stage_fields():
    from pipelines.stages import stage_named

    grpo, distill = stage_named("grpo").fields(), stage_named("distill").fields()  # what each stage declares
    with pytest.raises(ClusterError) as e:
        check_resources(2, 16, "stage grpo", have={"CPU": 64, "GPU": 8}, fields=grpo)
    msg = str(e.value)
    assert msg.startswith("stage grpo needs 16 GPU(s) but the Ray cluster has 8; lower grpo.gpus, grpo.num_workers")
    with pytest.raises(ClusterError, match="lower distill.cpus"):
        check_resources(9, 0, "stage distill", have={"CPU": 8}, fields=distill)
    with pytest.raises(ClusterError, match="lower eval.cpus"):  # the default: <stage>.cpus
        check_resources(9, 0, "stage eval", have={"CPU": 8}, fields=stage_named("eval").fields())
    check_resources(8, 8, "stage grpo", have={"CPU": 8, "GPU": 8}, fields=grpo)


def test_grpo_stage_declares_the_planned_actors():
    cfg = load_config("micro", GPU8 + ["grpo.placement=colocated"])
    res = GRPOStage().resources(cfg)
    names = [a.name for a in res.actors]
    assert names == [f"learner-{i}" for i in range(8)] + [f"rollout-{i}" for i in range(8)]
    assert res.gpus == 8.0 and all(a.gpus == 0.5 for a in res.actors)
    assert grpo_plan(cfg).bundles() == [{"CPU": 1.0, "GPU": 1.0}] * 8


def test_plan_command_refuses_before_starting_ray(monkeypatch):
    def no_ray(*a, **k):
        raise AssertionError("Ray must not start for a plan that cannot fit")

    monkeypatch.setattr(plan_cmd, "place_stages", no_ray)
    with pytest.raises(ClusterError) as e:  # disaggregated: 8 learners + 8 rollout workers = 16 GPUs
        plan_cmd.plan("micro", GPU8, nodes=1, gpus_per_node=8)
    assert str(e.value).startswith("stage grpo needs 16 GPU(s) but the Ray cluster has 8; lower grpo.gpus")
    assert "(1 node(s) x 8 GPU(s)" in str(e.value)
    with pytest.raises(ClusterError, match="stage sft: sft-0 needs 1 CPU"):
        plan_cmd.plan("micro", ["sft.gpus=2"], nodes=2, gpus_per_node=1)
    with pytest.raises(ClusterError, match="--nodes 0"):
        plan_cmd.plan("micro", [], nodes=0, gpus_per_node=8)


def test_a_stage_whose_actors_take_turns_is_placed_in_phases():
    cfg = load_config("qwen2.5-math-1.5b-r1zero")
    plans = {s.name: s for s in plan_cmd.stages(cfg)}
    # Distillation samples on 8 rollout GPUs, then trains on 1: never 9 at once.
    assert [[a.name for a in phase] for phase in plans["distill"].phases] == [
        [f"rollout-{i}" for i in range(8)], ["distill-0"]]
    assert len(plans["grpo"].phases) == 1 and plans["grpo"].label == "grpo (disaggregated)"


def test_rollout_workers_take_their_learners_bundles_or_the_ones_after_them():
    coloc = placement.plan("colocated", num_learners=3, learner_cpus=1, num_rollout=3, rollout_cpus=1, use_gpu=True)
    args = placement.Reservation(coloc, learners="pg").rollout_args()
    assert (args["placement_group"], args["bundle_offset"], args["gpus_per_worker"]) == ("pg", 0, 0.5)
    assert args["own_placement_group"] is False  # the stage's reservation removes it, after the learners
    dis = placement.plan("disaggregated", num_learners=3, learner_cpus=1, num_rollout=2, rollout_cpus=1, use_gpu=True)
    args = placement.Reservation(dis, learners="pg").rollout_args()
    assert (args["bundle_offset"], args["cpus_per_worker"], args["gpus_per_worker"]) == (3, 1, 1)
    assert dis.bundles()[3:] == [{"CPU": 1, "GPU": 1}] * 2
