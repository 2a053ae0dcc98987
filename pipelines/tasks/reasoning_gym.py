"""Task adapter for reasoning-gym: procedural problems with the package's own verifiers, offline.

`task.name: reasoning_gym`, `task.dataset: <generator>` (e.g. `chain_sum`, `basic_arithmetic`) and
`task.params: {...}` (the generator's config fields, e.g. `{min_terms: 2, max_terms: 3, max_digits: 2}`).

Splits (see pipelines/tasks/__init__.py for the row shapes):
- `heldout` is drawn from its own stream (a seed fixed by dataset and params, not by the run seed), so
  every run of one task config is measured on the same problems;
- `cold_start` and `train` come from a run-seeded stream and never repeat a held-out question.
Every row carries `rg_dataset` and `rg_entry` (JSON: question, answer, metadata) so the
`reasoning_gym_accuracy` reward can call the generator's `score_answer`.

Cold-start completions are in the project's format, `<think>steps</think><answer>x</answer>`. For the
arithmetic generators the steps are synthesised from the metadata's expression (one `a+b=c.` equation
per operation, in evaluation order, e.g. `<think>93+77=170. 170-12=158.</think><answer>158</answer>`);
other generators get the answer with an empty think block (their metadata holds no worked solution).

GSM-derived generators (`gsm_symbolic`) are refused: their templates are built from GSM8K's *test*
questions, and GSM8K must stay a clean held-out test, so they may not be trained or tuned on.
"""

from __future__ import annotations

import ast
import json
import zlib
from typing import Any, Callable, Mapping

from pipelines.tasks.registry import Task, TaskDataError, register

INSTRUCTION = "Show your steps in <think></think>, then the final answer in <answer></answer>."
# Generators whose problems come from GSM8K's test set: never training data.
GSM_DERIVED = ("gsm_symbolic",)


class TaskError(ValueError):
    """A reasoning-gym task config or row that cannot be used; the message names the field or row."""


def contamination_reason(dataset: str, params: Mapping[str, Any] | None = None) -> str | None:
    """Why `dataset` (with `params`, e.g. a `composite` list of datasets) must not be trained on, or None."""
    names = [dataset] + [str(d.get("name", "")) for d in (params or {}).get("datasets", []) or []
                         if isinstance(d, Mapping)]
    bad = [n for n in names if n in GSM_DERIVED or "gsm" in n.lower()]
    if not bad:
        return None
    return (f"'{bad[0]}' is derived from GSM8K: its templates are built from GSM8K's test questions, and "
            "GSM8K must stay a clean held-out test, so it is never used for training or tuning; "
            "choose another generator (e.g. chain_sum, basic_arithmetic)")


# -- chain of thought from an arithmetic expression -------------------------------------------------------

_OPS: dict[type, tuple[str, Callable[[int, int], int]]] = {
    ast.Add: ("+", lambda a, b: a + b),
    ast.Sub: ("-", lambda a, b: a - b),
    ast.Mult: ("*", lambda a, b: a * b),
    ast.Div: ("/", lambda a, b: a // b),  # reasoning-gym evaluates `/` as floor division (exact by design)
    ast.FloorDiv: ("/", lambda a, b: a // b),
}


def _num(v: int) -> str:
    return f"({v})" if v < 0 else str(v)


def expression_steps(expression: str) -> tuple[list[str], int]:
    """(`["a+b=c.", ...]`, value) for an integer expression with + - * / and parentheses, one step per
    operation in Python's evaluation order. ValueError for anything else."""
    steps: list[str] = []

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and not isinstance(node.value, bool):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            if isinstance(node.operand, ast.Constant):  # a signed literal: no step
                return -walk(node.operand) if isinstance(node.op, ast.USub) else walk(node.operand)
            v = walk(node.operand)
            r = -v if isinstance(node.op, ast.USub) else v
            steps.append(f"-{_num(v)}={r}.")
            return r
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = walk(node.left), walk(node.right)
            sym, fn = _OPS[type(node.op)]
            if sym == "/" and b == 0:
                raise ValueError(f"division by zero in {expression!r}")
            r = fn(a, b)
            steps.append(f"{a}{sym}{_num(b)}={r}.")
            return r
        raise ValueError(f"unsupported expression part {ast.dump(node)[:60]} in {expression!r}")

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"not an arithmetic expression: {expression!r}") from None
    value = walk(tree.body)
    return steps, value


def _expression_cot(entry: dict) -> str:
    expr = (entry.get("metadata") or {}).get("expression")
    if not expr:
        raise ValueError("metadata has no 'expression'")
    steps, value = expression_steps(expr)
    if str(value) != str(entry["answer"]).strip():
        raise ValueError(f"expression {expr!r} evaluates to {value}, not the generator's answer {entry['answer']!r}")
    return " ".join(steps) if steps else f"{value}."


# Generators whose metadata lets us write the worked steps.
COT_BUILDERS: dict[str, Callable[[dict], str]] = {
    "chain_sum": _expression_cot,
    "basic_arithmetic": _expression_cot,
}


def completion_for(dataset: str, entry: dict) -> str:
    """The cold-start completion for one generated entry."""
    builder = COT_BUILDERS.get(dataset)
    think = builder(entry) if builder else ""
    return f"<think>{think}</think><answer>{str(entry['answer']).strip()}</answer>"


# -- splits ---------------------------------------------------------------------------------------------------


def _create(dataset: str, params: Mapping[str, Any], seed: int, size: int):
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if dataset not in DATASETS:
        raise TaskError(f"task.dataset={dataset!r} is not a reasoning-gym generator; available: "
                        f"{', '.join(sorted(DATASETS))}")
    reserved = {"seed", "size"} & set(params)
    if reserved:
        raise TaskError(f"task.params.{sorted(reserved)[0]}: set by the pipeline (run.seed, task.num_*), "
                        "remove it from task.params")
    try:
        return reasoning_gym.create_dataset(dataset, seed=seed, size=size, **dict(params))
    except TypeError as e:  # an unknown config field
        raise TaskError(f"task.params for {dataset}: {e}; see reasoning_gym's {dataset} config") from None
    except (AssertionError, ValueError) as e:  # the generator's own validation
        raise TaskError(f"task.params for {dataset} rejected by the generator: {e or 'invalid value'}") from None


def _row(dataset: str, entry: dict, index: int) -> dict:
    question, answer = entry.get("question"), entry.get("answer")
    if not question or answer in (None, ""):
        raise TaskError(f"{dataset} row {index}: generator returned no question/answer")
    meta = {k: v for k, v in (entry.get("metadata") or {}).items() if k != "difficulty"}
    return {
        "prompt": f"{question}\n{INSTRUCTION}\n",
        "answer": str(answer).strip(),
        "rg_dataset": dataset,
        "rg_entry": json.dumps({"question": question, "answer": answer, "metadata": meta}, default=str),
    }


def _stream_seed(dataset: str, params: Mapping[str, Any], salt: str) -> int:
    key = f"{salt}|{dataset}|{json.dumps(dict(params), sort_keys=True, default=str)}"
    return zlib.crc32(key.encode()) & 0x7FFFFFFF


def _draw(dataset: str, params: Mapping[str, Any], seed: int, n: int, skip: set[str], what: str,
          with_cot: bool = False) -> list[dict]:
    """`n` rows with distinct questions not in `skip`; a clear error when the generator's space is too small."""
    if n <= 0:
        return []
    budget = 4 * n + 200
    ds = _create(dataset, params, seed, budget)
    out: list[dict] = []
    for i in range(budget):
        entry = ds[i]
        row = _row(dataset, entry, i)
        q = json.loads(row["rg_entry"])["question"]
        if q in skip:
            continue
        skip.add(q)
        if with_cot:
            try:
                row["completion"] = completion_for(dataset, entry)
            except ValueError as e:
                raise TaskError(f"{dataset} row {i}: cannot write its chain of thought: {e}") from None
        out.append(row)
        if len(out) == n:
            return out
    raise TaskError(f"task.num_{what}: only {len(out)} of {n} distinct {dataset} problems could be drawn "
                    f"(task.params={dict(params)}); lower task.num_{what} or widen task.params")


def generate_splits(dataset: str, params: Mapping[str, Any], num_cold_start: int, num_train: int,
                    num_heldout: int, seed: int) -> dict[str, list[dict]]:
    reason = contamination_reason(dataset, params)
    if reason:
        raise TaskError(f"task.dataset={dataset!r} refused: {reason}")
    seen: set[str] = set()
    heldout = _draw(dataset, params, _stream_seed(dataset, params, "heldout"), num_heldout, seen, "heldout")
    held_questions = set(seen)
    run_seed = _stream_seed(dataset, params, f"run-{seed}")
    rows = _draw(dataset, params, run_seed, num_cold_start + num_train, seen, "train", with_cot=True)
    cold, train = rows[:num_cold_start], rows[num_cold_start:]
    for r in train:
        r.pop("completion", None)  # RL prompts carry answers only
    assert not held_questions & {json.loads(r["rg_entry"])["question"] for r in rows}
    return {"cold_start": cold, "train": train, "heldout": heldout}


# -- the task's declaration (pipelines/tasks/registry.py) ---------------------------------------------------

def check_config(cfg) -> str | None:
    if not cfg.dataset:
        return "task.dataset='': required when task.name=reasoning_gym (e.g. chain_sum, basic_arithmetic)"
    reason = contamination_reason(cfg.dataset, cfg.params)
    return f"task.dataset={cfg.dataset!r}: refused as training data: {reason}" if reason else None


def load(cfg, seed: int) -> dict[str, list[dict]]:
    try:
        return generate_splits(cfg.dataset, cfg.params, cfg.num_cold_start, cfg.num_train, cfg.num_heldout, seed)
    except TaskError as e:
        raise TaskDataError(str(e)) from None


def dataset_names(task: Mapping[str, Any]) -> list[str]:
    return [f"reasoning_gym/{task['dataset']}"] if task.get("dataset") else []


TASK = register(Task("reasoning_gym", load, rules=check_config, cold_start_tags=True, datasets=dataset_names))
