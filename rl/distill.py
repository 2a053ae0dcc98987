"""Logit distillation with TRL's GKD trainer (Agarwal et al. 2024, "On-Policy Distillation of Language
Models"): the student matches the teacher's next-token distributions on the traces (generalised JSD;
`beta` 0 = forward KL, 1 = reverse KL) instead of only the sampled tokens, and with `lmbda` > 0 also on
its own samples. It needs a shared vocabulary (TRL checks it); rayzero's students share the run's
tokenizer with the teachers.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

from rl.sft import SFTParams

# Prompt and completion are plain text in rayzero (no chat roles); GKD's collator formats rows through a
# chat template, so it gets one that reproduces exactly the text SFT trains on.
PLAIN_TEMPLATE = ("{{ messages[0]['content'] }}{% if messages | length > 1 %}{{ messages[1]['content'] }}"
                  "{{ eos_token }}{% endif %}")


def logit_distill(student, teacher, tokenizer, rows: Sequence[dict], out_dir: Path, params: SFTParams, *,
                  beta: float = 0.0, lmbda: float = 0.0, seed: int = 0, max_new_tokens: int = 64,
                  report_to: str = "none", use_cpu: bool | None = None, world_size: int = 1) -> dict:
    """Trains `student` in place on rows {prompt, completion}; returns {"train_loss", "steps", "num_tokens"}.

    `params` sets the optimisation as for SFT (batch, micro-batches, max_length, checkpointing, LoRA: the
    adapter is saved to `out_dir/adapter` and merged into `student`); `use_cpu` None = CPU only where no
    CUDA device is visible. The teacher should sit on the student's device."""
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from rl.callbacks import quiet
    from rl.lora import is_peft, merge_into_base, save_adapter
    from rl.modeling import default_use_cpu
    from rl.progress import no_dataset_bars

    params.validate(num_workers=world_size)
    if student.config.vocab_size != teacher.config.vocab_size:
        raise ValueError(f"logit distillation needs a shared vocabulary: student {student.config.vocab_size} "
                         f"tokens, teacher {teacher.config.vocab_size}; use distill.method=sft")
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = PLAIN_TEMPLATE
    tok.padding_side = "right"  # the collator builds labels from right-padded sequences
    data = Dataset.from_list([{"messages": [{"role": "user", "content": r["prompt"]},
                                            {"role": "assistant", "content": r["completion"]}]} for r in rows])
    args = GKDConfig(
        output_dir=str(out_dir), **params.trainer_args(world_size), logging_steps=5, save_strategy="no",
        report_to=report_to, seed=seed, data_seed=seed, use_cpu=default_use_cpu() if use_cpu is None else use_cpu,
        disable_tqdm=True, dataloader_num_workers=0, beta=beta, lmbda=lmbda, temperature=1.0,
        max_new_tokens=max_new_tokens,
    )
    with no_dataset_bars():
        trainer = GKDTrainer(model=student, teacher_model=teacher.eval(), args=args, train_dataset=data,
                             processing_class=tok, peft_config=params.lora.peft_config())
    quiet(trainer)
    result = trainer.train()
    tokens = sum(len(tok(r["prompt"] + r["completion"], add_special_tokens=False)["input_ids"]) + 1 for r in rows)
    metrics = {"train_loss": float(result.training_loss), "steps": int(trainer.state.global_step),
               "num_tokens": int(tokens * params.epochs)}
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if is_peft(trained):  # adapter alone, then plain merged weights in `student`
        metrics["adapter_dir"] = str(save_adapter(trained, Path(out_dir) / "adapter"))
        merge_into_base(trained)
    return metrics
