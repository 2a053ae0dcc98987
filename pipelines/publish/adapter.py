"""`rayzero publish --adapter`: the stage's LoRA adapter alone (PEFT's adapter_config.json +
adapter_model.safetensors, a few MB) instead of the merged model.

A stage trained with LoRA (`sft.lora.r` / `grpo.lora.r` > 0) saves the merged model in its folder and the
adapter alone in `adapter/` (`rl.lora.save_policy` / `save_adapter`); a TRL checkpoint folder of a LoRA
run is itself an adapter folder. The adapter applies to the exact weights the stage started from, which
PEFT recorded as `base_model_name_or_path`: a Hub id, or a local folder (e.g. the run's `sft` stage when
GRPO trained an adapter on the SFT model). `--base-model` names the published copy of that base instead,
in adapter_config.json (so `PeftModel.from_pretrained` / `AutoPeftModelForCausalLM` find it) and on the card.

Errors are one-line PublishErrors, all raised by `locate_adapter` (before any Hub call or file is written).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipelines.publish.hub import PublishError

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class Adapter:
    folder: Path  # holds ADAPTER_FILES
    trained_on: str  # base_model_name_or_path as PEFT recorded it ("" = none recorded)


def locate_adapter(src: Path, base_model: str = "") -> Adapter:
    """The adapter of stage folder `src` (`src/adapter/`), or `src` itself when it is an adapter folder; it must
    name its base (recorded by PEFT, or `base_model`). Checked before any Hub call or file is written."""
    for folder in (src / "adapter", src):
        if (folder / "adapter_config.json").is_file():
            missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
            if missing:
                raise PublishError(f"{folder}: adapter_config.json but no {missing[0]} (an incomplete adapter)")
            config = json.loads((folder / "adapter_config.json").read_text())
            adapter = Adapter(folder, config.get("base_model_name_or_path") or "")
            if not (base_model or adapter.trained_on):  # e.g. LoRA on a tiny model built in memory
                raise PublishError(f"{folder}: the adapter does not record its base model; pass --base-model <hub id "
                                 f"or folder> (the weights the stage started from)")
            return adapter
    raise PublishError(f"{src}: no LoRA adapter here (no adapter/ folder: the stage trained without LoRA, lora.r=0); "
                     f"publish without --adapter for the full model")


def write_adapter(adapter: Adapter, dst: Path, base_model: str = "") -> str:
    """Copies the adapter into `dst`, its base renamed to `base_model` when given; returns the base it names."""
    base = base_model or adapter.trained_on
    config = json.loads((adapter.folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (dst / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copy2(adapter.folder / "adapter_model.safetensors", dst / "adapter_model.safetensors")
    return base


def base_note(adapter: Adapter, base: str, run_dir: Path | None) -> str:
    """What a reader should know about the base, or "" when it is simply the Hub model it was trained on."""
    if base != adapter.trained_on:
        return (f"The adapter was trained on {_label(adapter.trained_on, run_dir)}; it is published for `{base}` "
                f"(`--base-model`): the two must hold the same weights.") if adapter.trained_on else ""
    if Path(base).is_absolute() or Path(base).exists():
        return (f"The adapter applies to {_label(base, run_dir)}, a local folder: publish that model too (or pass "
                f"`--base-model <hub id>` naming its published copy) so others can load it.")
    return ""


def _label(path: str, run_dir: Path | None) -> str:
    """A run's own folder by its name in the run (the `sft` folder of run `r`), anything else as recorded."""
    try:
        rel = Path(path).resolve().relative_to(run_dir.resolve()) if run_dir else None
    except ValueError:
        rel = None
    return f"the `{rel}` folder of run `{run_dir.name}`" if rel else f"`{path}`"
