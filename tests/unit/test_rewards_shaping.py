"""Shaping rewards: strict format, DAPO overlong penalty, n-gram repetition, cosine length."""

from __future__ import annotations

import pytest

from rewards.registry import get_reward, register
from rewards.shaping import strict_format


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("<think>5+3=8. 8-2=6.</think><answer>6</answer>", True),
        ("  <think>\nreason\n</think>\n<answer>6</answer>\n", True),
        ("<think>r</think><answer>6</answer> trailing junk", False),
        ("<think>r</think><answer>6</answer><answer>7</answer>", False),
        ("<think>r</think><answer>   </answer>", False),
        ("<answer>6</answer>", False),
        ("<think>r<answer>6</answer></think><answer>6</answer>", False),
        ("<think>a</think><think>b</think><answer>6</answer>", False),
        ("prefix <think>r</think><answer>6</answer>", False),
    ],
)
def test_strict_format(text, ok):
    assert strict_format([text]) == [1.0 if ok else 0.0]
    assert strict_format([[{"role": "assistant", "content": text}]]) == [1.0 if ok else 0.0]


def test_overlong_penalty_dapo_shape():
    fn = get_reward("overlong_penalty", max_length=100, cache_length=20)
    ids = [[0] * n for n in (10, 80, 90, 100, 150)]
    assert fn(["x"] * 5, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert fn(["a " * 90]) == [-0.5]  # words when no token ids are given
    with pytest.raises(ValueError):
        get_reward("overlong_penalty", max_length=10, cache_length=20)


def test_repetition_penalty():
    fn = get_reward("repetition_penalty", ngram_size=2, max_penalty=-1.0)
    looping = "go on " * 50
    varied = "the quick brown fox jumps over the lazy dog"
    got = fn([looping, varied, "one"])
    assert got[0] < -0.9 and got[1] == 0.0 and got[2] == 0.0


def test_cosine_length_reward():
    fn = get_reward("cosine_length", max_length=100)
    short_right, long_right = "\\boxed{6}", "w " * 100 + "\\boxed{6}"
    short_wrong, long_wrong = "\\boxed{5}", "w " * 100 + "\\boxed{5}"
    r = fn([short_right, long_right, short_wrong, long_wrong, "\\boxed{6}"], answer=["6", "6", "6", "6", "}{"])
    assert r[0] == pytest.approx(1.0, abs=0.01) and r[1] == pytest.approx(0.5)
    assert r[2] == pytest.approx(-1.0, abs=0.01) and r[3] == pytest.approx(-0.5)
    assert r[4] is None
    assert r[0] > r[1] > r[3] > r[2]


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register("strict_format")(lambda completions, **_: [])


R1_ZERO_PROMPT = ("A conversation between User and Assistant. The Assistant first thinks about the reasoning process in "
                  "the mind and then provides the answer. User: Mia has 7 pens. She buys 5 more. How many pens does Mia "
                  "have now? Assistant: <think>")


@pytest.mark.parametrize(
    ("prompt", "completion", "ok"),
    [
        (R1_ZERO_PROMPT, "7+5=12.</think><answer>12</answer>", True),  # the template opened the think block
        (R1_ZERO_PROMPT + "\n", "\n7+5=12.\n</think>\n<answer>12</answer>", True),
        ([{"role": "user", "content": "Mia has 7 pens..."}, {"role": "assistant", "content": "<think>"}],
         "7+5=12.</think><answer>12</answer>", True),  # chat prompt with a pre-filled assistant turn
        (R1_ZERO_PROMPT.removesuffix(" <think>"), "7+5=12.</think><answer>12</answer>", False),  # nothing pre-filled
        ([{"role": "user", "content": "Mia has 7 pens..."}], "7+5=12.</think><answer>12</answer>", False),
        (R1_ZERO_PROMPT, "<think>7+5=12.</think><answer>12</answer>", False),  # a second opening tag
        (R1_ZERO_PROMPT, "7+5=12.</think><answer>12</answer> and more", False),
        (R1_ZERO_PROMPT, "7+5=12.<answer>12</answer>", False),
        ("Question: what is 7+5?", "<think>7+5=12.</think><answer>12</answer>", True),
    ],
)
def test_strict_format_with_a_prefilled_think_tag(prompt, completion, ok):
    fn = get_reward("strict_format")
    assert fn([completion], prompts=[prompt], completion_ids=[[1]], trainer_state=None) == [1.0 if ok else 0.0]


def test_arithmetic_step_rewards_see_a_prefilled_think_tag():
    steps, process = get_reward("arithmetic_steps"), get_reward("arithmetic_process")
    completion = "7+5=12.</think><answer>12</answer>"
    assert steps([completion], prompts=[R1_ZERO_PROMPT]) == [1.0]
    assert process([completion], prompts=[R1_ZERO_PROMPT]) == [1.0]
    plain = R1_ZERO_PROMPT.removesuffix(" <think>")
    assert steps([completion], prompts=[plain]) == [0.0] and process([completion], prompts=[plain]) == [0.0]
