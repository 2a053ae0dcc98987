"""GRPO wiring around TRL's `GRPOTrainer`: the losses are TRL's; this module maps rayzero's
hyper-parameters onto `GRPOConfig` and builds the trainer (with DAPO dynamic sampling when asked)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from rl.lora import LoraParams
from rl.trl_vllm import GRPOVLLMParams


LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo", "luspo", "vespo")  # TRL 1.16's
DECODERS = ("rayzero", "generate")


@dataclass(frozen=True)
class GRPOParams:
    """Learning hyper-parameters of a GRPO run (the pipeline's stage config extends this).

    One optimizer step sees `prompts_per_step` prompts x `num_generations` samples, split evenly over the
    data-parallel workers (the per-rank batch); each rank runs it as micro-batches of `micro_batch_size`
    with gradient accumulation."""

    max_steps: int = 200
    learning_rate: float = 1e-4
    num_generations: int = 8
    prompts_per_step: int = 16
    temperature: float = 1.0
    top_p: float = 1.0  # nucleus sampling for rollouts (1.0 = off), as TRL's top_p
    top_k: int = 0  # sample among the k likeliest tokens (0 = off), as TRL's top_k
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
    # Memory: rows per forward/backward on one device (0 = the whole per-rank batch at once); gradients
    # are accumulated over per-rank batch / micro_batch_size micro-batches, so the update is the same.
    micro_batch_size: int = 0
    # TRL's steps_per_generation: micro-batches one generation round feeds (0 = the accumulation steps,
    # i.e. one round per optimizer step). A multiple k of them samples k steps' prompts at once and makes
    # the later steps off-policy (TRL then computes the old log-probs).
    steps_per_generation: int = 0
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % more time
    # bf16 autocast with fp32 master weights, for the loss and TRL's in-learner generation (accelerate
    # patches the model's forward). Rollout workers generate in fp32 either way.
    bf16: bool = False
    # The learner's weights. fp32 by default: Adam updates at GRPO's learning rates (~1e-6 relative) are
    # below bf16's resolution and would round away; use bf16=true for bf16 compute over fp32 weights.
    dtype: str = "float32"
    attn_implementation: str = "auto"  # rl.params.ATTN_IMPLEMENTATIONS
    # The fast path (docs/perf.md). precision: "bf16" = the learner holds bf16 weights (forward, backward and
    # in-learner generation in bf16, no autocast) and, with master_weights, AdamW updates fp32 copies of them
    # (what `bf16` autocast with fp32 weights computes, without the per-call casts); "fp32" = the weights in
    # `dtype`, under autocast when `bf16`; "auto" = bf16 where bf16 matmuls are native (AVX512-BF16/AMX CPUs,
    # bf16-capable GPUs) unless `dtype` is not float32, LoRA is on or DeepSpeed runs the learner, else fp32.
    # The trained policy is handed back in fp32 (the master weights) either way.
    precision: str = "auto"
    master_weights: bool = True  # bf16 precision: fp32 master weights in the optimizer (false = pure bf16)
    # In-learner generation: "rayzero" = rl.decoding.sample (preallocated KV cache, finished rows dropped;
    # the same sampling distribution), "generate" = TRL's model.generate.
    decoder: str = "rayzero"
    # The loss's log-probs through rl.lean_loss: only completion positions projected, bf16 gradient matmuls,
    # rows in `length_buckets` length-sorted groups each trimmed of shared padding (false = TRL's own).
    lean_logps: bool = True
    length_buckets: int = 4
    # r > 0: train a LoRA adapter (TRL peft_config); with beta > 0 the reference is the adapter-free base.
    lora: LoraParams = LoraParams()
    # Truncated importance sampling (rl/tis.py): each token's loss weighted by min(pi_learner / pi_rollout, cap)
    # for every engine (rollout pool, in-learner decoder, vLLM); 0 = off. 3.0 = TRL's own default cap for its
    # vLLM correction (vllm_importance_sampling_clip_max).
    tis_cap: float = 3.0
    # vLLM when rollout_engine=vllm: the rollout workers' engines (rl.vllm_engine), or TRL's own in-learner vLLM
    # without rollout workers (rl.trl_vllm: grpo_config(use_vllm=True))
    vllm: GRPOVLLMParams = GRPOVLLMParams()
    # Any other field of TRL's GRPOConfig (rl/trl_options.py: checked against TRL's dataclass at load), e.g.
    # {lr_scheduler_type: cosine, max_grad_norm: 0.5}; applied over rayzero's own arguments.
    trl: Mapping[str, Any] = field(default_factory=dict)

    def learner_precision(self, device: str | None = None, *, deepspeed: bool = False) -> str:
        """"fp32" or "bf16": what `precision` means for a learner on `device` (None = CPU)."""
        from rl.precision import resolve_precision

        explicit = self.dtype != "float32" or self.lora.enabled or deepspeed
        if self.precision == "auto" and explicit:
            return "fp32"
        return resolve_precision(self.precision, device)

    def per_rank_batch(self, num_workers: int = 1) -> int:
        return self.prompts_per_step * self.num_generations // num_workers

    def batch_layout(self, num_workers: int = 1) -> tuple[int, int, int]:
        """(per-device micro-batch, gradient accumulation steps, TRL steps_per_generation)."""
        per_rank = self.per_rank_batch(num_workers)
        micro = self.micro_batch_size or per_rank
        accumulation = per_rank // micro
        return micro, accumulation, self.steps_per_generation or accumulation

    def validate(self, num_workers: int = 1) -> None:
        """Raises ValueError (message starting with the field name) for any setting TRL or rayzero
        cannot run with `num_workers` data-parallel learner workers."""
        self._validate_sampling_and_loss()
        self._validate_fast_path()
        self._validate_batch_layout(num_workers)
        self.lora.validate(prefix="lora.")
        self.vllm.validate(prefix="vllm.")
        from rl.trl_options import check_trl_options

        problem = check_trl_options(self.trl)
        if problem:
            raise ValueError(problem)

    def _validate_sampling_and_loss(self) -> None:
        from rl import params as v

        for name in ("max_steps", "prompts_per_step", "max_completion_length", "num_iterations", "logging_steps"):
            v.positive_int(name, getattr(self, name))
        v.positive_int("num_generations", self.num_generations, minimum=2)  # advantages compare samples
        for name in ("max_resample_rounds", "top_k", "steps_per_generation"):
            v.positive_int(name, getattr(self, name), minimum=0)
        v.finite("learning_rate", self.learning_rate, low=0, low_open=True)
        v.finite("temperature", self.temperature, low=0, low_open=True)
        v.finite("top_p", self.top_p, low=0, low_open=True)
        if self.top_p > 1:
            v.fail("top_p", self.top_p, "must be within (0, 1]")
        v.finite("beta", self.beta, low=0)
        v.finite("epsilon", self.epsilon, low=0, low_open=True)
        v.finite("epsilon_high", self.epsilon_high, low=0)
        if self.epsilon_high and self.epsilon_high < self.epsilon:
            v.fail("epsilon_high", self.epsilon_high, f"must be 0 (= epsilon) or >= epsilon={self.epsilon}")
        v.choice("loss_type", self.loss_type, LOSS_TYPES)
        v.choice("scale_rewards", self.scale_rewards, ("group", "batch", "none"))
        v.choice("importance_sampling_level", self.importance_sampling_level, ("token", "sequence"))
        needs = {"luspo": "sequence", "vespo": "token"}.get(self.loss_type)
        if needs and self.importance_sampling_level != needs:
            v.fail("importance_sampling_level", self.importance_sampling_level,
                   f"must be {needs!r} with loss_type={self.loss_type!r}")

    def _validate_fast_path(self) -> None:
        from rl import params as v
        from rl.precision import PRECISIONS

        v.model_loading(self.dtype, self.attn_implementation, self.bf16)
        v.choice("precision", self.precision, PRECISIONS)
        v.choice("decoder", self.decoder, DECODERS)
        v.positive_int("length_buckets", self.length_buckets)
        v.finite("tis_cap", self.tis_cap, low=0)
        if 0 < self.tis_cap < 1:
            v.fail("tis_cap", self.tis_cap, "must be 0 (off) or >= 1: a cap below 1 would shrink the weight of "
                   "on-policy tokens (ratio 1)")
        if self.precision == "bf16" and self.dtype not in ("float32", "bfloat16"):
            v.fail("precision", self.precision, f"holds bf16 weights itself: load them as dtype=float32 "
                   f"(exact fp32 master weights) or bfloat16, not {self.dtype!r}")
        if self.precision == "bf16" and self.lora.enabled:
            v.fail("precision", self.precision, "is not supported with LoRA (lora.r > 0); use precision=fp32 with "
                   "bf16=true (autocast)")

    def _validate_batch_layout(self, num_workers: int) -> None:
        from rl import params as v

        v.positive_int("num_workers", num_workers)
        total = self.prompts_per_step * self.num_generations
        if total % num_workers:
            v.fail("prompts_per_step", self.prompts_per_step, f"x num_generations={self.num_generations} = {total} "
                   f"must be divisible by num_workers={num_workers}")
        v.micro_batching("micro_batch_size", self.micro_batch_size, self.per_rank_batch(num_workers),
                         "prompts_per_step*num_generations/num_workers")
        micro, _, per_generation = self.batch_layout(num_workers)
        if (micro * num_workers * per_generation) % self.num_generations:
            v.fail("steps_per_generation", self.steps_per_generation,
                   f"x micro-batch {micro} x num_workers={num_workers} must be a multiple of num_generations="
                   f"{self.num_generations} (a generation round samples whole groups)")
        if self.dynamic_sampling and (micro * per_generation) % self.num_generations:
            v.fail("prompts_per_step", self.prompts_per_step, f"must give every worker whole groups for "
                   f"dynamic_sampling: a round's {micro * per_generation} rows per worker are not a multiple of "
                   f"num_generations={self.num_generations}")


def grpo_config(out_dir: Path, p: GRPOParams, *, seed: int = 0, report_to: str = "none", use_cpu: bool | None = None,
                world_size: int = 1, deepspeed: dict | None = None, save_steps: int = 0, use_vllm: bool = False):
    """TRL's `GRPOConfig` for `p` on `world_size` data-parallel workers (`p.validate` runs first).
    `use_cpu` None = CPU only where no CUDA device is visible. `use_vllm`: TRL generates with its own vLLM
    (`p.vllm.mode` colocate or server, rl.trl_vllm) instead of in-learner `generate` / rl.decoding.

    Long because it is one flat mapping, field by field, of rayzero's settings onto TRL's: read in one place."""
    from trl import GRPOConfig

    from rl import trl_vllm
    from rl.modeling import default_use_cpu

    p.validate(num_workers=world_size)
    if use_vllm:
        trl_vllm.check_in_learner(p.vllm, world_size)
    use_cpu = default_use_cpu() if use_cpu is None else use_cpu
    # bf16 weights need no autocast; autocast only on the fp32 path when asked for
    autocast = p.bf16 and p.learner_precision(None if use_cpu else "cuda", deepspeed=deepspeed is not None) == "fp32"
    micro, accumulation, per_generation = p.batch_layout(world_size)
    return GRPOConfig(**dict(
        output_dir=str(out_dir),
        max_steps=p.max_steps,
        learning_rate=p.learning_rate,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=0.05,
        # One optimizer step per generation round (unless steps_per_generation says otherwise): each step
        # sees prompts_per_step fresh prompts with num_generations samples each, split across the
        # data-parallel workers and, on each, into micro-batches.
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=per_generation,
        num_generations=p.num_generations,
        num_iterations=p.num_iterations,
        temperature=p.temperature,
        top_p=p.top_p,
        top_k=p.top_k,
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
        bf16=autocast,
        activation_checkpointing=p.gradient_checkpointing,  # TRL's gradient_checkpointing, new name
        disable_tqdm=True,
        dataloader_num_workers=0,
        shuffle_dataset=True,
        log_completions=False,
        # TRL's own switch and cap for truncated importance sampling: TRL applies it with its vLLM, rl/tis.py
        # with every other engine (TRL's correction is tied to use_vllm); token-level truncation either way.
        vllm_importance_sampling_correction=p.tis_cap > 0,
        vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_max=p.tis_cap or None,
        **(trl_vllm.grpo_config_args(p.vllm) if use_vllm else {}),
    ) | dict(p.trl))


def make_grpo_trainer(model, tokenizer, rows: Sequence[dict], reward_funcs: list[Callable], reward_weights: list[float],
                      out_dir: Path, params: GRPOParams, callbacks=(), rollout_func=None, **run_args):
    """A `GRPOTrainer` over rows {prompt, answer, ...}; every column reaches the reward functions.
    `run_args` (seed, report_to, use_cpu, world_size, deepspeed, save_steps, use_vllm) go to `grpo_config`."""
    from datasets import Dataset

    if params.beta and not params.lora.enabled and not getattr(model.config, "_name_or_path", ""):
        raise ValueError("grpo.beta > 0 needs a policy loaded from a folder: TRL re-loads the KL reference "
                         "model from the policy's path (with LoRA the reference is the base without adapter)")
    args = grpo_config(out_dir, params, **run_args)
    args.reward_weights = list(reward_weights)
    if args.use_vllm:
        from rl.trl_vllm import check_runtime

        if rollout_func is not None:  # TRL would take the rollout_func and leave its vLLM idle
            raise ValueError("grpo: TRL's in-learner vLLM (use_vllm) and a rollout pool (rollout_func) exclude each other")
        check_runtime(args.use_cpu)  # one line here, not TRL's error from inside the trainer's constructor
    from rl import trl_compat as compat
    from rl.callbacks import quiet

    precision = params.learner_precision(None if args.use_cpu else "cuda", deepspeed=args.deepspeed is not None)
    if precision == "bf16" and args.deepspeed is not None:
        raise ValueError("grpo.precision='bf16' is not supported with DeepSpeed ZeRO; use precision=auto (fp32 "
                         "weights, bf16=true for autocast)")
    fp32_weights = None
    if precision == "bf16" and next(model.parameters()).dtype != torch.bfloat16:
        # The exact fp32 weights become the optimizer's master copies; the model computes in bf16.
        fp32_weights = {id(p): p.detach().float().clone() for p in model.parameters()}
        model.to(torch.bfloat16)
    from rl.grpo_trainer import FastPath, RayzeroGRPOTrainer  # imports TRL: only when a trainer is built

    trainer = RayzeroGRPOTrainer(
        model=model, reward_funcs=list(reward_funcs), args=args, train_dataset=Dataset.from_list(list(rows)),
        processing_class=tokenizer, callbacks=list(callbacks), rollout_func=rollout_func,
        peft_config=params.lora.peft_config(),
        dynamic_sampling=params.dynamic_sampling, max_resample_rounds=params.max_resample_rounds,
        rayzero_fast=FastPath(precision=precision, master_weights=params.master_weights, decoder=params.decoder,
                              lean_logps=params.lean_logps, length_buckets=params.length_buckets),
        fp32_weights=fp32_weights)
    compat.check(trainer, compat.GRPO_HOOKS)
    return quiet(trainer)
