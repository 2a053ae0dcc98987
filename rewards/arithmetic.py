"""Rule-based process reward for arithmetic chains of thought.

A final-answer reward only pays when every step of a multi-step solution is right, so a model that
gets one fact wrong in three learns nothing about the two it got right. Each step of an arithmetic
chain (`a+b=c.`) is itself verifiable, so this reward gives credit per step, in the spirit of process
supervision (Lightman et al. 2023, "Let's Verify Step by Step", 2305.20050) but with a rule-based
verifier instead of a learned PRM. Guards against gaming: a step counts only if it is arithmetically
true, its right operand is a number from the prompt, and it continues the chain (its left operand is the
previous result; the first one is a number from the prompt). Counting stops at the first bad step, and
the score is normalised by the number of operations the prompt implies, so padding the thought with
extra true equations earns nothing.
"""

from __future__ import annotations

import re

from rewards.base import completion_text, register, with_prefill

_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_EQ = re.compile(r"(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)")
_NUM = re.compile(r"-?\d+")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def chain_score(completion: str, prompt: str) -> float:
    numbers = [int(n) for n in _NUM.findall(prompt)]
    if len(numbers) < 2:
        return 0.0
    think = _THINK.search(completion)
    if not think:
        return 0.0
    allowed, valid, prev = set(numbers), 0, None
    for a, op, b, c in _EQ.findall(think.group(1)):
        a, b, c = int(a), int(b), int(c)
        continues = a in allowed if prev is None else a == prev
        if not (continues and b in allowed and _OPS[op](a, b) == c):
            break
        valid, prev = valid + 1, c
    return min(1.0, valid / (len(numbers) - 1))


@register("arithmetic_steps")
def arithmetic_steps(completions, prompts, **_) -> list[float]:
    """Fraction of the prompt's operations carried out as a valid chain of true equations."""
    return [chain_score(with_prefill(c, p), completion_text(p)) for c, p in zip(completions, prompts, strict=True)]


_ANSWER = re.compile(r"<answer>\s*(-?\d+)\s*</answer>")


def process_score(partial: str, prompt: str) -> float:
    """Score of a solution so far, complete or not (a rule-based process reward model for step-level
    beam search and for ranking samples in best-of-N): the fraction of the prompt's operations carried
    out as a valid chain, minus 1 as soon as any written step breaks the chain or a written answer
    disagrees with the chain's last result. It never sees the gold answer: it checks the arithmetic and
    that the numbers come from the prompt, not which operation the words ask for, so it can be fooled
    (`7+4=11` for "gives away 4" scores as well as `7-4=3`) — like a learned PRM, an imperfect verifier."""
    numbers = [int(n) for n in _NUM.findall(prompt)]
    if len(numbers) < 2:
        return 0.0
    start = partial.find("<think>")
    if start < 0:
        return 0.0
    end = partial.find("</think>", start)
    think = partial[start + 7: end if end >= 0 else len(partial)]
    allowed, valid, prev, broken = set(numbers), 0, None, False
    for a, op, b, c in _EQ.findall(think):
        a, b, c = int(a), int(b), int(c)
        continues = a in allowed if prev is None else a == prev
        if not (continues and b in allowed and _OPS[op](a, b) == c):
            broken = True
            break
        valid, prev = valid + 1, c
    answer = _ANSWER.search(partial[end:]) if end >= 0 else None
    if answer and (prev is None or int(answer.group(1)) != prev):
        broken = True
    return min(1.0, valid / (len(numbers) - 1)) - (1.0 if broken else 0.0)


@register("arithmetic_process")
def arithmetic_process(completions, prompts, **_) -> list[float]:
    """`process_score` of each (possibly partial) completion: a verifier that needs no gold answer."""
    return [process_score(with_prefill(c, p), completion_text(p)) for c, p in zip(completions, prompts, strict=True)]
