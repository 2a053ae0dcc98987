"""The GRPO learner: what runs in each rank of the stage's learner worker group (pipelines/stages/grpo.py
places the group and reads what rank 0 writes): TRL's GRPOTrainer resumed from the latest checkpoint, the
recipe's rewards, held-out evaluations along training, and the stage's metrics.json."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.learners import worker_context
from pipelines.report import tracking
from pipelines.run_folder import RunFolder, read_json_or_none, read_jsonl
from pipelines.scoring import evaluate_stage
from pipelines.stages.base import StageContext, start_task
from rewards.registry import build_rewards
from rl.modeling import count_params, load_policy

if TYPE_CHECKING:
    from pipelines.config.schema import PipelineConfig

_LOGGED = ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length", "step_time",
           "dynamic_sampling/kept_fraction", "dynamic_sampling/rounds", "dynamic_sampling/batch_rows",
           "rollout/generate_s", "rollout/sync_s", "rollout/sync_mb", "rollout/policy_lag",
           "rollout/probe_logp_diff", "tis/ratio_mean", "tis/capped_frac", "tools/tool_calls_per_sample",
           "tools/tool_error_rate")


POOL_KEYS = ("workers", "cpus")  # code_accuracy parameters that size its Ray scoring pool (not the sandbox)


def checkpoint_dir(run_dir: Path, label: str = "grpo") -> Path:
    return Path(run_dir) / f"{label}.checkpoints"


def reward_functions(cfg: "PipelineConfig", reward_pool=None) -> tuple[list, list[float]]:
    """The recipe's rewards (TRL's reward_funcs/reward_weights); code_accuracy scores on the pool if given."""
    params = {k: dict(v) for k, v in cfg.grpo.reward_params.items()}
    if "code_accuracy" in params:
        for key in POOL_KEYS:
            params["code_accuracy"].pop(key, None)
        if reward_pool is not None:
            params["code_accuracy"]["executor"] = lambda items: reward_pool.map("score", items)
    return build_rewards(dict(cfg.grpo.rewards), params)


def latest_checkpoint(path: Path) -> Path | None:
    """The newest checkpoint that was saved to the end. The Trainer writes trainer_state.json last (after the
    weights, optimizer and RNG states), so a run stopped in the middle of a save (Ctrl-C, kill -9, a lost
    node) leaves a newer folder without it, or with it cut short: resuming from that one would fail."""
    found = sorted(path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    return next((c for c in found if isinstance(read_json_or_none(c / "trainer_state.json"), dict)), None)


def train_loop(config: dict) -> None:
    """One learner rank: every rank trains (data parallel over the group's prompts); rank 0 saves,
    evaluates and logs (`_finish`)."""
    # Imported here, in the learner: the driver imports every stage module and needs none of TRL/PEFT.
    from rl.callbacks import Progress, TimeBudget
    from rl.grpo import make_grpo_trainer
    from rl.lora import save_policy

    rank, world, local_rank = worker_context()
    cfg: PipelineConfig = config["cfg"]
    ctx: StageContext = config["ctx"]
    g, out, folder = cfg.grpo, ctx.out_dir, RunFolder(cfg.run_dir)
    label = config.get("label", "grpo")  # GRPOStage.run's label: another stage's GRPO arm (no_tool)
    start_task(g.cpus)
    ds_config = _deepspeed_config(g)
    ckpts = checkpoint_dir(cfg.run_dir, label)
    resume = latest_checkpoint(ckpts) if g.save_steps else None
    finished = resume is not None and int(resume.name.rsplit("-", 1)[1]) >= g.max_steps
    # A run killed after its last checkpoint but before the stage was recorded: the weights are final.
    model, tok = load_policy(resume if finished else ctx.init, g.dtype, attn_implementation=g.attn_implementation)
    if g.use_gpu and not g.zero_stage:
        model = model.to(f"cuda:{local_rank}")
    fns, weights = reward_functions(cfg, config.get("reward"))
    run = tracking.start_stage_run(cfg, label) if rank == 0 else None
    budget = TimeBudget(g.time_budget_s)
    callbacks = [budget] + ([Progress(f"{label}: train")] if rank == 0 else [])
    trainer = make_grpo_trainer(model, tok, read_jsonl(folder.data("train")), fns, weights, ckpts, g,
                                callbacks=callbacks, rollout_func=_rollout_func(config, cfg), seed=cfg.run.seed,
                                report_to=tracking.report_to(cfg) if rank == 0 else "none", use_cpu=not g.use_gpu,
                                world_size=world, deepspeed=ds_config, save_steps=g.save_steps,
                                use_vllm=g.in_learner_vllm)
    if rank == 0:
        tracking.attach_grpo(trainer, cfg, out)  # history.jsonl, tokens/s, rollout table
    if g.eval_every >= 0:  # every rank: ZeRO-3 gathers the weights for rank 0's evaluation
        trainer.add_callback(_heldout_callback(trainer, cfg, tok, budget))
    start = time.monotonic()
    if finished:
        from transformers import TrainerState

        trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
    else:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_time = time.monotonic() - start - budget.paused
    # Every rank takes part: under ZeRO-3 saving gathers the shards into one full checkpoint. The folder
    # holds the model (LoRA merged into it; the adapter alone in adapter/), its generation config and tokenizer.
    save_policy(trainer, out)
    if rank == 0:
        _finish(trainer, cfg, tok, out, label, run, {"train_time_s": train_time, "num_workers": world,
                                                     "resumed_from": str(resume) if resume else None}, local_rank)


def _deepspeed_config(g) -> dict | None:
    """The DeepSpeed config of the learner's ZeRO stage (None: plain DDP); ZeRO-3 starts its process group first."""
    if not g.zero_stage:
        return None
    from rl.zero import deepspeed_config, init_distributed_for_zero3

    if g.zero_stage == 3:
        init_distributed_for_zero3(g.use_gpu)
    return deepspeed_config(g.zero_stage, use_gpu=g.use_gpu, offload_optimizer=g.offload_optimizer,
                            offload_params=g.offload_params)


def _rollout_func(config: dict, cfg: "PipelineConfig"):
    """Where rollouts come from: the rollout pool (synced with the learner), the learner itself with tool calls,
    or None (TRL generates in the learner)."""
    g = cfg.grpo
    if config.get("rollout") is not None:
        from rl.rollout import engine_dtype, make_rollout_func

        # A collective sync receives into the engines' own tensors: send the weights in their dtype.
        return make_rollout_func(config["rollout"], sync_every=g.sync_every, seed=cfg.run.seed, overlap=g.overlap,
                                 weight_dtype=engine_dtype("auto", g.use_gpu))
    if g.tools.enabled:  # in-learner generation with tool calls (the pool's engines run them themselves)
        from pipelines.tool_use import learner_rollout_func

        return learner_rollout_func(g.tools)
    return None


def _finish(trainer, cfg: "PipelineConfig", tok, out, label: str, run, known: dict, local_rank: int) -> None:
    """Rank 0 after training: mark a tool checkpoint, write the history, evaluate the consolidated weights and
    write metrics.json (`known`: what the loop measured itself)."""
    g = cfg.grpo
    if g.tools.enabled:
        from pipelines.tool_use import mark_checkpoint

        mark_checkpoint(out, g.tools)
    if g.zero_stage == 3:
        # TRL's ZeRO-3 config is still registered with transformers; without this, from_pretrained below
        # would build a partitioned model whose forward waits for ranks that have already finished.
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
    # The whole curve, including what a resumed run restored from its checkpoint.
    tracking.write_history(out / "history.jsonl", trainer.state.log_history)
    # The consolidated weights, whatever the learner's sharding was, on this worker's device.
    model, _ = load_policy(out, "auto" if g.use_gpu else "float32", device=f"cuda:{local_rank}" if g.use_gpu else None)
    after = evaluate_stage(model, tok, cfg, f"{label}: eval")
    metrics = _metrics(trainer.state, g, after, count_params(model), known)
    metrics["heldout_curve"] = _heldout_curve(trainer.state, after["accuracy"], out / "history.jsonl", label)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    tracking.finish(run, {"eval/accuracy": after["accuracy"], "params": metrics["params"]}, eval_samples=after["samples"],
                    checkpoint=out)


def _metrics(state, g, after: dict, params: int, known: dict) -> dict:
    """The stage's metrics from the trainer's state and the final evaluation."""
    history = [h for h in state.log_history if "reward" in h]
    return {
        "accuracy": after["accuracy"], "params": params, **known,
        "steps": state.global_step, "num_tokens": int(state.num_input_tokens_seen),
        "zero_stage": g.zero_stage, "rollout_workers": g.rollout_workers,
        "reward_first": history[0]["reward"] if history else None,
        "reward_last": history[-1]["reward"] if history else None,
        "samples": after["samples"], "benchmarks": after.get("benchmarks", {}),
        "unparsed_gold": after.get("unparsed_gold", 0),
        # Held-out evaluations during training are not training time (nor the equal-time baseline's budget);
        # the curve itself (start, every grpo.eval_every share of the budget, end) is added by `_finish`.
        "heldout_eval_s": sum(h.get("heldout/eval_s", 0.0) for h in state.log_history if HELDOUT in h),
        **{k: after[k] for k in ("accuracy_no_tool", "tool_gain", "tool_calls_per_sample", "tool_error_rate") if k in after},
        # The logged curve, compact: on-policy reward, dynamic sampling and rollout timings.
        "log": [{k: round(h[k], 4) for k in _LOGGED if k in h} | {"step": h["step"]} for h in history],
    }


HELDOUT = "heldout/accuracy"  # rl.callbacks.HeldoutEval.KEY, the key plots and report read


def _heldout_callback(trainer, cfg: "PipelineConfig", tok, budget):
    """GRPO's held-out curve (`grpo.eval_every`): greedy pass@1 on the run's held-out split, in the learner."""
    from pipelines.scoring import heldout_accuracy
    from rl.callbacks import HeldoutEval

    g = cfg.grpo
    rows = read_jsonl(RunFolder(cfg.run_dir).data("heldout"))
    every = g.eval_every or g.max_steps / 4
    tools = None
    if g.tools.enabled:  # the policy calls the tool: measured with it, as its final evaluation is
        from pipelines.tool_use import eval_tools

        tools = eval_tools(g.tools)
    return HeldoutEval(trainer, lambda model: heldout_accuracy(model, tok, rows, cfg.eval, tools=tools),
                       fraction=every / g.max_steps,
                       budget=budget, desc="grpo", on_point=_log_point)


def _log_point(step: int, point: dict) -> None:
    wandb = sys.modules.get("wandb")  # imported by TRL's WandbCallback when the stage tracks
    if wandb is not None and wandb.run is not None:  # the stage's run (rank 0), on TRL's step axis
        wandb.run.log({"eval/heldout_accuracy": point[HELDOUT], "train/global_step": step})


def _heldout_curve(state, final: float, history: Path, label: str = "grpo") -> list[dict]:
    """[{step, accuracy}] measured during training plus the stage's final evaluation, which is also appended
    to `history.jsonl` (the file the plots read) as the curve's last point."""
    curve = [{"step": h["step"], "accuracy": h[HELDOUT]} for h in state.log_history if HELDOUT in h]
    curve = [c for c in curve if c["step"] < state.global_step] + [{"step": state.global_step, "accuracy": final}]
    with history.open("a") as f:
        f.write(json.dumps({HELDOUT: final, "step": state.global_step, "heldout/final": True}) + "\n")
    print(f"{label}: held-out accuracy {100 * final:.1f} % at step {state.global_step}/{state.max_steps} (end)", flush=True)
    return curve
