"""Evaluation with test-time scaling: accuracy against generated tokens for several strategies.

From n samples per problem (temperature `temperature`) the estimators of `rl.metrics` give, for every
k in `ks`, without re-sampling:
- `pass@k` (an oracle upper bound: some sample is right; not a strategy you can deploy),
- `maj@k` (self-consistency: the most frequent answer),
- `best-of-k` (the sample the scorer ranks highest) and `weighted-maj@k` (votes weighted by the scorer),
  when a scorer is given,
and step-level beam search (`rl.tts.beam_search`) is run for each width in `beam_widths`. Every point
carries the mean number of generated tokens per problem (k x the mean sample length for sampled
strategies; all tokens of every expansion for beam search), so compute-vs-accuracy curves can be drawn.
The scorer sees the prompt and the completion only, never the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from rl.generation import generate
from rl.metrics import best_of_k, maj_at_k, mean, pass_at_k
from rl.tts import BeamParams, Score, beam_search, hf_step_extender


@dataclass(frozen=True)
class TTSParams:
    """Test-time-scaling evaluation; `samples: 0` turns it off (greedy pass@1 only)."""

    samples: int = 0  # n samples per problem for pass@k / maj@k / best-of-k
    temperature: float = 1.0
    ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    num_problems: int = 0  # evaluate TTS on the first N held-out problems (0 = all)
    scorer: str = ""  # a reward that needs no answer (e.g. arithmetic_process): best-of-N, weighted vote, beam search
    prm_path: str = ""  # a learned process reward model (sequence classifier) instead of `scorer`
    beam_widths: tuple[int, ...] = ()  # step-level beam search at these widths (needs a scorer)
    beam_expansions: int = 2
    beam_max_rounds: int = 8  # beam search: rounds (steps) before an unfinished solution is cut off
    max_step_tokens: int = 16
    step_delimiters: tuple[str, ...] = (".",)

    def validate(self) -> None:
        """Raises ValueError (message starting with the field name) for settings TTS cannot run with.
        Whether `scorer` names a known reward is the pipeline's check (rl/ does not know the registry)."""
        from rl import params as v

        for name in ("samples", "num_problems"):
            v.positive_int(name, getattr(self, name), minimum=0)
        for name in ("beam_expansions", "beam_max_rounds", "max_step_tokens"):
            v.positive_int(name, getattr(self, name))
        if self.samples or self.beam_widths:
            v.finite("temperature", self.temperature, low=0, low_open=True)
        if self.samples and (any(k < 1 for k in self.ks) or not any(k <= self.samples for k in self.ks)):
            v.fail("ks", tuple(self.ks), f"need values >= 1 and at least one <= samples={self.samples}")
        if any(w < 1 for w in self.beam_widths):
            v.fail("beam_widths", tuple(self.beam_widths), "must all be >= 1")
        if self.beam_widths and not (self.scorer or self.prm_path):
            v.fail("beam_widths", tuple(self.beam_widths), "need a step scorer: set scorer or prm_path")
        if not self.step_delimiters or not all(self.step_delimiters):
            v.fail("step_delimiters", tuple(self.step_delimiters), "need at least one non-empty string")


@dataclass
class Judge:
    """How answers are checked: `correct(completions, rows) -> [bool]` uses the gold answer;
    `answer(completion) -> hashable | None` extracts the final answer for voting."""

    correct: Callable[[list[str], list[dict]], list[bool]]
    answer: Callable[[str], object]
    token_count: Callable[[str], int]
    extra: dict = field(default_factory=dict)


def tts_evaluate(model, tokenizer, rows: Sequence[dict], p: TTSParams, judge: Judge, *, greedy: dict,
                 scorer: Score | None, max_new_tokens: int, batch_size: int, seed: int = 0,
                 on_batch=None) -> dict:
    """Returns {"pass@k": {k: acc}, "maj@k": {...}, "tts": {strategy: [{"k", "tokens", "accuracy"}]}}.

    `greedy` is the greedy evaluation of the same rows ({"accuracy", "mean_completion_tokens"})."""
    rows = list(rows)[: p.num_problems or None]
    n = p.samples
    ks = [k for k in p.ks if k <= n]
    outs = generate(model, tokenizer, [r["prompt"] for r in rows], num_samples=n, temperature=p.temperature,
                    max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, on_batch=on_batch)
    flat = [c for o in outs for c in o]
    ok = judge.correct(flat, [r for r in rows for _ in range(n)])
    answers = [judge.answer(c) for c in flat]
    sample_tokens = mean([judge.token_count(c) for c in flat])
    scores = scorer([r["prompt"] for r in rows for _ in range(n)], flat) if scorer else None

    def per_problem(fn) -> float:
        return mean([fn(slice(i * n, (i + 1) * n)) for i in range(len(rows))])

    result: dict = {"samples": n, "problems": len(rows), "mean_sample_tokens": sample_tokens,
                    "pass@k": {}, "maj@k": {}, "tts": {},
                    # how the sampled figures were drawn, for reports that show them beside greedy ones
                    "sampling": {"n": n, "temperature": p.temperature, "problems": len(rows)}}
    curves: dict[str, list[dict]] = {"greedy": [{"k": 1, "tokens": greedy["mean_completion_tokens"],
                                                 "accuracy": greedy["accuracy"]}]}
    for k in ks:
        point = {"k": k, "tokens": k * sample_tokens}
        result["pass@k"][k] = per_problem(lambda s: pass_at_k(n, sum(ok[s]), k))
        result["maj@k"][k] = per_problem(lambda s: maj_at_k(answers[s], ok[s], k, seed=seed))
        curves.setdefault("maj@k", []).append({**point, "accuracy": result["maj@k"][k]})
        if scores is not None:
            weights = [max(0.0, x) for x in scores]  # a solution the scorer rejects casts no vote
            curves.setdefault("best-of-k", []).append(
                {**point, "accuracy": per_problem(lambda s: best_of_k(scores[s], ok[s], k, seed=seed))})
            curves.setdefault("weighted-maj@k", []).append(
                {**point, "accuracy": per_problem(lambda s: maj_at_k(answers[s], ok[s], k, weights=weights[s],
                                                                     seed=seed))})
    if p.beam_widths and scorer is not None:
        extend = hf_step_extender(model, tokenizer, step_delimiters=p.step_delimiters,
                                  max_step_tokens=p.max_step_tokens, temperature=p.temperature, batch_size=batch_size)
        prompts = [r["prompt"] for r in rows]
        for w in p.beam_widths:
            found = beam_search(prompts, extend, scorer, BeamParams(width=w, expansions=p.beam_expansions,
                                                                    max_rounds=p.beam_max_rounds))
            right = judge.correct([b.completion for b in found], rows)
            curves.setdefault("beam", []).append({"k": w, "tokens": mean([b.tokens for b in found]),
                                                  "accuracy": mean([float(x) for x in right])})
    result["tts"] = curves
    return result
