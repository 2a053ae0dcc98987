"""GRPO wiring around TRL's `GRPOTrainer`: the losses are TRL's; this module maps rayzero's
hyper-parameters onto `GRPOConfig` and builds the trainer (with DAPO dynamic sampling when asked)."""

from __future__ import annotations

import random
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
    # DAPO dynamic sampling: drop groups whose rewards all agree, then generate for fresh prompts up to
    # `max_resample_rounds` more times to refill the batch (0 = drop only; the batch shrinks).
    dynamic_sampling: bool = False
    max_resample_rounds: int = 2
    # bf16 autocast with fp32 master weights, for the loss and TRL's in-learner generation (accelerate
    # patches the model's forward). Rollout workers generate in fp32 either way.
    bf16: bool = False


def grpo_config(out_dir: Path, p: GRPOParams, *, seed: int = 0, report_to: str = "none", use_cpu: bool = True,
                world_size: int = 1, deepspeed: dict | None = None, save_steps: int = 0):
    from trl import GRPOConfig

    total = p.prompts_per_step * p.num_generations
    if total % world_size:
        raise ValueError(f"grpo: prompts_per_step*num_generations={total} is not divisible by "
                         f"num_workers={world_size}")
    if p.dynamic_sampling and (total // world_size) % p.num_generations:
        raise ValueError(f"grpo: dynamic_sampling needs whole groups per worker: prompts_per_step="
                         f"{p.prompts_per_step} must be divisible by num_workers={world_size}")
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
        # Checkpoints (model, optimizer, scheduler, RNG) every `save_steps` so a killed run resumes.
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=2 if save_steps else None,
        deepspeed=deepspeed,
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        use_cpu=use_cpu,
        bf16=p.bf16,
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

    if params.beta and not getattr(model.config, "_name_or_path", ""):
        raise ValueError("grpo.beta > 0 needs a policy loaded from a folder: TRL re-loads the KL reference "
                         "model from the policy's path")
    args = grpo_config(out_dir, params, **run_args)
    args.reward_weights = list(reward_weights)
    from rl import trl_compat as compat
    from rl.callbacks import quiet

    trainer = _trainer_class()(
        model=model, reward_funcs=list(reward_funcs), args=args, train_dataset=Dataset.from_list(list(rows)),
        processing_class=tokenizer, callbacks=list(callbacks), rollout_func=rollout_func,
        dynamic_sampling=params.dynamic_sampling, max_resample_rounds=params.max_resample_rounds)
    compat.check(trainer, compat.GRPO_HOOKS)
    return quiet(trainer)


def _trainer_class():
    """Built lazily so importing rl.grpo does not import TRL."""
    import torch

    from rl import dynamic_sampling as ds
    from rl import trl_compat as compat

    class RayzeroGRPOTrainer(compat.grpo_trainer_base()):
        """TRL's GRPOTrainer (its losses, its generation and reward scoring) plus two things TRL lacks:

        - DAPO dynamic sampling: each round is one call of TRL's own generation + scoring round;
          zero-variance groups are dropped and fresh prompts are drawn from the training set until every
          worker has a full batch or `max_resample_rounds` extra rounds were spent. All workers run the
          same number of rounds (TRL gathers rewards across them each round).
        - overlapped rollouts: when the `rollout_func` can `prefetch` (`rl.rollout.PoolRollouts` with
          overlap on), prompt batches are read one ahead so the next step's generation starts while this
          step trains, and the rollout log-probs become the PPO "old" log-probs so the clipped
          importance ratio corrects the one-step lag."""

        def __init__(self, *args, dynamic_sampling: bool = False, max_resample_rounds: int = 2, **kwargs):
            super().__init__(*args, **kwargs)
            self.dynamic_sampling, self.max_resample_rounds = dynamic_sampling, max_resample_rounds
            self.rayzero_rollout = kwargs.get("rollout_func")
            self.resample_rng = random.Random(self.args.seed * 7919 + self.accelerator.process_index)

        def train(self, *args, **kwargs):
            try:
                return super().train(*args, **kwargs)
            finally:
                if hasattr(self.rayzero_rollout, "close"):
                    self.rayzero_rollout.close()

        @property
        def overlap(self) -> bool:
            return getattr(self.rayzero_rollout, "overlap", False)

        def get_train_dataloader(self):
            loader = super().get_train_dataloader()
            return _Lookahead(loader, lambda rows: self.rayzero_rollout.prefetch(rows, self)) if self.overlap else loader

        def fresh_prompts(self, num_prompts: int) -> list[dict]:
            data = self.train_dataset
            rows = [data[self.resample_rng.randrange(len(data))] for _ in range(num_prompts)]
            return [dict(r) for r in rows for _ in range(self.args.num_generations)]

        def generate_and_score(self, inputs):
            if self.model.training and self.dynamic_sampling:
                out = self.dynamic_round(inputs)
            else:
                out = self.trl_generate_and_score(inputs)
            if self.overlap and "sampling_per_token_logps" in out:
                out["old_per_token_logps"] = out["sampling_per_token_logps"]
            return out

        def dynamic_round(self, inputs):
            g, target = self.args.num_generations, len(inputs)
            kept, dropped, rounds, groups = [], 0, 0, 0
            batch = inputs
            while True:
                out = self.trl_generate_and_score(batch)
                ds.check_supported(out)
                good, n_dropped = ds.keep_informative(out, g)
                kept.append(good)
                dropped, groups = dropped + n_dropped, groups + len(batch) // g
                have = sum(k["advantages"].numel() for k in kept)
                fewest = self.accelerator.gather(torch.tensor([have], device=self.accelerator.device)).min()
                if int(fewest) >= target or rounds >= self.max_resample_rounds:
                    break
                rounds += 1
                batch = self.fresh_prompts(target // g)
            merged = ds.concat_batches(kept, compat.tokenizer(self).pad_token_id)
            rows = merged["advantages"].numel()
            if rows == 0:
                # Every group agreed: train on one (zero-gradient) group so all workers stay in step.
                merged = ds.select_rows(out, torch.arange(g, device=out["advantages"].device))
            elif rows > target:
                merged = ds.select_rows(merged, torch.arange(target, device=merged["advantages"].device))
            merged["num_items_in_batch"] = self.accelerator.gather(ds.loss_tokens(merged)).sum()
            for name, value in (("dropped_groups", dropped), ("kept_fraction", 1.0 - dropped / groups),
                                ("rounds", rounds + 1), ("batch_rows", merged["advantages"].numel())):
                compat.log_metric(self, f"dynamic_sampling/{name}", value)
            return merged

    return RayzeroGRPOTrainer


class _Lookahead:
    """Iterates a dataloader one batch ahead: before handing out batch t it calls `on_next(batch t+1)`."""

    def __init__(self, loader, on_next):
        self.loader, self.on_next = loader, on_next

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # sampler, dataset, set_epoch, ... of the wrapped loader
        return getattr(self.loader, name)

    def __iter__(self):
        it = iter(self.loader)
        try:
            current = next(it)
        except StopIteration:
            return
        for upcoming in it:
            self.on_next(upcoming)
            yield current
            current = upcoming
        yield current
