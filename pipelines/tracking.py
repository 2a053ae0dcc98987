"""Experiment tracking: one wandb run per stage, grouped by pipeline run, all files in the run folder."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.config import PipelineConfig, to_dict


def wandb_env(cfg: PipelineConfig) -> dict[str, str]:
    """Environment that keeps every wandb file (runs, artifacts staging, caches) inside the run folder."""
    root = (cfg.run_dir / "wandb").resolve()
    mode = cfg.run.wandb_mode
    if mode == "online" and not os.environ.get("WANDB_API_KEY") and not Path.home().joinpath(".netrc").exists():
        mode = "offline"  # no credentials: log locally, `wandb sync` later
    return {
        "WANDB_MODE": mode,
        "WANDB_DIR": str(root.parent),
        "WANDB_DATA_DIR": str(root / "data"),
        "WANDB_CACHE_DIR": str(root / "cache"),
        "WANDB_CONFIG_DIR": str(root / "config"),
        "WANDB_ARTIFACT_DIR": str(root / "artifacts"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
    }


def start_stage_run(cfg: PipelineConfig, stage: str):
    """Start the stage's wandb run (None when wandb is disabled). TRL's WandbCallback reuses it."""
    if cfg.run.wandb_mode == "disabled":
        return None
    os.environ.update(wandb_env(cfg))
    for key in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    import wandb

    return wandb.init(project=cfg.run.wandb_project, group=cfg.run.name, job_type=stage,
                      name=f"{cfg.run.name}-{stage}", config=to_dict(cfg), dir=os.environ["WANDB_DIR"],
                      reinit="finish_previous")


def report_to(cfg: PipelineConfig) -> str:
    return "none" if cfg.run.wandb_mode == "disabled" else "wandb"


def finish(run, summary: dict | None = None) -> None:
    if run is None:
        return
    if summary:
        for k, v in summary.items():
            run.summary[k] = v
    run.finish()
