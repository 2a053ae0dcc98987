"""GRPO stage: TRL's GRPOTrainer, started from the SFT checkpoint, run inside a Ray Train worker group
(`TorchTrainer`; gloo on CPU, NCCL on GPU; optionally DeepSpeed ZeRO), rewarded by functions from
`rewards/` chosen by name, with rollouts generated in the learner (TRL) or on a Ray rollout pool.

Checkpoints (`grpo.save_steps`) go to `runs/<run>/grpo.checkpoints/`, outside the stage's scratch
folder, so a crashed or killed run started again resumes GRPO from its latest checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from cluster import placement
from cluster.runtime import run_worker_group
from pipelines import tracking
from pipelines.common import config_from, data_path, read_jsonl, use_cpus
from pipelines.evaluate import evaluate_model
from rewards.registry import build_rewards
from rl.callbacks import Progress, TimeBudget
from rl.grpo import make_grpo_trainer
from rl.modeling import count_params, load_policy

_LOGGED = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "step_time",
           "dynamic_sampling/kept_fraction", "dynamic_sampling/rounds", "dynamic_sampling/batch_rows",
           "rollout/generate_s", "rollout/sync_s", "rollout/policy_lag")


def checkpoint_dir(cfg) -> Path:
    return cfg.run_dir / "grpo.checkpoints"


def preflight(cfg) -> "placement.Plan":
    """The learner + rollout resource plan, checked against the cluster (the driver calls this before
    any stage runs, so a cluster that is too small fails before any work)."""
    g = cfg.grpo
    plan = placement.plan(g.placement, num_learners=g.num_workers, learner_cpus=g.cpus_per_worker,
                          num_rollout=g.rollout_workers, rollout_cpus=g.rollout_cpus_per_worker, use_gpu=g.use_gpu)
    placement.check(plan)
    return plan


def run(cfg_dict: dict, out_dir: str, init_dir: str) -> dict:
    """Driver side: place the rollout pool (if any), launch the learner group, collect rank 0's metrics."""
    cfg = config_from(cfg_dict)
    g, out = cfg.grpo, Path(out_dir)
    plan = preflight(cfg)
    pool = _start_rollout_pool(cfg, plan, init_dir) if g.rollout_workers else None
    try:
        run_worker_group(
            _train_loop, {"cfg": cfg_dict, "out_dir": str(out), "init_dir": init_dir, "pool": pool},
            num_workers=g.num_workers, resources_per_worker=plan.learner, use_gpu=g.use_gpu,
            storage_path=cfg.run_dir / "ray_train", name=f"{cfg.run.name}-grpo", max_failures=g.max_failures,
        )
    finally:
        if pool is not None:
            pool.shutdown()
            if pool.pg is not None:  # give the reserved CPUs/GPUs back to the stages that follow
                from ray.util.placement_group import remove_placement_group

                remove_placement_group(pool.pg)
    shutil.rmtree(checkpoint_dir(cfg), ignore_errors=True)  # the stage finished: its folder is the result
    return json.loads((out / "metrics.json").read_text())


def _start_rollout_pool(cfg, plan, init_dir: str):
    from cluster.rollout import RolloutPool
    from rl.rollout import engine_factory

    g = cfg.grpo
    pg = placement.rollout_group(plan) if plan.mode == "disaggregated" else None
    return RolloutPool(engine_factory(g.rollout_engine, init_dir, use_gpu=g.use_gpu), num_workers=g.rollout_workers,
                       cpus_per_worker=plan.rollout.get("CPU", 0), gpus_per_worker=plan.rollout.get("GPU", 0),
                       placement_group=pg,
                       sync_backend="object_store" if g.sync_backend == "object_store" else ("nccl" if g.use_gpu else "gloo"))


def _latest_checkpoint(path: Path) -> str | None:
    found = sorted(path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(found[-1]) if found else None


def _train_loop(config: dict) -> None:
    """One Ray Train worker: every rank trains (data parallel over the group's prompts); rank 0 saves,
    evaluates and logs."""
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = config_from(config["cfg"])
    g = cfg.grpo
    use_cpus(g.cpus_per_worker)
    out = Path(config["out_dir"])
    ds_config = None
    if g.zero_stage:
        from rl.zero import deepspeed_config, init_distributed_for_zero3

        if g.zero_stage == 3:
            init_distributed_for_zero3(g.use_gpu)
        ds_config = deepspeed_config(g.zero_stage, use_gpu=g.use_gpu)
    ckpts = checkpoint_dir(cfg)
    resume = _latest_checkpoint(ckpts) if g.save_steps else None
    finished = resume is not None and int(resume.rsplit("-", 1)[1]) >= g.max_steps
    # A run killed after its last checkpoint but before the stage was recorded: the weights are final.
    model, tok = load_policy(resume if finished else config["init_dir"])
    if g.use_gpu and not g.zero_stage:
        model = model.to(f"cuda:{ctx.get_local_rank()}")
    rollout_func = None
    if config.get("pool") is not None:
        from rl.rollout import make_rollout_func

        rollout_func = make_rollout_func(config["pool"], sync_every=g.sync_every, seed=cfg.run.seed,
                                         overlap=g.overlap)
    fns, weights = build_rewards(dict(g.rewards), {k: dict(v) for k, v in g.reward_params.items()})
    run = tracking.start_stage_run(cfg, "grpo") if rank == 0 else None
    callbacks = [TimeBudget(g.time_budget_s)] + ([Progress("grpo: train")] if rank == 0 else [])
    trainer = make_grpo_trainer(model, tok, read_jsonl(data_path(cfg, "train")), fns, weights, ckpts, g,
                                callbacks=callbacks, rollout_func=rollout_func, seed=cfg.run.seed,
                                report_to=tracking.report_to(cfg) if rank == 0 else "none", use_cpu=not g.use_gpu,
                                world_size=world, deepspeed=ds_config, save_steps=g.save_steps)
    if rank == 0:
        tracking.attach_grpo(trainer, cfg, out)  # history.jsonl, tokens/s, rollout table
    start = time.monotonic()
    if finished:
        trainer.state.global_step = g.max_steps
    else:
        trainer.train(resume_from_checkpoint=resume)
    train_time = time.monotonic() - start
    # Every rank takes part: under ZeRO-3 saving gathers the shards into one full checkpoint. The
    # trainer writes the model, its generation config and the tokenizer.
    trainer.save_model(str(out))
    if rank != 0:
        return
    if g.zero_stage == 3:
        # TRL's ZeRO-3 config is still registered with transformers; without this, from_pretrained below
        # would build a partitioned model whose forward waits for ranks that have already finished.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    model, _ = load_policy(out)  # the consolidated weights, whatever the learner's sharding was
    heldout = read_jsonl(data_path(cfg, "heldout"))
    after = evaluate_model(model.cpu(), tok, heldout, cfg.eval, desc="grpo: eval")
    history = [h for h in trainer.state.log_history if "reward" in h]
    metrics = {
        "accuracy": after["accuracy"], "params": count_params(model), "train_time_s": train_time,
        "steps": trainer.state.global_step, "num_tokens": int(trainer.state.num_input_tokens_seen),
        "num_workers": world, "zero_stage": g.zero_stage,
        "rollout_workers": g.rollout_workers, "resumed_from": resume,
        "reward_first": history[0]["reward"] if history else None,
        "reward_last": history[-1]["reward"] if history else None,
        "samples": after["samples"],
        # The logged curve, compact: on-policy reward, dynamic sampling and rollout timings.
        "log": [{k: round(h[k], 4) for k in _LOGGED if k in h} | {"step": h["step"]} for h in history],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    tracking.finish(run, {"eval/accuracy": after["accuracy"], "params": metrics["params"]}, eval_samples=after["samples"],
                    checkpoint=out)
