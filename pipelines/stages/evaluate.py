"""The `eval` stage: every finished checkpoint named in `eval.stages`, measured with test-time scaling
(pass@k, maj@k, best-of-N, weighted vote, beam search) on the held-out split. Results go to
`eval/results.json` and into the run report under each measured stage."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cluster.runtime import run_task
from pipelines.report import tracking
from pipelines.run_folder import RunFolder, read_jsonl, write_json
from pipelines.scoring import evaluate_checkpoint
from pipelines.stages.base import Resources, Stage, StageContext, StageError, device_for, start_task

if TYPE_CHECKING:
    from pipelines.config.schema import PipelineConfig


class EvalStage(Stage):
    name = "eval"
    checkpoint = False  # it measures the others' checkpoints and leaves none
    measures_others = True
    positive = ("max_new_tokens", "batch_size", "cpus")
    non_negative = ("samples", "num_problems", "gpus")

    def checked(self, cfg: "PipelineConfig") -> bool:
        return True  # eval.benchmarks and the greedy evaluation after every stage use the section too

    def check_config(self, cfg: "PipelineConfig") -> None:
        from pipelines.config.checks import choice, fail, params_rules
        from pipelines.config.schema import ConfigError
        from pipelines.stages import checkpoint_stages
        from pipelines.tasks.benchmarks import BenchmarkError, parse_benchmarks
        from rewards.registry import available_rewards

        e = cfg.eval
        try:
            parse_benchmarks(e.benchmarks, cfg.task)
        except BenchmarkError as err:
            raise ConfigError(str(err)) from None
        params_rules("eval", e)
        for stage in e.stages:  # stages that leave a model, by name
            choice("eval.stages", stage, checkpoint_stages())
        if not e.samples:
            return
        if any(k < 1 for k in e.ks) or not any(k <= e.samples for k in e.ks):
            fail("eval.ks", list(e.ks), f"need values >= 1 and at least one <= eval.samples={e.samples}")
        if e.temperature <= 0:
            fail("eval.temperature", e.temperature, "must be > 0 (sampling)")
        if e.scorer:
            choice("eval.scorer", e.scorer, available_rewards())
        if e.beam_widths and not (e.scorer or e.prm_path):
            fail("eval.beam_widths", list(e.beam_widths), "beam search needs a step scorer: set eval.scorer or eval.prm_path")
        if not any(getattr(cfg, s).enabled for s in e.stages):
            fail("eval.stages", list(e.stages), "none of these stages is enabled, so eval.samples > 0 has nothing to "
                 "measure; name an enabled stage, or set eval.samples=0")

    def depends_on(self, cfg: "PipelineConfig") -> tuple[str, ...]:
        return tuple(s for s in cfg.eval.stages if getattr(cfg, s).enabled)

    def resources(self, cfg: "PipelineConfig") -> Resources:
        return Resources.single(self.name, cfg.eval.cpus, cfg.eval.gpus)

    def run(self, cfg: "PipelineConfig", ctx: StageContext) -> dict:
        folder = RunFolder(cfg.run_dir)
        checkpoints = {s: str(folder.stage(s)) for s in cfg.eval.stages if (folder.stage(s) / "manifest.json").exists()}
        if not checkpoints:
            raise StageError(f"eval: none of eval.stages={list(cfg.eval.stages)} has a finished checkpoint")
        return run_task(_measure, cfg, ctx, checkpoints, num_cpus=cfg.eval.cpus, num_gpus=cfg.eval.gpus, name="eval")

    def gpu_memory(self, cfg: "PipelineConfig", policy, gpu_gib: float, prompt_tokens: int) -> dict:
        """One task holding the largest model it measures: the policy, or a distillation student."""
        from pipelines.memory_plan import eval_estimate
        from pipelines.stages.distill import TRUNCATE_FROM, stage_teachers

        students = cfg.distill.enabled and "distill" in cfg.eval.stages
        return {f"{self.name}-0": eval_estimate(cfg, policy, prompt_tokens, students, stage_teachers(), TRUNCATE_FROM)}

    def memory_knobs(self, cfg: "PipelineConfig") -> list:
        from pipelines.memory_plan import halves

        return [(f"eval.batch_size={b}", {"eval.batch_size": b}) for b in halves(cfg.eval.batch_size)]


def _measure(cfg: "PipelineConfig", ctx: StageContext, checkpoints: dict[str, str]) -> dict:
    start_task(cfg.eval.cpus)
    rows = read_jsonl(RunFolder(cfg.run_dir).data("heldout"))
    run = tracking.start_stage_run(cfg, "eval")
    device = device_for(cfg.eval.gpus)
    results = {stage: evaluate_checkpoint(path, rows, cfg.eval, seed=cfg.run.seed, desc=f"eval {stage}", device=device)
               for stage, path in checkpoints.items()}
    write_json(ctx.out_dir / "results.json", results)
    last = list(results)[-1]
    tracking.finish(run, {f"{s}/{k}": v for s, r in results.items() for k, v in r.items() if isinstance(v, (int, float))})
    return {"accuracy": results[last]["accuracy"], "params": results[last]["params"], "checkpoints": results,
            "flops": sum(r["flops"] for r in results.values())}
