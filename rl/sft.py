"""Supervised fine-tuning on prompt/completion rows with TRL's `SFTTrainer` (loss on completions only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rl.lora import LoraParams


@dataclass(frozen=True)
class TrainingFields:
    """The training fields every supervised trainer here takes, declared once: `SFTParams` extends them, and
    so does the pipeline's distill section (its students train through `sft_train` / `logit_distill`).

    `batch_size` is the batch of one optimizer step over all data-parallel workers."""

    epochs: float = 3.0
    learning_rate: float = 1e-3
    batch_size: int = 16
    # Tokens per example (prompt + completion); longer ones are truncated. Long chains of thought need
    # thousands (and a model whose max_position covers them).
    max_length: int = 256
    # bf16 autocast with fp32 master weights (TrainingArguments.bf16). On a CPU with AVX512-BF16/AMX it is
    # ~1.6x faster per forward+backward than fp32 (docs/smollm2.md); elsewhere it can be slower.
    bf16: bool = False


@dataclass(frozen=True)
class SFTParams(TrainingFields):
    """Learning hyper-parameters of an SFT run (the pipeline's stage configs extend this).

    Each data-parallel worker runs its share of `batch_size` as micro-batches of `micro_batch_size` with
    gradient accumulation."""

    max_steps: int = -1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    micro_batch_size: int = 0  # rows per forward/backward on one device (0 = the worker's whole share)
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, more time
    dtype: str = "float32"  # weights of a model the pipeline loads for training (rl.params.DTYPES)
    attn_implementation: str = "auto"  # rl.params.ATTN_IMPLEMENTATIONS
    lora: LoraParams = LoraParams()  # r > 0: train a LoRA adapter, merged into the model afterwards

    def batch_layout(self, num_workers: int = 1) -> tuple[int, int]:
        """(per-device micro-batch, gradient accumulation steps)."""
        per_rank = self.batch_size // num_workers
        micro = self.micro_batch_size or per_rank
        return micro, per_rank // micro

    def validate(self, num_workers: int = 1) -> None:
        """Raises ValueError (message starting with the field name) for a setting that cannot run on
        `num_workers` data-parallel workers."""
        from rl import params as v

        v.finite("epochs", self.epochs, low=0, low_open=True)
        if self.max_steps != -1:
            v.positive_int("max_steps", self.max_steps)  # -1 = train for `epochs`
        v.finite("learning_rate", self.learning_rate, low=0, low_open=True)
        v.positive_int("batch_size", self.batch_size)
        v.finite("warmup_ratio", self.warmup_ratio, low=0)
        if self.warmup_ratio >= 1:  # TrainingArguments reads warmup_steps >= 1 as a step count
            v.fail("warmup_ratio", self.warmup_ratio, "must be within [0, 1)")
        v.finite("weight_decay", self.weight_decay, low=0)
        v.positive_int("max_length", self.max_length)
        v.model_loading(self.dtype, self.attn_implementation, self.bf16)
        v.positive_int("num_workers", num_workers)
        if self.batch_size % num_workers:
            v.fail("batch_size", self.batch_size, f"must be divisible by num_workers={num_workers}")
        v.micro_batching("micro_batch_size", self.micro_batch_size, self.batch_size // num_workers,
                         "batch_size/num_workers")
        self.lora.validate(prefix="lora.")

    def trainer_args(self, num_workers: int = 1) -> dict:
        """The TrainingArguments fields these parameters set (shared by SFT and GKD distillation)."""
        micro, accumulation = self.batch_layout(num_workers)
        return dict(num_train_epochs=self.epochs, max_steps=self.max_steps, per_device_train_batch_size=micro,
                    gradient_accumulation_steps=accumulation, learning_rate=self.learning_rate,
                    lr_scheduler_type="cosine", warmup_steps=self.warmup_ratio, weight_decay=self.weight_decay,
                    max_length=self.max_length, bf16=self.bf16, activation_checkpointing=self.gradient_checkpointing)


def sft_train(model, tokenizer, rows: Sequence[dict], out_dir: Path, params: SFTParams, *, seed: int = 0,
              report_to: str = "none", time_budget_s: float = 0.0, use_cpu: bool | None = None,
              world_size: int = 1, callbacks=(), mask_tool_outputs: bool = False) -> dict:
    """Trains `model` in place on rows {prompt, completion}; returns {"train_loss", "steps", "num_tokens",
    "trainable_params"} (+ "adapter_dir" with LoRA).

    `use_cpu` None = CPU only where no CUDA device is visible; `world_size` = data-parallel workers
    (`params.batch_size` is split over them). With `params.lora` on, only the adapter trains; it is saved
    alone to `out_dir/adapter` and then merged into `model`, which afterwards holds plain weights.
    `mask_tool_outputs`: completions hold tool calls with their outputs (`rl.tools`); the model learns its own
    tokens only, never the tool's `<output>...</output>` blocks (`tool_output_labels`), as in GRPO."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from rl import trl_compat as compat
    from rl.callbacks import TimeBudget, quiet
    from rl.lora import is_peft, merge_into_base, save_adapter
    from rl.modeling import default_use_cpu
    from rl.progress import no_dataset_bars

    params.validate(num_workers=world_size)
    masked = 0
    if mask_tool_outputs:
        tokenized, masked = tool_output_labels(tokenizer, rows)
        data = Dataset.from_list(tokenized)
    else:
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    args = SFTConfig(output_dir=str(out_dir), **params.trainer_args(world_size), logging_steps=5, save_strategy="no",
                     report_to=report_to, seed=seed, data_seed=seed, disable_tqdm=True, dataloader_num_workers=0,
                     use_cpu=default_use_cpu() if use_cpu is None else use_cpu)
    with no_dataset_bars():
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             callbacks=[TimeBudget(time_budget_s), *callbacks], peft_config=params.lora.peft_config())
    compat.check(trainer, compat.SFT_HOOKS)
    quiet(trainer)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    metrics = {"trainable_params": sum(p.numel() for p in trained.parameters() if p.requires_grad)}
    result = trainer.train()
    metrics |= {"train_loss": float(result.training_loss), "steps": int(trainer.state.global_step),
                "num_tokens": compat.trained_tokens(trainer)}  # tokens trained on (for FLOPs)
    if mask_tool_outputs:  # per epoch: tool-output tokens the labels leave out
        metrics["masked_tool_tokens"] = masked
    if is_peft(trained):
        metrics["adapter_dir"] = str(save_adapter(trained, Path(out_dir) / "adapter"))
        merge_into_base(trained)
    return metrics


def tool_output_labels(tokenizer, rows: Sequence[dict]) -> tuple[list[dict], int]:
    """Rows {prompt, completion} as TRL's pre-tokenised rows {input_ids, labels}: labels -100 on the prompt and on
    every tool output block `<output>...</output>` of the completion (the tool wrote it, not the model), the
    token ids otherwise. The prompt is tokenised as TRL tokenises it; the completion piece by piece (the model's
    text, each output block, then EOS as TRL appends it), as a tool rollout builds its trajectory (`rl.tools`).
    Also returns how many tool-output tokens were left out."""
    import re

    from rl.tools import OUT_CLOSE, OUT_OPEN

    block = re.compile(f"({re.escape(OUT_OPEN)}.*?{re.escape(OUT_CLOSE)})", re.S)
    eos = tokenizer.eos_token or ""
    out, masked = [], 0
    for r in rows:
        ids = list(tokenizer(text=r["prompt"])["input_ids"])
        labels = [-100] * len(ids)
        completion = r["completion"] if r["completion"].endswith(eos) else r["completion"] + eos
        for piece in block.split(completion):
            if not piece:
                continue
            seg = list(tokenizer(piece, add_special_tokens=False)["input_ids"])
            ids += seg
            tool = block.fullmatch(piece) is not None
            labels += [-100] * len(seg) if tool else seg
            masked += len(seg) if tool else 0
        out.append({"input_ids": ids, "labels": labels})
    return out, masked
