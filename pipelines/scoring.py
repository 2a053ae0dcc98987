"""Held-out scoring shared by every stage, the `eval` stage and `rayzero eval`: greedy pass@1 of a model,
scored by the verifier of the rows' task; with `eval.samples > 0`, test-time scaling too (pass@k, maj@k,
best-of-N, weighted vote, beam search: see `rl.evaluation`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rewards.registry import get_reward
from rl.callbacks import make_bar
from rl.generation import generate

if TYPE_CHECKING:
    from pipelines.config.schema import EvalSection


def row_scores(completions: list[str], rows: list[dict]) -> list:
    """Held-out correctness, by the rows' task: code rows (with `tests`, e.g. HumanEval) run their tests
    in the sandbox (`code_accuracy`, all tests must pass); the others compare `answer` (`math_accuracy`)."""
    if rows and "tests" in rows[0]:
        fn = get_reward("code_accuracy", mode="all")
        return fn(completions, tests=[r["tests"] for r in rows], entry_point=[r.get("entry_point") for r in rows])
    return get_reward("math_accuracy")(completions, answer=[r["answer"] for r in rows])


def evaluate_model(model, tokenizer, rows: list[dict], cfg: "EvalSection", desc: str = "eval") -> dict:
    """Greedy pass@1 on `rows` {prompt, answer}; returns accuracy and a few samples for inspection."""
    bar = make_bar(desc, len(rows))
    outs = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.batch_size, on_batch=bar.update)
    bar.close()
    completions = [o[0] for o in outs]
    scores = row_scores(completions, rows)
    correct = sum(1 for s in scores if s == 1.0)
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions]
    return {
        "accuracy": correct / max(1, len(rows)),
        "num_examples": len(rows),
        "mean_completion_tokens": sum(lengths) / max(1, len(lengths)),
        "samples": [{"prompt": r["prompt"], "completion": c, "answer": r["answer"], "score": s}
                    for r, c, s in list(zip(rows, completions, scores))[:8]],
        "correct": [s == 1.0 for s in scores],  # per row, so a subset's accuracy needs no second pass
        "tokens": lengths,
    }


def judge_for(tokenizer) -> "Judge":
    """Answers checked by `row_scores`; votes on the normalised final answer."""
    from rewards.math import extract_answers
    from rl.evaluation import Judge

    def correct(completions: list[str], rows: list[dict]) -> list[bool]:
        return [s == 1.0 for s in row_scores(completions, rows)]

    def answer(completion: str):
        found = extract_answers(completion)
        return found[0] if len(found) == 1 else None  # none, or hedging between several: no vote

    return Judge(correct=correct, answer=answer,
                 token_count=lambda c: len(tokenizer(c, add_special_tokens=False)["input_ids"]))


def scorer_for(cfg: "EvalSection"):
    """The verifier used to rank samples and steps: a learned PRM if given, else a registered reward
    that needs no answer column (called with prompts and completions only)."""
    if cfg.prm_path:
        from rl.tts import load_prm_scorer

        return load_prm_scorer(cfg.prm_path)
    if cfg.scorer:
        fn = get_reward(cfg.scorer)
        return lambda prompts, completions: [float(x or 0.0) for x in fn(completions, prompts=prompts)]
    return None


def evaluate_checkpoint(path: str | Path, rows: list[dict], cfg: "EvalSection", seed: int = 0, desc: str = "eval") -> dict:
    """Greedy pass@1 of the checkpoint at `path`, plus test-time scaling when `cfg.samples > 0`;
    also its parameter count and accuracy per billion parameters ("knowledge density")."""
    from rl.evaluation import tts_evaluate
    from rl.metrics import generate_flops
    from rl.modeling import count_params, load_policy

    model, tok = load_policy(path)
    params = count_params(model)
    greedy = evaluate_model(model, tok, rows, cfg, desc=f"{desc}: greedy")
    out = {"accuracy": greedy["accuracy"], "params": params, "accuracy_per_billion_params": greedy["accuracy"] / (params / 1e9),
           "mean_completion_tokens": greedy["mean_completion_tokens"], "num_examples": len(rows),
           "samples": greedy["samples"]}
    gen_tokens = greedy["mean_completion_tokens"] * len(rows)
    if cfg.samples > 0:
        sub = rows[: cfg.num_problems or None]
        n = len(sub)
        sub_greedy = {"accuracy": sum(greedy["correct"][:n]) / max(1, n),
                      "mean_completion_tokens": sum(greedy["tokens"][:n]) / max(1, n)}
        bar = make_bar(f"{desc}: tts samples", n * cfg.samples)
        tts = tts_evaluate(model, tok, sub, cfg, judge_for(tok), greedy=sub_greedy, scorer=scorer_for(cfg),
                           max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, seed=seed,
                           on_batch=bar.update)
        bar.close()
        out.update(tts)
        gen_tokens += sum(p["tokens"] for p in tts["tts"].get("beam", [])) * n
        gen_tokens += tts["mean_sample_tokens"] * n * cfg.samples
    out["flops"] = generate_flops(params, gen_tokens)
    return out
