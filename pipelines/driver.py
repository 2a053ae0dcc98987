"""The pipeline driver: runs the enabled stages in order as Ray work, skipping stages that already
finished (a stage is finished when `<stage>/manifest.json` exists), and writes the run report.

A stage writes into `<stage>.partial/` and is moved to `<stage>/` only once it succeeded, so a crash
or Ctrl-C never leaves something that looks finished, and finished stages are never touched again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Callable

import yaml

from cluster.runtime import connect, run_task
from pipelines import distill, evaluate, grpo, sft
from pipelines.common import prepare_data
from pipelines.config import PipelineConfig, to_dict
from pipelines.report import print_table, write_markdown, write_report
from pipelines.tracking import sync_hint, wandb_env

STAGES = ("sft", "grpo", "distill", "baseline", "eval")


def enabled_stages(cfg: PipelineConfig) -> list[str]:
    return [s for s in STAGES if getattr(cfg, s).enabled]


def _warn_changed_config(cfg: PipelineConfig, path: Path, say: Callable[[str], None]) -> None:
    if not path.exists():
        return
    old, new = yaml.safe_load(path.read_text()) or {}, to_dict(cfg)
    changed = [f"{s}.{k}" for s in new if s not in ("run", "publish") for k in new[s] if old.get(s, {}).get(k) != new[s][k]]
    if changed:
        say(f"note: config differs from this run's earlier invocation ({', '.join(changed)}); "
            f"finished stages are kept as they are — use a new run.name to redo them")


def run_pipeline(cfg: PipelineConfig, say: Callable[[str], None] = print) -> dict:
    # Ray workers (Ray Train ones especially) run in their own working directories: every path they
    # get must be absolute.
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(Path(cfg.run.output_dir).resolve())))
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    say(f"rayzero: run '{cfg.run.name}' in {run_dir}")
    sizes = prepare_data(cfg)  # before Ray starts and before anything is written: bad data fails fast
    say("data: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    _warn_changed_config(cfg, run_dir / "config.yaml", say)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    cfg_dict = to_dict(cfg)
    resources = connect(cfg.run.ray_address, cfg.run.num_cpus, env=wandb_env(cfg))
    say(f"ray: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU")
    if cfg.grpo.enabled and not (run_dir / "grpo" / "manifest.json").exists():
        grpo.preflight(cfg)

    results: dict[str, dict] = {}
    stages = enabled_stages(cfg)
    for i, stage in enumerate(stages, 1):
        done = run_dir / stage / "manifest.json"
        if done.exists():
            results[stage] = json.loads(done.read_text())["metrics"]
            say(f"[{i}/{len(stages)}] {stage}: already finished, skipped (accuracy {results[stage]['accuracy']:.3f})")
            continue
        say(f"[{i}/{len(stages)}] {stage}: running")
        partial = run_dir / f"{stage}.partial"
        if partial.exists():
            shutil.rmtree(partial)  # leftovers of an interrupted attempt
        partial.mkdir()
        start = time.monotonic()
        metrics = _run_stage(stage, cfg, cfg_dict, partial, results)
        metrics["wall_time_s"] = time.monotonic() - start
        (partial / "manifest.json").write_text(json.dumps(
            {"stage": stage, "config": cfg_dict, "metrics": metrics, "finished_at": time.time()}, indent=2))
        final = run_dir / stage
        if final.exists():
            shutil.rmtree(final)  # a folder without manifest is an unfinished stage from an older layout
        partial.replace(final)
        results[stage] = metrics
        say(f"[{i}/{len(stages)}] {stage}: accuracy {metrics['accuracy']:.3f} in {metrics['wall_time_s']:.0f}s")

    report = write_report(cfg, results)
    print_table(report, say)
    from pipelines.plots import write_plots

    plots = write_plots(run_dir, report)
    say(f"plots: {', '.join(p.name for p in plots) or 'none'} in {run_dir / 'plots'}")
    say(f"report: {write_markdown(run_dir, report, plots)}")
    hint = sync_hint(cfg)
    if hint:
        say(hint)
    if cfg.publish.enabled:
        from pipelines.publish import publish_from_config

        publish_from_config(cfg, say)
    return report


def _previous_checkpoint(cfg: PipelineConfig, stage: str) -> str:
    order = [s for s in ("sft", "grpo") if getattr(cfg, s).enabled and STAGES.index(s) < STAGES.index(stage)]
    if order:
        return str(cfg.run_dir / order[-1])
    if cfg.model.kind == "hf":
        return cfg.model.path
    if cfg.model.kind == "gguf":
        return str(cfg.run_dir / "base")  # converted by prepare_data
    raise ValueError(f"{stage}: needs a trained policy; enable sft or set model.kind=hf with model.path")


def _run_stage(stage: str, cfg: PipelineConfig, cfg_dict: dict, out: Path, results: dict) -> dict:
    if stage == "sft":
        return run_task(sft.run, cfg_dict, str(out), num_cpus=cfg.sft.num_cpus, name="sft")
    if stage == "grpo":
        return grpo.run(cfg_dict, str(out), init_dir=_previous_checkpoint(cfg, "grpo"))
    if stage == "distill":
        return distill.run(cfg_dict, str(out))  # owns rollout actors, then trains in a Ray task
    if stage == "baseline":
        # SFT alone on the same cold-start data for the wall time SFT + GRPO trained; steps are set from
        # the SFT stage's measured speed so the learning-rate schedule completes within the budget.
        s, g = results.get("sft", {}), results.get("grpo", {})
        budget = s.get("train_time_s", 0.0) + g.get("train_time_s", 0.0)
        steps = int(budget * s["steps"] / s["train_time_s"]) if s.get("train_time_s") else -1
        return run_task(sft.run, cfg_dict, str(out), stage="baseline", time_budget_s=budget * 1.1,
                        max_steps=steps, num_cpus=cfg.sft.num_cpus, name="baseline")
    if stage == "eval":
        checkpoints = {s: str(cfg.run_dir / s) for s in cfg.eval.stages if (cfg.run_dir / s / "manifest.json").exists()}
        if not checkpoints:
            raise ValueError(f"eval: none of eval.stages={list(cfg.eval.stages)} has a finished checkpoint")
        return run_task(evaluate.run, cfg_dict, str(out), checkpoints=checkpoints, num_cpus=cfg.eval.num_cpus,
                        name="eval")
    raise ValueError(f"unknown stage {stage}")
