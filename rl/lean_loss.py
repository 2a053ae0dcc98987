"""The learner's per-token log-probs without TRL's CPU overheads (same values, same gradients).

TRL 1.16 already avoids materialising (B, T, vocab) logits: its fused LM head projects tiles of hidden
states and folds them into online log-sum-exp statistics. On devices without Triton (every CPU) it
however (a) projects *every* position, prompt and padding included, (b) recomputes each tile in backward
and accumulates both gradient matmuls in fp32 (`_addmm_fp32` upcasts bf16 inputs: fp32 speed on a CPU
whose bf16 matmuls are several times faster), and (c) runs the backbone over the batch's full padded width.

`token_logps` computes the same quantities as TRL's `_get_per_token_logps_and_entropies` (log-probs of
the completion tokens under logits / temperature, and their entropy) but:

- only the completion positions are projected (`SelectedLogProbs`: a token-chunked projection in the
  weights' dtype, log-softmax in fp32; the backward recomputes a chunk and does both gradient matmuls
  in the weights' dtype, as autograd through `nn.Linear` would);
- rows are sorted by length and run in `buckets` groups, each trimmed to its own widest prompt and
  completion, so short rows do not pay for the batch's longest one (padding-light; true packing needs
  a varlen attention kernel, which CPUs do not have);
- positions come from the attention mask (as in generation), so left padding does not shift RoPE;
- the entropy is computed without gradient unless asked for (TRL needs its gradient only for an
  entropy bonus);
- bf16 weights on a CPU use eager attention while its saved probabilities stay small: PyTorch's CPU
  flash-attention backward is several times slower in bf16 than bf16 matmuls (measured in docs/perf.md).

The model is called through its own (possibly DDP/PEFT-wrapped) forward with `rayzero_lean=...`, which
`install(model)` adds to the unwrapped model's forward, so wrappers' hooks still run.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch

TOKEN_CHUNK = 2048  # positions projected at once: a (2048, vocab) fp32 tile, ~400 MB for a 49k vocabulary


class SelectedLogProbs(torch.autograd.Function):
    """log p(target) and entropy of softmax((hidden @ weight.T + bias) / temperature), row by row.

    hidden (N, H), weight (V, H), bias (V,) or None, targets (N,). Returns (logps (N,), entropy (N,)) in fp32.
    Logits are computed `TOKEN_CHUNK` rows at a time in the weights' dtype and normalised in fp32; only the
    per-row log-sum-exp is kept for backward, which recomputes the chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature: float, entropy_grad: bool):
        inv_t = 1.0 / temperature
        n = hidden.shape[0]
        logps = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_empty(n, dtype=torch.float32)
        lse = hidden.new_empty(n, dtype=torch.float32)
        h = hidden.to(weight.dtype)
        for s in range(0, n, TOKEN_CHUNK):
            e = min(s + TOKEN_CHUNK, n)
            z = torch.nn.functional.linear(h[s:e], weight, bias).float()
            if inv_t != 1.0:
                z.mul_(inv_t)
            lz = torch.logsumexp(z, dim=-1)
            lse[s:e] = lz
            logps[s:e] = z.gather(-1, targets[s:e, None]).squeeze(-1) - lz
            p = torch.exp(z - lz[:, None])
            entropy[s:e] = lz - (p * z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.inv_t, ctx.entropy_grad = inv_t, entropy_grad
        if not entropy_grad:
            ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, grad_entropy):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        inv_t = ctx.inv_t
        if not ctx.entropy_grad:
            grad_entropy = None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if (need_b and bias is not None) else None
        h = hidden.to(weight.dtype)
        n = hidden.shape[0]
        for s in range(0, n, TOKEN_CHUNK):
            e = min(s + TOKEN_CHUNK, n)
            z = torch.nn.functional.linear(h[s:e], weight, bias).float()
            if inv_t != 1.0:
                z.mul_(inv_t)
            logp = z - lse[s:e, None]
            p = torch.exp(logp)
            dz = torch.zeros_like(z)
            if grad_logps is not None:
                g = grad_logps[s:e].float()
                dz.sub_(p * g[:, None])
                dz.scatter_add_(-1, targets[s:e, None], g[:, None])
            if grad_entropy is not None:
                # d entropy / dz_j = -p_j (log p_j + entropy)
                dz.sub_(grad_entropy[s:e].float()[:, None] * p * (logp + entropy[s:e, None]))
            if inv_t != 1.0:
                dz.mul_(inv_t)
            dz = dz.to(weight.dtype)
            if grad_h is not None:
                grad_h[s:e] = (dz @ weight).to(hidden.dtype)
            if grad_w is not None:
                grad_w.add_(dz.t() @ h[s:e])
            if grad_b is not None:
                grad_b.add_(dz.float().sum(0))
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None)


@dataclass(frozen=True)
class LeanRequest:
    """What the patched forward computes: log-probs of the last `keep` tokens of each row."""

    keep: int
    temperature: float = 1.0
    entropy_grad: bool = False


def supported(model) -> bool:
    """Plain causal LMs: a `base_model` backbone and an output embedding, without logit soft-capping or
    scaling (those go through TRL's own path)."""
    config = model.config.get_text_config()
    scaled = any(getattr(config, k, None) not in (None, 1.0) for k in
                 ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
    return (not scaled and model.get_output_embeddings() is not None and hasattr(model, "base_model")
            and model.config.get_text_config() is model.config)


def _inner(model):
    """The HF model under DDP / DeepSpeed (`.module`) and PEFT (`get_base_model()`) wrappers."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def installed(model) -> bool:
    """Whether `model` (possibly wrapped) takes `rayzero_lean=` requests."""
    return bool(getattr(_inner(model), "_rayzero_lean", False))


def install(model) -> bool:
    """Adds `rayzero_lean=LeanRequest(...)` to `model.forward` (keeping whatever forward it has, e.g. TRL's
    fused head, for every other call). Returns False (and leaves the model alone) when not `supported`."""
    model = _inner(model)
    if getattr(model, "_rayzero_lean", False):
        return True
    if not supported(model):
        return False
    inner = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, rayzero_lean: LeanRequest | None = None, **kwargs):
        if rayzero_lean is None:
            return inner(*args, **kwargs)
        return _lean_forward(self, rayzero_lean, **kwargs)

    model.forward = types.MethodType(forward, model)
    model._rayzero_lean = True
    return True


def _eager_is_faster(model, rows: int, width: int) -> bool:
    """PyTorch's CPU flash-attention backward is several times slower in bf16 than in fp32 (and than the
    bf16 matmuls of eager attention); eager attention keeps (rows, heads, width, width) probabilities per
    layer for backward, so it is used only while those fit in `EAGER_BUDGET` bytes."""
    config = model.config
    weight = model.get_output_embeddings().weight
    if config._attn_implementation != "sdpa" or weight.device.type != "cpu" or weight.dtype != torch.bfloat16:
        return False
    heads = getattr(config, "num_attention_heads", 1)
    return rows * heads * width * width * 6 * config.num_hidden_layers <= EAGER_BUDGET


EAGER_BUDGET = 2 << 30


def _lean_forward(model, req: LeanRequest, *, input_ids, attention_mask, position_ids=None, **kwargs):
    kwargs = {k: v for k, v in kwargs.items()
              if v is not None and k not in ("labels", "return_dict", "output_attentions", "output_hidden_states")}
    kwargs["use_cache"] = False
    attn = model.config._attn_implementation
    if _eager_is_faster(model, *input_ids.shape):
        model.config._attn_implementation = "eager"
    try:
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  **kwargs).last_hidden_state
    finally:
        model.config._attn_implementation = attn
    k = req.keep
    # The hidden state at position t predicts token t+1: completion token j (column L-k+j) comes from L-k+j-1.
    h = hidden[:, -k - 1:-1]
    targets = input_ids[:, -k:]
    valid = attention_mask[:, -k:].bool()
    # Under ZeRO-3 the head's weight is partitioned (empty) outside a gather. This read happens inside the
    # model's forward (the DeepSpeed engine called it), where DeepSpeed's parameter getter gathers a partitioned
    # weight and registers it as an external parameter of the module being run, so it is whole here and is
    # gathered again for this function's backward (tests/unit/test_zero3_lean_loss.py, threshold 0). Reading it
    # outside the forward would need deepspeed.zero.GatheredParameters (TRL's maybe_gather_lm_head_ctx).
    head = model.get_output_embeddings()
    logps, entropy = SelectedLogProbs.apply(h[valid], head.weight, head.bias, targets[valid], req.temperature,
                                            req.entropy_grad)
    # masked_scatter keeps the result connected to the graph even when no position is valid
    out_lp = logps.new_zeros(valid.shape).masked_scatter(valid, logps)
    out_ent = entropy.new_zeros(valid.shape).masked_scatter(valid, entropy)
    return out_lp, out_ent


def pick_buckets(sorted_lengths: list[int], most: int, cost_per_bucket: float = 0.05) -> int:
    """How many length-sorted groups (1..`most`) to run: the fewest whose padded area (rows x widest row,
    summed over groups) is within `cost_per_bucket` per extra group of the best. Splitting a batch whose
    rows are about as long as each other only makes the matmuls smaller."""
    n = len(sorted_lengths)
    most = max(1, min(most, n))

    def area(k: int) -> int:
        bounds = [round(i * n / k) for i in range(k + 1)]
        return sum((hi - lo) * sorted_lengths[hi - 1] for lo, hi in zip(bounds, bounds[1:]) if hi > lo)

    costs = {k: area(k) * (1 + cost_per_bucket * (k - 1)) for k in range(1, most + 1)}
    return min(costs, key=lambda k: (costs[k], k))


def _same_on_every_rank(buckets: int, rows: int, device: torch.device) -> int:
    """Data-parallel ranks must run the same number of forwards (DDP syncs buffers and gradients per
    forward/backward, ZeRO-3 gathers weights): the most buckets any rank wants, but never more than the
    fewest rows any rank has (no rank may get an empty group). Alone, `buckets` as it is."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return buckets
    agreed = torch.tensor([buckets, -rows], device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return max(1, min(int(agreed[0]), -int(agreed[1])))


def token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int, *,
                temperature: float = 1.0, entropy_grad: bool = False, buckets: int = 1,
                autocast=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, logits_to_keep) log-probs and entropies of the last `logits_to_keep` tokens of every row
    (prompt left-padded, completion right-padded, as TRL lays them out); 0 at padding.

    `model` is what TRL calls (possibly wrapped); its unwrapped model must have been `install`ed.
    `buckets` > 1 splits the rows, sorted by length, into up to that many groups (`pick_buckets`), each
    trimmed of the columns that are padding for all its rows. `autocast` is a context manager factory (TRL's accelerator.autocast)."""
    import contextlib

    b, width = input_ids.shape
    prompt_width = width - logits_to_keep
    mask = attention_mask.bool()
    starts = torch.where(mask.any(1), mask.int().argmax(1), torch.full_like(mask[:, 0], width, dtype=torch.long))
    ends = width - mask.flip(1).int().argmax(1)  # one past the last real token
    ends = torch.where(mask.any(1), ends, torch.full_like(ends, prompt_width))
    order = torch.argsort(ends - starts, stable=True)
    buckets = _same_on_every_rank(pick_buckets((ends - starts)[order].tolist(), buckets), b, input_ids.device)
    if buckets == 1:
        order = torch.arange(b, device=input_ids.device)
    pieces_lp, pieces_ent = [], []
    ctx = autocast or contextlib.nullcontext
    for chunk in torch.tensor_split(order, buckets):
        if chunk.numel() == 0:
            continue
        lo = int(starts[chunk].min().clamp(max=prompt_width))
        hi = max(int(ends[chunk].max()), prompt_width + 1)
        ids, am = input_ids[chunk, lo:hi], attention_mask[chunk, lo:hi]
        pos = (am.cumsum(-1) - 1).clamp(min=0)
        keep = hi - prompt_width
        with ctx():
            lp, ent = model(input_ids=ids, attention_mask=am, position_ids=pos,
                            rayzero_lean=LeanRequest(keep, temperature, entropy_grad))
        pad = logits_to_keep - keep
        if pad:
            lp = torch.nn.functional.pad(lp, (0, pad))
            ent = torch.nn.functional.pad(ent, (0, pad))
        pieces_lp.append(lp)
        pieces_ent.append(ent)
    lp, ent = torch.cat(pieces_lp), torch.cat(pieces_ent)
    if buckets > 1:
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(b, device=order.device)
        lp, ent = lp[inverse], ent[inverse]
    return lp, ent
