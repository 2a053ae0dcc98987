"""The run report (`runs/<name>/report.json`) and the final table printed at the end of a run."""

from __future__ import annotations

import json
from typing import Callable

from pipelines.config import PipelineConfig, to_dict

KEEP = ("accuracy", "accuracy_before", "params", "wall_time_s", "train_time_s", "steps", "traces",
        "teacher_params", "num_workers", "reward_first", "reward_last")


def write_report(cfg: PipelineConfig, results: dict[str, dict]) -> dict:
    stages = {name: {k: m[k] for k in KEEP if k in m} for name, m in results.items()}
    acc = {name: m["accuracy"] for name, m in results.items()}
    summary = {}
    if "sft" in acc and "grpo" in acc:
        summary["grpo_gain_over_sft"] = acc["grpo"] - acc["sft"]
    if "baseline" in acc and "grpo" in acc:
        summary["grpo_gain_over_equal_time_sft"] = acc["grpo"] - acc["baseline"]
    if "distill" in results:
        teacher = results.get("grpo") or results.get("sft")
        if teacher:
            summary["student_param_ratio"] = results["distill"]["params"] / teacher["params"]
            summary["student_accuracy_retained"] = acc["distill"] / teacher["accuracy"] if teacher["accuracy"] else None
    report = {"run": cfg.run.name, "seed": cfg.run.seed, "stages": stages, "summary": summary,
              "config": to_dict(cfg)}
    (cfg.run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return report


def print_table(report: dict, say: Callable[[str], None] = print) -> None:
    rows = [("stage", "params", "held-out acc", "wall time")]
    for name, m in report["stages"].items():
        rows.append((name, f"{m['params']:,}", f"{100 * m['accuracy']:.1f} %", f"{m.get('wall_time_s', 0):.0f} s"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = "+".join("-" * (w + 2) for w in widths)
    say(line)
    for j, r in enumerate(rows):
        say(" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if j == 0:
            say(line)
    say(line)
    for k, v in report["summary"].items():
        say(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
