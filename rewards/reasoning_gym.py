"""Reward from reasoning-gym's own verifiers: `score_answer(answer, entry)` of the row's generator.

Rows made by the reasoning-gym task adapter carry `rg_dataset` (the generator's name) and `rg_entry`
(JSON: question, answer, metadata); TRL passes both columns to the reward. The completion's answer is
the text of its last `<answer>…</answer>` block (the whole text after the last `</think>` when there is
no answer block), handed to the verifier as is: generators with their own answer logic (lists, dates,
puzzles) decide what counts.

reasoning-gym's default `score_answer` gives partial credit when the gold string occurs inside a longer
answer (`len(gold) / len(answer)`: "158" in "1158" scores 0.75). That invites reward hacking by padding,
so by default scores below 1 become 0 (`partial_credit=False`); pass `partial_credit: true` in
`grpo.reward_params.reasoning_gym_accuracy` to keep the verifier's raw score.

Scores: the verifier's score in [0, 1]; 0.0 when the completion states no answer; None when the row
cannot be scored (unknown generator, malformed `rg_entry`), never silently 0 or 1.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any, Callable

from rewards.base import completion_text, register

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)


def extract_answer(text: str) -> str | None:
    """The completion's final answer text, or None when it gives none."""
    tags = _ANSWER_TAG.findall(text)
    answer = tags[-1] if tags else (text.rsplit("</think>", 1)[1] if "</think>" in text else "")
    answer = answer.strip()
    return answer or None


@lru_cache(maxsize=None)
def _scorer(dataset: str) -> Callable[[str | None, dict], float] | None:
    try:
        from reasoning_gym import get_score_answer_fn

        return get_score_answer_fn(dataset)
    except (ImportError, ValueError):
        return None


def _entry(raw: Any) -> dict | None:
    if isinstance(raw, dict):
        return raw
    try:
        entry = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return None
    return entry if isinstance(entry, dict) and "answer" in entry else None


def reasoning_gym_accuracy(completions: list, rg_dataset: list, rg_entry: list, *, partial_credit: bool = False,
                           **_: Any) -> list[float | None]:
    """Score each completion with its row's reasoning-gym verifier (see the module docstring)."""
    out: list[float | None] = []
    for c, name, raw in zip(completions, rg_dataset, rg_entry, strict=True):
        scorer, entry = _scorer(str(name)), _entry(raw)
        if scorer is None or entry is None:
            out.append(None)
            continue
        answer = extract_answer(completion_text(c))
        if answer is None:
            out.append(0.0)
            continue
        try:
            score = float(scorer(answer, entry))
        except Exception:  # noqa: BLE001 - a verifier crashing on a malformed answer rejects that answer
            score = 0.0
        out.append(score if partial_credit or score >= 1.0 else 0.0)
    return out


@register("reasoning_gym_accuracy", factory=True)
def make_reasoning_gym_accuracy(partial_credit: bool = False):
    """Factory: `partial_credit` keeps the verifier's fractional scores (off by default)."""

    def fn(completions, rg_dataset, rg_entry, **kw):
        return reasoning_gym_accuracy(completions, rg_dataset, rg_entry, partial_credit=partial_credit)

    fn.__doc__ = reasoning_gym_accuracy.__doc__
    return fn
