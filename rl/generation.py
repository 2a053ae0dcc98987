"""Batched generation with Hugging Face `generate` (KV cache, left padding)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, num_samples: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 64, batch_size: int = 128, seed: int | None = None,
             on_batch: Callable[[int], None] | None = None) -> list[list[str]]:
    """`num_samples` completions for each prompt (greedy when temperature == 0).

    Returns a list (one per prompt) of lists of completion strings, in prompt order. Inputs go to the
    model's device, so a model on CUDA generates there.
    """
    if seed is not None:
        torch.manual_seed(seed)
    model.eval()
    flat = [p for p in prompts for _ in range(num_samples)]
    out: list[str] = []
    sample = temperature > 0
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        gen = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=None,
            top_k=0 if sample else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        out.extend(tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
        if on_batch:
            on_batch(len(chunk))
    return [out[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]
