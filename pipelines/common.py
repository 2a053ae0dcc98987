"""Run-folder layout and helpers shared by the stage modules.

    runs/<name>/
      config.yaml             resolved config of the latest invocation
      data/{cold_start,train,heldout}.jsonl
      tokenizer/              trained at run time for `model.kind=tiny` (cached)
      base/                   `model.kind=gguf`: the GGUF converted once to a plain HF folder
      <stage>/                Hugging Face folder + manifest.json, for sft, grpo, distill, baseline
      wandb/                  every wandb file
      report.json
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from pipelines.config import PipelineConfig, build
from pipelines.evaluate import read_jsonl, write_jsonl

SPLITS = ("cold_start", "train", "heldout")


def config_from(d: dict) -> PipelineConfig:
    return build(PipelineConfig, d)


def data_path(cfg: PipelineConfig, split: str) -> Path:
    return cfg.run_dir / "data" / f"{split}.jsonl"


def tokenizer_dir(cfg: PipelineConfig) -> Path:
    return cfg.run_dir / "tokenizer"


def prepare_data(cfg: PipelineConfig) -> dict[str, int]:
    """Write the task's splits and the tokenizer into the run folder, once (later runs reuse them)."""
    from pipelines.tasks import load_task

    if not all(data_path(cfg, s).exists() for s in SPLITS):
        splits = load_task(cfg.task, cfg.run.seed)
        for split in SPLITS:
            write_jsonl(data_path(cfg, split), splits[split])
    tok_dir = tokenizer_dir(cfg)
    if not (tok_dir / "tokenizer_config.json").exists():
        cold = read_jsonl(data_path(cfg, "cold_start"))
        if cfg.model.kind == "tiny":
            from rl.modeling import save_tokenizer, train_tokenizer

            texts = [r["prompt"] + r.get("completion", "") for s in SPLITS for r in read_jsonl(data_path(cfg, s))]
            tok = train_tokenizer(texts, cfg.model.vocab_size)
            tmp = tok_dir.with_name("tokenizer.partial")
            save_tokenizer(tok, tmp, cold[0]["prompt"] + cold[0]["completion"])
            tmp.replace(tok_dir)
        elif cfg.model.kind == "gguf":
            from transformers import AutoTokenizer

            # The GGUF is converted once into a plain HF folder (round-trip-checked) that stages start from.
            AutoTokenizer.from_pretrained(prepare_base_model(cfg)).save_pretrained(tok_dir)
        else:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(cfg.model.path).save_pretrained(tok_dir)
    return {s: sum(1 for _ in data_path(cfg, s).open()) for s in SPLITS}


def base_model_dir(cfg: PipelineConfig) -> Path:
    """Where `model.kind=gguf` is converted to a plain Hugging Face folder (once per run)."""
    return cfg.run_dir / "base"


def prepare_base_model(cfg: PipelineConfig) -> Path:
    from pipelines.config import ConfigError
    from rl.gguf import GGUFError, convert_gguf

    try:
        return convert_gguf(cfg.model.path, base_model_dir(cfg), field="model.path")
    except GGUFError as e:
        raise ConfigError(str(e)) from None


def load_tokenizer(cfg: PipelineConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir(cfg))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def new_model(model_cfg, tokenizer, seed: int, base_dir: Path | None = None):
    """The stage's starting policy from a ModelConfig: a fresh tiny model or a local HF checkpoint
    (`kind=gguf`: the run's converted folder, `base_dir`)."""
    if model_cfg.kind == "gguf":
        if base_dir is None or not (Path(base_dir) / "config.json").exists():
            raise ValueError(f"model.kind=gguf: no converted model in {base_dir}; prepare_data converts it first")
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if model_cfg.kind == "tiny":
        from rl.modeling import build_tiny_model

        return build_tiny_model(tokenizer, hidden_size=model_cfg.hidden_size, num_layers=model_cfg.num_layers,
                                num_heads=model_cfg.num_heads, intermediate_size=model_cfg.intermediate_size,
                                max_position=model_cfg.max_position, seed=seed)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_cfg.path, dtype=torch.float32)


def save_checkpoint(model, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)


def use_cpus(num_cpus: float) -> None:
    """Start of every stage task: size torch's thread pool to the task's CPUs and silence library
    progress bars (each stage shows its own)."""
    torch.set_num_threads(max(1, int(num_cpus)))
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
