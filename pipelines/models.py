"""Where a stage's policy comes from: the model kinds a recipe can name, the tokenizer of the run, fresh
models, and checkpoints saved as Hugging Face folders."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipelines.config.schema import ModelSection, PipelineConfig

KINDS = ("tiny", "hf", "gguf")
STUDENT_KINDS = ("tiny", "hf", "truncate")  # distillation students may also keep layers of a teacher


def prepare_base_model(cfg: "PipelineConfig") -> Path:
    """`model.kind=gguf`: the GGUF converted once into runs/<run>/base (a plain HF folder)."""
    from pipelines.config.schema import ConfigError
    from pipelines.run_folder import RunFolder
    from rl.gguf import GGUFError, convert_gguf

    try:
        return convert_gguf(cfg.model.path, RunFolder(cfg.run_dir).base, field="model.path")
    except GGUFError as e:
        raise ConfigError(str(e)) from None


def load_tokenizer(cfg: "PipelineConfig"):
    from transformers import AutoTokenizer

    from pipelines.run_folder import RunFolder

    tok = AutoTokenizer.from_pretrained(RunFolder(cfg.run_dir).tokenizer)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def new_model(model_cfg: "ModelSection", tokenizer, seed: int, base_dir: Path | None = None):
    """The stage's starting policy from a model section: a fresh tiny model or a local HF checkpoint
    (`kind=gguf`: the run's converted folder, `base_dir`)."""
    from transformers import AutoModelForCausalLM

    if model_cfg.kind == "gguf":
        if base_dir is None or not (Path(base_dir) / "config.json").exists():
            raise ValueError(f"model.kind=gguf: no converted model in {base_dir}; prepare_data converts it first")
        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if model_cfg.kind == "tiny":
        from rl.modeling import build_tiny_model

        return build_tiny_model(tokenizer, hidden_size=model_cfg.hidden_size, num_layers=model_cfg.num_layers,
                                num_heads=model_cfg.num_heads, intermediate_size=model_cfg.intermediate_size,
                                max_position=model_cfg.max_position, seed=seed)
    return AutoModelForCausalLM.from_pretrained(model_cfg.path, dtype=torch.float32)


def save_checkpoint(model, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
