"""Where the pipeline joins the tool protocol (rl.tools, rl.tool_rollout) to the sandboxed Python tool
(rewards.tools): GRPO's rollout function or rollout-engine factory, evaluation with and without the tool, and
the `tools.json` a checkpoint trained with the tool carries (so `rayzero eval` runs it with the tool too).
"""

from __future__ import annotations

import atexit
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from rl.tools import ToolParams

if TYPE_CHECKING:
    from pipelines.config.schema import PipelineConfig

MARKER = "tools.json"
_TOOLS: dict = {}  # one sandboxed tool per process and settings, closed at exit


def python_tool(params: ToolParams):
    """This process's `rewards.tools.PythonTool` for `params` (its sandboxes start on first use)."""
    from rewards.tools import PythonTool

    key = tuple(sorted(params.executor_params().items()))
    if key not in _TOOLS:
        if not _TOOLS:
            atexit.register(lambda: [t.close() for t in _TOOLS.values()])
        _TOOLS[key] = PythonTool(**params.executor_params())
    return _TOOLS[key]


def learner_rollout_func(params: ToolParams):
    """TRL rollout_func: in-learner generation with tool calls."""
    from rl.tool_rollout import LearnerToolRollouts

    return LearnerToolRollouts(python_tool(params), params)


def wrap_engine_factory(factory, tokenizer_dir: str | Path, params: ToolParams):
    """A rollout actor's engine factory, wrapped so the actor runs the tool protocol with its own sandboxes."""
    from rewards.tools import python_tool_factory
    from rl.tool_rollout import tool_engine_factory

    return tool_engine_factory(factory, str(tokenizer_dir), python_tool_factory(**params.executor_params()), params)


def eval_tools(params: ToolParams):
    """`rl.generation.generate(tools=...)` for evaluating with the tool."""
    return python_tool(params), params.max_calls


def mark_checkpoint(folder: Path, params: ToolParams) -> None:
    """Record in a checkpoint folder that its policy was trained to call the tool, and with which limits."""
    (Path(folder) / MARKER).write_text(json.dumps(asdict(params), indent=2))


def checkpoint_tools(folder: Path) -> ToolParams | None:
    """The tool settings a checkpoint was trained with, or None (trained without the tool)."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    return ToolParams(**{**json.loads(path.read_text()), "enabled": True})


def uses_tools(cfg: "PipelineConfig") -> bool:
    return cfg.grpo.tools.enabled
