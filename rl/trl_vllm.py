"""TRL's own vLLM integration, for GRPO rollouts that stay inside the learner (no Ray rollout workers):
`GRPOConfig(use_vllm=True, vllm_mode=...)`. TRL then generates with vLLM and pushes the learner's weights
into it before each generation round (LoRA merged, ZeRO-3 shards gathered, by TRL).

- `colocate`: every learner rank starts its own vLLM engine on its own GPU (TRL's external-launcher
  executor), sharing the GPU with training: `vllm.gpu_memory_utilization` is vLLM's share of it, and
  `vllm.tensor_parallel_size` ranks form one engine (it must divide the learner ranks).
- `server`: rank 0 sends the prompts to a vLLM server the user started (`trl vllm-serve --model ...`, on
  GPUs the learner does not use) at `vllm.server_host:server_port` and broadcasts the weights to it over
  NCCL; the server's own command line sets its parallelism and memory.

The engine settings shared with the rollout workers' engines (`rl.vllm_engine.VLLMParams`) are one
`grpo.vllm` section; `mode` and `server_*` are only read here. TRL builds its `LLM` itself (no dtype, eager
or prefix-caching switch; sleep at level 2 only) and a server takes its settings on its command line, so
a field this mode would silently ignore must stay at its default (`check_in_learner`).
"""

from __future__ import annotations

from dataclasses import dataclass

from rl.vllm_engine import VLLMParams

MODES = ("colocate", "server")


@dataclass(frozen=True)
class GRPOVLLMParams(VLLMParams):
    """vLLM for GRPO: the engine settings (rollout workers' engines, or TRL's in-learner vLLM) plus where
    TRL's in-learner vLLM runs (read only with rollout_engine=vllm and no rollout workers)."""

    mode: str = "colocate"  # colocate: an engine beside each learner rank | server: `trl vllm-serve` elsewhere
    server_host: str = "127.0.0.1"  # server mode: where `trl vllm-serve` listens
    server_port: int = 8000
    server_timeout_s: float = 240.0  # server mode: how long rank 0 waits for the server to answer

    def validate(self, prefix: str = "vllm.") -> None:
        from rl import params as v

        super().validate(prefix)
        v.choice(f"{prefix}mode", self.mode, MODES)
        if not isinstance(self.server_host, str) or not self.server_host.strip():
            v.fail(f"{prefix}server_host", self.server_host, "must name a host (e.g. 127.0.0.1)")
        v.positive_int(f"{prefix}server_port", self.server_port)
        if self.server_port > 65535:
            v.fail(f"{prefix}server_port", self.server_port, "must be within [1, 65535]")
        v.finite(f"{prefix}server_timeout_s", self.server_timeout_s, low=0, low_open=True)


# Colocate: fields TRL's own `LLM(...)` call has no switch for, with the one value it runs at.
_FIXED = {"dtype": ("auto", "TRL's engine takes the model's dtype"),
          "enforce_eager": (False, "TRL's engine always captures CUDA graphs"),
          "enable_prefix_caching": (True, "TRL's engine keeps vLLM's default, prefix caching on")}
# Server: what the server's own command line sets (`trl vllm-serve --tensor-parallel-size 2 ...`).
_SERVER_FLAGS = {"tensor_parallel_size": "--tensor-parallel-size", "gpu_memory_utilization": "--gpu-memory-utilization",
                 "max_model_len": "--max-model-len", "dtype": "--dtype", "enforce_eager": "--enforce-eager",
                 "enable_prefix_caching": "--enable-prefix-caching"}


def check_in_learner(p: GRPOVLLMParams, num_workers: int, prefix: str = "vllm.") -> None:
    """Raises ValueError (message starting with the field) for settings TRL's in-learner vLLM cannot honour
    with `num_workers` learner ranks: a value it would silently ignore is refused instead."""
    from rl import params as v

    p.validate(prefix)
    if p.mode == "server":
        default = VLLMParams()
        for name, flag in _SERVER_FLAGS.items():
            if getattr(p, name) != getattr(default, name):
                v.fail(f"{prefix}{name}", getattr(p, name), f"is set on the server's command line in {prefix}mode=server "
                       f"(trl vllm-serve {flag} ...), not here")
        if p.sleep_level:
            v.fail(f"{prefix}sleep_level", p.sleep_level, f"must be 0 in {prefix}mode=server: TRL's vLLM server does not sleep")
        return
    for name, (value, why) in _FIXED.items():
        if getattr(p, name) != value:
            v.fail(f"{prefix}{name}", getattr(p, name), f"cannot be set for TRL's in-learner vLLM ({why}); it applies "
                   "to rollout workers' engines (grpo.rollout_workers >= 1)")
    if p.sleep_level == 1:
        v.fail(f"{prefix}sleep_level", 1, "must be 0 or 2: TRL's in-learner vLLM sleeps at level 2 only (weights "
               "re-pushed every round)")
    if num_workers % p.tensor_parallel_size:
        v.fail(f"{prefix}tensor_parallel_size", p.tensor_parallel_size, f"must divide the learner ranks "
               f"(num_workers={num_workers}) in {prefix}mode=colocate: each group of that many ranks shares one engine")


def grpo_config_args(p: GRPOVLLMParams) -> dict:
    """TRL `GRPOConfig` fields for its in-learner vLLM in `p.mode` (only those the mode reads)."""
    args = {"use_vllm": True, "vllm_mode": p.mode}
    if p.mode == "server":
        return args | {"vllm_server_host": p.server_host, "vllm_server_port": p.server_port,
                       "vllm_server_timeout": float(p.server_timeout_s)}
    return args | {"vllm_gpu_memory_utilization": p.gpu_memory_utilization,
                   "vllm_tensor_parallel_size": p.tensor_parallel_size,
                   "vllm_max_model_length": p.max_model_len or None,
                   "vllm_enable_sleep_mode": p.sleep_level > 0}


def check_runtime(use_cpu: bool) -> None:
    """Where the learner starts: one line, before TRL builds anything, when there is no CUDA device or no
    vLLM (TRL's own errors come from deep inside the trainer's constructor)."""
    import torch

    if use_cpu or not torch.cuda.is_available():
        raise RuntimeError("grpo.rollout_engine=vllm with grpo.rollout_workers=0 runs TRL's vLLM inside the learner, "
                           "which needs a CUDA GPU (grpo.gpus >= 1) and none is visible here; use "
                           "grpo.rollout_engine=hf")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise RuntimeError("grpo.rollout_engine=vllm with grpo.rollout_workers=0 runs TRL's vLLM inside the learner, "
                           "but vLLM is not installed here (pip install 'rayzero[vllm]'); use "
                           "grpo.rollout_engine=hf") from None
