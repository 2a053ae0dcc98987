"""`rayzero publish` and the recipe's `publish` section on a real micro run (tests/e2e/micro_run.py, shared with
test_tracking.py): published folders reload with AutoModelForCausalLM/AutoTokenizer and generate, the
model card parses with huggingface_hub and carries the report's results, a raw DeepSpeed ZeRO-3
checkpoint is consolidated, and Hub targets fail with one line and exit 2 when there is no token or no
network (there is none here)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipelines.report.model_card import build_card
from pipelines.publish.publish import PublishError, parse_target, publish
from tests.conftest import ROOT

QUESTION = "Mia has 3 pens. She buys 2 more. How many pens does Mia have now?"


@pytest.fixture(scope="module")
def run(micro):
    return micro


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "publish", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def _generates(folder: Path) -> str:
    """Load the folder as a user would and answer one question through its chat template."""
    model, tok = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    assert prompt == QUESTION + "\n"  # rayzero's prompt format
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids)  # generation_config.json: greedy, the run's eval.max_new_tokens
    assert out.shape[1] > ids["input_ids"].shape[1]
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def _card_matches_report(folder: Path, stage: str, report: dict) -> ModelCard:
    card = ModelCard.load(folder / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"accuracy": report["stages"][stage]["accuracy"]}
    assert card.data.model_name == f"micro-{stage}" and "rayzero" in card.data.tags
    assert card.data.datasets == ["arithmetic"] and card.data.base_model is None  # tiny: trained from scratch
    for png in sorted((folder / "plots").glob("*.png")):
        assert f"](plots/{png.name})" in card.text
    assert {"reward.png", "accuracy.png"} <= {p.name for p in (folder / "plots").glob("*.png")}
    assert yaml.safe_load((folder / "rayzero_config.yaml").read_text())["run"]["name"] == "micro"
    return card


@pytest.mark.slow
def test_the_recipes_publish_section_publishes_the_last_trained_stage(run):
    assert f"publish: micro/distill -> {run.published}" in run.log
    _card_matches_report(run.published, "distill", run.report)
    _generates(run.published)


@pytest.mark.slow
def test_publish_a_stage_to_a_directory_and_reload_it(run, tmp_path):
    dest = tmp_path / "micro-grpo"
    proc = _cli(str(run.run_dir / "grpo"), "--to", str(dest))
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = {p.name for p in dest.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md",
            "rayzero_config.yaml", "plots"} <= files
    assert yaml.safe_load((dest / "rayzero_config.yaml").read_text()) == yaml.safe_load(
        (run.run_dir / "config.yaml").read_text())
    _card_matches_report(dest, "grpo", run.report)
    _generates(dest)
    # the GRPO stage folder's weights, unchanged
    ref, pub = load_file(run.run_dir / "grpo" / "model.safetensors"), load_file(dest / "model.safetensors")
    assert ref.keys() == pub.keys() and all(ref[k].equal(pub[k]) for k in ref)
    with pytest.raises(PublishError, match="holds an earlier published model; pass --overwrite"):
        publish(run.run_dir / "grpo", str(dest), say=lambda _: None)
    publish(run.run_dir / "sft", str(dest), overwrite=True, say=lambda _: None)
    assert ModelCard.load(dest / "README.md").data.model_name == "micro-sft"


@pytest.mark.slow
def test_a_raw_zero3_checkpoint_is_consolidated_into_the_same_loadable_folder(run, tmp_path):
    ckpt = run.zero_checkpoints / "checkpoint-2"
    assert (ckpt / "global_step2").is_dir() and (ckpt / "latest").exists()  # DeepSpeed shards of 2 ranks
    dest = tmp_path / "zero3"
    publish(run.zero_checkpoints, str(dest), say=lambda _: None)  # the folder of checkpoint-N: its latest
    # fp32 master weights from the shards equal what DeepSpeed itself gathered at save time
    gathered, pub = load_file(ckpt / "model.safetensors"), load_file(dest / "model.safetensors")
    assert gathered.keys() == pub.keys() and all(gathered[k].equal(pub[k]) for k in gathered)
    sft = load_file(run.run_dir / "sft" / "model.safetensors")
    assert any(not sft[k].equal(pub[k]) for k in sft), "GRPO step 2 should have moved the weights"
    _generates(dest)
    card = ModelCard.load(dest / "README.md")
    assert not card.data.eval_results  # an intermediate checkpoint was never evaluated as such
    assert "training step 2" in card.text


@pytest.mark.slow
def test_hub_target_without_a_token_fails_with_one_line(run, tmp_path):
    env = {"HF_TOKEN": "", "HF_HOME": str(tmp_path)}  # no token in the environment nor in a token file
    proc = _cli(str(run.run_dir / "grpo"), "--to", "hf://rayzero-test/micro@v1", env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "rayzero: error: no Hugging Face token: set HF_TOKEN or run `hf auth login`, then publish again"]


@pytest.mark.slow
@pytest.mark.parametrize("offline", ["0", "1"])
def test_hub_target_without_network_fails_fast_with_one_line(run, tmp_path, offline):
    env = {"HF_TOKEN": "hf_not_a_real_token", "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": offline}
    start = time.monotonic()
    proc = _cli(str(run.run_dir / "grpo"), "--to", "hf://rayzero-test/micro", env=env)
    assert proc.returncode == 2 and time.monotonic() - start < 120
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rayzero: error: hf://rayzero-test/micro: ")
    assert ("HF_HUB_OFFLINE is set" if offline == "1" else "cannot reach the Hub") in lines[0]


def test_card_model_index_carries_pass_and_maj_at_k():
    report = {"stages": {"grpo": {"accuracy": 0.5, "params": 1000, "pass@k": {"1": 0.45, "4": 0.8},
                                  "maj@k": {"4": 0.6}, "tts": {"maj@k": [{"k": 4, "tokens": 80, "accuracy": 0.6}]}}}}
    cfg = {"task": {"name": "arithmetic", "num_heldout": 300}, "model": {"kind": "hf", "path": "HuggingFaceTB/SmolLM2-135M"}}
    card = build_card(repo="org/m", run="r", stage="grpo", cfg=cfg, report=report, evaluated=True, plots=[],
                      recipe="run: {}")
    parsed = ModelCard(str(card))  # through the YAML text, as the Hub reads it
    results = {r.metric_type: r.metric_value for r in parsed.data.eval_results}
    assert results == {"accuracy": 0.5, "pass@1": 0.45, "pass@4": 0.8, "maj@4": 0.6}
    assert parsed.data.base_model == "HuggingFaceTB/SmolLM2-135M"


def test_targets_and_sources_are_checked_before_any_work(tmp_path):
    assert parse_target("hf://org/name@v2").revision == "v2" and parse_target("hf://org/name").repo_id == "org/name"
    for bad in ("hf://just-a-name", "s3://bucket/x"):
        with pytest.raises(PublishError, match="hf://<org>/<name>"):
            parse_target(bad)
    with pytest.raises(PublishError, match="no model here"):
        publish(tmp_path, str(tmp_path / "out"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(PublishError, match="no weights"):
        publish(tmp_path, str(tmp_path.parent / f"{tmp_path.name}-out"), say=lambda _: None)
