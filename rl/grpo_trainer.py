"""rayzero's GRPO trainer class: TRL's `GRPOTrainer` with its losses and scoring as they are, plus what TRL
lacks (DAPO dynamic sampling, overlapped rollouts) and the CPU fast path (bf16 weights with fp32 masters,
lean log-probs, lean decoding; docs/perf.md). `rl.grpo.make_grpo_trainer` builds it from `GRPOParams`.

Each added behaviour is one mixin below, composed onto TRL's class by `RayzeroGRPOTrainer`. A mixin reads
only the attributes it names (class-level defaults = the behaviour off), so it can be mixed into TRL's
`GRPOTrainer` alone and tested there. This module imports TRL: only `make_grpo_trainer` imports it, when a
trainer is built, so loading a config or the CLI stays light."""

from __future__ import annotations

import random
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from trl import GRPOTrainer

from rl import dynamic_sampling as ds
from rl import lean_loss, tis
from rl.decoding import sample
from rl import trl_compat as compat
from rl.precision import MasterWeightAdamW, average_across_ranks, master_adamw_like


@dataclass(frozen=True)
class FastPath:
    """What the trainer does differently from plain TRL for speed (GRPOParams' fast-path fields, resolved)."""

    precision: str = "fp32"
    master_weights: bool = True
    decoder: str = "generate"
    lean_logps: bool = False
    length_buckets: int = 1


class MasterWeights:
    """bf16 learner with fp32 master weights (rl/precision.py): the optimizer becomes a `MasterWeightAdamW`,
    each micro-batch's bf16 gradient is summed into the fp32 masters, gradient clipping and the logged norm
    read the masters, and `restore_fp32()` hands the policy back in fp32.

    Reads `fast` (precision, master_weights) and `fp32_weights` (id(param) -> exact fp32 value, the masters'
    starting point; None = the bf16 weights widened)."""

    fast: FastPath = FastPath()
    fp32_weights: dict | None = None

    @property
    def uses_master_weights(self) -> bool:
        return self.fast.precision == "bf16" and self.fast.master_weights

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.uses_master_weights and not isinstance(self.optimizer, MasterWeightAdamW):
            self.optimizer = master_adamw_like(self.optimizer, self.fp32_weights or {})
            return self.optimizer
        return optimizer

    def master_optimizer(self):
        """The MasterWeightAdamW under accelerate's wrapper, or None."""
        opt = getattr(self.optimizer, "optimizer", self.optimizer)
        return opt if isinstance(opt, MasterWeightAdamW) else None

    def training_step(self, model, inputs, num_items_in_batch=None):
        opt = self.master_optimizer() if self.uses_master_weights else None
        if opt is None:
            return super().training_step(model, inputs, num_items_in_batch)
        # Each micro-batch's bf16 gradient goes into the fp32 masters right after its backward, so the
        # accumulation over micro-batches is an fp32 sum. DDP would all-reduce only what is in the model's
        # .grad (the last micro-batch): it is kept out (no_sync) and the fp32 sums are averaged here instead.
        sync = model.no_sync() if isinstance(model, torch.nn.parallel.DistributedDataParallel) else nullcontext()
        with sync:
            loss = super().training_step(model, inputs, num_items_in_batch)
        opt.accumulate_grads()
        if self.accelerator.sync_gradients and self.accelerator.num_processes > 1:
            average_across_ranks(opt.masters)
        return loss

    def _clip_grad_norm(self, model):
        opt = self.master_optimizer() if self.uses_master_weights else None
        if opt is None:
            return super()._clip_grad_norm(model)
        return torch.nn.utils.clip_grad_norm_([m for m in opt.masters if m.grad is not None],
                                              self.args.max_grad_norm)

    def _get_grad_norm(self, model, grad_norm=None):
        opt = self.master_optimizer() if self.uses_master_weights else None
        if opt is None or grad_norm is not None:
            return super()._get_grad_norm(model, grad_norm=grad_norm)
        return torch.nn.utils.get_total_norm([m.grad for m in opt.masters if m.grad is not None])

    def restore_fp32(self) -> None:
        """Hands the policy back in fp32: the master weights where there are some, else the weights."""
        if self.fast.precision != "bf16":
            return
        model = self.accelerator.unwrap_model(self.model)
        exact = {}
        opt = self.master_optimizer()
        if opt is not None:
            exact = {id(p): m for p, m in zip(opt.model_params, opt.masters)}
        params = list(model.parameters())
        model.float()
        with torch.no_grad():
            for p in params:
                if id(p) in exact:
                    p.copy_(exact[id(p)])
        self.fp32_weights = None


class LeanLogps:
    """The loss's per-token log-probs and entropies through rl.lean_loss (only completion positions reach
    the LM head, in length buckets) wherever `install_lean_logps()` could patch the model; TRL's path
    elsewhere. Reads `fast` (lean_logps, length_buckets)."""

    fast: FastPath = FastPath()
    lean_ready: bool = False

    def install_lean_logps(self) -> None:
        if self.fast.lean_logps:
            self.lean_ready = lean_loss.install(self.model)
            if self.ref_model is not None:  # the KL reference's log-probs take the same path when it can
                lean_loss.install(self.ref_model)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                           **multimodal):
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


class LeanDecoding:
    """In-learner generation with rl.decoding's KV-cache sampler when `fast.decoder` is "rayzero" and TRL's
    generation is plain sampling (`trl_compat.plain_sampling`); TRL's own generation otherwise."""

    fast: FastPath = FastPath()

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations,
                              has_tool_images=False):
        settings = compat.plain_sampling(self)
        if self.fast.decoder != "rayzero" or images is not None or multimodal_fields or has_tool_images \
                or settings is None:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images)
        with compat.model_for_generation(self) as model:
            return sample(model, prompt_ids, pad_token_id=compat.tokenizer(self).pad_token_id, **settings)


class DynamicSampling:
    """DAPO dynamic sampling: each round is one call of TRL's own generation + scoring round; zero-variance
    groups are dropped and fresh prompts are drawn from the training set until every worker has a full
    batch or `max_resample_rounds` extra rounds were spent. All workers run the same number of rounds (TRL
    gathers rewards across them each round). Reads `dynamic_sampling` (on/off) and `max_resample_rounds`."""

    dynamic_sampling: bool = False
    max_resample_rounds: int = 2
    resample_rng: random.Random | None = None

    def generate_and_score(self, inputs):
        if self.model.training and self.dynamic_sampling:
            return self.dynamic_round(inputs)
        return super().generate_and_score(inputs)

    def fresh_prompts(self, num_prompts: int) -> list[dict]:
        if self.resample_rng is None:  # per worker, reproducible from the run's seed
            self.resample_rng = random.Random(self.args.seed * 7919 + self.accelerator.process_index)
        data = self.train_dataset
        rows = [data[self.resample_rng.randrange(len(data))] for _ in range(num_prompts)]
        return [dict(r) for r in rows for _ in range(self.args.num_generations)]

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


class OffPolicyRollouts:
    """Rollouts not sampled by this step's policy, corrected: truncated importance sampling for every
    engine (`grpo.tis_cap`, rl/tis.py), and overlapped rollouts: when the `rollout_func` can `prefetch`
    (`rl.rollout.PoolRollouts` with overlap on), prompt batches are read one ahead so the next step's
    generation starts while this step trains; with TIS off the one-step lag is corrected by the rollout
    log-probs becoming PPO's "old" log-probs. Reads `rayzero_rollout` (the rollout_func, or None)."""

    rayzero_rollout = None

    @property
    def overlap(self) -> bool:
        return getattr(self.rayzero_rollout, "overlap", False)

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        return _Lookahead(loader, lambda rows: self.rayzero_rollout.prefetch(rows, self)) if self.overlap else loader

    def generate_and_score(self, inputs):
        out = tis.apply(self, super().generate_and_score(inputs))
        if self.overlap and not tis.cap_of(self) and "sampling_per_token_logps" in out:
            out["old_per_token_logps"] = out["sampling_per_token_logps"]  # without TIS: PPO's clip corrects
        return out


class RayzeroGRPOTrainer(OffPolicyRollouts, DynamicSampling, LeanDecoding, LeanLogps, MasterWeights,
                         compat.GenerationRoundHook, GRPOTrainer):
    """TRL's GRPOTrainer (its losses, its generation and reward scoring) with the mixins above: a round is
    TRL's generation (LeanDecoding) repeated by DynamicSampling, then corrected by OffPolicyRollouts."""

    def __init__(self, *args, dynamic_sampling: bool = False, max_resample_rounds: int = 2,
                 rayzero_fast: FastPath = FastPath(), fp32_weights: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dynamic_sampling, self.max_resample_rounds = dynamic_sampling, max_resample_rounds
        self.rayzero_rollout = kwargs.get("rollout_func")
        self.fast = rayzero_fast
        self.fp32_weights = fp32_weights
        self.install_lean_logps()

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:
            if hasattr(self.rayzero_rollout, "close"):
                self.rayzero_rollout.close()
            self.restore_fp32()


# TRL's own methods, checked once before any trainer is built on them (the instance check in
# make_grpo_trainer sees the mixins' overrides, not TRL's signatures).
compat.check(GRPOTrainer, compat.GRPO_HOOKS)


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
