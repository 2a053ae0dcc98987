"""Built-in tool task: products of two 3-4 digit numbers ("What is 347*5821?"), which a tiny model cannot
compute in its head but can delegate to the Python tool (docs/tools.md).

Cold-start completions call the tool and carry its REAL output, produced by running the call in the sandbox
(`rewards.tools.PythonTool`) while the data is prepared:

    <python>print(347*5821)</python><output>2019887</output><answer>2019887</answer>

With `task.params.tool: false` the cold start answers directly (`<answer>2019887</answer>`): the no-tool
variant of the same task. Parameters (`task.params`): `min_digits`, `max_digits` (default 3, 4), `tool`.
"""

from __future__ import annotations

import random

from pipelines.tasks.registry import Task, TaskDataError, register

DEFAULTS = {"min_digits": 3, "max_digits": 4, "tool": True}


class TaskError(ValueError):
    pass


def check_params(params) -> str | None:
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        return f"task.params: unknown key(s) {unknown} for task multiply; it takes {sorted(DEFAULTS)}"
    p = {**DEFAULTS, **params}
    lo, hi = p["min_digits"], p["max_digits"]
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi <= 9):
        return f"task.params.max_digits={hi!r}: need whole numbers 1 <= min_digits ({lo!r}) <= max_digits <= 9"
    return None


def _number(rng: random.Random, lo: int, hi: int) -> int:
    digits = rng.randint(lo, hi)
    return rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def _draw(rng: random.Random, n: int, taken: set, lo: int, hi: int) -> list[dict]:
    out = []
    for _ in range(50 * n + 100):
        if len(out) == n:
            break
        a, b = _number(rng, lo, hi), _number(rng, lo, hi)
        if (a, b) in taken:
            continue
        taken.add((a, b))
        out.append({"prompt": f"What is {a}*{b}?\n", "answer": str(a * b), "code": f"print({a}*{b})"})
    if len(out) < n:
        raise TaskError(f"task: only {len(out)} of {n} distinct multiply problems for digits {lo}-{hi}")
    return out


def generate_splits(num_cold_start: int, num_train: int, num_heldout: int, params, seed: int,
                    execute=None) -> dict[str, list[dict]]:
    """Cold-start (tool traces with real outputs, or direct answers), train and held-out splits, disjoint.
    `execute(code) -> (text, status)` runs the cold-start calls (pipelines pass the sandboxed tool)."""
    p = {**DEFAULTS, **params}
    lo, hi = p["min_digits"], p["max_digits"]
    taken: set = set()
    heldout = _draw(random.Random(f"multiply-heldout-{lo}-{hi}"), num_heldout, taken, lo, hi)
    rng = random.Random(seed)
    cold = _draw(rng, num_cold_start, taken, lo, hi)
    train = _draw(rng, num_train, taken, lo, hi)
    for row in cold:
        if p["tool"]:
            if execute is None:
                raise TaskError("task multiply with tool=true needs the tool to write its cold-start traces")
            text, status = execute(row["code"])
            if status != "ok":
                raise TaskError(f"task multiply: the tool failed on {row['code']!r} ({status}: {text})")
            row["completion"] = f"<python>{row['code']}</python><output>{text}</output><answer>{text}</answer>"
        else:
            row["completion"] = f"<answer>{row['answer']}</answer>"
    for rows in (cold, train, heldout):
        for r in rows:
            r.pop("code")
    return {"cold_start": cold, "train": train, "heldout": heldout}


# -- the task's declaration (pipelines/tasks/registry.py) ---------------------------------------------------

def check_config(cfg) -> str | None:
    return check_params(cfg.params)


def load(cfg, seed: int) -> dict[str, list[dict]]:
    """Tool traces: the cold-start calls run in the sandbox here, on the driver (their outputs are real)."""
    from pipelines.tool_use import python_tool
    from rl.tools import ToolParams

    try:
        return generate_splits(cfg.num_cold_start, cfg.num_train, cfg.num_heldout, cfg.params, seed,
                               execute=python_tool(ToolParams(enabled=True, max_output_chars=200)))
    except TaskError as e:
        raise TaskDataError(str(e)) from None


TASK = register(Task("multiply", load, rules=check_config, tool_calls=True))
