"""`rayzero publish --overwrite` never deletes what it did not write: not the run it publishes from, not a
folder above it or above the current folder, not a folder with other content. Files are compared before
and after every refusal; an earlier publish is replaced, atomically."""

import json
from pathlib import Path

import pytest
import yaml

from pipelines.config import load_config, to_dict
from pipelines.publish.publish import MARKER, publish


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder holding a tiny finished stage, as `rayzero run` leaves it."""
    from rl.modeling import build_tiny_model, save_tokenizer, train_tokenizer

    run = tmp_path_factory.mktemp("proj") / "ovr" / "base"
    texts = [f"Mia has {i} pens. She buys 2 more. How many pens does Mia have now?\n<think>{i}+2={i + 2}.</think>"
             f"<answer>{i + 2}</answer>" for i in range(30)]
    tok = train_tokenizer(texts, 300)
    model = build_tiny_model(tok, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position=64, seed=0)
    for stage in ("sft", "grpo"):
        model.save_pretrained(run / stage)
        save_tokenizer(tok, run / stage, texts[0])
        (run / stage / "manifest.json").write_text(json.dumps({"stage": stage, "metrics": {"accuracy": 0.5}}))
    (run / "data").mkdir()
    (run / "data" / "heldout.jsonl").write_text(json.dumps({"prompt": texts[0].split("<think>")[0], "answer": "2"}) + "\n")
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config("micro"))))
    (run / "report.json").write_text(json.dumps({"run": "base", "seed": 0, "stages": {}, "summary": {}}))
    return run


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_publish_refuses_the_run_folder_itself(run_dir):
    before = snapshot(run_dir)
    with pytest.raises(Exception, match="holds the checkpoint being published"):
        publish(run_dir / "grpo", str(run_dir), overwrite=True, say=lambda _: None)
    with pytest.raises(Exception, match="holds the checkpoint being published"):
        publish(run_dir / "grpo", str(run_dir.parent), overwrite=True, say=lambda _: None)
    assert snapshot(run_dir) == before


def test_publish_refuses_the_current_folder_and_its_parents(run_dir, monkeypatch, tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "notes.txt").write_text("mine")
    monkeypatch.chdir(proj)
    for to in (".", ".."):
        with pytest.raises(Exception, match="current folder"):
            publish(run_dir / "grpo", to, overwrite=True, say=lambda _: None)
    assert (proj / "notes.txt").read_text() == "mine"


def test_publish_refuses_a_folder_with_other_content_even_with_overwrite(run_dir, tmp_path):
    target = tmp_path / "models"
    target.mkdir()
    (target / "keep.bin").write_bytes(b"\x00\x01")
    with pytest.raises(Exception, match="did not write"):
        publish(run_dir / "grpo", str(target), overwrite=True, say=lambda _: None)
    assert snapshot(target) == {"keep.bin": b"\x00\x01"}


def test_publish_replaces_only_its_own_earlier_output(run_dir, tmp_path):
    target = tmp_path / "out"
    publish(run_dir / "grpo", str(target), say=lambda _: None)
    assert json.loads((target / MARKER).read_text())["stage"] == "grpo"
    assert (target / "model.safetensors").exists() and (target / "README.md").exists()
    with pytest.raises(Exception, match="pass --overwrite"):
        publish(run_dir / "sft", str(target), say=lambda _: None)
    publish(run_dir / "sft", str(target), overwrite=True, say=lambda _: None)
    assert json.loads((target / MARKER).read_text())["stage"] == "sft"
    assert not list(tmp_path.glob("out.*")), "no temporary siblings left behind"
    empty = tmp_path / "empty"
    empty.mkdir()
    publish(run_dir / "grpo", str(empty), say=lambda _: None)
    assert (empty / "model.safetensors").exists()
