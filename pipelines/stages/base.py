"""The stage contract: what every stage of a run is to the driver.

A stage is a named step with a config section, the resources it holds while it runs, and
`run(cfg, ctx) -> metrics`. The driver (pipelines/driver.py) walks the stages in order, gives each a
`StageContext` (where to write, what checkpoint to start from, what earlier stages measured), and
records what the stage wrote; it knows nothing stage-specific. `run` is called on the driver and puts
its work on the cluster itself (a Ray task, a learner worker group, actor pools: `cluster/`), so a
stage decides how it uses the resources it declared.

Adding a stage: a module in pipelines/stages/ with a `Stage` subclass, a section in
pipelines/config/schema.py, and one entry in `pipelines.stages.STAGES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Mapping

if TYPE_CHECKING:
    from pipelines.config.schema import PipelineConfig


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
    """Base class: subclasses set `name` (= the config section) and implement `resources` and `run`."""

    name: ClassVar[str]
    trains_policy: ClassVar[bool] = False  # later stages start from this stage's checkpoint

    def enabled(self, cfg: "PipelineConfig") -> bool:
        return getattr(cfg, self.name).enabled

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
        check_resources(need.cpus, need.gpus, f"stage {self.name}")

    def run(self, cfg: "PipelineConfig", ctx: StageContext) -> dict:
        """Do the stage's work into `ctx.out_dir`; returns its metrics (at least `accuracy` and `params`)."""
        raise NotImplementedError


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
