"""Every rule a config must satisfy, checked once when it is loaded (`check`), before Ray starts or any
file is written. A failure is one `ConfigError` line naming the field.

The rules of the run-wide sections (run, model, task, eval's choices, publish) live here; each stage's own
section rules and what it needs from the stages before it live in its module (`Stage.check_config`,
`positive`/`non_negative`), read from the registry. Choices are imported from the modules that implement
them (the task registry, the model kinds, ...), so a rule and its implementation cannot disagree. What the
cluster can hold is checked later, once the driver is connected (the stages declare their resources).
"""

from __future__ import annotations

import re

from pipelines.config.checks import bounds, choice, fail, model
from pipelines.config.schema import ConfigError, PipelineConfig

RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# (section, fields): each must be > 0 / >= 0 (a stage's own: its `positive` / `non_negative`).
POSITIVE = {"task": ("num_heldout",)}
NON_NEGATIVE = {"run": ("num_cpus", "gpu_memory_gib"), "task": ("num_cold_start", "num_train", "max_prompt_chars")}


def check(cfg: PipelineConfig) -> None:
    """Raise ConfigError (one line, naming the field) for the first rule `cfg` breaks."""
    from pipelines.stages import STAGES

    checked = [s for s in STAGES if s.checked(cfg)]
    for s in checked:
        bounds(s.name, getattr(cfg, s.name), positive=s.positive)
    bounds("task", cfg.task, positive=POSITIVE["task"])
    for section, fields in NON_NEGATIVE.items():
        bounds(section, getattr(cfg, section), non_negative=fields)
    for s in checked:
        bounds(s.name, getattr(cfg, s.name), non_negative=s.non_negative)
    _run(cfg)
    model(cfg.model, "model")
    _task(cfg)
    for s in checked:
        s.check_config(cfg)
    _publish(cfg)


def _run(cfg: PipelineConfig) -> None:
    from pipelines.report.tracking import CHECKPOINT_MODES, WANDB_MODES

    name = cfg.run.name
    # The name becomes a folder under output_dir: '', '.', '..', separators or an absolute path would
    # put the run's files (and the stage swaps that delete folders) somewhere else.
    if not RUN_NAME.fullmatch(name) or name in (".", ".."):
        fail("run.name", name, "must be a plain folder name (letters, digits, '.', '_', '-'; no path separators)")
    if not cfg.run.output_dir.strip():
        fail("run.output_dir", cfg.run.output_dir, "must name a folder (e.g. runs)")
    choice("run.wandb_mode", cfg.run.wandb_mode, WANDB_MODES)
    choice("run.wandb_checkpoints", cfg.run.wandb_checkpoints, CHECKPOINT_MODES)


def _task(cfg: PipelineConfig) -> None:
    from pipelines.tasks import names, task_rules

    t = cfg.task
    choice("task.name", t.name, names())
    if not 0.0 <= t.max_bad_fraction <= 1.0:
        fail("task.max_bad_fraction", t.max_bad_fraction, "must be within [0, 1] (the share of unusable rows to leave out)")
    problem = task_rules(t)
    if problem:
        raise ConfigError(problem)
    _prompts(cfg)


def _prompts(cfg: PipelineConfig) -> None:
    """The prompt template and the model agree (a chat template needs a tokenizer that has one); no training
    on a split a built-in benchmark measures. (What the rewards need of the prompts: the GRPO stage's rules.)"""
    from pipelines.tasks.benchmarks import contamination_reason

    t = cfg.task
    if t.chat_template and cfg.model.kind == "tiny":
        fail("task.chat_template", True, "a tiny model's tokenizer (trained at run time) has no chat template; "
             "use model.kind=hf or gguf, or task.chat_template=false")
    reason = contamination_reason(t)
    if reason:
        raise ConfigError(reason)


def _publish(cfg: PipelineConfig) -> None:
    from pipelines.publish.publish import published_stage
    from pipelines.stages import STAGES, checkpoint_stages, stage_named

    p = cfg.publish
    if p.enabled and not p.to:
        fail("publish.to", p.to, "required when publish.enabled=true: a directory or hf://<org>/<name>[@revision]")
    choice("publish.stage", p.stage, ("", *checkpoint_stages()))
    if p.enabled and p.adapter:
        stage = published_stage(cfg)
        owner = stage_named(stage).lora_section if stage else ""  # whose lora section trains its adapter
        if not owner or not getattr(cfg, owner).lora.enabled:
            fail("publish.adapter", True, f"stage {stage or '(none)'!r} trains no LoRA adapter" + (
                 f": set {owner}.lora.r > 0," if owner else ",") + " or publish the merged model (publish.adapter=false)")
    if p.enabled:
        stage = published_stage(cfg)
        if not stage:
            results = [s.name for s in STAGES if s.checkpoint and not s.comparison]
            fail("publish.enabled", True, f"no stage trains a model ({', '.join(results)} are all disabled): "
                 "nothing to publish")
        if not stage_named(stage).enabled(cfg):
            fail("publish.stage", stage, f"stage '{stage}' is not enabled in this recipe; publish a stage that runs")
