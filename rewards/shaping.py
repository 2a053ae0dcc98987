"""Format and shaping rewards for R1-Zero-style completions: `<think>…</think>` then `<answer>…</answer>`.

Lengths are in tokens when TRL passes `completion_ids` (it always does), else in whitespace-separated
words, so the rewards also work when called by hand.
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from rewards.base import completion_text, register, with_prefill

_STRICT = re.compile(
    r"\A\s*<think>(?P<think>(?:(?!<think>|</think>|<answer>|</answer>).)*)</think>\s*"
    r"<answer>(?P<answer>(?:(?!<think>|</think>|<answer>|</answer>).)*\S(?:(?!<think>|</think>|<answer>|</answer>).)*)</answer>\s*\Z",
    re.S,
)


@register("strict_format")
def strict_format(completions, prompts=None, **_) -> list[float]:
    """1.0 when the completion is exactly one think block followed by exactly one non-empty answer block
    and nothing else: trailing junk, a second answer block, or tags nested in the wrong block score 0.
    When the prompt ends with `<think>` (a pre-filled template) the completion starts inside the think
    block: `reasoning</think><answer>x</answer>` is then the full format. DeepSeek-R1 (Guo et al. 2025,
    arXiv:2501.12948, §2.2.2) format reward."""
    prompts = prompts if prompts is not None else [None] * len(completions)
    return [1.0 if _STRICT.match(with_prefill(c, p)) else 0.0 for c, p in zip(completions, prompts, strict=True)]


def _lengths(completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None) -> list[int]:
    if completion_ids is not None:
        return [len(ids) for ids in completion_ids]
    return [len(completion_text(c).split()) for c in completions]


@register("overlong_penalty", factory=True)
def make_overlong_penalty(max_length: int = 1024, cache_length: int = 256):
    """DAPO soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13): 0 up to
    `max_length - cache_length`, then linearly down to -1 at `max_length`, and -1 beyond."""
    if not 0 < cache_length <= max_length:
        raise ValueError("need 0 < cache_length <= max_length")
    start = max_length - cache_length

    def overlong_penalty(completions, completion_ids=None, **_) -> list[float]:
        out = []
        for n in _lengths(completions, completion_ids):
            out.append(0.0 if n <= start else (-1.0 if n >= max_length else (start - n) / cache_length))
        return out

    return overlong_penalty


@register("repetition_penalty", factory=True)
def make_repetition_penalty(ngram_size: int = 3, max_penalty: float = -1.0):
    """N-gram repetition penalty (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning in
    LLMs", arXiv:2502.03373): `max_penalty * (1 - distinct n-grams / total n-grams)` over words, so a
    completion that loops the same phrase approaches `max_penalty`; 0 for too-short completions."""
    if ngram_size < 1 or max_penalty > 0:
        raise ValueError("need ngram_size >= 1 and max_penalty <= 0")

    def repetition_penalty(completions, **_) -> list[float]:
        out = []
        for c in completions:
            words = completion_text(c).lower().split()
            grams = [tuple(words[i : i + ngram_size]) for i in range(len(words) - ngram_size + 1)]
            out.append(0.0 if not grams else max_penalty * (1.0 - len(set(grams)) / len(grams)) + 0.0)
        return out

    return repetition_penalty


@register("cosine_length", factory=True)
def make_cosine_length(max_length: int = 1024, min_value_wrong: float = -1.0, max_value_wrong: float = -0.5,
                       min_value_correct: float = 0.5, max_value_correct: float = 1.0, timeout_s: float = 5.0):
    """Cosine length-scaled correctness reward (Yeo et al. 2025, arXiv:2502.03373, §4): correct answers
    earn more when short (max_value_correct at length 0 → min_value_correct at max_length), wrong ones
    are punished less when long (min_value_wrong → max_value_wrong), which discourages both padding and
    giving up early. Correctness is `math_accuracy` on the `answer` column; None where that is None."""
    from rewards.math import math_accuracy

    def cosine(n: int, lo: float, hi: float) -> float:
        progress = min(n, max_length) / max_length
        return lo + 0.5 * (hi - lo) * (1.0 + math.cos(progress * math.pi))

    def cosine_length(completions, answer, completion_ids=None, **_) -> list[float | None]:
        correct = math_accuracy(completions, answer, timeout_s=timeout_s)
        out: list[float | None] = []
        for ok, n in zip(correct, _lengths(completions, completion_ids)):
            if ok is None:
                out.append(None)
            elif ok >= 1.0:
                out.append(cosine(n, min_value_correct, max_value_correct))
            else:  # wrong: from min_value_wrong (short) up to max_value_wrong (long)
                out.append(cosine(n, max_value_wrong, min_value_wrong))
        return out

    return cosine_length
