"""A lean batched sampler for causal LMs: the decode loop `generate` would run, without its per-step overhead.

`sample(model, prompts, ...)` draws completions token by token from exactly the distribution Hugging Face's
`generate(do_sample=True)` draws from with the same settings (logits / temperature, then top-k, then top-p,
then softmax and `torch.multinomial`; `greedy=True` takes the argmax), and records the log-probability of
each drawn token under that processed distribution (what GRPO uses as the behaviour policy). What it does
differently, all of it outside the distribution:

- the KV cache is allocated once for the whole generation (`PreallocatedCache`: prompt + `max_new_tokens`
  positions per row, written in place; `DynamicCache` re-concatenates every layer's cache at every step);
- rows that have produced an end-of-sequence token leave the batch (`drop_finished`): the cache, mask and
  positions of the rows still running are compacted once enough rows finished, so later steps compute
  only live rows; the loop stops when every row is done;
- only the last position's logits are computed (`logits_to_keep=1`), one (rows, vocab) step at a time;
- single-token steps of SDPA models use `_decode_attention` (two small matmuls over the cache, grouped
  query heads sharing their K/V) instead of PyTorch's CPU flash-attention kernel.

Sampled tokens differ from `generate`'s for the same seed once rows leave the batch (fewer random numbers
are drawn per step), but each step's distribution is the same; tests/unit/test_rl_decoding.py checks the
recorded log-probs against teacher forcing and the sample frequencies against the exact distribution.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Sequence

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class _PreallocatedLayer(CacheLayerMixin):
    """One attention layer's K/V for every row: (rows, kv_heads, capacity, head_dim), filled left to right.
    Its own methods replace the mixin's; the mixin makes it a layer type transformers' `Cache` accepts."""

    is_sliding = False
    is_compileable = False

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.keys = self.values = None
        self.is_initialized = False

    # --- transformers' CacheLayerMixin interface (the parts attention and mask creation use) ---
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = key_states.new_empty((b, h, self.capacity, d))
        self.values = value_states.new_empty((b, h, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        end = self.length + n
        if end > self.capacity:
            raise RuntimeError(f"PreallocatedCache holds {self.capacity} positions, asked for {end}")
        self.keys[:, :, self.length:end] = key_states
        self.values[:, :, self.length:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            # Only the filled positions are copied; the rest of the new buffer stays unwritten.
            keys = self.keys.new_empty((len(indices), *self.keys.shape[1:]))
            values = self.values.new_empty((len(indices), *self.values.shape[1:]))
            keys[:, :, :self.length] = self.keys[indices, :, :self.length]
            values[:, :, :self.length] = self.values[indices, :, :self.length]
            self.keys, self.values = keys, values


DECODE_ATTENTION = "rayzero_decode"


def _decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention for one new token per row: grouped-query attention as two small batched matmuls over the
    cache's (rows, kv_heads, length, head_dim) views, without repeating K/V per query head. PyTorch's CPU
    flash-attention kernel spends most of a bf16 decode step on this shape (docs/perf.md). Prompts
    (several query positions) go to SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    b, heads, q, d = query.shape
    if q != 1 or dropout or kwargs.get("softcap") is not None or kwargs.get("sliding_window") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else d ** -0.5
    grouped = query.reshape(b, kv_heads, heads // kv_heads, d)  # query head h attends with kv head h // groups
    scores = torch.matmul(grouped, key.transpose(-1, -2)).float().mul_(scale)  # (b, kv_heads, groups, length)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores.masked_fill_(~attention_mask[:, :, -1:, :scores.shape[-1]], float("-inf"))
        else:
            scores.add_(attention_mask[:, :, -1:, :scores.shape[-1]])
    probs = scores.softmax(-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (b, kv_heads, groups, d)
    return out.reshape(b, 1, heads, d), None


@functools.cache
def _register_decode_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DECODE_ATTENTION, _decode_attention)
    AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


@contextlib.contextmanager
def decode_attention(model):
    """Within: a model running PyTorch SDPA attention uses `_decode_attention` for single-token steps."""
    config = model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    _register_decode_attention()
    config._attn_implementation = DECODE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


def make_cache(model, capacity: int):
    """A cache allocated once for `capacity` positions per row, or None (= the model's default cache) for
    models whose layers are not all plain full attention (sliding windows, linear attention, ...)."""
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers
    if any(t != "full_attention" for t in layer_types) or getattr(config, "sliding_window", None):
        return None
    return Cache(layers=[_PreallocatedLayer(capacity) for _ in layer_types])


def process_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(rows, vocab) float32 scores as `generate`'s warpers leave them: / temperature, top-k, then top-p
    (transformers' TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, min_tokens_to_keep=1)."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    if top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = False  # keep at least one token
        remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, -float("inf"))
    return logits


def _left_padded(prompts: Sequence[Sequence[int]], width: int, max_new_tokens: int, pad_token_id: int,
                 device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (rows, width), attention mask (rows, width + max_new_tokens)): every prompt ends where generation
    starts; the mask's generation columns are set as tokens are drawn."""
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width + max_new_tokens), dtype=torch.long)
    for j, p in enumerate(prompts):
        ids[j, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[j, width - len(p):width] = 1
    return ids.to(device), mask.to(device)


def _draw(scores: torch.Tensor, greedy: bool, temperature: float, top_k: int, top_p: float, logprobs: bool,
          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(one token per row, the processed distribution's log-probs or None) from float32 (rows, vocab) logits."""
    if greedy:
        return scores.argmax(-1), (scores.log_softmax(-1) if logprobs else None)
    scores = process_logits(scores, temperature, top_k, top_p)
    tokens = torch.multinomial(scores.softmax(-1), 1, generator=generator).squeeze(1)
    return tokens, (scores.log_softmax(-1) if logprobs else None)


@torch.no_grad()
def sample(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_token_ids: Sequence[int],
           pad_token_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
           drop_finished: bool = True, compact_fraction: float = 0.25, logprobs: bool = True,
           fast_attention: bool = True, generator: torch.Generator | None = None,
           stop_sequences: Sequence[Sequence[int]] = (), on_finish=None) -> tuple[list[list[int]], list[list[float]] | None]:
    """Completions for token-id `prompts` (one batch, all rows at once).

    Returns (completion_ids, logprobs): per prompt, the sampled ids up to and including the first EOS (or
    `max_new_tokens` ids), and the log-prob of each under the processed distribution (None when
    `logprobs=False`; under greedy decoding they are the log-probs of the argmax tokens). Finished rows are
    compacted out once at least `compact_fraction` of the running rows are done. `fast_attention`: single-token
    steps of an SDPA model use `_decode_attention`. `stop_sequences`: token-id sequences that also end a row once
    its completion ends with one (a tool call's closing tag, rl.tools); `on_finish(i, ids)` is called as soon as
    row i ends, with its completion ids (so a tool call can start while the other rows decode).

    Long because the decode loop's state (running rows, mask, positions, cache, done flags) lives in locals
    that compaction shrinks together; in parts, each would take and return all of it."""
    device = next(model.parameters()).device
    n = len(prompts)
    if n == 0:
        return [], ([] if logprobs else None)
    width = max(len(p) for p in prompts)
    ids, mask = _left_padded(prompts, width, max_new_tokens, pad_token_id, device)
    positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device)
    stops = [torch.tensor(list(q), dtype=torch.long, device=device) for q in stop_sequences if len(q)]
    cache = make_cache(model, width + max_new_tokens)

    out_tokens = torch.full((n, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    out_lps = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.full((n,), max_new_tokens, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)  # original index of each running row
    done = torch.zeros(n, dtype=torch.bool, device=device)  # per running row
    was_training = model.training
    model.eval()
    attention = decode_attention(model) if fast_attention else contextlib.nullcontext()
    try:
        attention.__enter__()
        out = model(input_ids=ids, attention_mask=mask[:, :width], position_ids=positions, past_key_values=cache,
                    use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        next_pos = positions[:, -1] + 1
        for t in range(max_new_tokens):
            tokens, lp_all = _draw(out.logits[:, -1].float(), greedy, temperature, top_k, top_p, logprobs, generator)
            live = ~done
            out_tokens[rows[live], t] = tokens[live]
            if lp_all is not None:
                out_lps[rows[live], t] = lp_all.gather(-1, tokens[:, None]).squeeze(1)[live]
            finished_now = live & torch.isin(tokens, eos)
            for q in stops:  # the row's last len(q) tokens equal the stop sequence
                if t + 1 >= len(q):
                    finished_now |= live & (out_tokens[rows, t + 1 - len(q):t + 1] == q).all(-1)
            lengths[rows[finished_now]] = t + 1
            if on_finish is not None and bool(finished_now.any()):
                for i in rows[finished_now].tolist():
                    on_finish(i, out_tokens[i, :t + 1].tolist())
            done |= finished_now
            if t + 1 == max_new_tokens or bool(done.all()):
                break
            if drop_finished and int(done.sum()) >= max(1, int(compact_fraction * len(rows))):
                keep = (~done).nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                rows, mask, next_pos, tokens = rows[keep], mask[keep], next_pos[keep], tokens[keep]
                done = done[keep]
            mask[:, width + t] = 1
            out = model(input_ids=tokens[:, None], attention_mask=mask[:, :width + t + 1],
                        position_ids=next_pos[:, None], past_key_values=cache, use_cache=True)
            next_pos = next_pos + 1
    finally:
        attention.__exit__(None, None, None)
        model.train(was_training)
    lengths, out_tokens, out_lps = lengths.tolist(), out_tokens.cpu(), out_lps.cpu()
    completions = [out_tokens[i, :lengths[i]].tolist() for i in range(n)]
    lps = [out_lps[i, :lengths[i]].tolist() for i in range(n)] if logprobs else None
    return completions, lps

