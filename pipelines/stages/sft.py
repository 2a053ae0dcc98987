"""Cold-start SFT (TRL's SFTTrainer on chain-of-thought examples) and the SFT-only baseline that trains
the same recipe for the wall time SFT + GRPO took (the comparison the RL stage must beat)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.runtime import run_task
from pipelines.models import load_tokenizer, new_model, save_checkpoint
from pipelines.report import tracking
from pipelines.run_folder import RunFolder, read_jsonl
from pipelines.scoring import evaluate_stage
from pipelines.stages.base import Resources, Stage, StageContext, start_task
from rl.metrics import train_flops
from rl.modeling import count_params

if TYPE_CHECKING:
    from pipelines.config.schema import PipelineConfig


class SFTStage(Stage):
    name = "sft"
    trains_policy = True
    teacher = True
    lora_section = "sft"
    card_tags = ("sft",)
    card_text = "cold-start supervised fine-tuning on chain-of-thought examples"
    positive = ("epochs", "learning_rate", "batch_size", "cpus")
    non_negative = ("warmup_ratio", "weight_decay", "gpus", "time_budget_s")

    def checked(self, cfg: "PipelineConfig") -> bool:
        return cfg.sft.enabled or cfg.baseline.enabled  # the baseline trains with SFT's section

    def check_config(self, cfg: "PipelineConfig") -> None:
        from pipelines.config.checks import fail, params_rules

        if cfg.task.num_cold_start < 1:
            fail("task.num_cold_start", cfg.task.num_cold_start, "must be >= 1 when sft (or baseline) is enabled")
        params_rules("sft", cfg.sft)

    def resources(self, cfg: "PipelineConfig") -> Resources:
        return Resources.single(self.name, cfg.sft.cpus, cfg.sft.gpus)

    def run(self, cfg: "PipelineConfig", ctx: StageContext) -> dict:
        return run_task(train, cfg, ctx, "sft", num_cpus=cfg.sft.cpus, num_gpus=cfg.sft.gpus, name="sft")

    def flops(self, m: dict) -> float | None:
        return train_flops(m.get("params", 0), m["num_tokens"]) if m.get("num_tokens") else None

    def base_accuracy(self, m: dict) -> float | None:
        return m.get("accuracy_before")  # measured before the first SFT step: the base model's

    def reference_lines(self, m: dict) -> list[tuple[str, float | None, str]]:
        return [("base model", m.get("accuracy_before"), "tab:gray"), ("SFT", m.get("accuracy"), "tab:orange")]

    def gpu_memory(self, cfg: "PipelineConfig", policy, gpu_gib: float, prompt_tokens: int) -> dict:
        from pipelines.memory_plan import sft_estimate

        return {f"{self.name}-0": sft_estimate(cfg, policy)} if policy else {}

    def memory_knobs(self, cfg: "PipelineConfig") -> list:
        from pipelines.memory_plan import halves_of_micro_batch

        s, out = cfg.sft, []
        if not s.gradient_checkpointing:
            out.append(("sft.gradient_checkpointing=true", {"sft.gradient_checkpointing": True}))
        out += halves_of_micro_batch(s.batch_layout(1)[0], s.batch_size, "sft")
        if not s.lora.enabled:
            out.append(("sft.lora.r=16", {"sft.lora.r": 16}))
        return out


class BaselineStage(SFTStage):
    """SFT alone on the same cold-start data for the wall time SFT + GRPO trained; its steps are set from
    the SFT stage's measured speed so the learning-rate schedule completes within the budget. It trains
    with SFT's section (recipe, resources, memory) and is a comparison arm, never the run's result."""

    name = "baseline"
    trains_policy = False
    comparison = True
    card_text = "SFT alone for the wall time SFT + GRPO took (the comparison RL has to win)"
    resource_fields = ("sft.gpus", "sft.cpus")
    positive = non_negative = ()

    def enabled(self, cfg: "PipelineConfig") -> bool:
        return cfg.baseline.enabled

    def checked(self, cfg: "PipelineConfig") -> bool:
        return False  # SFT's section: SFTStage checks it

    def base_accuracy(self, m: dict) -> float | None:
        return None

    def reference_lines(self, m: dict) -> list[tuple[str, float | None, str]]:
        return [("equal-time SFT baseline", m.get("accuracy"), "tab:red")]

    def run(self, cfg: "PipelineConfig", ctx: StageContext) -> dict:
        s, g = ctx.earlier.get("sft", {}), ctx.earlier.get("grpo", {})
        budget = s.get("train_time_s", 0.0) + g.get("train_time_s", 0.0)
        steps = int(budget * s["steps"] / s["train_time_s"]) if s.get("train_time_s") else -1
        return run_task(train, cfg, ctx, "baseline", time_budget_s=budget * 1.1, max_steps=steps,
                        num_cpus=cfg.sft.cpus, num_gpus=cfg.sft.gpus, name="baseline")


def train(cfg: "PipelineConfig", ctx: StageContext, stage: str, time_budget_s: float = 0.0, max_steps: int = -1,
          cold_start: Path | None = None) -> dict:
    """Ray task: train the policy from `model` on the cold-start split (or the rows of `cold_start`), save it
    to `ctx.out_dir`."""
    from rl.callbacks import MetricHistory, Progress  # in the task: the driver needs none of the trainer
    from rl.sft import sft_train

    start_task(cfg.sft.cpus)
    out, folder = ctx.out_dir, RunFolder(cfg.run_dir)
    tok = load_tokenizer(cfg)
    model = new_model(cfg.model, tok, cfg.run.seed, base_dir=folder.base)
    if cfg.sft.gpus:
        model = model.to("cuda")
    cold = read_jsonl(cold_start or folder.data("cold_start"))
    run = tracking.start_stage_run(cfg, stage)
    before = evaluate_stage(model, tok, cfg, f"{stage}: eval before", benchmarks=False, no_tool=False)
    params = cfg.sft if max_steps < 0 else dataclasses.replace(cfg.sft, epochs=1e6, max_steps=max_steps)
    start = time.monotonic()
    metrics = sft_train(model, tok, cold, out / "trainer", params, seed=cfg.run.seed, use_cpu=not cfg.sft.gpus,
                        report_to=tracking.report_to(cfg), time_budget_s=time_budget_s or cfg.sft.time_budget_s,
                        callbacks=[Progress(f"{stage}: train"), MetricHistory(out / "history.jsonl")],
                        mask_tool_outputs=cfg.grpo.tools.enabled)  # tool traces: the model's own tokens only
    train_time = time.monotonic() - start
    save_checkpoint(model, tok, out)
    if metrics.get("adapter_dir"):  # LoRA: the adapter alone in <stage>/adapter/, as GRPO leaves it (publish --adapter)
        Path(metrics["adapter_dir"]).replace(out / "adapter")
    after = evaluate_stage(model, tok, cfg, f"{stage}: eval")
    result = {
        "accuracy": after["accuracy"], "accuracy_before": before["accuracy"], "params": count_params(model),
        "train_time_s": train_time, "steps": metrics["steps"], "train_loss": metrics["train_loss"],
        "num_tokens": metrics["num_tokens"], "num_examples": len(cold), "samples": after["samples"],
        "benchmarks": after.get("benchmarks", {}), "unparsed_gold": after.get("unparsed_gold", 0),
        **({"masked_tool_tokens": metrics["masked_tool_tokens"]} if "masked_tool_tokens" in metrics else {}),
        **{k: after[k] for k in ("accuracy_no_tool", "tool_gain", "tool_calls_per_sample", "tool_error_rate") if k in after},
    }
    if cfg.grpo.tools.enabled:  # its cold-start traces call the tool: evaluate it with the tool (rayzero eval)
        from pipelines.tool_use import mark_checkpoint

        mark_checkpoint(out, cfg.grpo.tools)
    tracking.finish(run, {"eval/accuracy": after["accuracy"], "eval/accuracy_before": before["accuracy"],
                          "params": result["params"]}, eval_samples=after["samples"], checkpoint=out)
    return result
