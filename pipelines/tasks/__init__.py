"""Task adapters: each returns the three splits the pipeline trains and evaluates on.

- `cold_start`: rows {prompt, completion, answer} (chain-of-thought examples for SFT),
- `train`: rows {prompt, answer} (verifiable prompts for GRPO and distillation),
- `heldout`: rows {prompt, answer} (never trained on; accuracy is measured here).
Code tasks carry `tests` (and `entry_point`) instead of, or beside, `answer`; any other column a reward
needs travels in the row too.

`prompt` is the question as the adapter wrote it; pipelines/data.py then applies the task's prompt
template (pipelines/tasks/templates.py) with the run's tokenizer and stores the rendered text.

Each task is one module that registers itself (pipelines/tasks/registry.py: its name, config rules,
splits, default rewards, ...): `arithmetic`, `hf` and its one-file shorthand `jsonl` (pipelines/tasks/hf.py),
`reasoning_gym`, `human_eval`. Nothing here or elsewhere branches on a task's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.tasks.registry import Task, TaskDataError, find, get, names, register

if TYPE_CHECKING:
    from pipelines.config.schema import TaskSection

__all__ = ["Task", "TaskDataError", "find", "get", "load_task", "names", "read_rows", "register", "short_completions", "task_rules"]


def task_rules(cfg: "TaskSection") -> str | None:
    """The config rules every task shares (prompt template, answer format), then the task's own; the one-line
    problem, or None."""
    from pipelines.tasks.hf_rows import check_answer_format
    from pipelines.tasks.templates import check_template

    return check_template(cfg.prompt_template) or check_answer_format(cfg.answer_format) or get(cfg.name).rules(cfg)


def load_task(cfg: "TaskSection", seed: int) -> dict[str, list[dict]]:
    """The task's three splits (TaskDataError, one line, for data it cannot use)."""
    return get(cfg.name).load(cfg, seed)


def read_rows(path: Path, with_lines: bool = False):
    """Rows of a JSONL file (with their line numbers when `with_lines`); a file that is not UTF-8 JSON
    lines is refused naming the row. Rows without a prompt or an answer are kept: the hf adapter leaves
    them out and counts them (pipelines/tasks/hf_rows.py, `task.max_bad_fraction`)."""
    if path.is_dir():
        raise TaskDataError(f"{path}: is a directory; give a .jsonl file")
    if not path.exists():
        raise TaskDataError(f"{path}: file not found")
    rows, lines = [], []
    with path.open("rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TaskDataError(f"{path} row {i}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path} row {i}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise TaskDataError(f"{path} row {i}: expected a JSON object")
            if isinstance(row.get("answer"), (int, float)) and not isinstance(row["answer"], bool):
                row["answer"] = str(row["answer"])
            rows.append(row)
            lines.append(i)
    if not rows:
        raise TaskDataError(f"{path}: empty file (no rows); give one JSON object per line")
    return (rows, lines) if with_lines else rows


def short_completions(cfg: "TaskSection", rows: list[dict], where: str) -> list[str]:
    """Short chain-of-thought solutions for `rows` (the short-CoT source of mix distillation): a task that
    writes them itself does; others take them from a `short_completion` column."""
    solve = get(cfg.name).short_solution
    out = [solve(r["prompt"]) for r in rows] if solve else [r.get("short_completion") for r in rows]
    missing = [i for i, s in enumerate(out) if not s]
    if missing:
        raise TaskDataError(f"{where}: row {missing[0] + 1} has no short solution; task '{cfg.name}' needs a "
                            f"'short_completion' column for distill mixes with long_short < 1")
    return out
