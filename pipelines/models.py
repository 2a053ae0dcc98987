"""Where a stage's policy comes from: the model kinds a recipe can name, the tokenizer of the run, fresh
models, and checkpoints saved as Hugging Face folders.

`model.kind: hf` takes a local folder or a hub id. A hub id is resolved once on the driver, before Ray
starts (`resolve_model` in `pipelines.data.prepare_data`): `huggingface_hub.snapshot_download` at
`model.revision` into the Hugging Face cache (`HF_HOME`), weights, config and tokenizer files only. Every
worker then reads that snapshot from the cache with `local_files_only=True` (workers run with
`HF_HUB_OFFLINE=1`), so on a multi-node cluster `HF_HOME` must be storage every node sees (as
`run.output_dir` is), or `model.path` a folder there. Offline and not cached: one line naming the model
and what to do, before Ray starts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.config.schema import ConfigError

if TYPE_CHECKING:
    from pipelines.config.schema import ModelSection, PipelineConfig

KINDS = ("tiny", "hf", "gguf")
STUDENT_KINDS = ("tiny", "hf", "truncate")  # distillation students may also keep layers of a teacher
# Files a snapshot needs: weights (safetensors, else .bin), config, tokenizer, chat template, remote code.
# Other formats a repo may also hold (original checkpoints, ONNX, GGUF, TF/Flax) are not downloaded.
IGNORE_PATTERNS = ["*.pth", "*.pt", "*.onnx", "*.onnx_data", "*.gguf", "*.msgpack", "*.h5", "*.ot", "*.tflite",
                   "original/*", "onnx/*", "coreml/*", "openvino/*"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


class ModelError(ConfigError):
    """A model that cannot be found or fetched; one line naming the field and what to do (the CLI prints
    it like any config error, exit 2)."""


def is_hub_id(path: str) -> bool:
    """`org/name` that is not an existing local path (a folder wins over a hub id of the same spelling)."""
    return bool(_HUB_ID.fullmatch(path)) and not Path(path).expanduser().exists()


def check_model_path(m: "ModelSection", where: str) -> str | None:
    """Config-time check of an `hf` model's path and revision (no network): the one-line problem or None."""
    if m.kind != "hf" or not m.path:
        return None
    if is_hub_id(m.path):
        return None
    path = Path(m.path).expanduser()
    if not path.exists():
        return (f"{where}.path={m.path!r}: no such folder, and not a hub id (org/name, e.g. "
                "Qwen/Qwen2.5-0.5B-Instruct)")
    if not (path / "config.json").is_file():
        return f"{where}.path={m.path!r}: not a model folder (no config.json)"
    if m.revision:
        return f"{where}.revision={m.revision!r}: only for a hub id; {where}.path is a local folder"
    return None


def resolve_model(path: str, revision: str = "", *, local_only: bool = False, field: str = "model.path") -> Path:
    """The local folder of an `hf` model: a folder as it is, a hub id through the hub cache (downloaded
    unless `local_only` or the hub is offline). ModelError (one line) when it cannot be had."""
    if not is_hub_id(path):
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelError(f"{field}={path!r}: not a model folder (no config.json)")
        return folder.resolve()
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    rev = f"@{revision}" if revision else ""
    offline = local_only or constants.HF_HUB_OFFLINE
    try:
        folder = Path(snapshot_download(path, revision=revision or None, local_files_only=offline,
                                        ignore_patterns=IGNORE_PATTERNS))
    except GatedRepoError:
        raise ModelError(f"{field}={path!r}: a gated repo; accept its license on huggingface.co and log in "
                         "(hf auth login, or HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{field}={path!r}: no such model on the hub (or it is private: log in with hf auth login)") from None
    except RevisionNotFoundError:
        raise ModelError(f"model.revision={revision!r}: {path} has no such branch, tag or commit") from None
    except LocalEntryNotFoundError:
        why = "the hub is offline (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else (
            "only the local cache may be read here" if local_only else "the hub cannot be reached")
        raise ModelError(f"{field}={path}{rev}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; "
                         f"download it once with network (hf download {path}{' --revision ' + revision if revision else ''}), "
                         f"or set {field} to a local model folder") from None
    except (HfHubHTTPError, OSError) as e:
        raise ModelError(f"{field}={path}{rev}: download failed ({' '.join(str(e).split())[:200]})") from None
    if not (folder / "config.json").is_file():
        raise ModelError(f"{field}={path}{rev}: the cached snapshot {folder} has no config.json (an incomplete "
                         f"download?); fetch it again with hf download {path}")
    return folder


def base_model_dir(cfg: "PipelineConfig", *, local_only: bool = True) -> Path | None:
    """The folder a run's first stage starts from: the resolved `hf` model, the converted `gguf` one
    (runs/<run>/base), None for a fresh `tiny` model. Workers call it with `local_only` (the driver
    downloaded the model before Ray started)."""
    from pipelines.run_folder import RunFolder

    m = cfg.model
    if m.kind == "hf":
        return resolve_model(m.path, m.revision, local_only=local_only)
    if m.kind == "gguf":
        return RunFolder(cfg.run_dir).base
    return None


def fetch_models(cfg: "PipelineConfig") -> dict[str, Path]:
    """Driver side, before Ray starts: every hub model the run reads (the policy and `hf` students),
    downloaded once; {field: local folder}. ModelError (one line) otherwise."""
    out = {}
    if cfg.model.kind == "hf":
        out["model.path"] = resolve_model(cfg.model.path, cfg.model.revision)
    if cfg.distill.enabled:
        for name, s in cfg.distill.students.items():
            if s.kind == "hf":
                field = f"distill.students.{name}.path"
                out[field] = resolve_model(s.path, s.revision, field=field)
    return out


def prepare_base_model(cfg: "PipelineConfig") -> Path:
    """`model.kind=gguf`: the GGUF converted once into runs/<run>/base (a plain HF folder)."""
    from pipelines.run_folder import RunFolder
    from rl.gguf import GGUFError, convert_gguf

    try:
        return convert_gguf(cfg.model.path, RunFolder(cfg.run_dir).base, field="model.path")
    except GGUFError as e:
        raise ConfigError(str(e)) from None


def base_tokenizer(cfg: "PipelineConfig"):
    """The tokenizer of the run's base model (`hf`: the resolved folder; `gguf`: the converted one)."""
    from transformers import AutoTokenizer

    m = cfg.model
    if m.kind == "gguf":
        return AutoTokenizer.from_pretrained(prepare_base_model(cfg))
    return AutoTokenizer.from_pretrained(resolve_model(m.path, m.revision), trust_remote_code=m.trust_remote_code)


def load_tokenizer(cfg: "PipelineConfig"):
    from transformers import AutoTokenizer

    from pipelines.run_folder import RunFolder

    tok = AutoTokenizer.from_pretrained(RunFolder(cfg.run_dir).tokenizer, trust_remote_code=cfg.model.trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def new_model(model_cfg: "ModelSection", tokenizer, seed: int, base_dir: Path | None = None):
    """The stage's starting policy from a model section: a fresh tiny model or an HF model (a folder, or a
    hub id from the cache the driver filled; `kind=gguf`: the run's converted folder, `base_dir`), loaded
    in `model_cfg.dtype` with `model_cfg.attn_implementation`."""
    from transformers import AutoModelForCausalLM

    from rl.modeling import resolve_attn_implementation, resolve_dtype

    if model_cfg.kind == "tiny":
        from rl.modeling import build_tiny_model

        return build_tiny_model(tokenizer, hidden_size=model_cfg.hidden_size, num_layers=model_cfg.num_layers,
                                num_heads=model_cfg.num_heads, intermediate_size=model_cfg.intermediate_size,
                                max_position=model_cfg.max_position, seed=seed)
    if model_cfg.kind == "gguf":
        if base_dir is None or not (Path(base_dir) / "config.json").exists():
            raise ValueError(f"model.kind=gguf: no converted model in {base_dir}; prepare_data converts it first")
        folder = Path(base_dir)
    else:
        folder = resolve_model(model_cfg.path, model_cfg.revision, local_only=True)
    dtype = resolve_dtype(model_cfg.dtype)  # loaded on CPU; a stage moves it to its GPU
    return AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, attn_implementation=resolve_attn_implementation(model_cfg.attn_implementation, dtype),
        trust_remote_code=model_cfg.trust_remote_code)


def save_checkpoint(model, tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out_dir)
