"""Supervised fine-tuning on prompt/completion rows with TRL's `SFTTrainer` (loss on completions only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


@dataclass(frozen=True)
class SFTParams:
    """Learning hyper-parameters of an SFT run (the pipeline's stage configs extend this)."""

    epochs: float = 3.0
    max_steps: int = -1
    learning_rate: float = 1e-3
    batch_size: int = 16
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    # bf16 autocast with fp32 master weights (TrainingArguments.bf16). On a CPU with AVX512-BF16/AMX it is
    # ~1.6x faster per forward+backward than fp32 (docs/smollm2.md); elsewhere it can be slower.
    bf16: bool = False


def sft_train(model, tokenizer, rows: Sequence[dict], out_dir: Path, params: SFTParams, *, seed: int = 0,
              report_to: str = "none", time_budget_s: float = 0.0, use_cpu: bool = True, callbacks=()) -> dict:
    """Trains `model` in place on rows {prompt, completion}; returns the trainer's final metrics."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from rl import trl_compat as compat
    from rl.callbacks import TimeBudget, quiet
    from rl.progress import no_dataset_bars

    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    args = SFTConfig(
        output_dir=str(out_dir),
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=params.warmup_ratio,
        weight_decay=params.weight_decay,
        logging_steps=5,
        save_strategy="no",
        report_to=report_to,
        seed=seed,
        data_seed=seed,
        max_length=256,
        use_cpu=use_cpu,
        bf16=params.bf16,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    with no_dataset_bars():
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             callbacks=[TimeBudget(time_budget_s), *callbacks])
    compat.check(trainer, compat.SFT_HOOKS)
    quiet(trainer)
    result = trainer.train()
    return {"train_loss": float(result.training_loss), "steps": int(trainer.state.global_step),
            "num_tokens": compat.trained_tokens(trainer)}  # tokens trained on (for FLOPs)
