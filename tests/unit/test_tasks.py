import json

import pytest

from pipelines.config import TaskSection
from pipelines.tasks import TaskDataError, load_task, read_rows
from pipelines.tasks.arithmetic import generate_splits
from rewards.registry import get_reward


def test_arithmetic_solutions_are_correct_and_in_r1_zero_format():
    s = generate_splits(50, 10, 10, min_ops=2, max_ops=3, max_value=20, seed=1)
    rows = s["cold_start"]
    comps = [r["completion"] for r in rows]
    assert get_reward("math_accuracy")(comps, answer=[r["answer"] for r in rows]) == [1.0] * len(rows)
    assert get_reward("strict_format")(comps) == [1.0] * len(rows)
    assert get_reward("arithmetic_steps")(comps, prompts=[r["prompt"] for r in rows]) == [1.0] * len(rows)
    assert all("completion" not in r for r in s["train"] + s["heldout"]), "RL prompts carry no CoT labels"


def test_heldout_is_disjoint_and_fixed_across_seeds():
    a = generate_splits(100, 500, 100, min_ops=1, max_ops=2, max_value=9, seed=0)
    b = generate_splits(100, 500, 100, min_ops=1, max_ops=2, max_value=9, seed=1)
    assert a["heldout"] == b["heldout"]
    assert a["train"] != b["train"]
    held = {r["prompt"] for r in a["heldout"]}
    assert not held & {r["prompt"] for r in a["train"] + a["cold_start"]}


def test_jsonl_row_without_answer_names_file_and_row(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"prompt": "1+1?", "answer": "2", "completion": "<think>1+1=2.</think><answer>2</answer>"})
                    + "\n" + json.dumps({"prompt": "2+2?"}) + "\n")
    with pytest.raises(TaskDataError) as err:  # 1 of 2 rows: above task.max_bad_fraction
        load_task(TaskSection(name="jsonl", path=str(path), num_cold_start=0, num_train=1, num_heldout=1), seed=0)
    assert str(path) in str(err.value) and "row 2" in str(err.value) and "'answer'" in str(err.value)
    assert len(read_rows(path)) == 2, "read_rows keeps it: the adapter counts and drops unusable rows"


def test_jsonl_task_splits(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": f"{i}+1?", "answer": str(i + 1), "completion": f"<think>{i}+1={i + 1}.</think><answer>{i + 1}</answer>"}
            for i in range(30)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    s = load_task(TaskSection(name="jsonl", path=str(path), num_cold_start=5, num_train=10, num_heldout=8), seed=0)
    assert (len(s["cold_start"]), len(s["train"]), len(s["heldout"])) == (5, 10, 8)
    assert not {r["prompt"] for r in s["heldout"]} & {r["prompt"] for r in s["train"] + s["cold_start"]}


def test_too_small_a_task_space_fails_clearly_instead_of_looping():
    with pytest.raises(ValueError, match="heldout"):
        generate_splits(10, 10, 300, min_ops=1, max_ops=1, max_value=2, seed=0)
