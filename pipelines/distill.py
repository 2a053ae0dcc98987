"""Distillation stage: the RL'd teacher samples several solutions per training prompt, only
reward-passing ones are kept (rejection sampling), and a smaller student is trained on them with SFT."""

from __future__ import annotations

import time
from pathlib import Path

from pipelines import tracking
from pipelines.common import config_from, data_path, load_tokenizer, new_model, read_jsonl, save_checkpoint, use_cpus
from pipelines.evaluate import evaluate_model, write_jsonl
from rewards.registry import get_reward
from rl.callbacks import Progress, make_bar
from rl.modeling import count_params, load_policy
from rl.sft import SFTParams, sft_train
from rl.traces import rejection_sample


def _accept(completions: list[str], rows: list[dict]) -> list[bool]:
    correct = get_reward("math_accuracy")(completions, answer=[r["answer"] for r in rows])
    formatted = get_reward("strict_format")(completions)
    return [c == 1.0 and f == 1.0 for c, f in zip(correct, formatted)]


def run(cfg_dict: dict, out_dir: str, teacher_dir: str) -> dict:
    cfg = config_from(cfg_dict)
    d = cfg.distill
    use_cpus(d.num_cpus)
    out = Path(out_dir)
    teacher, tok = load_policy(teacher_dir)
    rows = read_jsonl(data_path(cfg, "train"))[: d.num_prompts]
    run = tracking.start_stage_run(cfg, "distill")
    start = time.monotonic()
    bar = make_bar("distill: teacher traces", len(rows) * d.samples_per_prompt)
    traces, stats = rejection_sample(teacher, tok, rows, samples_per_prompt=d.samples_per_prompt,
                                     temperature=d.temperature, max_new_tokens=cfg.eval.max_new_tokens,
                                     accept=_accept, keep_per_prompt=d.keep_per_prompt,
                                     teacher=Path(teacher_dir).name, seed=cfg.run.seed, on_batch=bar.update)
    bar.close()
    gen_time = time.monotonic() - start
    if not traces:
        raise RuntimeError(f"distill: the teacher at {teacher_dir} solved none of {len(rows)} prompts; "
                           "nothing to distill")
    write_jsonl(out / "traces.jsonl", traces)
    student = new_model(d.student, load_tokenizer(cfg), cfg.run.seed + 1)
    params = SFTParams(epochs=d.epochs, learning_rate=d.learning_rate, batch_size=d.batch_size)
    start = time.monotonic()
    metrics = sft_train(student, tok, traces, out / "trainer", params, seed=cfg.run.seed,
                        report_to=tracking.report_to(cfg), callbacks=[Progress("distill: student")])
    train_time = time.monotonic() - start
    save_checkpoint(student, tok, out)
    after = evaluate_model(student, tok, read_jsonl(data_path(cfg, "heldout")), cfg.eval, desc="distill: eval")
    result = {
        "accuracy": after["accuracy"], "params": count_params(student), "teacher_params": count_params(teacher),
        "traces": stats, "generation_time_s": gen_time, "train_time_s": train_time, "steps": metrics["steps"],
        "samples": after["samples"],
    }
    tracking.finish(run, {"eval/accuracy": after["accuracy"], "params": result["params"],
                          **{f"traces/{k}": v for k, v in stats.items()}})
    return result
