"""Teacher traces for distillation: sample K solutions per prompt, keep the ones the verifier accepts
(rejection sampling), dedupe, and cap how many each prompt contributes."""

from __future__ import annotations

from typing import Callable, Sequence

from rl.generation import generate


def rejection_sample(model, tokenizer, rows: Sequence[dict], *, samples_per_prompt: int, temperature: float,
                     max_new_tokens: int, accept: Callable[[list[str], list[dict]], list[bool]],
                     keep_per_prompt: int, teacher: str, batch_size: int = 256, seed: int = 0,
                     on_batch=None) -> tuple[list[dict], dict]:
    """Returns (traces, stats). A trace is {prompt, completion, answer, teacher, tokens}; `accept` gets
    completions and their rows and says which pass (e.g. correct answer and strict format)."""
    outs = generate(model, tokenizer, [r["prompt"] for r in rows], num_samples=samples_per_prompt,
                    temperature=temperature, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                    on_batch=on_batch)
    flat_c = [c for o in outs for c in o]
    flat_r = [r for r, o in zip(rows, outs) for _ in o]
    ok = accept(flat_c, flat_r)
    traces, solved = [], 0
    for i, row in enumerate(rows):
        kept, seen = 0, set()
        for j in range(samples_per_prompt):
            c = flat_c[i * samples_per_prompt + j]
            if not ok[i * samples_per_prompt + j] or c in seen or kept >= keep_per_prompt:
                continue
            seen.add(c)
            kept += 1
            traces.append({"prompt": row["prompt"], "completion": c, "answer": row["answer"], "teacher": teacher,
                           "tokens": len(tokenizer(c, add_special_tokens=False)["input_ids"])})
        solved += kept > 0
    stats = {"generated": len(flat_c), "accepted": int(sum(ok)), "kept": len(traces),
             "prompts": len(rows), "prompts_solved": solved,
             "accept_rate": sum(ok) / max(1, len(flat_c))}
    return traces, stats
