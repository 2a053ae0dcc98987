"""Tool-calling rollouts (the protocol in `rl.tools`) in the two places rayzero generates for GRPO:

- in the learner: `LearnerToolRollouts` is TRL's `rollout_func`, sampling with the trainer's own policy through
  `rl.decoding.sample` (stop at a call's closing tag, run the call, go on);
- in the rollout pool: `ToolEngine` wraps any engine (`rl.rollout.HFEngine`, `rl.vllm_engine.VLLMEngine`) inside
  a rollout actor, so the sandbox runs where the samples are drawn; `PoolRollouts` forwards its mask and counts.

Both hand TRL `env_mask` (1 = the model's token), which TRL applies to the loss, the KL/entropy terms, the
importance ratios and the token count, and per-sample `tool_calls`/`tool_errors`/`tool_timeouts` columns for
the reward functions. The executor is passed in (a zero-argument factory for the actor): rl never imports the
sandbox (`rewards.tools.PythonTool`); pipelines join the two.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable

from rl import trl_compat as compat
from rl.tools import CALL_CLOSE, Execute, ToolParams, rollout_fields, run_tool_loop, summarize


def _codec(tokenizer):
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    return encode, decode


class LearnerToolRollouts:
    """TRL's `rollout_func` for in-learner generation with tool calls (GRPO with `grpo.tools.enabled`)."""

    def __init__(self, execute: Execute, params: ToolParams):
        self.execute, self.params = execute, params
        self.pool = ThreadPoolExecutor(max_workers=params.workers, thread_name_prefix="tool-call")

    def __call__(self, prompts: list, trainer) -> dict:
        from rl.decoding import sample

        settings = compat.plain_sampling(trainer)
        if settings is None:
            raise ValueError("grpo.tools needs plain sampling in the learner (no vLLM, min_p, repetition penalty)")
        tok = compat.tokenizer(trainer)
        encode, decode = _codec(tok)
        prompt_ids = compat.tokenize_prompts(trainer, prompts)
        budget = settings.pop("max_new_tokens")
        with compat.model_for_generation(trainer) as model:
            def generate(contexts, max_new_tokens, stop, on_finish):
                return sample(model, contexts, pad_token_id=tok.pad_token_id, max_new_tokens=max_new_tokens,
                              stop_sequences=stop, on_finish=on_finish, **settings)

            trajs = run_tool_loop(generate, prompt_ids, execute=self.execute, encode=encode, decode=decode,
                                  eos_token_ids=settings["eos_token_ids"], max_completion_length=budget,
                                  max_calls=self.params.max_calls, pool=self.pool)
        for name, value in summarize(trajs).items():
            compat.log_metric(trainer, f"tools/{name}", value)
        return rollout_fields(trajs)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class ToolEngine:
    """An engine that runs the tool protocol: `generate(prompts, sp, seed)` returns (completion_ids, logprobs,
    extras) with extras[i] = {"env_mask", "tool_calls", "tool_errors", "tool_timeouts"} (what
    `cluster.rollout.RolloutWorker` passes back beside the ids). Weight loading goes to the wrapped engine."""

    def __init__(self, engine, tokenizer, execute: Execute, params: ToolParams):
        self.engine, self.execute, self.params = engine, execute, params
        self.encode, self.decode = _codec(tokenizer)
        self.pool = ThreadPoolExecutor(max_workers=params.workers, thread_name_prefix="tool-call")

    def __getattr__(self, name):  # load_state_dict, state_dict, receive_weights, device, ...
        return getattr(self.engine, name)

    def generate(self, prompts: list[list[int]], sp, seed: int | None = None):
        stop_text = (CALL_CLOSE,)

        def generate(contexts, max_new_tokens, stop, on_finish):
            round_sp = replace(sp, max_new_tokens=max_new_tokens, stop=tuple(tuple(q) for q in stop),
                               stop_text=stop_text if any(len(q) > 1 for q in stop) else ())
            return self.engine.generate(contexts, round_sp, seed=seed, on_finish=on_finish)

        eos = getattr(self.engine, "eos", None) or []
        trajs = run_tool_loop(generate, prompts, execute=self.execute, encode=self.encode, decode=self.decode,
                              eos_token_ids=eos, max_completion_length=sp.max_new_tokens,
                              max_calls=self.params.max_calls, pool=self.pool)
        fields = rollout_fields(trajs)
        extras = [{"env_mask": m, "tool_calls": c, "tool_errors": e, "tool_timeouts": t} for m, c, e, t in
                  zip(fields["env_mask"], fields["tool_calls"], fields["tool_errors"], fields["tool_timeouts"])]
        return fields["completion_ids"], fields["logprobs"], extras


def tool_engine_factory(engine_factory: Callable, tokenizer_dir: str, tool_factory: Callable[[], Execute],
                        params: ToolParams):
    """A picklable zero-argument factory: the engine `engine_factory` builds, wrapped in `ToolEngine` with the
    tokenizer from `tokenizer_dir` and the executor `tool_factory()` (both built inside the actor)."""
    return functools.partial(_build_tool_engine, engine_factory, str(tokenizer_dir), tool_factory, params)


def _build_tool_engine(engine_factory, tokenizer_dir, tool_factory, params):
    from transformers import AutoTokenizer

    return ToolEngine(engine_factory(), AutoTokenizer.from_pretrained(tokenizer_dir), tool_factory(), params)
