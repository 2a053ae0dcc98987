"""The stage registry: the stages of a run, in the order the driver walks them (each follows
`stages.base.Stage`). The rest of the system (config, driver, report, plots, model card, publish, memory and
remote plans) reads what it needs to know about a stage from here and never branches on a stage's name.

Adding a stage = one module under pipelines/stages/ with a `Stage` subclass, and one line in `BUILTIN`
below. A module outside this package registers its stage with `register(MyStage())` at import (import it
before the config is loaded, and make it importable by Ray's workers, e.g. on PYTHONPATH).
"""

from __future__ import annotations

import importlib

from pipelines.stages.base import Resources, Stage, StageContext, StageError

# "module:class" of every built-in stage, in run order: a stage starts from the last policy-training stage
# before it, and `eval` comes last because it measures the others' finished checkpoints.
BUILTIN = (
    "sft:SFTStage",
    "grpo:GRPOStage",
    "distill:DistillStage",
    "sft:BaselineStage",
    "no_tool:NoToolStage",
    "evaluate:EvalStage",
)


def _builtin() -> list[Stage]:
    out = []
    for entry in BUILTIN:
        module, cls = entry.split(":")
        out.append(getattr(importlib.import_module(f"pipelines.stages.{module}"), cls)())
    return out


# One list for the whole process (modules hold a reference to it: `register` adds in place).
STAGES: list[Stage] = _builtin()


def register(stage: Stage, before: str | None = "eval") -> Stage:
    """Add `stage` to the run, before the stage named `before` (default: before `eval`, which measures the
    finished checkpoints; None = last). Registering a stage of that name again replaces it in place (a module
    imported twice); a different class under a name already taken is refused."""
    old = stage_named(stage.name)
    if old is not None:
        if type(old).__qualname__ != type(stage).__qualname__ or type(old).__module__ != type(stage).__module__:
            raise ValueError(f"stage {stage.name!r} is registered twice ({type(old).__module__}, {type(stage).__module__})")
        STAGES[STAGES.index(old)] = stage
        return stage
    at = next((i for i, s in enumerate(STAGES) if s.name == before), len(STAGES))
    STAGES.insert(at, stage)
    return stage


def unregister(name: str) -> None:
    """Remove a registered stage (tests that register a throwaway one leave the registry as they found it)."""
    STAGES[:] = [s for s in STAGES if s.name != name]


def stage_named(name: str) -> Stage | None:
    return next((s for s in STAGES if s.name == name), None)


def names() -> tuple[str, ...]:
    return tuple(s.name for s in STAGES)


def checkpoint_stages() -> tuple[str, ...]:
    """Stages that leave a model (what eval.stages and publish.stage may name), in run order."""
    return tuple(s.name for s in STAGES if s.checkpoint)


def teacher_stages() -> tuple[str, ...]:
    """Stages distillation may name as a teacher (or truncate), in run order; anything else is a folder."""
    return tuple(s.name for s in STAGES if s.teacher)


__all__ = ["BUILTIN", "STAGES", "Resources", "Stage", "StageContext", "StageError", "checkpoint_stages", "names",
           "register", "stage_named", "teacher_stages", "unregister"]
