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
