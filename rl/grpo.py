"""GRPO wiring around TRL's `GRPOTrainer`: the losses are TRL's; this module maps rayzero's
hyper-parameters onto `GRPOConfig` and builds the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass(frozen=True)
class GRPOParams:
    """Learning hyper-parameters of a GRPO run (the pipeline's stage config extends this)."""

    max_steps: int = 200
    learning_rate: float = 1e-4
    num_generations: int = 8
    prompts_per_step: int = 16
    temperature: float = 1.0
    max_completion_length: int = 64
    beta: float = 0.0
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float = 0.0
    scale_rewards: str = "group"
    importance_sampling_level: str = "token"
    num_iterations: int = 1
    logging_steps: int = 10


def grpo_config(out_dir: Path, p: GRPOParams, *, seed: int = 0, report_to: str = "none", use_cpu: bool = True,
                world_size: int = 1):
    from trl import GRPOConfig

    total = p.prompts_per_step * p.num_generations
    if total % world_size:
        raise ValueError(f"grpo: prompts_per_step*num_generations={total} is not divisible by "
                         f"num_workers={world_size}")
    return GRPOConfig(
        output_dir=str(out_dir),
        max_steps=p.max_steps,
        learning_rate=p.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=0.05,
        # One optimizer step per generation round: each step sees prompts_per_step fresh prompts
        # with num_generations samples each, split across the data-parallel workers.
        per_device_train_batch_size=total // world_size,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_generations=p.num_generations,
        num_iterations=p.num_iterations,
        temperature=p.temperature,
        top_k=0,
        max_completion_length=p.max_completion_length,
        beta=p.beta,
        loss_type=p.loss_type,
        epsilon=p.epsilon,
        epsilon_high=p.epsilon_high or None,
        scale_rewards=p.scale_rewards,
        importance_sampling_level=p.importance_sampling_level,
        logging_steps=p.logging_steps,
        save_strategy="no",
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        bf16=False,
        gradient_checkpointing=False,  # tiny models: recompute costs more than it saves
        disable_tqdm=True,
        dataloader_num_workers=0,
        shuffle_dataset=True,
        log_completions=False,
    )


def make_grpo_trainer(model, tokenizer, rows: Sequence[dict], reward_funcs: list[Callable], reward_weights: list[float],
                      out_dir: Path, params: GRPOParams, callbacks=(), rollout_func=None, **run_args):
    """A `GRPOTrainer` over rows {prompt, answer, ...}; every column reaches the reward functions.
    `run_args` (seed, report_to, use_cpu, world_size) go to `grpo_config`."""
    from datasets import Dataset
    from trl import GRPOTrainer

    args = grpo_config(out_dir, params, **run_args)
    args.reward_weights = list(reward_weights)
    from rl.callbacks import quiet

    trainer = GRPOTrainer(model=model, reward_funcs=list(reward_funcs), args=args,
                          train_dataset=Dataset.from_list(list(rows)), processing_class=tokenizer,
                          callbacks=list(callbacks), rollout_func=rollout_func)
    return quiet(trainer)
