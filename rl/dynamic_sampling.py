"""DAPO dynamic sampling, as pure functions over TRL's rollout batches.

A group whose rewards all agree (every sample right, or every sample wrong) has zero advantage for
every member: with `beta=0` it contributes no gradient, yet it still pays for the forward/backward
pass and dilutes the batch. DAPO (Yu et al., 2025) drops such groups and oversamples new prompts until
the batch is full again. TRL 1.16 has no hook for this, so `rl.grpo.DynamicSamplingGRPOTrainer` calls
TRL's own `_generate_and_score_completions` once per round and these functions filter and stitch the
rounds together.

A rollout batch is TRL's dict of per-row tensors: `prompt_ids`/`prompt_mask` (B, P) left-padded,
`completion_ids`/`completion_mask` and optional per-token log-probs (B, C) right-padded,
`advantages` (B,), plus the scalar `num_items_in_batch`.
"""

from __future__ import annotations

import torch

# Keys TRL puts in a rollout batch that this module knows how to filter and concatenate.
LEFT_PADDED = ("prompt_ids", "prompt_mask")
RIGHT_PADDED = ("completion_ids", "completion_mask", "tool_mask", "old_per_token_logps",
                "sampling_per_token_logps", "ref_per_token_logps", "importance_sampling_ratio")
PER_ROW = ("advantages",)


def informative_groups(advantages: torch.Tensor, num_generations: int, atol: float = 1e-6) -> torch.Tensor:
    """Which groups carry a learning signal.

    advantages: (B,) with B = num_groups * num_generations, groups contiguous (TRL's layout).
    Returns a bool mask (num_groups,): True where some member's advantage is non-zero. Zero-variance
    groups have all-zero advantages under every TRL `scale_rewards` mode ("group", "batch", "none"),
    and so do groups whose completions were all unscorable.
    """
    if advantages.numel() % num_generations:
        raise ValueError(f"{advantages.numel()} rows do not split into groups of {num_generations}")
    return (advantages.view(-1, num_generations).abs() > atol).any(dim=1)


def check_supported(batch: dict) -> None:
    unknown = set(batch) - set(LEFT_PADDED) - set(RIGHT_PADDED) - set(PER_ROW) - {"num_items_in_batch"}
    if unknown:
        raise NotImplementedError(f"dynamic sampling cannot filter rollout fields {sorted(unknown)} "
                                  "(multimodal inputs are not supported); set grpo.dynamic_sampling=false")


def select_rows(batch: dict, rows: torch.Tensor) -> dict:
    """The rows `rows` (index tensor) of every per-row field; `num_items_in_batch` is left to the caller."""
    return {k: (v[rows] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()}


def _pad_to(x: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    extra = width - x.size(1)
    if extra == 0:
        return x
    fill = torch.full((x.size(0), extra), value, dtype=x.dtype, device=x.device)
    return torch.cat([fill, x] if left else [x, fill], dim=1)


def concat_batches(batches: list[dict], pad_token_id: int) -> dict:
    """Row-wise concatenation of rollout batches whose padded widths may differ (one per round)."""
    if len(batches) == 1:
        return dict(batches[0])
    out = {}
    for key in batches[0]:
        if key == "num_items_in_batch":
            continue
        parts = [b[key] for b in batches]
        if key in LEFT_PADDED or key in RIGHT_PADDED:
            width = max(p.size(1) for p in parts)
            value = pad_token_id if key.endswith("_ids") else (1 if key == "tool_mask" else 0)
            parts = [_pad_to(p, width, value, left=key in LEFT_PADDED) for p in parts]
        out[key] = torch.cat(parts, dim=0)
    return out


def keep_informative(batch: dict, num_generations: int) -> tuple[dict, int]:
    """The informative groups of one round, and how many groups were dropped."""
    keep = informative_groups(batch["advantages"], num_generations)
    rows = torch.nonzero(keep.repeat_interleave(num_generations), as_tuple=True)[0]
    return select_rows(batch, rows), int((~keep).sum())


def loss_tokens(batch: dict) -> torch.Tensor:
    """Completion tokens that count in the loss (TRL's `num_items_in_batch`, before the gather)."""
    mask = batch["completion_mask"]
    if "tool_mask" in batch:
        mask = mask * batch["tool_mask"]
    return mask.sum()


def pad_rows_to_multiple(batch: dict, filler: dict, multiple: int, pad_token_id: int) -> dict:
    """`batch` topped up to a multiple of `multiple` rows with inert copies of `filler`'s first rows
    (completion mask and advantage zero: they add nothing to the loss or its token count), so TRL can
    split it into `multiple` equal micro-batches without dropping informative rows."""
    rows = batch["advantages"].numel()
    missing = -rows % multiple
    if missing == 0:
        return batch
    device = filler["advantages"].device
    extra = select_rows(filler, torch.arange(missing, device=device) % filler["advantages"].numel())
    extra = {k: v for k, v in extra.items() if k in batch and k != "num_items_in_batch"}
    extra["completion_mask"] = torch.zeros_like(extra["completion_mask"])
    extra["advantages"] = torch.zeros_like(extra["advantages"])
    return concat_batches([batch, extra], pad_token_id)
