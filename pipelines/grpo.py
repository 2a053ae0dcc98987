"""GRPO stage: TRL's GRPOTrainer, started from the SFT checkpoint, run inside a Ray Train worker group
(`TorchTrainer`; gloo on CPU, NCCL on GPU), rewarded by functions from `rewards/` chosen by name."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cluster.runtime import run_worker_group
from pipelines import tracking
from pipelines.common import config_from, data_path, read_jsonl, save_checkpoint, use_cpus
from pipelines.evaluate import evaluate_model
from rewards.registry import build_rewards
from rl.callbacks import Progress
from rl.grpo import make_grpo_trainer
from rl.modeling import count_params, load_policy


_LOGGED = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "step_time",
           "dynamic_sampling/kept_fraction", "dynamic_sampling/rounds", "dynamic_sampling/batch_rows")


def run(cfg_dict: dict, out_dir: str, init_dir: str) -> dict:
    """Driver side: launch the worker group and collect rank 0's metrics."""
    cfg = config_from(cfg_dict)
    out = Path(out_dir)
    run_worker_group(
        _train_loop, {"cfg": cfg_dict, "out_dir": str(out), "init_dir": init_dir},
        num_workers=cfg.grpo.num_workers, cpus_per_worker=cfg.grpo.cpus_per_worker, use_gpu=cfg.grpo.use_gpu,
        storage_path=cfg.run_dir / "ray_train", name=f"{cfg.run.name}-grpo",
    )
    return json.loads((out / "metrics.json").read_text())


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
    model, tok = load_policy(config["init_dir"])
    if g.use_gpu:
        model = model.to(f"cuda:{ctx.get_local_rank()}")
    fns, weights = build_rewards(dict(g.rewards), {k: dict(v) for k, v in g.reward_params.items()})
    run = tracking.start_stage_run(cfg, "grpo") if rank == 0 else None
    trainer = make_grpo_trainer(model, tok, read_jsonl(data_path(cfg, "train")), fns, weights, out / "trainer",
                                g, callbacks=[Progress("grpo: train")] if rank == 0 else [], seed=cfg.run.seed,
                                report_to=tracking.report_to(cfg) if rank == 0 else "none", use_cpu=not g.use_gpu,
                                world_size=world)
    start = time.monotonic()
    trainer.train()
    train_time = time.monotonic() - start
    if rank != 0:
        return
    model = trainer.model
    save_checkpoint(model, tok, out)
    heldout = read_jsonl(data_path(cfg, "heldout"))
    after = evaluate_model(model.cpu(), tok, heldout, cfg.eval, desc="grpo: eval")
    history = [h for h in trainer.state.log_history if "reward" in h]
    metrics = {
        "accuracy": after["accuracy"], "params": count_params(model), "train_time_s": train_time,
        "steps": trainer.state.global_step, "num_workers": world,
        "reward_first": history[0]["reward"] if history else None,
        "reward_last": history[-1]["reward"] if history else None,
        "samples": after["samples"],
        # The logged curve, compact: on-policy reward and (with dynamic sampling) the informative fraction.
        "log": [{k: round(h[k], 4) for k in _LOGGED if k in h} | {"step": h["step"]} for h in history],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    tracking.finish(run, {"eval/accuracy": after["accuracy"], "params": metrics["params"]})
