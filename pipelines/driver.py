"""The pipeline driver: owns the run folder, prepares the data, checks that every stage fits the cluster,
then walks the stages in order (pipelines/stages/), skipping those already finished, and writes the
report. It knows nothing stage-specific: each stage declares its resources and does its own work.

A stage writes into `<stage>.partial/` and becomes `<stage>/` only once it succeeded, with a manifest
holding the sha256 of its checkpoint files and of its inputs (the data, the checkpoints it read). A stage
is skipped only while all of these still match; otherwise it runs again and its old folder is moved
aside. SIGINT/SIGTERM stop the run with one line saying where it can resume.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path
from typing import Callable

import yaml

from pipelines.config import ConfigError
from pipelines.config.schema import PipelineConfig, to_dict
from pipelines.data import prepare_data
from pipelines.faults import disk_full_error
from pipelines.models import base_model_dir
from pipelines.run_folder import (RunFolder, RunLock, check_writable, read_manifest, remove_partial,
                                  removed_if_left_empty, why_not_finished, write_manifest)
from pipelines.stages import STAGES, Stage, StageContext, StageError
from pipelines.stages.base import quiet_libraries
from pipelines.tasks import TaskDataError


class RunInterrupted(Exception):
    """SIGINT/SIGTERM during a run; the message says what is kept and how to resume."""


def enabled_stages(cfg: PipelineConfig) -> list[Stage]:
    return [s for s in STAGES if s.enabled(cfg)]


def start_checkpoint(cfg: PipelineConfig, stage: Stage) -> Path | None:
    """What `stage` starts from: the last policy-training stage enabled before it, else the base model."""
    before = [s for s in STAGES[:STAGES.index(stage)] if s.trains_policy and s.enabled(cfg)]
    if before:
        return RunFolder(cfg.run_dir).stage(before[-1].name)
    return base_model_dir(cfg)  # the resolved hf model / converted gguf; None: a fresh tiny model (SFT builds it)


def run_pipeline(cfg: PipelineConfig, say: Callable[[str], None] = print) -> dict:
    # Ray workers (Ray Train ones especially) run in their own working directories: every path they
    # get must be absolute.
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(Path(cfg.run.output_dir).resolve())))
    from pipelines.memory_plan import check as check_memory

    check_memory(cfg)  # each GPU's estimated memory fits run.gpu_memory_gib, before anything is written (CPU: no-op)
    folder = RunFolder(cfg.run_dir)
    created = check_writable(folder.path)
    with removed_if_left_empty(created), RunLock(folder.path) as lock, _signals_stop_the_run():
        say(f"rayzero: run '{cfg.run.name}' in {folder.path}")
        if lock.took_over:
            say(f"note: took over the lock of an earlier run that is gone (pid {lock.took_over.get('pid')} "
                f"on {lock.took_over.get('host')})")
        try:
            return _run(cfg, folder, say)
        except OSError as e:  # the driver's own writes (data, manifests, report) on a full disk
            full = disk_full_error(e, Path(cfg.run.output_dir), folder.path, None)
            if full is None:
                raise
            raise full from None


def _run(cfg: PipelineConfig, folder: RunFolder, say: Callable[[str], None]) -> dict:
    data_digest = _prepare(cfg, folder, say)
    stages = enabled_stages(cfg)
    for stage in stages:  # every stage must fit before the first one starts
        stage.check_cluster(cfg)
    results: dict[str, dict] = {}
    digests: dict[str, str] = {}
    for i, stage in enumerate(stages, 1):
        _run_stage(cfg, folder, stage, f"[{i}/{len(stages)}] {stage.name}", data_digest, results, digests, say)
    return _finish(cfg, folder, results, say)


def _prepare(cfg: PipelineConfig, folder: RunFolder, say: Callable[[str], None]) -> str:
    """Prepare the data (before Ray starts: bad data fails fast), write config.yaml, connect to Ray; returns
    the data's digest."""
    from cluster.runtime import connect
    from pipelines.report.tracking import wandb_env

    quiet_libraries()
    try:
        sizes, data_digest = prepare_data(cfg, say)
    except KeyboardInterrupt:  # the data is cached only once complete (its manifest is written last)
        raise RunInterrupted("interrupted while preparing the data; nothing was trained yet. Run the same command "
                             "again to start.") from None
    say("data: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    _note_config_changes(cfg, folder, say)
    (folder.path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    resources = connect(cfg.run.ray_address, cfg.run.num_cpus, env=wandb_env(cfg))
    say(f"ray: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU")
    return data_digest


def _run_stage(cfg: PipelineConfig, folder: RunFolder, stage: Stage, tag: str, data_digest: str, results: dict,
               digests: dict, say: Callable[[str], None]) -> None:
    """Skip `stage` if its folder is finished with the same inputs, else run it into `<stage>.partial/` and
    rename that to `<stage>/` with its manifest; its metrics and digest go into `results` and `digests`."""
    from cluster.runtime import disconnect

    init = start_checkpoint(cfg, stage)
    inputs = {"data": data_digest, "init": _digest_of(init, digests, folder)}
    inputs.update({f"stage:{s}": _digest_of(folder.stage(s), digests, folder) for s in stage.depends_on(cfg)})
    final = folder.stage(stage.name)
    if final.exists():
        reason = why_not_finished(final, inputs)
        if reason is None:
            manifest = read_manifest(final)
            results[stage.name], digests[stage.name] = manifest["metrics"], manifest["digest"]
            say(f"{tag}: already finished, skipped (accuracy {results[stage.name]['accuracy']:.3f})")
            return
        say(f"{tag}: redoing it: {reason}; the old folder is kept as {folder.set_aside(final).name}/")
    say(f"{tag}: running")
    partial = folder.partial(stage.name)
    remove_partial(partial)  # leftovers of an interrupted attempt of ours (we hold the lock)
    partial.mkdir()
    ctx = StageContext(run_dir=folder.path, out_dir=partial, init=init, earlier=dict(results), inputs=inputs,
                       resources=stage.resources(cfg))
    start = time.monotonic()
    try:
        metrics = stage.run(cfg, ctx)
    except KeyboardInterrupt:
        disconnect()
        raise RunInterrupted(_resume_hint(cfg, stage)) from None
    except Exception as e:
        _stage_failed(cfg, folder, stage.name, results, e)
        raise
    metrics["wall_time_s"] = time.monotonic() - start
    manifest = write_manifest(partial, {"stage": stage.name, "config": to_dict(cfg), "metrics": metrics,
                                        "inputs": inputs, "finished_at": time.time()})
    partial.replace(final)
    results[stage.name], digests[stage.name] = metrics, manifest["digest"]
    say(f"{tag}: accuracy {metrics['accuracy']:.3f} in {metrics['wall_time_s']:.0f}s")


def _finish(cfg: PipelineConfig, folder: RunFolder, results: dict, say: Callable[[str], None]) -> dict:
    from pipelines.report.plots import write_plots
    from pipelines.report.report import print_table, write_markdown, write_report
    from pipelines.report.tracking import sync_hint

    report = write_report(cfg, results)
    print_table(report, say)
    plots = write_plots(folder.path, report)
    say(f"plots: {', '.join(p.name for p in plots) or 'none'} in {folder.path / 'plots'}")
    say(f"report: {write_markdown(folder.path, report, plots)}")
    hint = sync_hint(cfg)
    if hint:
        say(hint)
    if cfg.publish.enabled:
        from pipelines.publish.publish import publish_from_config

        publish_from_config(cfg, say)
    say(f"run folder: {_size(folder.path)} (wandb {_size(folder.path / 'wandb')}) in {folder.path}")
    return report


def _stage_failed(cfg: PipelineConfig, folder: RunFolder, stage: str, results: dict, e: Exception) -> None:
    """A stage that produced nothing (StageError, or a ConfigError/TaskDataError only its work could find)
    ends the run in one line, with report.json/report.md of the stages that finished; a full disk in one
    line naming the path (pipelines/faults.py). Anything else is left to propagate as it is."""
    from cluster.runtime import disconnect

    full = disk_full_error(e, Path(cfg.run.output_dir), folder.path, stage)
    if full is not None:
        disconnect()
        raise full from None
    if isinstance(e, (StageError, ConfigError, TaskDataError)):
        disconnect()  # the last line is ours, not a worker's output still being forwarded
        if not results:
            raise
        from pipelines.report.plots import write_plots
        from pipelines.report.report import write_markdown, write_report

        report = write_report(cfg, results)
        md = write_markdown(folder.path, report, write_plots(folder.path, report))
        raise StageError(f"{e}; the stages that finished ({', '.join(results)}) are reported in {md} and "
                         f"report.json") from None


def _size(path: Path) -> str:
    """Disk use of a folder's files (checkpoints, data, wandb), as a user reads it."""
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if total < 1024 or unit == "GiB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1024
    return ""


def _digest_of(path: Path | None, digests: dict[str, str], folder: RunFolder) -> str | None:
    """A stage folder's recorded digest (its manifest), or a path outside the run as it is."""
    if path is None:
        return None
    if path.parent == folder.path and path.name in digests:
        return digests[path.name]
    manifest = read_manifest(path) if path.parent == folder.path else None
    return manifest["digest"] if manifest and "digest" in manifest else str(path)


def _note_config_changes(cfg: PipelineConfig, folder: RunFolder, say: Callable[[str], None]) -> None:
    old = _yaml(folder.path / "config.yaml")
    if not old:
        return
    new = to_dict(cfg)
    changed = [f"{s}.{k}" for s in new if s not in ("run", "publish") for k in new[s] if old.get(s, {}).get(k) != new[s][k]]
    if changed:
        say(f"note: config differs from this run's earlier invocation ({', '.join(changed)}); "
            f"finished stages whose data and inputs are unchanged are kept — use a new run.name to redo them")


def _yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _resume_hint(cfg: PipelineConfig, stage: Stage) -> str:
    kept = "finished stages are kept" + stage.resume_hint(cfg)
    return f"interrupted during stage {stage.name}; {kept}. Run the same command again to resume."


class _signals_stop_the_run:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt) while a run is in progress, so both stop it the
    same way: the stage at work is abandoned (its `.partial` folder is redone next time)."""

    def __enter__(self):
        self.previous = signal.getsignal(signal.SIGTERM)
        try:
            signal.signal(signal.SIGTERM, self._raise)
        except ValueError:  # not the main thread (e.g. an embedding application): leave signals alone
            self.previous = None
        return self

    @staticmethod
    def _raise(_signum, _frame):  # a signal handler's signature
        raise KeyboardInterrupt

    def __exit__(self, *_exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
