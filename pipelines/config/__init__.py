"""The pipeline configuration: typed sections (`schema`), recipes and overrides (`loading`), and the
rules checked once at load (`rules`)."""

from pipelines.config.schema import (BaselineSection, DistillSection, EvalSection, GRPOSection, MixSection,
                                     ModelSection, PipelineConfig, PublishSection, RunSection, SFTSection,
                                     TaskSection, ConfigError, to_dict)
from pipelines.config.loading import build, from_dict, list_recipes, load_config, parse_override, recipe_path

__all__ = ["ConfigError", "build", "from_dict", "list_recipes", "load_config", "parse_override", "recipe_path",
           "to_dict", "PipelineConfig", "RunSection", "ModelSection", "TaskSection", "SFTSection", "GRPOSection",
           "MixSection", "DistillSection", "EvalSection", "BaselineSection", "PublishSection"]
