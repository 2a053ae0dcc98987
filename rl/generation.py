"""Batched generation for evaluation and trace sampling: text in, text out, through `rl.decoding.sample`
(preallocated KV cache, finished rows dropped), in bf16 where bf16 matmuls are native (`dtype="auto"`)."""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch


def decoding_model(model, dtype: str | torch.dtype = "auto"):
    """`model` itself when its weights are already in `dtype` ("auto": bf16 where bf16 matmuls are native on the
    model's device, else the model's own dtype), else a copy cast to it (the caller's model is left as is)."""
    from rl.precision import bf16_native

    current = next(model.parameters()).dtype
    if dtype == "auto":
        want = torch.bfloat16 if current == torch.float32 and bf16_native(next(model.parameters()).device) else current
    else:
        from rl.modeling import resolve_dtype

        want = resolve_dtype(dtype)
    if want == current:
        return model
    return copy.deepcopy(model).to(want)


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], *, num_samples: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 64, batch_size: int = 128, seed: int | None = None,
             on_batch: Callable[[int], None] | None = None, dtype: str | torch.dtype = "auto",
             tools=None, tool_log: list | None = None) -> list[list[str]]:
    """`num_samples` completions for each prompt (greedy when temperature == 0), decoded in `dtype` (see
    `decoding_model`; "float32" reproduces fp32 decoding exactly).

    Returns a list (one per prompt) of lists of completion strings, in prompt order. Inputs go to the
    model's device, so a model on CUDA generates there.

    `tools` = (execute, max_calls): completions may call the tool (rl.tools protocol); each returned
    completion is then the whole trajectory (calls, outputs, answer), and `tool_log` gets one Trajectory per
    completion (calls and failures, for the report).
    """
    from rl.decoding import sample
    from rl.modeling import eos_token_ids

    if seed is not None:
        torch.manual_seed(seed)
    model = decoding_model(model, dtype)
    flat = [p for p in prompts for _ in range(num_samples)]
    eos = eos_token_ids(model, tokenizer)
    out: list[str] = []
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        # Tokenized as TRL tokenizes prompts for training: with the tokenizer's special tokens (e.g. a BOS it adds).
        ids = [tokenizer(p)["input_ids"] for p in chunk]
        settings = dict(eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id, temperature=temperature or 1.0,
                        greedy=temperature <= 0, logprobs=False)
        if tools is None:
            done, _ = sample(model, ids, max_new_tokens=max_new_tokens, **settings)
        else:
            done = _with_tools(model, tokenizer, ids, tools, max_new_tokens, settings, tool_log)
        out.extend(tokenizer.batch_decode(done, skip_special_tokens=True))
        if on_batch:
            on_batch(len(chunk))
    return [out[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def _with_tools(model, tokenizer, ids, tools, max_new_tokens: int, settings: dict, tool_log: list | None):
    from rl.decoding import sample
    from rl.tools import run_tool_loop

    execute, max_calls = tools

    def step(contexts, max_new, stop, on_finish):
        return sample(model, contexts, max_new_tokens=max_new, stop_sequences=stop, on_finish=on_finish, **settings)

    trajs = run_tool_loop(step, ids, execute=execute, encode=lambda s: tokenizer(s, add_special_tokens=False)["input_ids"],
                          decode=lambda t: tokenizer.decode(t, skip_special_tokens=True),
                          eos_token_ids=settings["eos_token_ids"], max_completion_length=max_new_tokens,
                          max_calls=max_calls)
    if tool_log is not None:
        tool_log.extend(trajs)
    return [t.ids for t in trajs]
