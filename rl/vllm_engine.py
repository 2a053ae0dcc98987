"""vLLM rollout engine, written against vLLM's public API only.

Targets vLLM 0.27.x, the release line that pins torch 2.13 (the project's torch); TRL 1.16 accepts vLLM
0.22-0.31. vLLM is not installed where rayzero is developed (CPU only): everything here imports it lazily,
and asking for it where it is missing fails in `rl.rollout.check_engine` with one line.

What "public API" means here, and why:
- Weights are loaded by our own worker extension (`WeightSyncExtension`, passed as
  `LLM(worker_extension_cls=...)`) whose methods run in every vLLM worker process through
  `LLM.collective_rpc`, and which hands (HF name, tensor) pairs to the model's own `load_weights` (vLLM
  fuses and shards them per tensor-parallel rank). This is how verl and OpenRLHF do it; reaching for
  `llm.llm_engine.model_executor.driver_worker` works only with an in-process executor and breaks with
  vLLM's default multiprocess engine and with tensor parallelism.
- `logprobs_mode="processed_logprobs"`: returned log-probs are of the distribution sampled from (after
  temperature / top-k / top-p), as TRL's behaviour-policy log-probs must be; the default is raw logits.
- A collective sync receives without a state dict (`rl.weight_wire`): vLLM's parameter names and shapes
  differ from the learner's, so the learner sends names, shapes and dtypes first.
- After every weight update the prefix cache is reset: cached KV blocks were computed by the old weights.
- Colocated with the learner, the engine sleeps between rollouts (`sleep_level` 1: weights to CPU,
  KV cache dropped; 2: both dropped, for when a sync always follows) and wakes in two steps (weights, then
  KV cache) so a weight update never needs both at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch

SUPPORTED_VLLM = "0.27"
EXTENSION = "rl.vllm_engine.WeightSyncExtension"
# Set by cluster.actors (BUNDLES_ENV) in a rollout actor that owns several placement-group bundles: one per
# GPU of its engine, comma-separated.
BUNDLES_ENV = "RAYZERO_BUNDLE_INDICES"


@dataclass(frozen=True)
class VLLMParams:
    """vLLM engine settings (rollout_engine=vllm)."""

    tensor_parallel_size: int = 1  # GPUs one engine spans
    gpu_memory_utilization: float = 0.4  # share of each GPU for weights + KV cache (low when colocated)
    dtype: str = "auto"  # weights; "auto" = bfloat16 (vLLM's own "auto" would run fp32 checkpoints in fp16)
    max_model_len: int = 0  # prompt + completion tokens per sequence (0 = the model's maximum)
    enable_prefix_caching: bool = True  # GRPO repeats every prompt num_generations times
    sleep_level: int = 0  # 0 = stay resident; 1/2 = free the GPU between rollouts (colocated learner)
    enforce_eager: bool = False  # skip CUDA-graph capture (faster start, slower decode)

    def validate(self, prefix: str = "vllm.") -> None:
        from rl import params as v

        v.positive_int(f"{prefix}tensor_parallel_size", self.tensor_parallel_size)
        v.finite(f"{prefix}gpu_memory_utilization", self.gpu_memory_utilization, low=0, low_open=True)
        if self.gpu_memory_utilization > 1:
            v.fail(f"{prefix}gpu_memory_utilization", self.gpu_memory_utilization, "must be within (0, 1]")
        v.choice(f"{prefix}dtype", self.dtype, ("auto", "bfloat16", "float16", "float32"))
        v.positive_int(f"{prefix}max_model_len", self.max_model_len, minimum=0)
        v.choice(f"{prefix}sleep_level", self.sleep_level, (0, 1, 2))


@dataclass(frozen=True)
class EngineLaunch:
    """How to build one engine: `LLM(**kwargs)` after applying `env` (a value sets, None unsets)."""

    kwargs: dict
    env: dict


def engine_launch(model_dir: str, params: VLLMParams, seed: int = 0,
                  bundle_indices: Sequence[int] | None = None) -> EngineLaunch:
    """The `LLM(...)` arguments and environment of a rollout engine (pure: the one place they are decided).

    `bundle_indices`: the placement-group bundles this engine owns, one per GPU (cluster.placement
    `engine_bundles`), or None outside a placement group. With tensor_parallel_size N > 1 inside one, vLLM
    must start its N workers as Ray actors in those bundles: `distributed_executor_backend="ray"` (its Ray
    executor reuses the current placement group, `ray.util.get_current_placement_group()`, and refuses any
    bundle with more than one GPU), `VLLM_RAY_BUNDLE_INDICES` = the N bundles, one worker each,
    `VLLM_RAY_PER_WORKER_GPUS` = 1, and the driver's `CUDA_VISIBLE_DEVICES` unset (Ray set it for an actor
    that holds no GPU), as in vLLM's own RLHF examples (examples/offline_inference/rlhf_colocate.py). The
    default multiprocessing executor would instead look for N GPUs visible to the actor, which holds none.
    Tensor parallelism 1 is unchanged: the actor holds its GPU and vLLM runs in its process."""
    params.validate()
    kwargs = dict(
        model=model_dir, tensor_parallel_size=params.tensor_parallel_size,
        gpu_memory_utilization=params.gpu_memory_utilization,
        dtype="bfloat16" if params.dtype == "auto" else params.dtype, seed=seed,
        max_model_len=params.max_model_len or None, enable_prefix_caching=params.enable_prefix_caching,
        enable_sleep_mode=params.sleep_level > 0, enforce_eager=params.enforce_eager,
        logprobs_mode="processed_logprobs", worker_extension_cls=EXTENSION)
    tp = params.tensor_parallel_size
    if tp == 1 or bundle_indices is None:
        return EngineLaunch(kwargs, {})
    indices = [int(i) for i in bundle_indices]
    if len(indices) != tp or len(set(indices)) != tp or min(indices) < 0:
        raise ValueError(f"vllm.tensor_parallel_size={tp} needs {tp} distinct placement-group bundles (one GPU "
                         f"each), got {list(bundle_indices)}")
    kwargs["distributed_executor_backend"] = "ray"
    env = {"VLLM_RAY_BUNDLE_INDICES": ",".join(map(str, indices)), "VLLM_RAY_PER_WORKER_GPUS": "1",
           "CUDA_VISIBLE_DEVICES": None}
    return EngineLaunch(kwargs, env)


def bundles_from_env() -> list[int] | None:
    """The bundle indices cluster/ gave this actor (`BUNDLES_ENV`), or None."""
    raw = os.environ.get(BUNDLES_ENV, "")
    return [int(x) for x in raw.split(",")] if raw else None


def require_vllm() -> None:
    """Fails in one line (no chained ImportError) where vLLM cannot be imported."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise RuntimeError("rollout.engine=vllm but vLLM is not installed here (it needs a CUDA GPU and "
                           "`pip install vllm`); use rollout.engine=hf") from None


class VLLMEngine:
    """`generate` / `load_state_dict` / collective receive for a rollout worker, on vLLM."""

    def __init__(self, model_dir: str, params: VLLMParams = VLLMParams(), seed: int = 0,
                 bundle_indices: Sequence[int] | None = None):
        """`bundle_indices`: see `engine_launch` (default: the ones cluster/ put in this actor's environment)."""
        require_vllm()
        import vllm
        from vllm import LLM

        if not vllm.__version__.startswith(SUPPORTED_VLLM + "."):
            import warnings

            warnings.warn(f"vLLM {vllm.__version__} is installed; rayzero's vLLM engine targets {SUPPORTED_VLLM}.x",
                          stacklevel=2)
        launch = engine_launch(model_dir, params, seed,
                               bundles_from_env() if bundle_indices is None else bundle_indices)
        self.params = params
        for key, value in launch.env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.llm = LLM(**launch.kwargs)
        # The ids a completion ends with (vLLM stops there itself); the tool protocol (rl.tool_rollout.ToolEngine)
        # reads them to tell a finished sample from one that stopped at a call's closing tag.
        eos = self.llm.get_tokenizer().eos_token_id
        self.eos = [] if eos is None else [eos]
        self.weights_awake = self.kv_awake = True
        self.weights_current = True  # False after a level-2 sleep discarded them, until the next update

    @property
    def collective_ranks(self) -> int:
        """Members this engine adds to a collective sync group (one per tensor-parallel worker)."""
        return self.params.tensor_parallel_size

    # --- sleep / wake ---------------------------------------------------------------------------------

    def sleep(self) -> None:
        """Free the GPU for the learner (no-op with sleep_level 0)."""
        if self.params.sleep_level and (self.weights_awake or self.kv_awake):
            self.llm.sleep(level=self.params.sleep_level)
            self.weights_awake = self.kv_awake = False
            self.weights_current = self.params.sleep_level == 1  # level 2 discards the weights

    def _wake(self, tag: str) -> None:
        if tag == "weights" and not self.weights_awake:
            self.llm.wake_up(tags=["weights"])
            self.weights_awake = True
        if tag == "kv_cache" and not self.kv_awake:
            self.llm.wake_up(tags=["kv_cache"])
            self.kv_awake = True

    # --- weights --------------------------------------------------------------------------------------

    def _updated(self) -> None:
        self.llm.reset_prefix_cache()  # cached KV blocks came from the previous weights
        self.weights_current = True

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Weights under the learner's (HF) names, CPU tensors (vLLM's RPC carries CPU tensors only)."""
        self._wake("weights")
        self.llm.collective_rpc("rayzero_load_weights", args=([(k, v.cpu()) for k, v in state.items()],))
        self._updated()

    def join_weight_group(self, host: str, port: int, first_rank: int, world: int, backend: str) -> list[int]:
        """Every tensor-parallel worker joins the learner's broadcast group as rank first_rank + its TP rank
        (blocks until the whole group has joined)."""
        return self.llm.collective_rpc("rayzero_join_group", args=(host, port, first_rank, world, backend))

    def receive_weights(self, sent, checksums: bool = True) -> list:
        """Takes one broadcast of the learner's weights, bucket by bucket as the sender's plan `sent` lays it
        out (`rl.weight_wire`); each bucket is loaded as it arrives. Returns, per tensor-parallel worker, the
        checksums of what it received ([per bucket [per tensor]]), for the learner to verify."""
        self._wake("weights")
        members = self.llm.collective_rpc("rayzero_receive", args=(sent, checksums))
        self._updated()
        return members

    @property
    def weights_dtype(self) -> str:
        return "bfloat16" if self.params.dtype == "auto" else self.params.dtype

    def score(self, tokens: list[int]) -> list[float]:
        """Log-probs of tokens[1:] given their prefix, from the raw logits (vLLM's prompt log-probs: no
        sampling processing), for the post-sync probe."""
        from vllm import SamplingParams as VSP

        if not self.weights_current:
            raise RuntimeError("vllm.sleep_level=2 discarded the weights and no weight sync followed")
        self._wake("weights")
        self._wake("kv_cache")
        out = self.llm.generate([{"prompt_token_ids": list(tokens)}], VSP(max_tokens=1, prompt_logprobs=0,
                                                                          detokenize=False), use_tqdm=False)[0]
        lps = [float(step[t].logprob) for step, t in zip(out.prompt_logprobs[1:], tokens[1:])]
        self.sleep()
        return lps

    # --- generation -----------------------------------------------------------------------------------

    def generate(self, prompts: list[list[int]], sp, seed: int | None = None, on_finish=None):
        """prompts: N token-id lists, sp: `rl.rollout.SamplingParams`. Returns (completion_ids, logprobs):
        N lists each; a completion ends at and includes its first EOS. Each prompt gets its own seed: one
        seed shared by a group's copies of a prompt would give every copy the same completion."""
        from vllm import SamplingParams as VSP

        if not self.weights_current:
            raise RuntimeError("vllm.sleep_level=2 discarded the weights and no weight sync followed; sync "
                               "before every generation (sync_every=1) or use sleep_level=1")
        self._wake("weights")
        self._wake("kv_cache")
        params = [VSP(max_tokens=sp.max_new_tokens, temperature=sp.temperature, top_k=sp.top_k, top_p=sp.top_p,
                      logprobs=0, seed=None if seed is None else seed * 1_000_003 + i,
                      # tool calls (rl.tools): one-token closing tags stop by id; longer ones by text, which
                      # needs detokenising (kept in the output: the protocol reads the closing tag)
                      stop_token_ids=[q[0] for q in getattr(sp, "stop", ()) if len(q) == 1] or None,
                      stop=list(getattr(sp, "stop_text", ())) or None, include_stop_str_in_output=True,
                      detokenize=bool(getattr(sp, "stop_text", ())))
                  for i in range(len(prompts))]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        ids, lps = [], []
        for o in outs:
            c = o.outputs[0]
            ids.append(list(c.token_ids))
            lps.append([float(step[t].logprob) for step, t in zip(c.logprobs, c.token_ids)])
        self.sleep()
        return ids, lps


class WeightSyncExtension:
    """Mixed into every vLLM GPU worker (`LLM(worker_extension_cls=EXTENSION)`); `LLM.collective_rpc` calls
    these methods by name in each worker, where `self` is vLLM's worker (its `model_runner.model` has
    `load_weights`, which maps HF names onto vLLM's fused, sharded parameters)."""

    def rayzero_load_weights(self, named: list[tuple[str, torch.Tensor]]) -> int:
        device = _worker_device(self)
        self.model_runner.model.load_weights(weights=[(n, t.to(device)) for n, t in named])
        return len(named)

    def rayzero_join_group(self, host: str, port: int, first_rank: int, world: int, backend: str) -> int:
        from rl import weight_wire

        rank = first_rank + _tp_rank()
        self.rayzero_group, self.rayzero_device = weight_wire.join_group(host, port, rank, world, backend)
        return rank

    def rayzero_receive(self, sent, checksums: bool = True) -> list[list[int]]:
        """Receives and loads every bucket; returns the checksums of what arrived (per bucket, per tensor)."""
        from rl import weight_wire

        sums = []
        for named in weight_wire.receive_buckets(self.rayzero_group, sent, self.rayzero_device):
            if checksums:
                sums.append([weight_wire.checksum(t) for _, t in named])
            self.model_runner.model.load_weights(weights=named)  # any subset: vLLM fuses and shards per name
        return sums


def _worker_device(worker) -> torch.device:
    device = getattr(worker, "device", None)
    return torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())


def _tp_rank() -> int:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank
    except ImportError:  # outside vLLM (tests): one worker
        return 0
    return get_tensor_model_parallel_rank()
