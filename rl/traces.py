"""Distillation data: rejection-sampled teacher traces and the mixes students learn from.

Small students learn poorly from long, intricate traces alone and better from a *mix* (Li et al. 2025,
"Small Models Struggle to Learn from Strong Reasoners", 2502.12143): Mix-Long combines long chains of
thought with short ones, Mix-Large combines a large teacher's traces with a small teacher's. Here a mix
is a recipe (`long_short`: the fraction of long traces; `teachers`: weights of the long-trace sources),
and `mix_counts` turns it into exact per-source counts for a trace budget, so every mix in a comparison
trains on the same number of traces and differs only in where they came from.

Pure functions: sampling happens elsewhere (the Ray rollout pool); this module filters and mixes.
"""

from __future__ import annotations

import math
import random
from typing import Mapping, Sequence

SHORT = "short"  # the pool name of short-CoT traces


def select_traces(rows: Sequence[dict], completions: Sequence[Sequence[str]], accepted: Sequence[Sequence[bool]],
                  tokens: Sequence[Sequence[int]], *, source: str, style: str, keep_per_prompt: int,
                  min_tokens: int = 0, max_tokens: int = 0, dedupe: bool = True) -> tuple[list[dict], dict]:
    """Rejection sampling over K samples per row: keep accepted samples (verified by the caller's
    reward), within [min_tokens, max_tokens] (0 = unbounded), distinct per prompt when `dedupe`, at most
    `keep_per_prompt` per prompt. Returns (traces, stats); a trace is {prompt, completion, answer,
    teacher, style, tokens, reward}."""
    traces: list[dict] = []
    stats = {"generated": 0, "accepted": 0, "too_short": 0, "too_long": 0, "duplicates": 0, "kept": 0,
             "prompts": len(rows), "prompts_solved": 0}
    for row, comps, oks, toks in zip(rows, completions, accepted, tokens, strict=True):
        seen: set[str] = set()
        kept = 0
        for c, ok, n in zip(comps, oks, toks, strict=True):
            stats["generated"] += 1
            if not ok:
                continue
            stats["accepted"] += 1
            if n < min_tokens:
                stats["too_short"] += 1
                continue
            if max_tokens and n > max_tokens:
                stats["too_long"] += 1
                continue
            if dedupe and c in seen:
                stats["duplicates"] += 1
                continue
            if kept >= keep_per_prompt:
                continue
            seen.add(c)
            kept += 1
            traces.append({"prompt": row["prompt"], "completion": c, "answer": row["answer"], "teacher": source,
                           "style": style, "tokens": int(n), "reward": 1.0})
        stats["prompts_solved"] += kept > 0
    stats["kept"] = len(traces)
    stats["accept_rate"] = stats["accepted"] / max(1, stats["generated"])
    return traces, stats


def mix_shares(long_short: float, teachers: Mapping[str, float]) -> dict[str, float]:
    """Fraction of a mix drawn from each pool: the long part split over teachers by weight, the rest
    from the short pool."""
    if not 0.0 <= long_short <= 1.0:
        raise ValueError(f"long_short={long_short} must be within [0, 1]")
    total = sum(teachers.values())
    if long_short > 0 and (total <= 0 or any(w < 0 for w in teachers.values())):
        raise ValueError(f"teacher weights {dict(teachers)} must be >= 0 with a positive sum")
    shares = {t: long_short * w / total for t, w in teachers.items() if w > 0} if long_short > 0 else {}
    if long_short < 1:
        shares[SHORT] = 1.0 - long_short
    return shares


def mix_counts(total: int, shares: Mapping[str, float]) -> dict[str, int]:
    """Exact integer counts summing to `total` (largest-remainder rounding; ties go to the pool listed
    first)."""
    raw = {k: total * v for k, v in shares.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    left = total - sum(counts.values())
    order = sorted(raw, key=lambda k: -(raw[k] - counts[k]))  # stable: earlier pools win ties
    for k in order[:left]:
        counts[k] += 1
    return counts


def largest_mix(sizes: Mapping[str, int], shares: Mapping[str, float]) -> int:
    """The largest trace budget a mix can fill from pools of these sizes."""
    missing = [k for k, s in shares.items() if s > 0 and k not in sizes]
    if missing:
        raise ValueError(f"mix needs pool(s) {missing} that were not generated")
    n = min(math.floor(sizes[k] / s) for k, s in shares.items() if s > 0)
    while n > 0 and any(c > sizes[k] for k, c in mix_counts(n, shares).items()):
        n -= 1
    return n


def build_mix(pools: Mapping[str, Sequence[dict]], counts: Mapping[str, int], seed: int) -> list[dict]:
    """Draw `counts[pool]` traces from each pool without replacement (seeded) and shuffle them together."""
    rng = random.Random(seed)
    out: list[dict] = []
    for name, n in counts.items():
        pool = pools.get(name, ())
        if n > len(pool):
            raise ValueError(f"pool '{name}' has {len(pool)} traces, the mix needs {n}")
        out += rng.sample(list(pool), n)
    rng.shuffle(out)
    return out
