"""`task.name: jsonl`: one local JSONL file, the `hf` adapter over its rows (pipelines/tasks/hf.py). The file
has a single split, so held-out rows are a fixed random cut; with no `task.columns` every column is kept (a
`short_completion` column, say, reaches distillation)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pipelines.tasks import hf, read_rows
from pipelines.tasks.hf_sources import Source, TaskError
from pipelines.tasks.registry import Task, TaskDataError, register

if TYPE_CHECKING:
    from pipelines.config.schema import TaskSection


def check_config(cfg: "TaskSection") -> str | None:
    if not cfg.path:
        return "task.path='': required when task.name=jsonl"
    path = Path(cfg.path)
    if path.is_dir():
        return f"task.path={cfg.path!r}: is a directory; give a .jsonl file"
    if not path.is_file():
        return f"task.path={cfg.path!r}: file not found"
    return None


def load(cfg: "TaskSection", seed: int) -> dict[str, Any]:
    rows, lines = read_rows(Path(cfg.path), with_lines=True)
    try:
        return hf.generate_splits(cfg, seed, sources={cfg.train_split: Source(cfg.train_split, rows, lines)},
                                  keep_all=not cfg.columns, label=cfg.path)
    except TaskError as e:
        raise TaskDataError(str(e)) from None


def card_datasets(task: Mapping[str, Any]) -> list[str]:
    return [Path(task["path"]).name] if task.get("path") else []


TASK = register(Task("jsonl", load, rules=check_config, columns_mapped=True, datasets=card_datasets,
                     has_short_column=lambda cfg: "short_completion" in cfg.columns or not cfg.columns))
