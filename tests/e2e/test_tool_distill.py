"""Distillation with the tool, through the real CLI on a real local Ray: a micro `tiny-tool` run (one-digit
products, so a teacher trained for a couple of minutes solves some) whose SFT teacher samples with the tool in a
Ray rollout actor (`ToolEngine`, real sandboxes); the verified traces it keeps hold tool calls with the sandbox's
real outputs; the student trains on them with those outputs left out of its labels, and is evaluated with the
tool (and `tools.json` marks its checkpoint for `rayzero eval`)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.test_grpo_cluster import ENV

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")

# 40 cold-start traces over 150 SFT steps: the seed-0 teacher then solves ~2-12 % of one-digit products at
# temperature 1 (enough verified traces among 24 prompts x 16 samples); GRPO and the no-tool arm are off (time).
MICRO_TOOL_DISTILL = [
    "run.name=tool-distill", "run.num_cpus=2",
    "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=128", "model.vocab_size=320",
    "task.num_cold_start=40", "task.num_train=24", "task.num_heldout=8", "task.params.min_digits=1",
    "task.params.max_digits=1", "sft.epochs=30", "sft.batch_size=8", "sft.learning_rate=3e-3",
    "grpo.enabled=false", "no_tool.enabled=false", "eval.max_new_tokens=24",
    "distill.enabled=true", "distill.mixes={main: {teachers: {sft: 1.0}}}", "distill.samples_per_prompt=16",
    "distill.max_new_tokens=24", "distill.rollout_cpus=1", "distill.epochs=40", "distill.batch_size=4",
    "distill.learning_rate=5e-3",
    "distill.students={s: {kind: tiny, hidden_size: 64, num_layers: 1, num_heads: 2, intermediate_size: 128}}",
]


@pytest.fixture(scope="module")
def distill_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tool-distill")
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "tiny-tool", f"run.output_dir={out}",
                           *MICRO_TOOL_DISTILL], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return out / "tool-distill"


def _product(code: str) -> str:
    assert code.startswith("print(") and code.endswith(")"), code
    a, b = code[len("print("):-1].split("*")
    return str(int(a) * int(b))


def test_kept_traces_call_the_tool_and_hold_its_real_outputs(distill_run):
    from rl.tools import count_calls

    traces = [json.loads(line) for line in (distill_run / "distill" / "mixes" / "main.jsonl").open()]
    stats = json.loads(next((distill_run / "traces").glob("sft-*.stats.json")).read_text())
    assert traces and stats["tool_traces"] == stats["kept"] == len(traces)
    for t in traces:
        c = t["completion"]
        assert count_calls(c) == 1 and t["reward"] == 1.0
        code = c.split("<python>", 1)[1].split("</python>", 1)[0]
        output = c.split("<output>", 1)[1].split("</output>", 1)[0]
        assert output == _product(code)  # what the sandbox printed for that call, not something the model wrote
        assert c.endswith(f"<answer>{t['answer']}</answer>")  # verified: the gold answer


def test_student_learns_its_own_tokens_and_is_evaluated_with_the_tool(distill_run):
    from transformers import AutoTokenizer

    report = json.loads((distill_run / "report.json").read_text())
    student = report["stages"]["distill"]["students"][0]
    traces = [json.loads(line) for line in (distill_run / "distill" / "mixes" / "main.jsonl").open()]
    tok = AutoTokenizer.from_pretrained(distill_run / "tokenizer")
    blocks = ["<output>" + t["completion"].split("<output>", 1)[1].split("</output>", 1)[0] + "</output>" for t in traces]
    # every token of every tool output block, and nothing else, was left out of the student's labels
    assert student["masked_tool_tokens"] == sum(len(tok(b, add_special_tokens=False)["input_ids"]) for b in blocks) > 0
    assert json.loads((distill_run / "distill" / "tools.json").read_text())["max_calls"] == 2
    # evaluated with the tool (and, on the same rows, without it)
    assert {"tool_calls_per_sample", "accuracy_no_tool"} <= set(student)
    assert student["tool_calls_per_sample"] > 0
    answered = [s["completion"] for s in student["samples"] if "</python><output>" in s["completion"]]
    assert answered, [s["completion"] for s in student["samples"]]
    for c in answered:  # the sandbox answered the student's calls during its evaluation
        code = c.split("<python>", 1)[1].split("</python>", 1)[0]
        output = c.split("<output>", 1)[1].split("</output>", 1)[0]
        if code.startswith("print(") and code[6:-1].replace("*", "").isdigit() and code.count("*") == 1:
            assert output == _product(code)
