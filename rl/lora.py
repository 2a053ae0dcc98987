"""LoRA adapters (PEFT) for SFT, GRPO and distillation, and merging them back into plain weights.

A trainer given `LoraParams.peft_config()` (TRL's `peft_config`) wraps the policy in a `PeftModel`: only
the low-rank factors A (r x in) and B (out x r) train, and a LoRA layer computes W x + (alpha/r) B A x.
Everything downstream of training wants plain weights W' = W + (alpha/r) B A under the base model's
parameter names: rollout engines (`merged_state_dict`, pushed at every weight sync), checkpoints the rest
of the pipeline loads (`save_merged`), and the caller's model object after SFT (`merge_into_base`).
`save_adapter` keeps the adapter alone (a few MB) beside the merged folder.

Merging for a sync is computed out of place: merging into the live weights and unmerging after would
leave rounding drift in the base weights at every sync (bf16 especially).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class LoraParams:
    """LoRA on the policy (`r` = 0: off, full fine-tuning)."""

    r: int = 0  # rank of the update B A
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the LoRA branch's input
    # Module names (suffixes) to adapt; ("all-linear",) = every linear layer except the output head.
    target_modules: tuple[str, ...] = ("all-linear",)

    @property
    def enabled(self) -> bool:
        return self.r > 0

    def validate(self, prefix: str = "lora.") -> None:
        """Raises ValueError whose message starts with `<prefix><field>=`."""
        from rl import params as v

        v.positive_int(f"{prefix}r", self.r, minimum=0)
        if not self.enabled:
            return
        v.finite(f"{prefix}alpha", self.alpha, low=0, low_open=True)
        v.finite(f"{prefix}dropout", self.dropout, low=0)
        if self.dropout >= 1:
            v.fail(f"{prefix}dropout", self.dropout, "must be within [0, 1)")
        if not self.target_modules or not all(isinstance(m, str) and m for m in self.target_modules):
            v.fail(f"{prefix}target_modules", tuple(self.target_modules), "need at least one module name")
        if "all-linear" in self.target_modules and len(self.target_modules) > 1:
            v.fail(f"{prefix}target_modules", tuple(self.target_modules), "'all-linear' stands alone")

    def peft_config(self):
        """A `peft.LoraConfig` for TRL's `peft_config=`, or None when LoRA is off."""
        if not self.enabled:
            return None
        from peft import LoraConfig

        targets = "all-linear" if tuple(self.target_modules) == ("all-linear",) else list(self.target_modules)
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          bias="none", task_type="CAUSAL_LM")


def is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _check_gathered(model) -> None:
    if any(hasattr(p, "ds_numel") for p in model.parameters()):  # DeepSpeed ZeRO-3 partitions parameters
        raise NotImplementedError("merging a LoRA adapter under DeepSpeed ZeRO-3 is not supported "
                                  "(parameters are partitioned); use zero_stage <= 2 with LoRA")


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights a plain copy of the base model would hold: W + (alpha/r) B A for every adapted layer,
    under the base model's own names and in its state-dict order (what an engine's `load_state_dict` or
    a collective receive expects). A model without adapters returns its own state dict. The model is not
    modified; unadapted tensors are shared with it, not copied."""
    if not is_peft(model):
        return dict(model.state_dict())
    from peft.tuners.lora import LoraLayer

    _check_gathered(model)
    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            active = [a for a in module.active_adapters if a in module.lora_A or a in module.lora_embedding_A]
            if active:
                deltas[f"{name}.weight"] = sum(module.get_delta_weight(a) for a in active)
    out = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:  # lora_A / lora_B / lora_embedding_* factors
            continue
        plain = key.replace(".base_layer.", ".")
        out[plain] = (value + deltas[plain].to(value.dtype)) if plain in deltas else value.detach()
    return out


def merge_into_base(model):
    """Folds the adapter into the base weights in place and returns the plain base model (the same
    object the trainer wrapped, so a caller holding it now holds merged, plain weights)."""
    if not is_peft(model):
        return model
    _check_gathered(model)
    return model.merge_and_unload()


def save_adapter(model, path: str | Path) -> Path:
    """Writes the adapter alone (adapter_config.json + adapter_model.safetensors) to `path`."""
    if not is_peft(model):
        raise ValueError("save_adapter: the model has no LoRA adapter")
    model.save_pretrained(str(path))
    return Path(path)


def save_merged(model, path: str | Path, tokenizer=None) -> Path:
    """Writes a plain Hugging Face folder with the merged weights (loads without PEFT), leaving `model`
    (adapter and all) unchanged. The plain model is built on the meta device and takes the merged tensors,
    so no second full copy of the weights is allocated."""
    from transformers import AutoModelForCausalLM

    base = model.get_base_model() if is_peft(model) else model
    state = merged_state_dict(model)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(base.config, dtype=base.dtype)
    plain.load_state_dict(state, strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = base.generation_config
    plain.save_pretrained(str(path))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return Path(path)


def save_policy(trainer, out_dir: str | Path) -> dict:
    """Saves a trained policy as a plain Hugging Face folder at `out_dir` (model, generation config,
    tokenizer) whatever the trainer held: with LoRA the adapter also goes alone to `out_dir/adapter`, and
    the folder holds the merged weights (a trainer's own `save_model` would write only the adapter). Call
    it on every rank, as `save_model` (ZeRO-3 gathers shards there). Returns {"adapter_dir"} with LoRA."""
    policy = trainer.accelerator.unwrap_model(trainer.model)
    if not is_peft(policy):
        trainer.save_model(str(out_dir))
        return {}
    out = {"adapter_dir": str(Path(out_dir) / "adapter")}
    if trainer.accelerator.is_main_process:
        save_adapter(policy, out["adapter_dir"])
        save_merged(policy, out_dir, tokenizer=trainer.processing_class)
    trainer.accelerator.wait_for_everyone()
    return out
