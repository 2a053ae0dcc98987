"""Experiment tracking: one wandb run per stage, grouped by pipeline run (`job_type` = stage, the resolved
config logged), all wandb files in the run folder.

What each stage's run holds:
- the trainer's metrics (TRL logs per-reward means/stds, KL when `grpo.beta > 0`, clip ratios, entropy,
  completion lengths; `rl.callbacks.Throughput` adds `tokens_per_s`, the rollout pool `rollout/*`);
- `rollouts`: a table of sample rollouts (prompt, completion, each reward, advantage) every
  `grpo.log_rollouts_every` GRPO steps (also written to `<stage>/rollouts.jsonl`);
- `eval/samples`: held-out samples (prompt, completion, answer, score) after the stage;
- the stage's final checkpoint as a `model` artifact, by reference to the files in the run folder
  (`run.wandb_checkpoints`: reference | copy | none).

Runs are online when the user has wandb credentials and asked for `run.wandb_mode=online`, offline
otherwise; `sync_hint` gives the command that uploads offline runs later.
"""

from __future__ import annotations

import json
import math
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipelines.config.schema import PipelineConfig, to_dict

WANDB_MODES = ("offline", "online", "disabled")
CHECKPOINT_MODES = ("reference", "copy", "none")  # run.wandb_checkpoints: how a stage's final checkpoint is logged

# Files of a Hugging Face checkpoint folder that make up the model artifact (not manifests, metrics,
# traces or trainer scratch).
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "tokenizer.model",
               "vocab.json", "merges.txt", "model.safetensors.index.json")


def has_credentials() -> bool:
    """A wandb API key in the environment, or a `wandb login` entry in ~/.netrc for the wandb host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolved_mode(cfg: PipelineConfig) -> str:
    mode = cfg.run.wandb_mode
    if mode == "online" and not has_credentials():
        return "offline"  # no credentials: log locally, `wandb sync` later
    return mode


def wandb_env(cfg: PipelineConfig) -> dict[str, str]:
    """Environment that keeps every wandb file (runs, artifacts staging, caches) inside the run folder."""
    root = (cfg.run_dir / "wandb").resolve()
    return {
        "WANDB_MODE": resolved_mode(cfg),
        "WANDB_DIR": str(root.parent),
        "WANDB_DATA_DIR": str(root / "data"),
        "WANDB_CACHE_DIR": str(root / "cache"),
        "WANDB_CONFIG_DIR": str(root / "config"),
        "WANDB_ARTIFACT_DIR": str(root / "artifacts"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
    }


def sync_hint(cfg: PipelineConfig) -> str | None:
    """The line the driver prints at the end: where the runs are and, for offline runs, the command that
    uploads them (`wandb sync` takes run folders; wandb 0.31 removed `--sync-all`)."""
    mode = resolved_mode(cfg)
    if mode == "disabled":
        return None
    root = (cfg.run_dir / "wandb").resolve()
    if mode == "online":
        return f"wandb: runs uploaded to project '{cfg.run.wandb_project}', group '{cfg.run.name}' (files in {root})"
    return f"wandb: offline runs in {root}; upload with: wandb sync {root}/offline-run-*"


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


def attach_grpo(trainer, cfg: PipelineConfig, out: Path) -> None:
    """Rank 0's tracking callbacks on a GRPO trainer: metric history (`<stage>/history.jsonl`), tokens/s,
    and the rollout table every `grpo.log_rollouts_every` steps."""
    from rl.callbacks import MetricHistory, RolloutSamples, Throughput

    trainer.add_callback(Throughput(trainer))
    trainer.add_callback(MetricHistory(out / "history.jsonl"))
    every = getattr(cfg.grpo, "log_rollouts_every", 0)
    if every > 0:
        trainer.add_callback(RolloutSamples(trainer, every, RolloutSink(out / "rollouts.jsonl")))


def write_history(path: Path, log_history: list[dict]) -> None:
    """`<stage>/history.jsonl`: every logged metric dict of a trainer (non-finite values as null), the
    file the plots are drawn from."""
    finite = lambda v: None if isinstance(v, float) and not math.isfinite(v) else v  # noqa: E731
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({k: finite(v) for k, v in e.items()}) + "\n" for e in log_history))


class RolloutSink:
    """Appends sample rollouts to a JSONL file and logs them as the `rollouts` wandb table."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, step: int, rows: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **r}) + "\n")
        log_table("rollouts", [{"step": step, **r} for r in rows], step=step)


def log_table(key: str, rows: list[dict], step: int | None = None) -> None:
    """Log `rows` (dicts with the same keys) as a wandb table under `key` on the active run, if any.
    `train/global_step` is the x axis TRL's WandbCallback declares, so tables line up with the curves."""
    import wandb

    if wandb.run is None or not rows:
        return
    columns = list(rows[0])
    table = wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    wandb.run.log({key: table, **({"train/global_step": step} if step is not None else {})})


def log_model(run, checkpoint: Path, metadata: dict[str, Any] | None = None, how: str = "reference") -> None:
    """The checkpoint folder's model files as a wandb artifact of type `model`, named `<run>-<stage>`: once per
    stage, for its final checkpoint. `how="reference"` (the default) records each file by reference
    (`file://` URI, size and md5) instead of copying it into wandb's staging area: the files already exist in
    the run folder, and copies doubled its size (a SmolLM2 run's wandb folder held 1.1 GB of them). The
    stage writes into `<stage>.partial/`, which the driver renames to `<stage>/` once the stage succeeded,
    so the references name the final folder. `how="copy"`: copied (an online run whose files should be
    downloadable elsewhere)."""
    import wandb

    files = [p for p in sorted(Path(checkpoint).iterdir())
             if p.is_file() and (p.name in MODEL_FILES or p.suffix == ".safetensors")]
    if not files:
        raise FileNotFoundError(f"tracking: no model files in {checkpoint} to log as an artifact")
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{run.group or 'run'}-{run.job_type}")
    art = wandb.Artifact(name, type="model", metadata={k: v for k, v in (metadata or {}).items()
                                                        if isinstance(v, (int, float, str, bool))})
    final = Path(checkpoint).resolve()
    if final.suffix == ".partial":
        final = final.with_suffix("")
    for p in files:
        if how == "copy":
            art.add_file(str(p), name=p.name)
            continue
        for entry in art.add_reference(p.resolve().as_uri(), name=p.name):  # md5 of the content, no copy
            entry.ref = (final / p.name).as_uri()
    run.log_artifact(art, aliases=["latest"])


def finish(run, summary: dict | None = None, *, eval_samples: list[dict] | None = None,
           checkpoint: str | Path | None = None) -> None:
    """End the stage's run: summary values, the `eval/samples` table, the checkpoint artifact."""
    if run is None:
        return
    if eval_samples:
        cols = ("prompt", "completion", "answer", "score")
        log_table("eval/samples", [{c: s.get(c) for c in cols} for s in eval_samples])
    how = (run.config.get("run") or {}).get("wandb_checkpoints", "reference")  # the stage's logged config
    if checkpoint is not None and how != "none":
        log_model(run, Path(checkpoint), summary, how)
    if summary:
        for k, v in summary.items():
            run.summary[k] = v
    run.finish()
    # Close the connection to wandb's service now: stages run in Ray worker processes, and when Ray ends
    # one the atexit teardown finds the service gone and prints a ConnectionResetError traceback.
    import wandb

    wandb.teardown()
