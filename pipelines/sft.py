"""Cold-start SFT stage (and the equal-wall-time SFT-only baseline): TRL SFTTrainer on CoT examples."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from pipelines import tracking
from pipelines.common import (base_model_dir, config_from, data_path, load_tokenizer, new_model, read_jsonl, save_checkpoint,
                              use_cpus)
from pipelines.evaluate import evaluate_model
from rl.callbacks import MetricHistory, Progress
from rl.modeling import count_params
from rl.sft import sft_train


def run(cfg_dict: dict, out_dir: str, stage: str = "sft", time_budget_s: float = 0.0, max_steps: int = -1) -> dict:
    """Train the policy from `model` on the cold-start split and save it to `out_dir`.

    For `stage="baseline"` the same recipe is trained for `max_steps` / `time_budget_s` instead (the
    SFT-only comparison the RL stage must beat)."""
    cfg = config_from(cfg_dict)
    use_cpus(cfg.sft.num_cpus)
    out = Path(out_dir)
    tok = load_tokenizer(cfg)
    model = new_model(cfg.model, tok, cfg.run.seed, base_dir=base_model_dir(cfg))
    heldout = read_jsonl(data_path(cfg, "heldout"))
    cold = read_jsonl(data_path(cfg, "cold_start"))
    run = tracking.start_stage_run(cfg, stage)
    before = evaluate_model(model, tok, heldout, cfg.eval, desc=f"{stage}: eval before")
    params = cfg.sft if max_steps < 0 else dataclasses.replace(cfg.sft, epochs=1e6, max_steps=max_steps)
    start = time.monotonic()
    metrics = sft_train(model, tok, cold, out / "trainer", params, seed=cfg.run.seed,
                        report_to=tracking.report_to(cfg), time_budget_s=time_budget_s or cfg.sft.time_budget_s,
                        callbacks=[Progress(f"{stage}: train"), MetricHistory(out / "history.jsonl")])
    train_time = time.monotonic() - start
    save_checkpoint(model, tok, out)
    after = evaluate_model(model, tok, heldout, cfg.eval, desc=f"{stage}: eval")
    result = {
        "accuracy": after["accuracy"], "accuracy_before": before["accuracy"], "params": count_params(model),
        "train_time_s": train_time, "steps": metrics["steps"], "train_loss": metrics["train_loss"],
        "num_tokens": metrics["num_tokens"],
        "num_examples": len(cold), "samples": after["samples"],
    }
    tracking.finish(run, {"eval/accuracy": after["accuracy"], "eval/accuracy_before": before["accuracy"],
                          "params": result["params"]}, eval_samples=after["samples"], checkpoint=out)
    return result
