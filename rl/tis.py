"""Truncated importance sampling (TIS) for samples drawn by another engine than the learner's loss.

Rollouts come from an engine whose log-probs differ from the learner's: a rollout pool in bf16 (or vLLM's
kernels), weights one step old under `grpo.overlap`, rayzero's KV-cache decoder. Each token's loss is
weighted by w = min(pi_learner(token) / pi_rollout(token), cap) (Yao et al., "Your efficient RL framework
secretly brings you off-policy RL training", 2025), where pi_learner is the learner's "old" policy at scoring
time (TRL's `old_per_token_logps`) and pi_rollout the engine's recorded log-prob of the sampled token.

Why this is not a copy of TRL's: TRL 1.16 implements exactly this (`vllm_importance_sampling_correction`,
mode "token_truncate", cap `vllm_importance_sampling_clip_max`, default 3.0) inside
`_generate_and_score_completions` and `_compute_loss`, but only when `use_vllm` (its own vLLM), and `use_vllm`
together with a `rollout_func` makes TRL sync weights into a vLLM it does not have. So:
- TRL's own vLLM modes: TRL's implementation runs (rl.grpo passes `grpo.tis_cap` as its cap); here we only log.
- every other engine (rollout pool, in-learner decoder): TRL's config fields still hold the switch and the cap,
  the learner's log-probs come from TRL's own `_get_per_token_logps_and_entropies` (as TRL computes them for
  vLLM), and the weight reaches TRL's unchanged loss through its documented (B, T) `advantages` (TRL's loss
  is linear in the advantage and w >= 0, so A * w inside the clipped objective equals TRL's multiplying the
  per-token loss by w). What is written here is the ratio itself: three tensor lines.
Logged: `tis/ratio_mean` (mean w over completion tokens) and `tis/capped_frac` (tokens whose ratio hit the cap).
"""

from __future__ import annotations

import torch

from rl import trl_compat as compat


def cap_of(trainer) -> float:
    """The TIS cap the trainer runs with (0 = off), read from TRL's own config fields."""
    if not getattr(trainer, "vllm_importance_sampling_correction", False):
        return 0.0
    return float(trainer.vllm_importance_sampling_clip_max or 0.0)


def truncated_ratio(learner: torch.Tensor, sampling: torch.Tensor, mask: torch.Tensor, cap: float):
    """(B, T) w = min(exp(learner - sampling), cap) (1 on padding and where the engine gave no log-prob) and
    the number of completion tokens whose ratio exceeded `cap`."""
    diff = torch.nan_to_num((learner - sampling) * mask, nan=0.0)
    raw = torch.exp(diff)
    return raw.clamp(max=cap), ((raw > cap) & mask.bool()).sum()


def apply(trainer, out: dict) -> dict:
    """Weights the batch `out` (TRL's scored generation round) by TIS when it is on and the engine recorded
    its log-probs; logs the ratio statistics."""
    cap = cap_of(trainer)
    sampling = out.get("sampling_per_token_logps")
    if not cap or sampling is None or not trainer.model.training:
        return out
    mask = out["completion_mask"] * out["tool_mask"] if "tool_mask" in out else out["completion_mask"]
    if getattr(trainer, "use_vllm", False):  # TRL's own vLLM: TRL applied it; the same statistics
        ratio = out["importance_sampling_ratio"]
        capped = ((ratio >= cap) & mask.bool()).sum()
    else:
        old = out.get("old_per_token_logps")
        if old is None:  # on-policy by step count: the learner's log-probs now, one no-grad forward (as TRL's vLLM)
            old = _learner_logps(trainer, out)
            out["old_per_token_logps"] = old
        ratio, capped = truncated_ratio(old, sampling, mask, cap)
        adv = out["advantages"]
        out["advantages"] = (adv.unsqueeze(1) if adv.dim() == 1 else adv) * ratio
    stats = torch.stack([(ratio * mask).sum(), mask.sum(), capped.to(ratio.dtype)]).float()
    total, tokens, n_capped = trainer.accelerator.gather(stats[None]).sum(0).tolist()
    compat.log_metric(trainer, "tis/ratio_mean", total / max(tokens, 1.0))
    compat.log_metric(trainer, "tis/capped_frac", n_capped / max(tokens, 1.0))
    return out


@torch.no_grad()
def _learner_logps(trainer, out: dict) -> torch.Tensor:
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model, ids, attention, out["completion_ids"].size(1),
        batch_size=trainer.args.per_device_train_batch_size)
    return logps
