"""A task is one file: a throwaway task, written to a temporary module and registered at test time, passes
config validation (its own rules and default rewards), and its rows are prepared, checked and cached by
prepare_data, with no other file of the project touched."""

import importlib
import json
import sys
import textwrap

import pytest

from pipelines.config import ConfigError
from pipelines.config.loading import from_dict, load_config
from pipelines.data import prepare_data
from pipelines.tasks import TaskDataError, registry

MODULE = '''
"""`task.name: doubling`: "What is twice N?" with N up to task.params.max_n."""
import random

from pipelines.tasks import Task, TaskDataError, register


def rules(cfg):
    max_n = cfg.params.get("max_n", 50)
    return None if isinstance(max_n, int) and max_n >= 1 else f"task.params.max_n={max_n!r}: must be an integer >= 1"


def row(n, cot):
    r = {"prompt": f"What is twice {n}?\\n", "answer": str(2 * n)}
    return {**r, "completion": f"<think>{n}+{n}={2 * n}.</think><answer>{2 * n}</answer>"} if cot else r


def load(cfg, seed):
    ns = list(range(1, cfg.params.get("max_n", 50) + 1))
    need = cfg.num_cold_start + cfg.num_train + cfg.num_heldout
    if need > len(ns):
        raise TaskDataError(f"task.params.max_n: {len(ns)} problems, {need} asked for")
    held, rest = ns[:cfg.num_heldout], ns[cfg.num_heldout:]
    random.Random(seed).shuffle(rest)
    cold, train = rest[:cfg.num_cold_start], rest[cfg.num_cold_start:][:cfg.num_train]
    return {"cold_start": [row(n, True) for n in cold], "train": [row(n, False) for n in train],
            "heldout": [row(n, False) for n in held]}


TASK = register(Task("doubling", load, rules=rules, rewards={"math_accuracy": 1.0}))
'''


@pytest.fixture
def doubling(tmp_path, monkeypatch):
    (tmp_path / "doubling_task.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("doubling_task").TASK
    registry._TASKS.pop("doubling", None)  # the registry is process-wide: leave it as the other tests see it
    sys.modules.pop("doubling_task", None)


def test_an_unknown_task_lists_the_registered_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config("micro", [f"run.output_dir={tmp_path}", "task.name=doubling"])
    assert "task.name='doubling': not one of: arithmetic, hf, jsonl, reasoning_gym, human_eval" in str(err.value)
    with pytest.raises(ConfigError, match=r"did you mean arithmetic\?"):
        load_config("micro", [f"run.output_dir={tmp_path}", "task.name=arithmetik"])


def test_a_task_in_one_new_module_loads_and_prepares_its_data(doubling, tmp_path):
    assert "doubling" in registry.names()
    sizes = ["task.num_cold_start=8", "task.num_train=8", "task.num_heldout=8"]
    base = [f"run.output_dir={tmp_path}", "task.name=doubling", *sizes]
    cfg = load_config("micro", base + ["task.params.max_n=30"])
    assert cfg.task.name == "doubling"
    # Its own config rule, checked at load (before any data is read).
    with pytest.raises(ConfigError, match=r"task.params.max_n=0: must be an integer >= 1"):
        load_config("micro", base + ["task.params.max_n=0"])
    # Its default rewards, when the config names none (the micro recipe names its own).
    assert dict(from_dict({"task": {"name": "doubling"}}).grpo.rewards) == {"math_accuracy": 1.0}
    assert dict(from_dict({"task": {"name": "arithmetic"}}).grpo.rewards) == {"math_accuracy": 1.0, "strict_format": 0.1}

    split_sizes, digest = prepare_data(cfg, say=lambda _: None)
    assert split_sizes == {"cold_start": 8, "train": 8, "heldout": 8} and digest
    data = cfg.run_dir / "data"
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    cold = [json.loads(line) for line in (data / "cold_start.jsonl").read_text().splitlines()]
    assert all(r["prompt"].startswith("What is twice") and int(r["answer"]) % 2 == 0 for r in train)
    assert all(r["completion"].endswith(f"<answer>{r['answer']}</answer>") for r in cold)
    held = {r["prompt"] for r in map(json.loads, (data / "heldout.jsonl").read_text().splitlines())}
    assert not held & {r["prompt"] for r in train + cold}

    # Its data errors reach the user as one line, before anything is cached.
    with pytest.raises(TaskDataError, match=r"task.params.max_n: 10 problems, 24 asked for"):
        prepare_data(load_config("micro", [f"run.output_dir={tmp_path / 'small'}", "task.name=doubling", *sizes,
                                           "task.params.max_n=10"]), say=lambda _: None)
    assert not (tmp_path / "small" / "micro" / "data").exists()


def test_a_second_module_cannot_take_a_registered_name(doubling):
    with pytest.raises(ValueError, match="task 'arithmetic' is registered twice"):
        registry.register(registry.Task("arithmetic", lambda cfg, seed: {}))
