"""The no-tool arm of a tool run (pipelines/stages/no_tool.py) without Ray: its config (the tool arm's step
counts, no tools, the task's no-tool variant), its cold start (the run's own problems with no-tool traces, the
held-out rows checked identical), and the report's tool_gain against it. The stage end to end runs in
tests/e2e/test_tools.py."""

import json
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.data import prepare_data
from pipelines.report.report import print_table, write_report
from pipelines.run_folder import RunFolder, read_jsonl
from pipelines.stages.no_tool import control_config, write_cold_start

SMALL = ["task.num_cold_start=12", "task.num_train=16", "task.num_heldout=6", "model.vocab_size=320"]


def test_control_config_matches_the_tool_arm_without_the_tool():
    cfg = load_config("tiny-tool")
    arm = control_config(cfg, grpo_steps=37, grpo_time_s=40.0)
    assert arm.grpo.max_steps == 37 and not arm.grpo.tools.enabled and arm.task.params["tool"] is False
    assert arm.grpo.time_budget_s == max(cfg.grpo.time_budget_s, 120.0) and arm.grpo.save_steps == 0
    assert arm.grpo.eval_every == -1  # no held-out curve for the control
    same = ("learning_rate", "num_generations", "prompts_per_step", "temperature", "rewards", "max_completion_length")
    assert all(getattr(arm.grpo, f) == getattr(cfg.grpo, f) for f in same) and arm.sft == cfg.sft
    assert control_config(load_config("tiny-tool", ["grpo.time_budget_s=0"]), 5, 40.0).grpo.time_budget_s == 0


@pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")
def test_cold_start_is_the_runs_problems_with_no_tool_traces(tmp_path):
    cfg = load_config("tiny-tool", [*SMALL, f"run.output_dir={tmp_path}"])
    prepare_data(cfg, say=lambda _: None)
    path = write_cold_start(cfg, control_config(cfg), tmp_path / "cold.jsonl")
    tool_rows, rows = read_jsonl(RunFolder(cfg.run_dir).data("cold_start")), read_jsonl(path)
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in tool_rows]  # the same problems, in order
    assert all(r["completion"] == f"<answer>{r['answer']}</answer>" for r in rows)
    assert all("<python>" in r["completion"] for r in tool_rows)


def test_report_tool_gain_is_tool_arm_minus_no_tool_arm(tmp_path):
    cfg = load_config("tiny-tool", [f"run.output_dir={tmp_path}"])
    cfg.run_dir.mkdir(parents=True)
    results = {
        "sft": {"accuracy": 0.4, "params": 10, "steps": 384, "tool_gain": 0.4, "accuracy_no_tool": 0.0},
        "grpo": {"accuracy": 0.5, "params": 10, "steps": 60, "tool_gain": 0.45, "accuracy_no_tool": 0.05,
                 "tool_calls_per_sample": 1.0, "tool_error_rate": 0.0},
        "no_tool": {"accuracy": 0.02, "params": 10, "steps": 60, "flops": 1.0,
                    "arm": {"sft": {"accuracy": 0.01, "steps": 384}, "grpo": {"accuracy": 0.02, "steps": 60}}},
    }
    report = write_report(cfg, results)
    s = report["summary"]
    assert s["tool_gain"] == pytest.approx(0.48) and s["tool_gain_same_model"] == pytest.approx(0.45)
    assert json.loads((cfg.run_dir / "report.json").read_text())["stages"]["no_tool"]["arm"]["sft"]["steps"] == 384
    lines: list[str] = []
    print_table(report, lines.append)
    text = "\n".join(lines)
    assert "tool vs no-tool at the same budget" in text and "without it (no_tool)" in text
    del results["no_tool"]
    assert "tool_gain" not in write_report(cfg, results)["summary"]  # no control, no cross-model figure
