"""The task registry: every task declares itself once, in its own module, as a `Task` passed to `register`;
the rest of the system (config rules, data preparation, distillation, benchmarks, the model card, `rayzero
eval --task`) asks the registry by `task.name` and never branches on a task's name.

Adding a task = one module under pipelines/tasks/ that calls `register(Task(...))`, and its module name in
`MODULES` below. A module outside this package can register too (imported before the config is loaded).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from pipelines.config.schema import TaskSection

# The modules that declare the built-in tasks (imported on first use; their registration order is the order
# `task.name` choices are listed in).
MODULES = ("arithmetic", "hf", "jsonl", "reasoning_gym", "human_eval", "multiply")


class TaskDataError(ValueError):
    """A dataset row or file that cannot be used; the message names the file and row."""


def _no_problem(cfg: "TaskSection") -> str | None:
    return None


def _short_column(cfg: "TaskSection") -> bool:
    return "short_completion" in cfg.columns


def _own_name(task: Mapping[str, Any]) -> list[str]:
    return [task.get("dataset") or task.get("name", "unknown")]


@dataclass(frozen=True)
class Task:
    """One task: its name and everything the pipeline needs to know about it.

    `load(cfg, seed)` returns the three splits (`cold_start`, `train`, `heldout`; row shapes in
    pipelines/tasks/__init__.py) and raises TaskDataError (one line naming the field or row) for data it
    cannot use. `rules(cfg)` is its config rules, checked at load: the one-line problem, or None."""

    name: str
    load: Callable[["TaskSection", int], dict[str, list[dict]]]
    rules: Callable[["TaskSection"], str | None] = _no_problem
    # The rewards its rows are verified with when a recipe names no grpo.rewards; None = grpo.rewards' own
    # default (an answer compared by math_accuracy, plus strict_format).
    rewards: Mapping[str, float] | None = None
    kind: str = "math"  # math | code: which benchmarks take the task's prompt template (benchmarks.task_kind)
    # A concise chain of thought from a prompt (the short-CoT source of mix distillation), when the task
    # can write one itself; else rows take it from a `short_completion` column.
    short_solution: Callable[[str], str | None] | None = None
    # Whether rows may carry a `short_completion` column with this config (for distill's long_short < 1).
    has_short_column: Callable[["TaskSection"], bool] = _short_column
    columns_mapped: bool = False  # rows come from a dataset through task.columns (what to name when one is missing)
    hub_splits: bool = False  # task.dataset/subset/train_split name a datasets split (checked against benchmarks)
    cold_start_tags: bool = False  # its cold-start completions are written as <think>…</think><answer>…</answer>
    tool_calls: bool = False  # its rows call the Python tool (rl.tools): the tiny tokenizer gets the tool tags
    # The data a model card lists, from the run's task section (as saved in config.yaml).
    datasets: Callable[[Mapping[str, Any]], list[str]] = _own_name


_TASKS: dict[str, Task] = {}
_loaded = False


def register(task: Task) -> Task:
    """Add `task` to the registry (a module calls this once, at import); a second task of one name is refused."""
    old = _TASKS.get(task.name)
    if old is not None and old.load.__module__ != task.load.__module__:  # a module re-imported may register again
        raise ValueError(f"task {task.name!r} is registered twice ({old.load.__module__}, {task.load.__module__})")
    _TASKS[task.name] = task
    return task


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in MODULES:
            importlib.import_module(f"pipelines.tasks.{module}")


def names() -> tuple[str, ...]:
    """Every registered task name (the valid `task.name` values)."""
    _load_builtin()
    order = {f"pipelines.tasks.{m}": i for i, m in enumerate(MODULES)}  # built-in ones first, as listed (whatever
    # imported one of them earlier), then the others in the order they registered
    return tuple(sorted(_TASKS, key=lambda n: order.get(_TASKS[n].load.__module__, len(MODULES))))


def find(name: str) -> Task | None:
    _load_builtin()
    return _TASKS.get(name)


def get(name: str) -> Task:
    """The task called `name`; TaskDataError listing the valid names (and the closest one) otherwise."""
    task = find(name)
    if task is None:
        from pipelines.config.suggest import closest

        raise TaskDataError(f"task.name={name!r}: not one of: {', '.join(names())}{closest(name, names())}")
    return task
