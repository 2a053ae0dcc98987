"""Evaluation: held-out accuracy (greedy pass@1) of a checkpoint, scored by the task's reward."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.config import EvalConfig
from rewards.registry import get_reward
from rl.callbacks import make_bar
from rl.generation import generate


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)


def evaluate_model(model, tokenizer, rows: list[dict], cfg: EvalConfig, desc: str = "eval") -> dict:
    """Greedy pass@1 on `rows` {prompt, answer}; returns accuracy and a few samples for inspection."""
    bar = make_bar(desc, len(rows))
    outs = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=cfg.max_new_tokens,
                    batch_size=cfg.batch_size, on_batch=bar.update)
    bar.close()
    completions = [o[0] for o in outs]
    scores = get_reward("math_accuracy")(completions, answer=[r["answer"] for r in rows])
    correct = sum(1 for s in scores if s == 1.0)
    lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions]
    return {
        "accuracy": correct / max(1, len(rows)),
        "num_examples": len(rows),
        "mean_completion_tokens": sum(lengths) / max(1, len(lengths)),
        "samples": [{"prompt": r["prompt"], "completion": c, "answer": r["answer"], "score": s}
                    for r, c, s in list(zip(rows, completions, scores))[:8]],
    }
