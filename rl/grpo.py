"""GRPO wiring around TRL's `GRPOTrainer`: the losses are TRL's; this module maps rayzero's
hyper-parameters onto `GRPOConfig` and builds the trainer (with DAPO dynamic sampling when asked)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

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
    # vLLM when rollout_engine=vllm: the rollout workers' engines (rl.vllm_engine), or TRL's own in-learner vLLM
    # without rollout workers (rl.trl_vllm: grpo_config(use_vllm=True))
    vllm: GRPOVLLMParams = GRPOVLLMParams()

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
        v.model_loading(self.dtype, self.attn_implementation, self.bf16)
        from rl.precision import PRECISIONS

        v.choice("precision", self.precision, PRECISIONS)
        v.choice("decoder", self.decoder, DECODERS)
        v.positive_int("length_buckets", self.length_buckets)
        if self.precision == "bf16" and self.dtype not in ("float32", "bfloat16"):
            v.fail("precision", self.precision, f"holds bf16 weights itself: load them as dtype=float32 "
                   f"(exact fp32 master weights) or bfloat16, not {self.dtype!r}")
        if self.precision == "bf16" and self.lora.enabled:
            v.fail("precision", self.precision, "is not supported with LoRA (lora.r > 0); use precision=fp32 with "
                   "bf16=true (autocast)")
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
        self.lora.validate(prefix="lora.")
        self.vllm.validate(prefix="vllm.")


def grpo_config(out_dir: Path, p: GRPOParams, *, seed: int = 0, report_to: str = "none", use_cpu: bool | None = None,
                world_size: int = 1, deepspeed: dict | None = None, save_steps: int = 0, use_vllm: bool = False):
    """TRL's `GRPOConfig` for `p` on `world_size` data-parallel workers (`p.validate` runs first).
    `use_cpu` None = CPU only where no CUDA device is visible. `use_vllm`: TRL generates with its own vLLM
    (`p.vllm.mode` colocate or server, rl.trl_vllm) instead of in-learner `generate` / rl.decoding."""
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
    return GRPOConfig(
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
        **(trl_vllm.grpo_config_args(p.vllm) if use_vllm else {}),
    )


def make_grpo_trainer(model, tokenizer, rows: Sequence[dict], reward_funcs: list[Callable], reward_weights: list[float],
                      out_dir: Path, params: GRPOParams, callbacks=(), rollout_func=None, **run_args):
    """A `GRPOTrainer` over rows {prompt, answer, ...}; every column reaches the reward functions.
    `run_args` (seed, report_to, use_cpu, world_size, deepspeed, save_steps, use_vllm) go to `grpo_config`."""
    from datasets import Dataset
    from trl import GRPOTrainer

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
    trainer = _trainer_class()(
        model=model, reward_funcs=list(reward_funcs), args=args, train_dataset=Dataset.from_list(list(rows)),
        processing_class=tokenizer, callbacks=list(callbacks), rollout_func=rollout_func,
        peft_config=params.lora.peft_config(),
        dynamic_sampling=params.dynamic_sampling, max_resample_rounds=params.max_resample_rounds,
        rayzero_fast=FastPath(precision=precision, master_weights=params.master_weights, decoder=params.decoder,
                              lean_logps=params.lean_logps, length_buckets=params.length_buckets),
        fp32_weights=fp32_weights)
    compat.check(trainer, compat.GRPO_HOOKS)
    return quiet(trainer)


@dataclass(frozen=True)
class FastPath:
    """What the trainer does differently from plain TRL for speed (GRPOParams' fast-path fields, resolved)."""

    precision: str = "fp32"
    master_weights: bool = True
    decoder: str = "generate"
    lean_logps: bool = False
    length_buckets: int = 1


def _trainer_class():
    """Built lazily so importing rl.grpo does not import TRL."""
    import torch

    from rl import dynamic_sampling as ds
    from rl import trl_compat as compat
    from rl.precision import MasterWeightAdamW

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

        def __init__(self, *args, dynamic_sampling: bool = False, max_resample_rounds: int = 2,
                     rayzero_fast: FastPath = FastPath(), fp32_weights: dict | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.dynamic_sampling, self.max_resample_rounds = dynamic_sampling, max_resample_rounds
            self.rayzero_rollout = kwargs.get("rollout_func")
            self.resample_rng = random.Random(self.args.seed * 7919 + self.accelerator.process_index)
            self.fast = rayzero_fast
            self.fp32_weights = fp32_weights  # id(param) -> exact fp32 value, for the master weights
            self.lean_ready = False
            if self.fast.lean_logps:
                from rl import lean_loss

                self.lean_ready = lean_loss.install(self.model)
                if self.ref_model is not None:  # the KL reference's log-probs take the same path when it can
                    lean_loss.install(self.ref_model)

        # --- bf16 learner with fp32 master weights ---------------------------------------------------
        @property
        def uses_master_weights(self) -> bool:
            return self.fast.precision == "bf16" and self.fast.master_weights

        def create_optimizer(self, *args, **kwargs):
            optimizer = super().create_optimizer(*args, **kwargs)
            if self.uses_master_weights and not isinstance(self.optimizer, MasterWeightAdamW):
                from rl.precision import master_adamw_like

                self.optimizer = master_adamw_like(self.optimizer, self.fp32_weights or {})
                return self.optimizer
            return optimizer

        def restore_fp32(self) -> None:
            """Hands the policy back in fp32: the master weights where there are some, else the weights."""
            if self.fast.precision != "bf16":
                return
            model = self.accelerator.unwrap_model(self.model)
            exact = {}
            opt = self.optimizer
            opt = getattr(opt, "optimizer", opt)  # accelerate's wrapper
            if isinstance(opt, MasterWeightAdamW):
                exact = {id(p): m for p, m in zip(opt.model_params, opt.masters)}
            params = list(model.parameters())
            model.float()
            with torch.no_grad():
                for p in params:
                    if id(p) in exact:
                        p.copy_(exact[id(p)])
            self.fp32_weights = None

        def train(self, *args, **kwargs):
            try:
                return super().train(*args, **kwargs)
            finally:
                if hasattr(self.rayzero_rollout, "close"):
                    self.rayzero_rollout.close()
                self.restore_fp32()

        # --- lean log-probs -----------------------------------------------------------------------------
        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **multimodal):
            from rl import lean_loss

            if not self.lean_ready or compute_aux_loss or any(v is not None for v in multimodal.values()) \
                    or not lean_loss.installed(model):
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                    compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)

            rows = input_ids.size(0)
            buckets = max(self.fast.length_buckets, -(-rows // batch_size) if batch_size else 1)
            logps, entropy = lean_loss.token_logps(
                model, input_ids, attention_mask, logits_to_keep, temperature=compat.loss_temperature(self),
                entropy_grad=compat.entropy_needs_grad(self), buckets=buckets, autocast=self.accelerator.autocast)
            return logps, (entropy if compute_entropy else None), None

        # --- in-learner generation ----------------------------------------------------------------------
        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                                  has_tool_images=False):
            settings = compat.plain_sampling(self)
            if self.fast.decoder != "rayzero" or images is not None or multimodal_fields or has_tool_images \
                    or settings is None:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                     has_tool_images)
            from rl.decoding import sample

            with compat.model_for_generation(self) as model:
                return sample(model, prompt_ids, pad_token_id=compat.tokenizer(self).pad_token_id, **settings)

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
            for name, value in (("dropped_groups", dropped), ("kept_fraction", 1.0 - dropped / groups),
                                ("rounds", rounds + 1), ("batch_rows", merged["advantages"].numel())):
                compat.log_metric(self, f"dynamic_sampling/{name}", value)
            # TRL splits a round into steps_per_generation equal micro-batches: pad with inert rows.
            merged = ds.pad_rows_to_multiple(merged, out, self.args.steps_per_generation,
                                             compat.tokenizer(self).pad_token_id)
            merged["num_items_in_batch"] = self.accelerator.gather(ds.loss_tokens(merged)).sum()
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
