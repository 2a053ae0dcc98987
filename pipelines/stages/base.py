"""The stage contract: what every stage of a run is to the rest of the system.

A stage is a named step with a config section, the resources it holds while it runs, and
`run(cfg, ctx) -> metrics`. The driver (pipelines/driver.py) walks the stages in registry order, gives each
a `StageContext` (where to write, what checkpoint to start from, what earlier stages measured), and
records what the stage wrote; it knows nothing stage-specific. `run` is called on the driver and puts
its work on the cluster itself (a Ray task, a learner worker group, actor pools: `cluster/`), so a
stage decides how it uses the resources it declared.

Everything else the system needs to know about a stage is declared on its class, with a default here
that fits a stage which needs nothing special: its config rules (`check_config`), which checkpoints it
reads (`depends_on`), how its FLOPs are counted (`flops`), what it adds to the report (`summary`,
`report_tables`, `base_accuracy`), the plots (`reference_lines`, `curve_label`) and the model card
(`card_tags`, `card_text`, `start_model`), its resume hint, its GPU memory estimate and the recipe fields
a resource error names. Config loading, the report, plots, card, publish, memory plan and remote plan
read these from the registry (`pipelines.stages.STAGES`) and never branch on a stage's name.

Adding a stage: one module with a `Stage` subclass and one line in `pipelines.stages.MODULES` (or, from
a module outside the package, `pipelines.stages.register(MyStage())` at import). Its config section is
either a field of `schema.PipelineConfig` or its own dataclass in `section` (read as `cfg.<name>`).
Stage modules are imported when a config is loaded: torch, transformers and Ray's workers are imported
inside the functions that need them, never at module level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

if TYPE_CHECKING:
    from pipelines.config.schema import PipelineConfig

Table = tuple[str, list[tuple[str, ...]]]  # (title, rows with a header row first), as report.md shows it


@dataclass(frozen=True)
class Actor:
    """One worker a stage places on the cluster (a Ray task, a learner rank, a rollout engine)."""

    name: str  # learner-<i>, rollout-<i>, reward-<i>, <stage>-0 for a single task
    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class Resources:
    """What a stage holds on the cluster at its peak (the driver checks every stage fits before the first
    one starts), and the workers it places (each must fit on one node)."""

    cpus: float = 0.0
    gpus: float = 0.0
    actors: tuple[Actor, ...] = ()

    @staticmethod
    def single(name: str, cpus: float, gpus: float = 0.0) -> "Resources":
        """A stage that runs as one task."""
        return Resources(cpus, gpus, (Actor(f"{name}-0", cpus, gpus),))


@dataclass(frozen=True)
class StageContext:
    run_dir: Path
    out_dir: Path  # `<stage>.partial/`: everything the stage writes goes here
    init: Path | None  # the checkpoint the stage starts from (the previous trained stage, or the base model)
    earlier: Mapping[str, dict] = field(default_factory=dict)  # metrics of the stages that finished before
    inputs: Mapping[str, str] = field(default_factory=dict)  # digests of what the stage reads (data, checkpoints)
    resources: Resources = Resources()


class StageError(RuntimeError):
    """A stage that ran but produced nothing usable (e.g. zero optimizer steps); one line says why."""


class Stage:
    """Base class: subclasses set `name` (= the config section) and implement `resources` and `run`; every
    other attribute and hook has a default that a stage with nothing special leaves alone."""

    name: ClassVar[str]
    trains_policy: ClassVar[bool] = False  # later stages start from this stage's checkpoint
    # The config section's dataclass, for a stage whose section is not a field of schema.PipelineConfig (a
    # stage registered from outside the package): the YAML key is `name`, read as `cfg.<name>`.
    section: ClassVar[type | None] = None
    checkpoint: ClassVar[bool] = True  # leaves a model in <run>/<name>/: eval.stages and publish.stage may name it
    comparison: ClassVar[bool] = False  # a comparison arm: never the run's result (publish's default stage)
    teacher: ClassVar[bool] = False  # distill.mixes may name it as a teacher (and truncate its layers)
    lora_section: ClassVar[str] = ""  # the section whose `lora` trains this stage's adapter ("" = it has none)
    reported: ClassVar[tuple[str, ...]] = ()  # metrics of its own kept in report.json (besides report.KEEP)
    measures_others: ClassVar[bool] = False  # its metrics are other stages' (`checkpoints`): no report row of its own
    # (GPU fields, CPU fields) a "the cluster cannot hold it" error tells the user to lower; () = <name>.gpus/.cpus
    resource_fields: ClassVar[tuple[str, str] | tuple[()]] = ()
    card_tags: ClassVar[tuple[str, ...]] = ()  # the model card's tags for this stage's checkpoint
    card_text: ClassVar[str] = ""  # the model card's one phrase on what the stage did ("" = its name)
    # Its history.jsonl holds a reward curve and held-out accuracy during training (`heldout/accuracy`): the
    # reward, held-out and length plots and the held-out table draw it, labelled so ("" = it has none).
    curve_label: ClassVar[str] = ""
    # Fields of its section that must be > 0 / >= 0 whenever its rules apply (`checked`).
    positive: ClassVar[tuple[str, ...]] = ()
    non_negative: ClassVar[tuple[str, ...]] = ()

    def enabled(self, cfg: "PipelineConfig") -> bool:
        return getattr(cfg, self.name).enabled

    # --- config -------------------------------------------------------------------------------------
    def checked(self, cfg: "PipelineConfig") -> bool:
        """Whether its section's rules apply (default: when it is enabled)."""
        return self.enabled(cfg)

    def check_config(self, cfg: "PipelineConfig") -> None:
        """Its section's rules and what it needs from other stages, checked at load: raise ConfigError (one
        line naming the field; pipelines/config/checks.py has the helpers). Only called when `checked`."""

    # --- running ------------------------------------------------------------------------------------
    def depends_on(self, cfg: "PipelineConfig") -> tuple[str, ...]:
        """Stages whose checkpoints this one reads besides its start checkpoint (their digests are its inputs)."""
        return ()

    def resources(self, cfg: "PipelineConfig") -> Resources:
        raise NotImplementedError

    def check_cluster(self, cfg: "PipelineConfig") -> None:
        """Raise ClusterError (one line) when the connected cluster cannot hold this stage. The driver calls
        it for every enabled stage before the first one runs; the default checks the declared totals."""
        from cluster.runtime import check_resources

        need = self.resources(cfg)
        check_resources(need.cpus, need.gpus, f"stage {self.name}", fields=self.fields())

    def fields(self) -> tuple[str, str]:
        """(GPU fields, CPU fields) of the recipe that size this stage, as a resource error names them."""
        return self.resource_fields or (f"{self.name}.gpus", f"{self.name}.cpus")

    def placement_plan(self, cfg: "PipelineConfig") -> Any:
        """Its `cluster.placement.Plan` when it reserves placement groups (learner/rollout bundles), else None."""
        return None

    def plan_label(self, cfg: "PipelineConfig") -> str:
        """How `rayzero plan` names it."""
        return self.name

    def run(self, cfg: "PipelineConfig", ctx: StageContext) -> dict:
        """Do the stage's work into `ctx.out_dir`; returns its metrics (at least `accuracy` and `params`)."""
        raise NotImplementedError

    def resume_hint(self, cfg: "PipelineConfig") -> str:
        """What an interrupted run keeps of this stage besides the finished ones ("; ..."), or ""."""
        return ""

    # --- report, plots, model card -------------------------------------------------------------------
    def flops(self, m: dict) -> float | None:
        """Estimated FLOPs the stage spent from its metrics (rl.metrics); default: the `flops` it measured."""
        return m.get("flops")

    def summary(self, results: Mapping[str, dict]) -> dict:
        """Figures it adds to report.json's `summary` from every finished stage's metrics (by name)."""
        return {}

    def report_tables(self, stages: Mapping[str, dict]) -> list[Table]:
        """Tables of its own for report.md and the console, from the report's stages (its own entry among them)."""
        return []

    def base_accuracy(self, m: dict) -> float | None:
        """The held-out accuracy of the model the run started from, when this stage measured it."""
        return None

    def reference_lines(self, m: dict) -> list[tuple[str, float | None, str]]:
        """(label, held-out accuracy, colour) lines it adds to the held-out-curve plot."""
        return []

    def start_model(self, cfg: Mapping[str, Any]) -> Mapping[str, Any]:
        """The model section its checkpoint started from (the card's base model), from a saved config dict."""
        return cfg.get("model", {})

    # --- GPU memory plan (pipelines/memory_plan.py) ---------------------------------------------------
    def gpu_actors(self, cfg: "PipelineConfig") -> list[str]:
        """Its actors that hold GPU memory (default: those that declare GPUs)."""
        return [a.name for a in self.resources(cfg).actors if a.gpus > 0]

    def gpu_memory(self, cfg: "PipelineConfig", policy: Any, gpu_gib: float, prompt_tokens: int) -> dict:
        """{actor name: memory_plan Estimate or None} for its GPU actors; `policy` is the model's shape."""
        return {}

    def gpu_groups(self, cfg: "PipelineConfig", names: list[str]) -> list[list[str]]:
        """Its actors that share one GPU by construction; default: each alone."""
        return [[n] for n in names]

    def generates_while_training(self, cfg: "PipelineConfig") -> bool:
        """Whether generation and training hold a GPU at once (their memory adds up)."""
        return False

    def memory_knobs(self, cfg: "PipelineConfig") -> list[tuple[str, dict[str, Any]]]:
        """(label, {field: value}) settings that lower its GPU memory, the first to try first."""
        return []


def start_task(cpus: float) -> None:
    """First thing in every stage's Ray task or worker: size torch's thread pool to the CPUs the task
    holds, and keep library chatter out of the run's output."""
    import torch

    torch.set_num_threads(max(1, int(cpus)))
    quiet_libraries()


def device_for(gpus: float) -> str | None:
    """Where a stage task that holds `gpus` GPUs computes: its GPU (Ray sets CUDA_VISIBLE_DEVICES), else the CPU."""
    return "cuda" if gpus > 0 else None


def quiet_libraries() -> None:
    """No library progress bars or advisory warnings: each stage reports its own progress in whole lines
    (the driver runs some stage work itself, e.g. writing distillation traces)."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
