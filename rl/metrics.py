"""Sampling metrics for verifiable tasks: pass@k, maj@k and best-of-k, as unbiased estimates from n >= k
samples per problem.

Drawing k of the n samples at random (without replacement) is the experiment every estimate here
describes; the functions return its exact expectation, so an estimate from n samples does not depend on
which k happened to be drawn first:

- `pass_at_k`: P(at least one of k is correct) = 1 - C(n-c, k) / C(n, k)  (Chen et al. 2021, Codex).
- `maj_at_k`:  P(the most frequent answer among k is correct). Ties share the credit: a correct answer
  tied with m other answers for the top scores 1/(m+1) (the expected score of a random tie-break).
  `weights` turns it into weighted majority voting (an answer's votes are the sum of its samples'
  weights, e.g. verifier scores).
- `best_of_k`: P(the highest-scored of k samples is correct), ties shared the same way.

pass@k has a closed form. maj@k and best-of-k are averaged over every k-subset when there are at most
`max_subsets` of them and over `max_subsets` random subsets otherwise (seeded, so results repeat).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from typing import Hashable, Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, eq. 1)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - prod_{i=n-c+1}^{n} (1 - k/i): the numerically stable form of 1 - C(n-c,k)/C(n,k).
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _subsets(n: int, k: int, max_subsets: int, seed: int):
    if math.comb(n, k) <= max_subsets:
        yield from itertools.combinations(range(n), k)
        return
    rng = random.Random(seed)
    for _ in range(max_subsets):
        yield tuple(rng.sample(range(n), k))


def _vote(answers: Sequence[Hashable | None], correct: Sequence[bool], weights: Sequence[float],
          subset: Sequence[int]) -> float:
    """Score of one majority vote: 1/(ties) if a correct answer is among the top, else 0."""
    votes: dict = defaultdict(float)
    right: set = set()
    for i in subset:
        if answers[i] is None:  # no parseable answer: casts no vote
            continue
        votes[answers[i]] += weights[i]
        if correct[i]:
            right.add(answers[i])
    if not votes:
        return 0.0
    top = max(votes.values())
    winners = [a for a, v in votes.items() if math.isclose(v, top, rel_tol=1e-9, abs_tol=1e-12)]
    return sum(a in right for a in winners) / len(winners)


def maj_at_k(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int,
             weights: Sequence[float] | None = None, max_subsets: int = 2000, seed: int = 0) -> float:
    """Expected accuracy of (weighted) majority voting over k of the n samples of one problem.

    answers: (n,) the extracted final answer of each sample (None = no answer);
    correct: (n,) whether each sample's answer is right (equal answers must agree);
    weights: (n,) vote weights, default 1 (plain majority)."""
    n = len(answers)
    if len(correct) != n or (weights is not None and len(weights) != n):
        raise ValueError("maj_at_k: answers, correct and weights must have the same length")
    if not 1 <= k <= n:
        raise ValueError(f"maj_at_k: need 1 <= k <= n, got k={k}, n={n}")
    w = [1.0] * n if weights is None else [float(x) for x in weights]
    scores = [_vote(answers, correct, w, s) for s in _subsets(n, k, max_subsets, seed)]
    return sum(scores) / len(scores)


def best_of_k(scores: Sequence[float], correct: Sequence[bool], k: int, max_subsets: int = 2000,
              seed: int = 0) -> float:
    """Expected accuracy of picking the highest-`scores` sample among k of the n samples of one problem
    (best-of-N with a verifier or reward model as the scorer)."""
    n = len(scores)
    if len(correct) != n:
        raise ValueError("best_of_k: scores and correct must have the same length")
    if not 1 <= k <= n:
        raise ValueError(f"best_of_k: need 1 <= k <= n, got k={k}, n={n}")
    total = count = 0.0
    for subset in _subsets(n, k, max_subsets, seed):
        top = max(scores[i] for i in subset)
        best = [i for i in subset if scores[i] == top]
        total += sum(correct[i] for i in best) / len(best)
        count += 1
    return total / count


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# FLOPs, the usual dense-transformer estimate (Kaplan et al. 2020): a forward pass costs ~2 N FLOPs
# per token and forward + backward ~6 N, for N non-embedding-ish parameters (we use all parameters, an
# overestimate for tiny models whose embedding dominates). Attention's sequence-length term is ignored.

def train_flops(params: int, tokens: float) -> float:
    return 6.0 * params * tokens


def generate_flops(params: int, tokens: float) -> float:
    return 2.0 * params * tokens
