"""Rollout generation engines and the bridge to TRL's `rollout_func` hook (no cluster plumbing here:
`cluster.rollout` puts engines into Ray actors).

An engine turns token-id prompts into sampled completions plus the log-probability of every sampled
token under the sampling distribution (logits / temperature, after top-k/top-p), which TRL uses as
the behaviour policy's log-probs. Engines:

- `hf`: a Hugging Face model in-process, always available: `rl.decoding.sample` (preallocated KV cache,
  finished rows dropped) by default, or `model.generate` (`decoder="generate"`); weights in bf16 where bf16
  matmuls are native (`dtype="auto"`).
- `vllm`: vLLM's `LLM.generate` through its public API (`rl.vllm_engine`), when vLLM is importable (GPU
  machines); asking for it elsewhere fails with a one-line message that says so.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from rl import trl_compat as compat
from rl.lora import is_peft, merged_state_dict
# vLLM itself is imported only when an engine is built
from rl.vllm_engine import VLLMEngine, VLLMParams, require_vllm

ENGINES = ("hf", "vllm")
DECODERS = ("rayzero", "generate")  # the hf engine's decode loop


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # Tool calls (rl.tools): a row also ends once it ends with one of these token sequences / strings (vLLM
    # matches the strings on its detokenised output; the hf engine matches the token ids).
    stop: tuple[tuple[int, ...], ...] = ()
    stop_text: tuple[str, ...] = ()


def check_engine(name: str) -> None:
    """Fails early, on the driver, for an engine that cannot run here."""
    if name not in ENGINES:
        raise ValueError(f"rollout.engine={name!r} is not one of {list(ENGINES)}")
    if name == "vllm":
        require_vllm()


class HFEngine:
    """Batched sampling from a Hugging Face causal LM: `decoder="rayzero"` (rl.decoding.sample) or
    `"generate"` (`model.generate` with the same logits processing); both record the sampled tokens' log-probs
    under the processed distribution."""

    def __init__(self, model, pad_token_id: int, eos_token_ids: list[int], batch_size: int = 256,
                 decoder: str = "rayzero"):
        if decoder not in DECODERS:
            raise ValueError(f"decoder={decoder!r} is not one of {list(DECODERS)}")
        self.model = model.eval()
        self.pad, self.eos, self.batch_size, self.decoder = pad_token_id, list(eos_token_ids), batch_size, decoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state, strict=True)

    def state_dict(self) -> dict:
        """The live parameters: a collective sync receives straight into them."""
        return self.model.state_dict()

    @property
    def weights_dtype(self) -> str:
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @torch.no_grad()
    def score(self, tokens: list[int]) -> list[float]:
        """Log-probs of tokens[1:] given their prefix (temperature 1): the post-sync probe."""
        ids = torch.tensor([tokens], device=self.device)
        logps = self.model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        return logps.gather(-1, ids[0, 1:, None]).squeeze(-1).tolist()

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sp: SamplingParams, seed: int | None = None, on_finish=None):
        """prompts: N token-id lists. Returns (completion_ids, logprobs): N lists each, a completion
        ends at and includes its first EOS (or stops at max_new_tokens, or at a `sp.stop` sequence).
        `on_finish(i, ids)`: called as soon as prompt i's completion ends early (rl.decoding.sample)."""
        if seed is not None:
            torch.manual_seed(seed)
        ids, lps = [], []
        for i in range(0, len(prompts), self.batch_size):
            shifted = None if on_finish is None else (lambda j, c, off=i: on_finish(off + j, c))
            c, l = self._batch(prompts[i:i + self.batch_size], sp, shifted)
            ids += c
            lps += l
        return ids, lps

    def _batch(self, prompts: list[list[int]], sp: SamplingParams, on_finish=None):
        if self.decoder == "rayzero":
            from rl.decoding import sample

            return sample(self.model, prompts, max_new_tokens=sp.max_new_tokens, eos_token_ids=self.eos,
                          pad_token_id=self.pad, temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p,
                          stop_sequences=sp.stop, on_finish=on_finish)
        if sp.stop:
            raise ValueError("tool calls (stop sequences) need the rayzero decoder, not decoder='generate'")
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for j, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            input_ids[j, width - len(p):] = torch.tensor(p)
            mask[j, width - len(p):] = 1
        # Our own warpers, then the recorder, so it sees exactly the distribution the sampler draws from;
        # generate's own warpers are switched off (else they would run after the recorder).
        warpers = [TemperatureLogitsWarper(sp.temperature)] if sp.temperature != 1.0 else []
        warpers += [TopKLogitsWarper(sp.top_k)] if sp.top_k else []
        warpers += [TopPLogitsWarper(sp.top_p)] if sp.top_p < 1.0 else []
        recorder = _SampledLogprobs()
        seqs = self.model.generate(
            input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device), do_sample=True,
            logits_processor=LogitsProcessorList([*warpers, recorder]), temperature=1.0, top_k=0, top_p=1.0,
            min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, max_new_tokens=sp.max_new_tokens,
            pad_token_id=self.pad, eos_token_id=self.eos, use_cache=True)
        new = seqs[:, width:]
        token_lp = recorder.finish(new).cpu()
        completions, logprobs = [], []
        for row, lp in zip(new.cpu().tolist(), token_lp.tolist()):
            n = next((k + 1 for k, t in enumerate(row) if t in self.eos), len(row))
            completions.append(row[:n])
            logprobs.append(lp[:n])
        return completions, logprobs


class _SampledLogprobs:
    """A logits processor placed last: it sees the logits the sampler draws from and keeps only the
    log-prob of each sampled token. The token sampled at step t is the last input id at step t+1, so one
    step's (B, V) log-probs are held at a time, never all (B, T, V) scores (`output_scores`), which for
    thousands of tokens over a large vocabulary would not fit in memory."""

    def __init__(self):
        self.prev: torch.Tensor | None = None
        self.taken: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.taken.append(self.prev.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev = scores.float().log_softmax(-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """new_tokens: (B, T) generated ids. Returns (B, T) log-probs of them (float32)."""
        if self.prev is None:
            return torch.zeros(new_tokens.shape, dtype=torch.float32)
        self.taken.append(self.prev.gather(-1, new_tokens[:, -1:]).squeeze(-1))
        return torch.stack(self.taken, dim=1)


def hf_engine_factory(model_dir: str, use_gpu: bool = False, batch_size: int = 256, *, dtype: str = "auto",
                      attn_implementation: str = "auto", decoder: str = "rayzero"):
    """A picklable zero-argument factory that builds an `HFEngine` inside a rollout actor: weights in
    `dtype` ("auto" = bf16 where bf16 matmuls are native, else fp32) on the actor's GPU when `use_gpu`."""
    return functools.partial(_build_hf_engine, str(model_dir), use_gpu, batch_size, dtype, attn_implementation, decoder)


def _build_hf_engine(model_dir: str, use_gpu: bool, batch_size: int, dtype: str = "auto",
                     attn_implementation: str = "auto", decoder: str = "rayzero") -> "HFEngine":
    from rl.modeling import load_policy

    model, tok = load_policy(model_dir, dtype, attn_implementation=attn_implementation,
                             device="cuda" if use_gpu else None)
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos if eos is not None else tok.eos_token_id]
    return HFEngine(model, tok.pad_token_id, eos, batch_size=batch_size, decoder=decoder)


def engine_factory(name: str, model_dir: str, use_gpu: bool = False, batch_size: int = 256, *, dtype: str = "auto",
                   attn_implementation: str = "auto", vllm: VLLMParams = VLLMParams(), seed: int = 0,
                   decoder: str = "rayzero"):
    """A picklable zero-argument factory for engine `name` (`ENGINES`) serving the HF folder `model_dir`:
    `hf` takes dtype / attn_implementation / batch_size / decoder, `vllm` its `VLLMParams` (GPU only)."""
    check_engine(name)
    if name == "vllm":
        if not use_gpu:
            raise ValueError("rollout.engine=vllm needs GPUs (use_gpu=true); use rollout.engine=hf on CPU")
        return functools.partial(VLLMEngine, str(model_dir), vllm, seed)
    return hf_engine_factory(model_dir, use_gpu, batch_size, dtype=dtype, attn_implementation=attn_implementation,
                             decoder=decoder)


def engine_dtype(dtype: str, use_gpu: bool) -> torch.dtype:
    """The weight dtype an engine built with `dtype` holds (what `make_rollout_func(weight_dtype=)` must
    send for a collective sync, which receives into the engine's own tensors)."""
    from rl.modeling import resolve_dtype

    return resolve_dtype(dtype, "cuda" if use_gpu else None)


# The post-sync probe: a fixed pseudo-random token sequence (model-agnostic: ids drawn below the vocabulary
# size from a fixed seed) that the learner and every engine score after each weight sync. 24 tokens (23
# scored) cost one tiny forward on each side.
PROBE_TOKENS, PROBE_SEED = 24, 20261206
# Mean |log p_learner - log p_engine| per probe token (nats) allowed when both sides compute in that dtype;
# the coarser side decides. fp32: two fp32 implementations of one model (full forward vs KV cache, other
# attention/matmul kernels) agree to ~1e-6..1e-4 nats on these models; 1e-3 leaves 10x room. bf16 (8-bit
# mantissa, relative rounding 2^-9 per op, compounded over layers): logits carry errors of ~0.01-0.05 nats,
# and the vLLM-vs-trainer differences verl and TRL report for healthy bf16 runs are ~0.01-0.03 mean; 0.1
# leaves ~3x room and is still far below a wrongly loaded tensor (the tiny test model moves by > 0.5).
# A stale or corrupted transfer is caught exactly by the per-bucket checksums, whatever the dtype.
PROBE_TOLERANCE = {"float32": 1e-3, "float16": 0.05, "bfloat16": 0.1}


def probe_tokens(vocab_size: int) -> list[int]:
    g = torch.Generator().manual_seed(PROBE_SEED)
    return torch.randint(0, vocab_size, (PROBE_TOKENS,), generator=g).tolist()


def probe_tolerance(learner_dtype: str):
    """engine dtype name -> allowed mean |log-prob difference| against a learner computing in `learner_dtype`."""
    return lambda engine_dtype: max(PROBE_TOLERANCE.get(learner_dtype, 0.1), PROBE_TOLERANCE.get(engine_dtype, 0.1))


def learner_probe(trainer, tokens: list[int]) -> tuple[list[float], str]:
    """The learner's log-probs of tokens[1:] (temperature 1) as it trains (autocast if on), and the dtype it
    computes in. Every rank must call it: under ZeRO-3 the forward gathers parameters collectively."""
    model = trainer.model
    ids = torch.tensor([tokens], device=trainer.accelerator.device)
    with torch.no_grad(), trainer.accelerator.autocast():
        logits = model(input_ids=ids).logits[0, :-1].float()
    logps = logits.log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    dtype = "bfloat16" if trainer.args.bf16 else str(next(model.parameters()).dtype).removeprefix("torch.")
    return logps.tolist(), dtype


def make_rollout_func(pool, sync_every: int = 1, seed: int = 0, overlap: bool = False,
                      weight_dtype: torch.dtype | None = None) -> "PoolRollouts":
    return PoolRollouts(pool, sync_every=sync_every, seed=seed, overlap=overlap, weight_dtype=weight_dtype)


class PoolRollouts:
    """TRL's `rollout_func` hook, generating on `pool` (a `cluster.rollout.RolloutPool`).

    Weight sync: when `sync_every` optimizer steps passed since the last one, the learner's weights go to
    every rollout worker before the next generation (all ranks take part in gathering them, which
    ZeRO-3 needs; rank 0 pushes; everyone waits, so no rank samples from weights older than intended).

    Overlap (one-step off-policy, as in verl/OpenRLHF async modes): `rl.grpo`'s trainer reads its
    prompt batches one ahead and calls `prefetch(next_batch)` as soon as step t's batch is handed out;
    generation for step t+1 then runs on the pool while the learner trains on step t. Step t+1's samples
    come from the weights after step t-1: the policy lag is exactly one step, never more, and the
    trainer uses the rollout log-probs as the PPO "old" policy so TRL's clipped ratio corrects for it.

    Logs `rollout/generate_s` (time the learner waited for samples; with overlap also
    `rollout/prefetch_wait_s`, waiting for the in-flight batch before a sync), `rollout/sync_s` with
    `rollout/sync_mb` and `rollout/sync_buckets` (what the sync moved, in `weight_dtype`, bucketed by the
    pool), `rollout/policy_version` and `rollout/policy_lag` (optimizer steps between the weights that
    sampled and the learner's).

    Verification (when the pool verifies, `RolloutPool(verify=True)`): after each sync the pool has compared
    every bucket's checksums, and every engine scores the probe (`probe_tokens`) against the learner's own
    log-probs (`PROBE_TOLERANCE`); a mismatch raises the pool's `WeightSyncError` (one line, the run stops).
    Logs `rollout/probe_logp_diff` (the largest engine's mean |difference|) and `rollout/verify_s`."""

    def __init__(self, pool, sync_every: int = 1, seed: int = 0, overlap: bool = False,
                 weight_dtype: torch.dtype | None = None):
        self.pool, self.sync_every, self.seed, self.overlap = pool, sync_every, seed, overlap
        self.weight_dtype = weight_dtype  # floating weights are sent in the engines' dtype
        self.verify = bool(getattr(pool, "verify", False))
        self.synced_step, self.calls = 0, 0
        self._pending: list = []  # (prompts, prompt_ids, future) generated ahead of time, oldest first
        self._executor = None

    def _sync(self, trainer) -> None:
        step, acc = trainer.state.global_step, trainer.accelerator
        if step - self.synced_step < self.sync_every:
            return
        policy = acc.unwrap_model(trainer.model)
        if is_peft(policy):  # engines hold plain weights: send base + adapter, merged (rank 0 has them all)
            state = merged_state_dict(policy) if acc.is_main_process else {}
        else:
            # Under DeepSpeed the engine must be passed: ZeRO-3 gathers the shards through it (onto rank 0).
            engine = trainer.model_wrapped if getattr(trainer, "is_deepspeed_enabled", False) else trainer.model
            state = acc.get_state_dict(engine)
        if self.verify:
            probe = probe_tokens(int(policy.config.get_text_config().vocab_size))
            mine, learner_dtype = learner_probe(trainer, probe)  # every rank: a ZeRO-3 forward is collective
        if acc.is_main_process:
            # The pool casts floating weights to the engines' dtype and sends them in bounded buckets, each
            # cast only when it is sent (never a second full copy of the weights, never fp32 to bf16 engines).
            seconds = self.pool.sync_weights(state, step, dtype=self.weight_dtype)
            compat.log_metric(trainer, "rollout/sync_s", seconds)
            stats = getattr(self.pool, "last_sync", None) or {}
            if "bytes" in stats:
                compat.log_metric(trainer, "rollout/sync_mb", stats["bytes"] / 2**20)
                compat.log_metric(trainer, "rollout/sync_buckets", stats["buckets"])
            if self.verify:  # the checksums were compared inside sync_weights; now the engines' outputs
                import time

                start = time.perf_counter()
                worst = self.pool.verify_probe(probe, mine, probe_tolerance(learner_dtype))
                compat.log_metric(trainer, "rollout/probe_logp_diff", worst)
                compat.log_metric(trainer, "rollout/verify_s", time.perf_counter() - start)
        acc.wait_for_everyone()
        self.synced_step = step

    def _launch(self, prompts: list, trainer):
        prompt_ids = compat.tokenize_prompts(trainer, prompts)
        a = trainer.args
        sp = SamplingParams(max_new_tokens=a.max_completion_length, temperature=a.temperature, top_k=a.top_k or 0,
                            top_p=a.top_p)
        self.calls += 1
        seed = (self.seed * 100003 + self.calls) * 64 + trainer.accelerator.process_index
        if not self.overlap:
            return prompt_ids, _Done(self.pool.generate(prompt_ids, sp, seed=seed))
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor

            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-prefetch")
        return prompt_ids, self._executor.submit(self.pool.generate, prompt_ids, sp, seed)

    def prefetch(self, next_rows: list[dict], trainer) -> None:
        """Start generating the next step's batch now (overlap mode)."""
        if not self.overlap:  # (only the training dataloader is read ahead, so this is always training)
            return
        import time

        # A worker takes new weights only after the generation it is running; wait for it here so the
        # time shows as generation wait, not as sync.
        start = time.perf_counter()
        for _, _, future in self._pending:
            future.result()
        compat.log_metric(trainer, "rollout/prefetch_wait_s", time.perf_counter() - start)
        self._sync(trainer)
        prompts = [r["prompt"] for r in next_rows]
        self._pending = self._pending[-1:] + [(prompts, *self._launch(prompts, trainer))]

    def close(self) -> None:
        """Wait for generations still in flight (a prefetch past the last step) and stop the thread."""
        for _, _, future in self._pending:
            try:
                future.result()
            except Exception:  # noqa: BLE001 - a batch nobody will train on
                pass
        self._pending = []
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __call__(self, prompts: list, trainer) -> dict:
        import time

        start = time.perf_counter()
        match = next((p for p in self._pending if p[0] == prompts), None)
        if match is not None:
            _, prompt_ids, future = match
            self._pending.remove(match)
        else:  # first step, evaluation, or overlap off: generate now with up-to-date weights
            self._sync(trainer)
            prompt_ids, future = self._launch(prompts, trainer)
        out = future.result()
        compat.log_metric(trainer, "rollout/generate_s", time.perf_counter() - start)
        compat.log_metric(trainer, "rollout/policy_version", min(out["versions"]))
        compat.log_metric(trainer, "rollout/policy_lag", trainer.state.global_step - min(out["versions"]))
        fields = {"prompt_ids": prompt_ids, "completion_ids": out["completion_ids"], "logprobs": out["logprobs"]}
        extras = out.get("extras") or []
        if extras and all(extras):  # a tool-calling engine (rl.tool_rollout.ToolEngine): mask and counts per row
            for key in extras[0]:
                fields[key] = [x[key] for x in extras]
            calls = sum(fields.get("tool_calls", []))
            compat.log_metric(trainer, "tools/tool_calls_per_sample", calls / len(extras))
            bad = sum(fields.get("tool_errors", [])) + sum(fields.get("tool_timeouts", []))
            compat.log_metric(trainer, "tools/tool_error_rate", bad / calls if calls else 0.0)
        return fields


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value
