"""`rayzero publish --adapter`: a stage trained with LoRA publishes its adapter alone (adapter_config.json +
adapter_model.safetensors + tokenizer + a card naming the base), through the same marker/atomic-swap path as
the merged model; PEFT loads it onto the base and computes the merged model's logits. A stage without an
adapter is refused in one line, with nothing written."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.cli import main
from pipelines.config import load_config, to_dict
from pipelines.publish.publish import MARKER, PublishError, publish
from rl.lora import LoraParams, save_adapter, save_merged

TEXTS = [f"Mia has {i} pens. She buys 2 more. How many pens does Mia have now?\n<think>{i}+2={i + 2}.</think>"
         f"<answer>{i + 2}</answer>" for i in range(30)]
QUIET = dict(say=lambda _: None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run whose `sft` stage is a plain model and whose `grpo` stage trained a LoRA adapter on it."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from rl.modeling import build_tiny_model, save_tokenizer, train_tokenizer

    run = tmp_path_factory.mktemp("proj") / "lora"
    tok = train_tokenizer(TEXTS, 300)
    build_tiny_model(tok, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position=64,
                     seed=0).save_pretrained(run / "sft")
    save_tokenizer(tok, run / "sft", TEXTS[0])
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(run / "sft"), LoraParams(r=4, alpha=8.0).peft_config())
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: B is zero at init
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    save_adapter(policy, run / "grpo" / "adapter")  # as rl.lora.save_policy leaves a LoRA stage
    save_merged(policy, run / "grpo", tokenizer=tok)
    for stage in ("sft", "grpo"):
        (run / stage / "manifest.json").write_text(json.dumps({"stage": stage, "metrics": {"accuracy": 0.5}}))
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(load_config("micro", ["grpo.lora.r=4"]))))
    (run / "report.json").write_text(json.dumps({"run": "lora", "seed": 0, "summary": {},
                                                 "stages": {"grpo": {"accuracy": 0.5, "params": 1234}}}))
    return run


def _logits(model, tok):
    ids = tok(TEXTS[:3], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model.eval()(**ids).logits


def test_adapter_loads_onto_the_base_with_the_merged_models_logits(run_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "out"
    publish(run_dir / "grpo", str(out), adapter=True, **QUIET)
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "README.md", MARKER} <= files
    assert "model.safetensors" not in files and "config.json" not in files  # the adapter, not a model
    assert json.loads((out / MARKER).read_text())["adapter"] is True
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(run_dir / "sft")  # the weights it was trained on
    tok = AutoTokenizer.from_pretrained(out)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]), out)
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "grpo")
    base = AutoModelForCausalLM.from_pretrained(run_dir / "sft")
    torch.testing.assert_close(_logits(adapted, tok), _logits(merged, tok), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_logits(base, tok), _logits(merged, tok), atol=1e-3)  # the adapter matters
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card and str(run_dir / "sft") in card
    assert "the `sft` folder of run `lora`, a local folder: publish that model too" in card


def test_base_model_names_the_published_base_in_config_and_card(run_dir, tmp_path):
    out = tmp_path / "hubbed"
    publish(run_dir / "grpo", str(out), adapter=True, base_model="acme/tiny-sft", **QUIET)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "acme/tiny-sft"
    meta = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert meta["base_model"] == "acme/tiny-sft" and meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert "trained on the `sft` folder of run `lora`; it is published for `acme/tiny-sft`" in (out / "README.md").read_text()


def test_adapter_replaces_an_earlier_merged_publish_only_with_overwrite(run_dir, tmp_path):
    out = tmp_path / "swap"
    publish(run_dir / "grpo", str(out), **QUIET)
    assert (out / "model.safetensors").exists()
    with pytest.raises(PublishError, match="pass --overwrite"):
        publish(run_dir / "grpo", str(out), adapter=True, **QUIET)
    publish(run_dir / "grpo", str(out), adapter=True, overwrite=True, **QUIET)
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    assert not list(tmp_path.glob("swap.*")), "no temporary siblings left behind"


def test_stage_without_adapter_is_refused_in_one_line(run_dir, tmp_path, capsys):
    out = tmp_path / "none"
    with pytest.raises(PublishError) as e:
        publish(run_dir / "sft", str(out), adapter=True, **QUIET)
    assert "no LoRA adapter here" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main(["publish", str(run_dir / "sft"), "--to", str(out), "--adapter"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no LoRA adapter here" in err[0] and "publish without --adapter" in err[0]


def test_adapter_without_a_recorded_base_needs_base_model(run_dir, tmp_path):
    """LoRA on a model built in memory (a tiny model from scratch): PEFT records no base; refused before any
    write unless --base-model names it."""
    stage = tmp_path / "run" / "sft"
    (stage / "adapter").mkdir(parents=True)
    for name in ("adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        src = run_dir / "grpo" / ("adapter" if name.startswith("adapter") else "") / name
        (stage / ("adapter" if name.startswith("adapter") else "") / name).write_bytes(src.read_bytes())
    config = json.loads((run_dir / "grpo" / "adapter" / "adapter_config.json").read_text())
    (stage / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": None}))
    out = tmp_path / "pub"
    with pytest.raises(PublishError, match="does not record its base model; pass --base-model"):
        publish(stage, str(out), adapter=True, **QUIET)
    assert not out.exists()
    publish(stage, str(out), adapter=True, base_model=str(run_dir / "sft"), **QUIET)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(run_dir / "sft")
