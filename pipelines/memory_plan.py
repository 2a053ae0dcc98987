"""A recipe's GPU memory plan: what each GPU actor of each enabled stage needs (`rl.memory`'s estimates from the
model's config.json and the stage's settings) and whether the actors sharing a GPU fit on it.

`rayzero run` calls `check` before it prepares data or starts Ray (a recipe with no GPU actor returns at
once, reading nothing); `rayzero cluster plan` calls it before placing and `check_placed` on the GPUs Ray
chose, and prints each actor's `memory_gib`. A GPU that does not fit is one line naming the GPU, the
estimate and a setting that makes it fit (tried on the estimator, in the order of the stage's `memory_knobs`).
Which actors hold a GPU, their estimates and which share one GPU are declared by each stage (`Stage.gpu_actors`,
`gpu_memory`, `gpu_groups`); the estimators they use are here.

Only config.json is read: a local folder (it alone is enough) or, for a hub id, that one file through the hub
cache (`huggingface_hub.hf_hub_download`). A `gguf` model (its shape is known only after conversion) is left
out of the plan. The prompt length is not known before the data is tokenized: `PROMPT_TOKENS` stands for it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Callable

from pipelines.config.schema import ConfigError, ModelSection, PipelineConfig
from rl import memory as mem

PROMPT_TOKENS = 512  # tokens a prompt is assumed to take (the completion lengths come from the recipe)
HALF = ("bfloat16", "float16")


class MemoryPlanError(ConfigError):
    """A GPU whose actors' estimated memory exceeds the card; one line naming the GPU and the fix."""


@functools.lru_cache(maxsize=32)
def model_config(path: str, revision: str = "", field: str = "model.path") -> dict:
    """config.json of an `hf` model: from a local folder, or the hub (that file alone, through the cache)."""
    from pipelines.models import is_hub_id

    if not is_hub_id(path):
        file = Path(path).expanduser() / "config.json"
        if not file.is_file():
            raise MemoryPlanError(f"{field}={path!r}: not a model folder (no config.json)")
        return json.loads(file.read_text())
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(path, "config.json", revision=revision or None)).read_text())
    except LocalEntryNotFoundError:
        why = "the hub is offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "the hub cannot be reached"
        raise MemoryPlanError(f"{field}={path}: its config.json is not in the Hugging Face cache and {why}; fetch it "
                              f"once with network (hf download {path} config.json), or set {field} to a local "
                              "folder") from None
    except Exception as e:  # hub errors (gated, missing repo or revision): one line, as for the weights
        raise MemoryPlanError(f"{field}={path}: its config.json could not be read ({' '.join(str(e).split())[:160]})"
                              ) from None


def shape(m: ModelSection, field: str = "model", teacher: mem.ModelShape | None = None) -> mem.ModelShape | None:
    """The shape of a model section (None for `gguf`, known only after conversion)."""
    if m.kind == "tiny":
        return mem.ModelShape(m.hidden_size, m.num_layers, m.num_heads, m.num_heads, m.hidden_size // m.num_heads,
                              m.intermediate_size, m.vocab_size, tied=True)
    if m.kind == "hf":
        config = model_config(m.path, m.revision, f"{field}.path")
        try:
            return mem.ModelShape.from_config(config)
        except (KeyError, TypeError, ValueError) as e:
            raise MemoryPlanError(f"{field}.path={m.path}: its config.json has no usable {e} (the memory plan needs "
                                  "hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size); "
                                  "run.gpu_memory_gib=0 skips the plan") from None
    if m.kind == "truncate" and teacher is not None:
        return dataclasses.replace(teacher, layers=m.num_layers)
    return None


def _teacher(name: str, policy: mem.ModelShape | None, stages: tuple[str, ...]) -> mem.ModelShape | None:
    if name in stages:  # a stage of this run: the policy's architecture
        return policy
    if not (Path(name) / "config.json").is_file():  # a teacher folder that a run has not written yet
        return None
    return shape(ModelSection(kind="hf", path=name), f"distill.teachers.{name}")


def _largest(shapes) -> mem.ModelShape | None:
    known = [s for s in shapes if s is not None]
    return max(known, key=lambda s: s.params) if known else None


def _learner(cfg: PipelineConfig, s: mem.ModelShape, gpu_gib: float, prompt: int) -> mem.Estimate:
    g = cfg.grpo
    micro, _, spg = g.batch_layout(g.num_workers)
    if g.zero_stage:  # DeepSpeed's bf16 (from grpo.bf16) casts the model to bf16 over fp32 masters
        wb, masters = (2, g.dtype == "float32") if g.bf16 or g.dtype in HALF else (4, False)
    else:  # GRPOParams.learner_precision on a bf16-capable GPU
        auto = "fp32" if (g.dtype != "float32" or g.lora.enabled) else "bf16"
        bf16 = (auto if g.precision == "auto" else g.precision) == "bf16"
        wb, masters = (2, g.master_weights and g.dtype == "float32") if bf16 or g.dtype in HALF else (4, False)
    seq = prompt + g.max_completion_length
    in_learner_hf = not g.rollout_workers and g.rollout_engine == "hf"
    t = mem.Training(zero_stage=g.zero_stage, data_parallel=g.num_workers, weight_bytes=wb, master_weights=masters,
                     offload_optimizer=g.offload_optimizer, offload_params=g.offload_params, lora_r=g.lora.r,
                     lora_targets=tuple(g.lora.target_modules), micro_batch=micro, seq_len=seq,
                     gradient_checkpointing=g.gradient_checkpointing, activation_bytes=2 if (wb == 2 or g.bf16) else 4,
                     reference_model=g.beta > 0, generation_rows=micro * spg if in_learner_hf else 0)
    est = mem.training(s, t)
    if g.in_learner_vllm and g.vllm.mode == "colocate":  # TRL's own engine on the learner's GPU
        engine = _vllm(cfg, s, gpu_gib, seq)
        added = mem.gpu_total([est, engine]) - est.total
        est = mem.Estimate({**est.parts, "vllm": added}, est.idle + engine.idle, engine.problem)
    return est


def _vllm(cfg: PipelineConfig, s: mem.ModelShape, gpu_gib: float, seq: int) -> mem.Estimate:
    v = cfg.grpo.vllm
    return mem.vllm(s, gpu_gib=gpu_gib, utilization=v.gpu_memory_utilization, tensor_parallel=v.tensor_parallel_size,
                    weight_bytes=4 if v.dtype == "float32" else 2, max_model_len=v.max_model_len or seq,
                    sleeping=v.sleep_level > 0)


def grpo_estimates(cfg: PipelineConfig, policy, gpu_gib: float, prompt: int) -> dict[str, mem.Estimate]:
    """GRPO's learners and rollout engines."""
    g = cfg.grpo
    out = {f"learner-{i}": _learner(cfg, policy, gpu_gib, prompt) for i in range(g.num_workers)}
    seq = prompt + g.max_completion_length
    if g.rollout_engine == "vllm":
        engine = _vllm(cfg, policy, gpu_gib, seq)
    else:  # rl.rollout's HF engine: bf16 on a GPU, batches of at most 256 rows
        _, accumulation, spg = g.batch_layout(g.num_workers)
        rows = g.prompts_per_step * g.num_generations * spg // max(1, accumulation) // max(1, g.rollout_workers)
        engine = mem.inference(policy, weight_bytes=2, rows=min(256, max(1, rows)), seq_len=seq)
    out.update({f"rollout-{i}": engine for i in range(g.rollout_workers)})
    return out


def estimates(cfg: PipelineConfig, gpu_gib: float,
              prompt_tokens: int = PROMPT_TOKENS) -> dict[str, dict[str, mem.Estimate]]:
    """{stage: {actor: Estimate}} for every actor that holds a GPU (per GPU it spans; each stage says which
    and estimates them: `Stage.gpu_actors`, `Stage.gpu_memory`); an actor whose model shape is unknown
    (gguf) is left out."""
    from pipelines.stages import STAGES

    gpu_actors = {st: st.gpu_actors(cfg) for st in STAGES if st.enabled(cfg)}
    gpu_actors = {k: v for k, v in gpu_actors.items() if v}
    if not gpu_actors:
        return {}
    policy = shape(cfg.model)
    out: dict[str, dict[str, mem.Estimate]] = {}
    for stage, names in gpu_actors.items():
        found = stage.gpu_memory(cfg, policy, gpu_gib, prompt_tokens)
        out[stage.name] = {n: found[n] for n in names if found.get(n) is not None}
    return out


def sft_estimate(cfg: PipelineConfig, s: mem.ModelShape) -> mem.Estimate:
    """One SFT training task (the sft section's recipe)."""
    p = cfg.sft
    wb = 2 if p.dtype in HALF else 4
    return mem.training(s, mem.Training(weight_bytes=wb, lora_r=p.lora.r, lora_targets=tuple(p.lora.target_modules),
                                        micro_batch=p.batch_layout(1)[0], seq_len=p.max_length,
                                        gradient_checkpointing=p.gradient_checkpointing,
                                        activation_bytes=2 if (p.bf16 or wb == 2) else 4))


def _students(cfg: PipelineConfig, policy, stages: tuple[str, ...], truncate_from: str) -> dict[str, mem.ModelShape | None]:
    d = cfg.distill
    out = {}
    for name, m in d.students.items():
        teacher = _teacher(m.path or truncate_from, policy, stages) if m.kind == "truncate" else None
        out[name] = shape(m, f"distill.students.{name}", teacher)
    return out


def distill_estimates(cfg: PipelineConfig, policy, prompt: int, stages: tuple[str, ...],
                      truncate_from: str) -> dict[str, mem.Estimate | None]:
    """Distillation's teacher rollout engines and its students' training task; `stages`: teachers named by
    stage (the policy's shape), `truncate_from`: the stage a truncated student without a path comes from."""
    d = cfg.distill
    teachers = _largest(_teacher(t, policy, stages) for mix in d.mixes.values() for t in mix.teachers)
    rows = min(256, max(1, d.num_prompts * d.samples_per_prompt // max(1, d.rollout_workers)))
    out: dict[str, mem.Estimate | None] = {}
    if teachers:
        engine = mem.inference(teachers, weight_bytes=2, rows=rows, seq_len=prompt + d.max_new_tokens)
        out.update({f"rollout-{i}": engine for i in range(d.rollout_workers)})
    trained = [mem.training(s, mem.Training(weight_bytes=4, micro_batch=d.batch_size, seq_len=d.max_length,
                                            activation_bytes=2 if d.bf16 else 4))
               for s in _students(cfg, policy, stages, truncate_from).values() if s is not None]
    if trained:
        e = max(trained, key=lambda e: e.total)
        if d.method == "logit" and teachers:  # the teacher scores the student's batches beside it
            e = mem.Estimate({**e.parts, "teacher": 4 * teachers.params / mem.GIB}, e.idle)
        out["distill-0"] = e
    return out


def eval_estimate(cfg: PipelineConfig, policy, prompt: int, students: bool, stages: tuple[str, ...],
                  truncate_from: str) -> mem.Estimate | None:
    """The eval task, holding the largest model it measures (the policy, or with `students` a student)."""
    s = _largest([policy, *(_students(cfg, policy, stages, truncate_from).values() if students else ())])
    return s and mem.inference(s, weight_bytes=2, rows=cfg.eval.batch_size, seq_len=prompt + cfg.eval.max_new_tokens)


def declared_groups(cfg: PipelineConfig, stage: str, names: list[str]) -> list[list[str]]:
    """Actors that share one GPU by construction (`Stage.gpu_groups`, e.g. a colocated learner and its engine)."""
    from pipelines.stages import stage_named

    return stage_named(stage).gpu_groups(cfg, names)


def gpu_gib_of(cfg: PipelineConfig, gpu_gib: float | None) -> float:
    return float(cfg.run.gpu_memory_gib if gpu_gib is None else gpu_gib)


def load(cfg: PipelineConfig, stage: str, names: list[str], est: dict[str, mem.Estimate]) -> float:
    """GiB one GPU holding actors `names` of `stage` needs (those with an estimate)."""
    from pipelines.stages import stage_named

    concurrent = stage_named(stage).generates_while_training(cfg)
    return mem.gpu_total([est[n] for n in names if n in est], concurrent)


def check(cfg: PipelineConfig, gpu_gib: float | None = None, prompt_tokens: int = PROMPT_TOKENS,
          groups: Callable[[str, list[str]], list[tuple[str, list[str]]]] | None = None) -> dict:
    """Raise MemoryPlanError (one line) for the first GPU whose actors do not fit `gpu_gib` (default
    `run.gpu_memory_gib`; 0 = no check, nothing read). `groups(stage, actors)` -> [(GPU label, actor names
    on it)] as placed (default: `declared_groups`). Returns the estimates ({} when no stage holds a GPU)."""
    card = gpu_gib_of(cfg, gpu_gib)
    if card <= 0:
        return {}
    found = estimates(cfg, card, prompt_tokens)
    for stage, est in found.items():
        for label, names in (groups(stage, list(est)) if groups else
                             [(f"the GPU of {' and '.join(g)}", g) for g in declared_groups(cfg, stage, list(est))]):
            names = [n for n in names if n in est]
            total = load(cfg, stage, names, est)
            problem = next((f"{n}: {est[n].problem}" for n in names if est[n].problem), "")
            if total > card or problem:
                detail = "; ".join(f"{n}: {est[n].describe()}" for n in names)
                what = problem or f"needs ~{total:.1f} GiB, more than the card's {card:g} GiB ({detail})"
                raise MemoryPlanError(f"stage {stage}, {label}: {what}; {_fix(cfg, stage, names, card, prompt_tokens)} "
                                      "(estimated from config.json, docs/gpu.md; run.gpu_memory_gib sets the card, 0 skips "
                                      "this check)")
    return found


def _fix(cfg: PipelineConfig, stage: str, names: list[str], card: float, prompt: int) -> str:
    """The first setting (from the stage's `memory_knobs`) under which these actors fit, else the settings to look at."""
    from pipelines.stages import stage_named

    knobs = stage_named(stage).memory_knobs(cfg)
    for label, overrides in knobs:
        try_cfg = cfg
        for key, value in overrides.items():
            try_cfg = _set(try_cfg, key, value)
        est = estimates(try_cfg, card, prompt).get(stage, {})
        if all(n in est for n in names) and load(try_cfg, stage, names, est) <= card and not any(
                est[n].problem for n in names):
            return f"it fits with {label}"
    tried = ", ".join(dict.fromkeys(key for _, overrides in knobs for key in overrides))
    return (f"no single setting makes it fit: combine {tried}, or use GPUs with more memory" if knobs
            else "use GPUs with more memory or a smaller model")


def halves_of_micro_batch(micro: int, batch: int, section: str) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{section}.micro_batch_size={m}", {f"{section}.micro_batch_size": m}) for m in halves(micro)
            if batch % m == 0]


def halves(n: int) -> list[int]:
    out = []
    while n > 1:
        n //= 2
        out.append(n)
    return out


def _set(obj: Any, dotted: str, value: Any) -> Any:
    head, _, rest = dotted.partition(".")
    return dataclasses.replace(obj, **{head: _set(getattr(obj, head), rest, value) if rest else value})
