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
