"""`grpo.trl: {field: value}`: any other field of TRL's `GRPOConfig`, passed through as it is.

Checked when the recipe is loaded (`check_trl_options`), against TRL's own dataclass: an unknown name gets
the closest field, a field rayzero already sets from one of its own fields is refused naming that field
(two spellings of one setting would disagree), and a value of the wrong type is refused naming the type.
`grpo_config` then applies the options over rayzero's own arguments (e.g. `lr_scheduler_type`,
`warmup_steps`, `max_grad_norm`, `mask_truncated_completions`, `optim`).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import types
import typing
from typing import Any, Mapping

# GRPOConfig fields that rayzero sets from its own settings (rl/grpo.py grpo_config, the stage): use these.
MAPPED = {
    "output_dir": "run.output_dir (rayzero chooses the checkpoint folder)",
    "max_steps": "grpo.max_steps", "learning_rate": "grpo.learning_rate",
    "per_device_train_batch_size": "grpo.micro_batch_size",
    "gradient_accumulation_steps": "grpo.micro_batch_size (accumulation = per-rank batch / micro-batch)",
    "steps_per_generation": "grpo.steps_per_generation", "generation_batch_size": "grpo.prompts_per_step",
    "num_generations": "grpo.num_generations", "num_iterations": "grpo.num_iterations",
    "temperature": "grpo.temperature", "top_p": "grpo.top_p", "top_k": "grpo.top_k",
    "max_completion_length": "grpo.max_completion_length", "beta": "grpo.beta", "loss_type": "grpo.loss_type",
    "epsilon": "grpo.epsilon", "epsilon_high": "grpo.epsilon_high", "scale_rewards": "grpo.scale_rewards",
    "importance_sampling_level": "grpo.importance_sampling_level", "logging_steps": "grpo.logging_steps",
    "save_strategy": "grpo.save_steps", "save_steps": "grpo.save_steps", "save_total_limit": "grpo.save_steps",
    "deepspeed": "grpo.zero_stage", "report_to": "run.wandb_mode", "seed": "run.seed", "data_seed": "run.seed",
    "use_cpu": "grpo.gpus", "bf16": "grpo.bf16 (or grpo.precision)", "activation_checkpointing": "grpo.gradient_checkpointing",
    "gradient_checkpointing": "grpo.gradient_checkpointing", "log_completions": "grpo.log_rollouts_every",
    "reward_weights": "grpo.rewards (the weights)", "use_vllm": "grpo.rollout_engine=vllm",
    "vllm_mode": "grpo.vllm.mode", "disable_tqdm": "nothing (rayzero prints its own progress lines)",
    "vllm_server_host": "grpo.vllm.server_host", "vllm_server_port": "grpo.vllm.server_port",
    "vllm_server_timeout": "grpo.vllm.server_timeout_s", "vllm_gpu_memory_utilization": "grpo.vllm.gpu_memory_utilization",
    "vllm_tensor_parallel_size": "grpo.vllm.tensor_parallel_size", "vllm_max_model_length": "grpo.vllm.max_model_len",
    "vllm_enable_sleep_mode": "grpo.vllm.sleep_level",
}


@functools.lru_cache(maxsize=1)
def _fields() -> dict[str, Any]:
    """GRPOConfig's field names -> type annotations (TRL imported only when a recipe has `grpo.trl`)."""
    from trl import GRPOConfig

    hints = typing.get_type_hints(GRPOConfig)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(GRPOConfig) if f.init}


def _type_name(tp: Any) -> str:
    enums = [a for a in (typing.get_args(tp) or (tp,)) if isinstance(a, type) and issubclass(a, enum.Enum)]
    if enums:
        return "one of: " + ", ".join(str(m.value) for e in enums for m in e)
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _fits(value: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # `SchedulerType | str`: the string must name a member
            return any(value in {str(m.value) for m in e} for e in enums)
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if tp is type(None):
        return value is None
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, str) and value in {str(m.value) for m in tp}
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    if origin is dict or tp is dict:
        return isinstance(value, Mapping)
    return True  # a type rayzero cannot read from YAML (a config object): TRL checks it


def check_trl_options(options: Mapping[str, Any], prefix: str = "trl") -> str | None:
    """The one-line problem with `grpo.trl`, or None."""
    if not options:
        return None
    fields = _fields()
    for name, value in options.items():
        where = f"{prefix}.{name}"
        if name in MAPPED:
            return f"{where}={value!r}: rayzero sets this GRPOConfig field itself; use {MAPPED[name]}"
        if name not in fields:
            close = difflib.get_close_matches(name, [f for f in fields if f not in MAPPED], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else " (see trl.GRPOConfig for its fields)"
            return f"{where}={value!r}: not a field of TRL's GRPOConfig{hint}"
        if not _fits(value, fields[name]):
            return f"{where}={value!r}: expected {_type_name(fields[name])}"
    return None
