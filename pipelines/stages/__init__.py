"""The stages of a run, in the order the driver walks them (each follows `stages.base.Stage`)."""

from pipelines.stages.base import Resources, Stage, StageContext, StageError
from pipelines.stages.distill import DistillStage
from pipelines.stages.evaluate import EvalStage
from pipelines.stages.grpo import GRPOStage
from pipelines.stages.sft import BaselineStage, SFTStage

STAGES: tuple[Stage, ...] = (SFTStage(), GRPOStage(), DistillStage(), BaselineStage(), EvalStage())
NAMES = tuple(s.name for s in STAGES)

__all__ = ["STAGES", "NAMES", "Resources", "Stage", "StageContext", "StageError"]
