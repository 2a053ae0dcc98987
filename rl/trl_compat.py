"""Every use rayzero makes of TRL internals, in one place.

TRL 1.16 has no public hooks for what rayzero adds (DAPO dynamic sampling, generation on a Ray rollout
pool, extra metrics in TRL's own log, rollout samples for tracking, trained-token counts), so rl/ reaches
into a few private attributes and methods. They are listed here, read through the accessors below, and
checked once per trainer class when a trainer is built: a TRL release that renamed or removed one fails
there with one message naming the hook and the supported version, instead of deep inside a training step.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import Any, Callable

# The TRL release these hooks were read from; pyproject.toml pins the same (tests/unit/test_rl_trl_compat.py).
SUPPORTED_TRL = "1.16.0"


class TRLCompatError(RuntimeError):
    """The installed TRL lacks a private hook rayzero relies on."""


@dataclass(frozen=True)
class Hook:
    name: str
    used_by: str  # what breaks without it, for the error message
    params: tuple[str, ...] | None = None  # a method: the parameters rayzero passes (after self)
    check: Callable[[Any], bool] | None = None  # an instance attribute: what its value must look like
    prefix: bool = False  # a method: `params` need only be its first parameters (rayzero passes the rest as given)


def _is_metric_store(v) -> bool:
    return isinstance(v, dict) and "train" in v and hasattr(v["train"], "__getitem__")


def _is_rollout_log(v) -> bool:
    return isinstance(v, dict) and {"prompt", "completion", "rewards", "advantages"} <= set(v)


GENERATE_AND_SCORE = "_generate_and_score_completions"
LOGPS = "_get_per_token_logps_and_entropies"
GENERATE_SINGLE_TURN = "_generate_single_turn"

GRPO_HOOKS = (
    Hook(GENERATE_AND_SCORE, "rl.grpo (DAPO dynamic sampling, overlapped rollouts): one generation + scoring round",
         params=("inputs",)),
    Hook("_tokenize_prompts", "rl.rollout.PoolRollouts: prompts are tokenized exactly as TRL does before they go "
         "to the rollout pool", params=("prompts",)),
    Hook("_metrics", "rl.grpo, rl.rollout, rl.callbacks.Throughput: extra metrics logged with TRL's own",
         check=_is_metric_store),
    Hook("_logs", "rl.callbacks.RolloutSamples: the latest rollouts (prompt, completion, rewards, advantages)",
         check=_is_rollout_log),
    Hook("_tokenizer", "rl.grpo dynamic sampling: the pad id used to stitch rounds together",
         check=lambda v: hasattr(v, "pad_token_id")),
    Hook(LOGPS, "rl.grpo lean log-probs (rl.lean_loss): the loss's per-token log-probs and entropies",
         params=("model", "input_ids", "attention_mask", "logits_to_keep", "batch_size", "compute_entropy",
                 "compute_aux_loss"), prefix=True),
    Hook(GENERATE_SINGLE_TURN, "rl.grpo in-learner generation with rl.decoding (grpo.decoder=rayzero)",
         params=("prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images")),
    Hook("eos_token_ids", "rl.grpo in-learner generation: the ids that end a completion",
         check=lambda v: isinstance(v, (list, tuple)) and all(isinstance(i, int) for i in v)),
    Hook("temperature", "rl.grpo: the sampling temperature (generation and the loss's log-probs)",
         check=lambda v: isinstance(v, (int, float))),
    Hook("_entropy_bonus_enabled", "rl.lean_loss: whether the loss differentiates the entropy",
         check=lambda v: isinstance(v, bool)),
    Hook("top_entropy_quantile", "rl.lean_loss: the entropy mask", check=lambda v: isinstance(v, (int, float))),
    Hook("use_transformers_continuous_batching", "rl.grpo in-learner generation: TRL's other generation paths",
         check=lambda v: isinstance(v, bool)),
    Hook("use_vllm", "rl.tis: whether TRL applies its own vLLM importance-sampling correction",
         check=lambda v: isinstance(v, bool)),
    Hook("vllm_importance_sampling_correction", "rl.tis: truncated importance sampling on or off (grpo.tis_cap)",
         check=lambda v: isinstance(v, bool)),
    Hook("vllm_importance_sampling_clip_max", "rl.tis: the truncation cap (grpo.tis_cap)",
         check=lambda v: v is None or isinstance(v, (int, float))),
)

SFT_HOOKS = (
    Hook("_total_train_tokens", "rl.sft.sft_train: the number of tokens trained on (FLOPs in the report)",
         check=lambda v: isinstance(v, int)),
)


def installed_trl() -> str:
    import trl

    return trl.__version__


def _problem(cls: type, obj: Any, hook: Hook) -> str | None:
    """Why `hook` is unusable on `cls` (and on instance `obj`, when given), or None."""
    if hook.params is not None:
        fn = getattr(cls, hook.name, None)
        if not callable(fn):
            return f"{cls.__name__}.{hook.name}() is missing"
        names = [p.name for p in inspect.signature(fn).parameters.values()
                 if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)][1:]  # drop self
        if (names[:len(hook.params)] if hook.prefix else names) != list(hook.params):
            return f"{cls.__name__}.{hook.name}() takes ({', '.join(names)}), rayzero calls it with ({', '.join(hook.params)})"
        return None
    if obj is None:
        return None
    if not hasattr(obj, hook.name):
        return f"{cls.__name__} instances have no attribute {hook.name}"
    if hook.check is not None and not hook.check(getattr(obj, hook.name)):
        return f"{cls.__name__}.{hook.name} is a {type(getattr(obj, hook.name)).__name__} of a shape rayzero does not know"
    return None


_warned: set[str] = set()


def check(trainer_or_cls: Any, hooks: tuple[Hook, ...]) -> None:
    """Raises `TRLCompatError` naming the first unusable hook and the supported TRL version.

    Given a trainer instance (what `rl.grpo`/`rl.sft` do once, right after building one), methods are
    checked on its class and attributes on the instance; given a class, only its methods."""
    cls = trainer_or_cls if isinstance(trainer_or_cls, type) else type(trainer_or_cls)
    obj = None if isinstance(trainer_or_cls, type) else trainer_or_cls
    version = installed_trl()
    for hook in hooks:
        problem = _problem(cls, obj, hook)
        if problem:
            moved = f"TRL {version} is installed; " if version != SUPPORTED_TRL else ""
            raise TRLCompatError(
                f"TRL hook {hook.name} unusable: {problem}. {moved}rayzero supports trl=={SUPPORTED_TRL} "
                f"(needed by {hook.used_by}); install trl=={SUPPORTED_TRL} or port rl/trl_compat.py")
    if version != SUPPORTED_TRL and version not in _warned:
        _warned.add(version)
        warnings.warn(f"TRL {version} is installed, rayzero is tested with trl=={SUPPORTED_TRL}; the private "
                          f"hooks it uses are present on {cls.__name__}", stacklevel=2)


# --- accessors -----------------------------------------------------------------------------------------

def metrics(trainer, mode: str = "train") -> dict[str, list]:
    """TRL's metric store for `mode`: name -> values since the last log (TRL averages them when it logs)."""
    return trainer._metrics[mode]


def log_metric(trainer, name: str, value: float, mode: str = "train") -> None:
    trainer._metrics[mode][name].append(float(value))


def latest_rollouts(trainer) -> dict:
    """TRL's record of the latest generation batch: {"prompt", "completion", "rewards": {name: values},
    "advantages", ...}, each a sequence over rows (gathered over ranks)."""
    return trainer._logs


def tokenize_prompts(trainer, prompts: list) -> list[list[int]]:
    """Token ids of `prompts` as TRL's generation would see them (chat template applied when
    conversational)."""
    ids, _, _ = trainer._tokenize_prompts(prompts)
    return [list(x) for x in ids]


def tokenizer(trainer):
    """The text tokenizer TRL uses (the processor's tokenizer for multimodal models)."""
    return trainer._tokenizer


def trained_tokens(trainer) -> int:
    """Tokens an SFT trainer trained on, over all ranks (0 before training)."""
    return int(trainer._total_train_tokens)


def loss_temperature(trainer) -> float:
    """The temperature TRL divides the loss's logits by (the sampling temperature)."""
    return float(trainer.temperature)


def entropy_needs_grad(trainer) -> bool:
    """Whether TRL's loss differentiates the per-token entropy (an entropy bonus); the entropy mask
    (`top_entropy_quantile` < 1) only thresholds it."""
    return bool(trainer._entropy_bonus_enabled)


def plain_sampling(trainer) -> dict | None:
    """rl.decoding.sample's settings for TRL's in-learner generation when it is plain sampling (temperature,
    top-k, top-p; no vLLM, continuous batching, min-p, repetition penalty, extra generation kwargs, FSDP),
    else None (TRL's own generation runs)."""
    a = trainer.args
    if (getattr(trainer, "use_vllm", False) or trainer.use_transformers_continuous_batching
            or getattr(trainer, "is_fsdp_enabled", False) or getattr(a, "generation_kwargs", None)
            or getattr(a, "cache_implementation", None) or getattr(a, "min_p", None) is not None
            or getattr(a, "repetition_penalty", 1.0) != 1.0):
        return None
    return {"max_new_tokens": int(a.max_completion_length), "eos_token_ids": list(trainer.eos_token_ids),
            "temperature": float(trainer.temperature), "top_k": int(a.top_k or 0),
            "top_p": float(a.top_p if a.top_p is not None else 1.0)}


def model_for_generation(trainer):
    """Context manager yielding the unwrapped policy ready to generate (DeepSpeed ZeRO-3 weights gathered,
    gradient checkpointing off), under no_grad, as TRL's own generation uses it."""
    import contextlib

    import torch
    from trl.models.utils import unwrap_model_for_generation

    @contextlib.contextmanager
    def ctx():
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                                         gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs) as m, \
                torch.no_grad():
            yield m

    return ctx()


class GenerationRoundHook:
    """Mixed in just before TRL's `GRPOTrainer` (rl/grpo_trainer.py): exposes TRL's generation + scoring
    round under public names. Mixins override `generate_and_score(inputs)` and call
    `trl_generate_and_score(inputs)` for TRL's own round."""

    def _generate_and_score_completions(self, inputs):  # TRL's _prepare_inputs calls this once per round
        return self.generate_and_score(inputs)

    def generate_and_score(self, inputs: list[dict]) -> dict:
        """One generation + scoring round over `inputs` (rows, each prompt repeated per generation)."""
        return self.trl_generate_and_score(inputs)

    def trl_generate_and_score(self, inputs: list[dict]) -> dict:
        return getattr(super(), GENERATE_AND_SCORE)(inputs)  # the next class in the MRO: TRL's GRPOTrainer
