"""Rollout generation engines and the bridge to TRL's `rollout_func` hook (no cluster plumbing here:
`cluster.rollout` puts engines into Ray actors).

An engine turns token-id prompts into sampled completions plus the log-probability of every sampled
token under the sampling distribution (logits / temperature, after top-k/top-p), which TRL uses as
the behaviour policy's log-probs. Engines:

- `hf`: Hugging Face `generate` with a KV cache, left-padded batches, always available.
- `vllm`: vLLM's `LLM.generate`, when vLLM is importable (GPU machines); asking for it elsewhere
  fails with a message that says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def check_engine(name: str) -> None:
    """Fails early, on the driver, for an engine that cannot run here."""
    if name not in ENGINES:
        raise ValueError(f"rollout.engine={name!r} is not one of {list(ENGINES)}")
    if name == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise RuntimeError("rollout.engine=vllm but vLLM is not installed here (it needs a CUDA GPU and "
                               "`pip install vllm`); use rollout.engine=hf") from e


class HFEngine:
    """Batched sampling with `model.generate` (KV cache on)."""

    def __init__(self, model, pad_token_id: int, eos_token_ids: list[int], batch_size: int = 256):
        self.model = model.eval()
        self.pad, self.eos, self.batch_size = pad_token_id, list(eos_token_ids), batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state, strict=True)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sp: SamplingParams, seed: int | None = None):
        """prompts: N token-id lists. Returns (completion_ids, logprobs): N lists each, a completion
        ends at and includes its first EOS (or stops at max_new_tokens)."""
        if seed is not None:
            torch.manual_seed(seed)
        ids, lps = [], []
        for i in range(0, len(prompts), self.batch_size):
            c, l = self._batch(prompts[i:i + self.batch_size], sp)
            ids += c
            lps += l
        return ids, lps

    def _batch(self, prompts: list[list[int]], sp: SamplingParams):
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for j, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            input_ids[j, width - len(p):] = torch.tensor(p)
            mask[j, width - len(p):] = 1
        out = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), do_sample=True,
            temperature=sp.temperature, top_k=sp.top_k or None, top_p=sp.top_p, max_new_tokens=sp.max_new_tokens,
            pad_token_id=self.pad, eos_token_id=self.eos, output_scores=True, return_dict_in_generate=True,
            use_cache=True)
        new = out.sequences[:, width:].cpu()
        # `scores` are the processed logits the sampler drew from (temperature, top-k/p applied).
        logp = torch.stack(out.scores, dim=1).float().log_softmax(-1).cpu()
        token_lp = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        completions, logprobs = [], []
        for row, lp in zip(new.tolist(), token_lp.tolist()):
            n = next((k + 1 for k, t in enumerate(row) if t in self.eos), len(row))
            completions.append(row[:n])
            logprobs.append(lp[:n])
        return completions, logprobs


def hf_engine_factory(model_dir: str, use_gpu: bool = False, batch_size: int = 256):
    """A picklable zero-argument factory that builds an `HFEngine` inside a rollout actor."""
    return functools.partial(_build_hf_engine, str(model_dir), use_gpu, batch_size)


def _build_hf_engine(model_dir: str, use_gpu: bool, batch_size: int) -> "HFEngine":
    from rl.modeling import load_policy

    model, tok = load_policy(model_dir)
    if use_gpu:
        model = model.to("cuda")
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id]
    return HFEngine(model, tok.pad_token_id, eos, batch_size=batch_size)


def engine_factory(name: str, model_dir: str, use_gpu: bool = False, batch_size: int = 256):
    check_engine(name)
    if name == "vllm":
        return functools.partial(VLLMEngine, str(model_dir))
    return hf_engine_factory(model_dir, use_gpu, batch_size)


class VLLMEngine:
    """vLLM generation for GPU rollout workers (weights loaded from a HF folder, updated in place)."""

    def __init__(self, model_dir: str, gpu_memory_utilization: float = 0.4, seed: int = 0):
        check_engine("vllm")
        from vllm import LLM

        self.llm = LLM(model=model_dir, gpu_memory_utilization=gpu_memory_utilization, seed=seed,
                       enable_prefix_caching=True)

    def load_state_dict(self, state: dict) -> None:
        runner = self.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.model.load_weights(state.items())

    def generate(self, prompts: list[list[int]], sp: SamplingParams, seed: int | None = None):
        from vllm import SamplingParams as VSP

        params = VSP(max_tokens=sp.max_new_tokens, temperature=sp.temperature, top_k=sp.top_k or -1,
                     top_p=sp.top_p, logprobs=0, seed=seed)
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        ids = [list(o.outputs[0].token_ids) for o in outs]
        lps = [[next(iter(d.values())).logprob for d in o.outputs[0].logprobs] for o in outs]
        return ids, lps


def make_rollout_func(pool, sync_every: int = 1, seed: int = 0):
    """TRL's `rollout_func` hook, generating on `pool` (a `cluster.rollout.RolloutPool`).

    Before generating, when `sync_every` optimizer steps passed since the last sync, the learner's
    weights go to every rollout worker (all ranks take part in gathering them, which ZeRO-3 needs; rank
    0 pushes; everyone waits so no rank samples from stale weights). Sampling settings are the trainer's.
    Logs `rollout/generate_s`, `rollout/sync_s` and `rollout/policy_lag` (optimizer steps between the
    weights that sampled and the learner's: 0 when every step syncs)."""
    import time

    synced = {"step": 0, "calls": 0}

    def rollout_func(prompts: list, trainer) -> dict:
        step, acc = trainer.state.global_step, trainer.accelerator
        metrics = trainer._metrics["train"]
        if step - synced["step"] >= sync_every:
            state = acc.get_state_dict(trainer.model)
            if acc.is_main_process:
                metrics["rollout/sync_s"].append(pool.sync_weights(
                    {k: v.detach().cpu() for k, v in state.items()}, step))
            acc.wait_for_everyone()
            synced["step"] = step
        prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
        sp = SamplingParams(max_new_tokens=trainer.max_completion_length, temperature=trainer.temperature,
                            top_k=trainer.top_k or 0, top_p=trainer.top_p)
        start = time.perf_counter()
        synced["calls"] += 1
        out = pool.generate(prompt_ids, sp, seed=(seed * 100003 + synced["calls"]) * 64 + acc.process_index)
        metrics["rollout/generate_s"].append(time.perf_counter() - start)
        metrics["rollout/policy_lag"].append(float(step - min(out["versions"])))
        return {"prompt_ids": prompt_ids, "completion_ids": out["completion_ids"], "logprobs": out["logprobs"]}

    return rollout_func
