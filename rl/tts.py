"""Test-time scaling: step-level beam search guided by a step scorer, and the scorers it can use.

Beam search here follows the "search against a process reward model" recipe (Snell et al. 2024,
2408.03314; HF's search-and-learn): each problem keeps `width` partial solutions; every round each
unfinished one is extended by `expansions` sampled *steps* (text up to a step delimiter), every
candidate is scored by the step scorer, and the best `width` survive. Finished solutions stay in the
pool and compete on score, so a solution that ended early is kept only while nothing better exists.
The answer is the best-scored finished solution (the best unfinished one when none finished).

The search is written against two callables so it can be tested with toy ones:
- `extend(texts, n) -> [[(continuation, tokens, finished), ...n], ...]`: sample n next steps for each
  prompt+partial text (`hf_step_extender` does it with Hugging Face `generate` and stop strings);
- `score(prompts, partials) -> [float]`: a step scorer: a rule-based process reward from the reward
  registry (e.g. `arithmetic_process`) or a learned PRM (`load_prm_scorer`). It never sees the answer.
Every generated token is counted (pruned candidates included), so accuracy can be drawn against compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

Extend = Callable[[list[str], int], list[list[tuple[str, int, bool]]]]
Score = Callable[[list[str], list[str]], list[float]]


@dataclass(frozen=True)
class BeamParams:
    width: int = 4  # partial solutions kept per problem
    expansions: int = 2  # sampled next steps per kept partial solution
    max_rounds: int = 8  # unfinished solutions are cut off after this many steps


@dataclass
class BeamResult:
    completion: str  # the chosen solution (text after the prompt)
    score: float
    finished: bool
    tokens: int  # every token generated for this problem, pruned candidates included


def beam_search(prompts: Sequence[str], extend: Extend, score: Score, params: BeamParams) -> list[BeamResult]:
    """Step-level beam search for every prompt at once (one batched `extend` call per round)."""
    if params.width < 1 or params.expansions < 1 or params.max_rounds < 1:
        raise ValueError(f"beam search: width, expansions and max_rounds must be >= 1, got {params}")
    # beams[i]: list of (partial, score, finished) for problem i; start from the empty solution.
    beams: list[list[tuple[str, float, bool]]] = [[("", 0.0, False)] for _ in prompts]
    tokens = [0] * len(prompts)
    for _ in range(params.max_rounds):
        todo = [(i, partial) for i, bs in enumerate(beams) for partial, _, done in bs if not done]
        if not todo:
            break
        outs = extend([prompts[i] + partial for i, partial in todo], params.expansions)
        cands: list[list[tuple[str, float, bool]]] = [[b for b in bs if b[2]] for bs in beams]  # finished stay
        new_texts, owners, flags = [], [], []
        for (i, partial), conts in zip(todo, outs, strict=True):
            for text, n_tok, finished in conts:
                tokens[i] += n_tok
                new_texts.append(partial + text)
                owners.append(i)
                flags.append(finished)
        scores = score([prompts[i] for i in owners], new_texts) if new_texts else []
        seen: list[set] = [set(p for p, _, _ in c) for c in cands]
        for i, text, s, finished in zip(owners, new_texts, scores, flags, strict=True):
            if text in seen[i]:  # identical samples would fill the beam with copies
                continue
            seen[i].add(text)
            cands[i].append((text, float(s), finished))
        # Stable sort: among equal scores the earlier candidate wins, so results repeat for a seed.
        beams = [sorted(c, key=lambda b: -b[1])[: params.width] if c else bs for c, bs in zip(cands, beams)]
    results = []
    for bs, n_tok in zip(beams, tokens):
        done = [b for b in bs if b[2]]
        text, s, finished = max(done or bs, key=lambda b: b[1])
        results.append(BeamResult(text, s, finished, n_tok))
    return results


def hf_step_extender(model, tokenizer, *, step_delimiters: Sequence[str], max_step_tokens: int,
                     temperature: float, batch_size: int = 256) -> Extend:
    """`extend` for beam search with Hugging Face `generate`: sample up to the first step delimiter
    (stop strings), EOS, or `max_step_tokens`. A continuation is finished when it ended with EOS rather
    than a delimiter (or produced no text)."""
    from rl.modeling import eos_token_ids

    eos = eos_token_ids(model, tokenizer)

    @torch.no_grad()
    def extend(texts: list[str], n: int) -> list[list[tuple[str, int, bool]]]:
        model.eval()
        flat = [t for t in texts for _ in range(n)]
        out: list[tuple[str, int, bool]] = []
        for start in range(0, len(flat), batch_size):
            chunk = flat[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True).to(model.device)
            gen = model.generate(**enc, max_new_tokens=max_step_tokens, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None, top_p=None,
                                 top_k=0 if temperature > 0 else None, stop_strings=list(step_delimiters),
                                 tokenizer=tokenizer, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
            new = gen[:, enc["input_ids"].shape[1]:]
            for row in new:
                ids = row.tolist()
                stops = [j for j, t in enumerate(ids) if t in eos or t == tokenizer.pad_token_id]
                ids = ids[: stops[0]] if stops else ids
                text = tokenizer.decode(ids, skip_special_tokens=True)
                # Finished pads with the pad token, which may be EOS itself: a step that ends in a
                # delimiter was stopped by it; otherwise an EOS (or nothing at all) ends the solution.
                at_delim = any(d in text for d in step_delimiters)
                finished = not text or (bool(stops) and not at_delim)
                out.append((text, len(ids) + bool(stops), finished))
        return [out[i * n:(i + 1) * n] for i in range(len(texts))]

    return extend


def load_prm_scorer(path: str, batch_size: int = 64, *, device: str | None = None, dtype: str = "auto") -> Score:
    """A learned process reward model as a step scorer: a Hugging Face sequence-classification
    checkpoint reading prompt + partial solution; the score is the sigmoid of its first logit (one
    label: "this solution so far is on track"), as Math-Shepherd-style PRMs are used for search. The model
    is loaded in `dtype` ("auto" = bf16 on CUDA) onto `device` (None = CPU)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    from rl.modeling import resolve_dtype

    placed = {"device_map": {"": str(torch.device(device))}} if device is not None else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=resolve_dtype(dtype, device), **placed).eval()
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id

    @torch.no_grad()
    def score(prompts: list[str], partials: list[str]) -> list[float]:
        out: list[float] = []
        texts = [p + s for p, s in zip(prompts, partials, strict=True)]
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start:start + batch_size], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(model.device)
            out.extend(torch.sigmoid(model(**enc).logits[:, 0].float()).tolist())
        return out

    return score
