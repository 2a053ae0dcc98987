"""Experiment tracking on a real micro run (tests/e2e/micro_run.py, shared with test_publish.py): the offline
wandb runs are read back from their .wandb files (tests/wandb_records.py) and checked for one run per
stage, per-reward and policy metrics, the rollout and eval tables and the model artifacts; plus the metric
history files and PNG plots in the run folder. Marked slow (the shared run: ~1.5 min on 2 cores)."""

import glob
import json
import subprocess
import sys
from pathlib import Path

import pytest
from wandb.sdk.lib.hashutil import md5_file_b64

from pipelines.config import load_config
from pipelines.report.plots import write_plots
from pipelines.report.tracking import resolved_mode
from tests.e2e.micro_run import CUSTOM_REWARD
from tests.e2e.wandb_records import read_runs

STAGES = ("sft", "grpo", "distill")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(micro):
    return micro


@pytest.fixture(scope="module")
def runs(run):
    return read_runs(run.run_dir / "wandb")


def _table(run, wandb_run, key: str, step: int | None = None) -> dict:
    """The JSON of table `key` logged by `wandb_run` (at `train/global_step` == step, if given)."""
    rows = [h for h in wandb_run.history if f"{key}/path" in h and (step is None or h.get("train/global_step") == step)]
    assert rows, f"no '{key}' table logged by {wandb_run.name} (step {step})"
    files = glob.glob(str(run.run_dir / "wandb" / "offline-run-*" / "files" / rows[-1][f"{key}/path"]))
    assert files, rows[-1][f"{key}/path"]
    return json.loads(Path(files[0]).read_text())


@pytest.mark.slow
def test_one_run_per_stage_grouped_by_pipeline_run_with_the_config(run, runs):
    assert set(runs) == set(STAGES)
    for stage, r in runs.items():
        assert r.group == "micro" and r.name == f"micro-{stage}"
        assert r.config["run"]["name"] == "micro" and r.config["grpo"]["zero_stage"] == 3


@pytest.mark.slow
def test_grpo_logs_each_reward_and_the_policy_metrics(runs):
    keys = runs["grpo"].keys()
    for name in ("math_accuracy", "strict_format", CUSTOM_REWARD):  # the micro recipe's + the user's own
        assert f"train/rewards/{name}/mean" in keys and f"train/rewards/{name}/std" in keys
    for key in ("train/reward", "train/entropy", "train/clip_ratio/low_mean", "train/clip_ratio/high_mean",
                "train/clip_ratio/region_mean", "train/completions/mean_length", "train/completions/max_length"):
        assert key in keys, key
    speeds = [h["train/tokens_per_s"] for h in runs["grpo"].history if "train/tokens_per_s" in h]
    assert len(speeds) == 3 and all(s > 0 for s in speeds)  # one per step (logging_steps=1, 3 steps)


@pytest.mark.slow
def test_rollout_table_every_n_steps_has_prompt_completion_and_each_reward(run, runs):
    for step in (1, 2, 3):  # grpo.log_rollouts_every=1
        table = _table(run, runs["grpo"], "rollouts", step)
        assert {"step", "prompt", "completion", "math_accuracy", "strict_format", CUSTOM_REWARD, "advantage"} \
            <= set(table["columns"])
        assert len(table["data"]) == 2 * 2  # prompts_per_step x num_generations, gathered from both workers
        row = dict(zip(table["columns"], table["data"][0]))
        assert row["prompt"].endswith("?\n") and row["math_accuracy"] in (0.0, 1.0)
    on_disk = [json.loads(line) for line in (run.run_dir / "grpo" / "rollouts.jsonl").open()]
    assert [r["step"] for r in on_disk] == [1] * 4 + [2] * 4 + [3] * 4


@pytest.mark.slow
def test_every_stage_logs_an_eval_table_and_its_checkpoint_as_a_model_artifact(run, runs):
    for stage in STAGES:
        table = _table(run, runs[stage], "eval/samples")
        assert table["columns"] == ["prompt", "completion", "answer", "score"] and len(table["data"]) == 8
        samples = json.loads((run.run_dir / stage / "manifest.json").read_text())["metrics"]["samples"]
        assert [r[0] for r in table["data"]] == [s["prompt"] for s in samples]
        models = [a for a in runs[stage].artifacts if a["type"] == "model"]
        assert [a["name"] for a in models] == [f"micro-{stage}"]
        assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(models[0]["files"])
        # by reference to the files of the finished stage folder (not `<stage>.partial/`), with their md5: no copy
        for name, ref in models[0]["refs"].items():
            assert ref == (run.run_dir / stage / name).resolve().as_uri(), ref
            assert models[0]["digests"][name] == md5_file_b64(str(run.run_dir / stage / name))


@pytest.mark.slow
def test_the_wandb_folder_holds_no_checkpoint_copy_and_the_run_prints_its_size(run):
    wandb_dir = run.run_dir / "wandb"
    weights = {p.read_bytes() for s in STAGES for p in (run.run_dir / s).glob("*.safetensors")}
    sizes = {len(w) for w in weights}
    copies = [p for p in wandb_dir.rglob("*") if p.is_file() and (
        p.suffix == ".safetensors" or (p.stat().st_size in sizes and p.read_bytes() in weights))]
    assert len(weights) == len(STAGES) and not copies, copies  # before: every stage's weights, copied
    line = next(x for x in run.log.splitlines() if x.startswith("run folder: "))
    assert line.endswith(f" in {run.run_dir}") and "(wandb " in line


@pytest.mark.slow
def test_each_stage_saves_its_metric_history_and_the_run_has_plots(run):
    for stage in STAGES:
        rows = [json.loads(line) for line in (run.run_dir / stage / "history.jsonl").open()]
        assert rows and all("step" in r for r in rows)
    grpo = [json.loads(line) for line in (run.run_dir / "grpo" / "history.jsonl").open()]
    assert [r["step"] for r in grpo if "reward" in r] == [1, 2, 3]
    for name in ("reward", "accuracy", "response_length", "loss"):
        path = run.run_dir / "plots" / f"{name}.png"
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000, name
    assert not (run.run_dir / "plots" / "tts.png").exists()  # no eval stage with TTS in this run


@pytest.mark.slow
def test_printed_wandb_sync_command_finds_the_offline_runs(run):
    line = next(x for x in run.log.splitlines() if "upload with: wandb sync" in x)
    command = line.split("upload with: ", 1)[1]
    paths = glob.glob(command.split()[-1])
    assert len(paths) == len(STAGES)
    wandb_cli = str(Path(sys.executable).parent / "wandb")
    dry = subprocess.run([wandb_cli, "sync", "--dry-run", *paths], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and f"Would sync {len(STAGES)} run(s)" in dry.stdout + dry.stderr


def test_tts_plot_from_the_report_contract(tmp_path):
    report = {"stages": {
        "grpo": {"accuracy": 0.5, "params": 100, "tts": {
            "greedy": [{"k": 1, "tokens": 20.0, "accuracy": 0.5}],
            "maj@k": [{"k": 1, "tokens": 22.0, "accuracy": 0.45}, {"k": 4, "tokens": 88.0, "accuracy": 0.6},
                      {"k": 16, "tokens": 352.0, "accuracy": 0.7}],
            "beam": [{"k": 2, "tokens": 140.0, "accuracy": 0.65}]}},
        "sft": {"accuracy": 0.3, "params": 100, "accuracy_before": 0.0}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    written = {p.name for p in write_plots(tmp_path)}
    assert written == {"tts.png", "accuracy.png"}  # no histories here: only the report's plots
    assert (tmp_path / "plots" / "tts.png").read_bytes()[:8] == PNG


def test_online_only_with_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    online = load_config("micro", ["run.wandb_mode=online"])
    assert resolved_mode(online) == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password x" + "0" * 39 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert resolved_mode(online) == "online"
    assert resolved_mode(load_config("micro", [])) == "offline"  # the recipe asks for offline
