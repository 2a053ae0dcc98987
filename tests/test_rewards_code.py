"""code_accuracy end to end through the real sandbox: extraction, test shapes, scoring modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewards.code import close_sandboxes, code_accuracy, extract_program, normalise_tests
from rewards.registry import get_reward
from rewards.sandbox import SandboxConfig

@pytest.fixture(scope="module", autouse=True)
def _close_sandboxes():
    yield
    close_sandboxes()


pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")
CFG = SandboxConfig(timeout_s=2.0, cpu_s=1, memory_mb=256)
ADD = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
ECHO = "```python\nn = int(input())\nprint(n * 2)\n```"
CASES = [{"input": "1\n", "output": "2\n"}, {"input": "5", "output": "10"}, {"input": "0", "output": "0"}]


def test_extract_program_takes_last_python_block_after_thinking():
    text = "<think>```python\nprint('draft')\n```</think>\n```python\nprint(1)\n```\n```text\n1\n```"
    assert extract_program(text) == "print(1)\n"
    assert extract_program("no code") is None
    assert extract_program("```python\n```") is None


def test_assert_style_fraction_and_all():
    tests = "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(2, 2) == 5\nassert add(0, 0) == 0\n"
    assert code_accuracy([ADD], [tests], config=CFG) == [0.75]
    assert code_accuracy([ADD], [tests], mode="all", config=CFG) == [0.0]
    good = "assert add(1, 2) == 3\n"
    assert code_accuracy([ADD], [good], mode="all", config=CFG) == [1.0]


def test_humaneval_style_entry_point():
    tests = "METADATA = {}\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
    bad = ADD.replace("a + b", "a - b")
    assert code_accuracy([ADD, bad], [tests, tests], entry_point=["add", "add"], config=CFG) == [1.0, 0.0]


def test_stdin_stdout_cases_in_all_shapes():
    apps = {"inputs": ["1\n", "5", "0"], "outputs": ["2\n", "10", "0"]}
    shapes = [CASES, json.dumps(CASES), apps, json.dumps(apps)]
    assert code_accuracy([ECHO] * 4, shapes, config=CFG) == [1.0] * 4
    half = "```python\nn = int(input())\nprint(n * 2 if n else 1)\n```"
    assert code_accuracy([half], [CASES], config=CFG) == [pytest.approx(2 / 3)]


def test_output_compare_is_exact_after_trailing_whitespace():
    prog = "```python\nprint('a  ')\nprint('b')\nprint()\n```"
    assert code_accuracy([prog], [[{"input": "", "output": "a\nb"}]], config=CFG) == [1.0]
    assert code_accuracy([prog], [[{"input": "", "output": "a\nb\nc"}]], config=CFG) == [0.0]  # no zip()
    assert code_accuracy([prog], [[{"input": "", "output": " a\nb"}]], config=CFG) == [0.0]


def test_no_program_scores_zero_bad_tests_score_none():
    assert code_accuracy(["just prose"], [CASES], config=CFG) == [0.0]
    assert code_accuracy([ADD, ADD, ADD], ["", [], "assert ("], config=CFG) == [None, None, None]
    assert code_accuracy([ADD], ["def check(c):\n    assert c(1, 1) == 2\n"], entry_point=["not an id"], config=CFG) == [None]


def test_crashing_and_hanging_programs_score_zero():
    crash = "```python\nraise SystemExit(3)\n```"
    hang = "```python\nwhile True:\n    pass\n```"
    assert code_accuracy([crash, hang], [CASES, CASES[:1]], config=CFG) == [0.0, 0.0]


def test_registry_factory_with_trl_kwargs():
    fn = get_reward("code_accuracy", mode="all", timeout_s=2.0)
    assert fn.__name__ == "code_accuracy"
    assert fn([ECHO], tests=[CASES], prompts=["p"], completion_ids=[[1]], trainer_state=None, log_extra=None, log_metric=None) == [1.0]
    with pytest.raises(ValueError):
        get_reward("code_accuracy", mode="most")
    with pytest.raises(ValueError):
        normalise_tests(42)
