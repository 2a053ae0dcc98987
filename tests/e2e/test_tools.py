"""One micro-sized tool run through the real CLI on a real local Ray (the `tiny-tool` recipe shrunk): cold-start
traces with real tool outputs, GRPO whose rollouts run the tool protocol in a Ray rollout actor (`ToolEngine`
with its own sandboxes; the in-learner path is tests/unit/test_tool_grpo.py), every stage evaluated with and
without the tool, the no-tool arm (the same model trained without the tool for the same SFT and GRPO step counts
on the same problems), the report's tool figures, and `rayzero eval` using the tool for a checkpoint trained
with it. (Distillation with the tool: tests/e2e/test_tool_distill.py.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.test_grpo_cluster import ENV

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")

MICRO_TOOL = [
    "run.name=tool-micro", "run.num_cpus=2",
    "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=128", "model.vocab_size=320",
    "task.num_cold_start=64", "task.num_train=64", "task.num_heldout=16", "task.params.max_digits=3",
    "sft.epochs=6", "sft.batch_size=16", "sft.learning_rate=3e-3",
    "grpo.max_steps=2", "grpo.num_generations=2", "grpo.prompts_per_step=2", "grpo.max_completion_length=40",
    "grpo.logging_steps=1", "grpo.time_budget_s=0", "grpo.cpus=1", "grpo.rollout_workers=1", "grpo.rollout_cpus=0.5",
    "eval.max_new_tokens=40",
]


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tool-run")
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "tiny-tool", f"run.output_dir={out}", *MICRO_TOOL],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return out / "tool-micro"


def test_tool_run_reports_tool_figures_and_marks_checkpoints(tool_run):
    report = json.loads((tool_run / "report.json").read_text())
    s = report["summary"]
    assert {"tool_gain", "tool_calls_per_sample", "tool_error_rate"} <= set(s)
    grpo = report["stages"]["grpo"]
    assert grpo["tool_gain"] == pytest.approx(grpo["accuracy"] - grpo["accuracy_no_tool"])
    assert 0 <= report["stages"]["sft"]["tool_calls_per_sample"] <= 2  # at most max_calls
    for stage in ("sft", "grpo"):
        assert json.loads((tool_run / stage / "tools.json").read_text())["max_calls"] == 2
    rows = [json.loads(line) for line in (tool_run / "data" / "cold_start.jsonl").open()]
    assert all(r["completion"].endswith(f"<output>{r['answer']}</output><answer>{r['answer']}</answer>") for r in rows)
    # GRPO's held-out curve measures the policy with the tool, as the stages' evaluations do: at step 0 it is
    # the SFT policy, so it starts where SFT's evaluation ended
    curve = grpo["heldout_curve"]
    assert curve[0]["step"] == 0 and curve[0]["accuracy"] == pytest.approx(report["stages"]["sft"]["accuracy"])
    history = [json.loads(line) for line in (tool_run / "grpo" / "history.jsonl").open()]
    # the pool's tool engine sent its mask and counts back through the rollout actor to the learner
    assert any("tools/tool_calls_per_sample" in h for h in history)
    assert any("rollout/generate_s" in h for h in history)


def test_no_tool_arm_trains_without_the_tool_step_for_step_on_the_same_problems(tool_run):
    report = json.loads((tool_run / "report.json").read_text())
    stages, s = report["stages"], report["summary"]
    arm = stages["no_tool"]["arm"]
    assert arm["sft"]["steps"] == stages["sft"]["steps"] and arm["grpo"]["steps"] == stages["grpo"]["steps"]
    assert arm["tool_arm"] == {"sft_steps": stages["sft"]["steps"], "grpo_steps": stages["grpo"]["steps"]}
    assert s["tool_gain"] == pytest.approx(stages["grpo"]["accuracy"] - stages["no_tool"]["accuracy"])
    assert s["tool_gain_same_model"] == pytest.approx(stages["grpo"]["tool_gain"])
    tool_rows = [json.loads(line) for line in (tool_run / "data" / "cold_start.jsonl").open()]
    rows = [json.loads(line) for line in (tool_run / "no_tool" / "data" / "cold_start.jsonl").open()]
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in tool_rows]
    assert all(r["completion"] == f"<answer>{r['answer']}</answer>" for r in rows)
    for part in ("sft", "grpo"):  # trained without the tool: evaluated (and `rayzero eval`ed) without it
        assert (tool_run / "no_tool" / part / "config.json").exists()
        assert not (tool_run / "no_tool" / part / "tools.json").exists()
    assert stages["sft"]["masked_tool_tokens"] > 0  # the tool arm's cold start: outputs out of the labels
    assert not list(tool_run.glob("*.checkpoints"))
    md = (tool_run / "report.md").read_text()
    assert "tool vs no-tool at the same budget" in md and "| no_tool |" in md


def test_rayzero_eval_uses_the_tool_for_a_tool_trained_checkpoint(tool_run, tmp_path):
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "eval", str(tool_run / "grpo"), "--out", str(out)],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    result = json.loads(out.read_text())
    assert {"tool_gain", "accuracy_no_tool", "tool_calls_per_sample"} <= set(result)
    assert "calls per sample" in proc.stdout
