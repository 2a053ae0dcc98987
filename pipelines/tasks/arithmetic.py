"""Built-in verifiable task: multi-step arithmetic word problems with chain-of-thought solutions.

A problem starts from a quantity and applies `min_ops..max_ops` additions/subtractions, e.g.

    prompt:     "Mia has 7 pens. She buys 5 more. Then she gives away 4. How many pens does Mia have now?\n"
    completion: "<think>7+5=12. 12-4=8.</think><answer>8</answer>"

The completion is DeepSeek-R1-Zero's template (think block, then answer block). Every intermediate value
stays in [0, max_value * 2] so the model only has to learn a bounded table of facts.
"""

from __future__ import annotations

import random
import re

from pipelines.tasks.registry import Task, TaskDataError, register

NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eva", "Ben", "Lily", "Noah"]
ITEMS = ["apples", "pens", "coins", "books", "stamps", "marbles", "cards", "shells", "cookies", "stickers"]
ADD = ["buys {n} more", "finds {n} more", "gets {n} more", "is given {n} more"]
SUB = ["gives away {n}", "loses {n}", "sells {n}", "uses {n}"]
THEN = ["Then", "After that", "Next"]


def make_problem(rng: random.Random, min_ops: int, max_ops: int, max_value: int) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    pron = "She" if name in ("Mia", "Ava", "Zoe", "Ivy", "Eva", "Lily") else "He"
    value = rng.randint(1, max_value)
    sentences = [f"{name} has {value} {item}."]
    steps = []
    for i in range(rng.randint(min_ops, max_ops)):
        # Subtract only when something is left, add only while under the cap: answers stay in range.
        can_sub, can_add = value > 0, value < 2 * max_value
        if can_sub and (not can_add or rng.random() < 0.5):
            n = rng.randint(1, min(value, max_value))
            new, phrase, sym = value - n, rng.choice(SUB), "-"
        else:
            n = rng.randint(1, min(max_value, 2 * max_value - value))
            new, phrase, sym = value + n, rng.choice(ADD), "+"
        lead = pron if i == 0 else f"{rng.choice(THEN)} {pron.lower()}"
        sentences.append(f"{lead} {phrase.format(n=n)}.")
        steps.append(f"{value}{sym}{n}={new}.")
        value = new
    sentences.append(f"How many {item} does {name} have now?")
    return {
        "prompt": " ".join(sentences) + "\n",
        "completion": f"<think>{' '.join(steps)}</think><answer>{value}</answer>",
        "answer": str(value),
        "key": " ".join(steps),  # the underlying computation, used to keep splits disjoint
    }


def _draw(rng: random.Random, n: int, keep, what: str, min_ops: int, max_ops: int, max_value: int) -> list[dict]:
    """`n` problems for which `keep(problem)` holds; a clear error when the task space is too small."""
    out: list[dict] = []
    for _ in range(100 * n + 1000):
        if len(out) == n:
            return out
        p = make_problem(rng, min_ops, max_ops, max_value)
        if keep(p):
            out.append(p)
    if len(out) == n:
        return out
    raise ValueError(f"task: only {len(out)} of {n} {what} problems could be drawn for min_ops={min_ops}, "
                     f"max_ops={max_ops}, max_value={max_value}; lower task.num_{what} or widen the task")


def generate_splits(num_cold_start: int, num_train: int, num_heldout: int, *, min_ops: int, max_ops: int,
                    max_value: int, seed: int) -> dict[str, list[dict]]:
    """Cold-start (with CoT), train (answers only) and held-out splits. The held-out split is drawn
    first from its own stream (it is the same for every run seed of a given task config), and no
    training problem shares its computation with a held-out one."""
    task = (min_ops, max_ops, max_value)
    held_keys: set[str] = set()

    def new_key(p: dict) -> bool:
        fresh = p["key"] not in held_keys
        held_keys.add(p["key"])
        return fresh

    heldout = _draw(random.Random(f"heldout-{min_ops}-{max_ops}-{max_value}"), num_heldout, new_key, "heldout", *task)
    rng = random.Random(seed)
    out = {split: _draw(rng, n, lambda p: p["key"] not in held_keys, split, *task)
           for split, n in (("cold_start", num_cold_start), ("train", num_train))}
    for rows in (out["train"], heldout):
        for r in rows:
            r.pop("completion", None)  # RL prompts carry answers only: no CoT labels
    for rows in (out["cold_start"], out["train"], heldout):
        for r in rows:
            r.pop("key", None)
    out["heldout"] = heldout
    return out


_START = re.compile(r" has (\d+) ")
_STEP = re.compile(r"(?:buys|finds|gets|is given) (\d+) more|(?:gives away|loses|sells|uses) (\d+)")


def short_solution(prompt: str) -> str | None:
    """A concise chain of thought for a problem of this task (the short-CoT source for mix
    distillation): the whole computation as one expression, `<think>7+5-4=8.</think><answer>8</answer>`,
    against the step-by-step style of the cold-start data and the RL'd teacher. None if the prompt is not
    one of this task's problems."""
    start = _START.search(prompt)
    if not start:
        return None
    value, expr = int(start.group(1)), start.group(1)
    steps = _STEP.findall(prompt)
    if not steps:
        return None
    for add, sub in steps:
        value += int(add) if add else -int(sub)
        expr += f"+{add}" if add else f"-{sub}"
    return f"<think>{expr}={value}.</think><answer>{value}</answer>"


# -- the task's declaration (pipelines/tasks/registry.py) ---------------------------------------------------

def check_config(cfg) -> str | None:
    if cfg.min_ops < 1 or cfg.max_ops < cfg.min_ops:
        return f"task.max_ops={cfg.max_ops}: need 1 <= task.min_ops ({cfg.min_ops}) <= task.max_ops"
    if cfg.max_value < 1:
        return f"task.max_value={cfg.max_value}: must be >= 1"
    return None


def load(cfg, seed: int) -> dict[str, list[dict]]:
    try:
        return generate_splits(cfg.num_cold_start, cfg.num_train, cfg.num_heldout, min_ops=cfg.min_ops,
                               max_ops=cfg.max_ops, max_value=cfg.max_value, seed=seed)
    except ValueError as e:  # an impossible split size: report it as a config problem, in one line
        raise TaskDataError(str(e)) from None


TASK = register(Task("arithmetic", load, rules=check_config, short_solution=short_solution, cold_start_tags=True))
