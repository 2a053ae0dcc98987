"""The run's data: the task's splits and the tokenizer, written into the run folder once and reused.

The splits are built and checked before anything is written; they are cached together with the task
config (and seed, and tokenizer source) that produced them, so changing the task rebuilds them (the
old ones are moved aside, never overwritten) instead of silently reusing rows of another task. Their
digest is an input of every stage: a stage trained on other data is not "finished" for this data.
"""

from __future__ import annotations

from typing import Callable

from pipelines.config.schema import PipelineConfig, to_dict
from pipelines.run_folder import (RunFolder, digest, file_digests, read_json_or_none, read_jsonl, write_json,
                                  write_jsonl)
from pipelines.tasks import TaskDataError, load_task

SPLITS = ("cold_start", "train", "heldout")


def data_key(cfg: PipelineConfig) -> dict:
    """Everything the cached splits and tokenizer depend on."""
    m = cfg.model
    return {"task": to_dict(cfg.task), "seed": cfg.run.seed,
            "tokenizer": {"kind": m.kind, "path": m.path, "vocab_size": m.vocab_size if m.kind == "tiny" else None}}


def check_splits(cfg: PipelineConfig, splits: dict[str, list[dict]]) -> None:
    """Rows the stages can use, before they are cached: a prompt, something to score against, a chain of
    thought in the cold-start rows when SFT trains on them; every split the enabled stages read is non-empty."""
    need = {"heldout": True, "train": cfg.grpo.enabled or cfg.distill.enabled,
            "cold_start": cfg.sft.enabled or cfg.baseline.enabled}
    for split in SPLITS:
        rows = splits.get(split, [])
        if need[split] and not rows:
            raise TaskDataError(f"task '{cfg.task.name}': the {split} split is empty; check task.num_{split} and the data")
        for i, row in enumerate(rows):
            if not isinstance(row.get("prompt"), str) or not row["prompt"]:
                raise TaskDataError(f"task '{cfg.task.name}': {split} row {i}: no prompt")
            if row.get("answer") in (None, "") and not row.get("tests"):
                raise TaskDataError(f"task '{cfg.task.name}': {split} row {i}: neither an answer nor tests to score with")
            if split == "cold_start" and need[split] and not row.get("completion"):
                raise TaskDataError(f"task '{cfg.task.name}': cold_start row {i}: no completion (chain of thought) for SFT")


def prepare_data(cfg: PipelineConfig, say: Callable[[str], None] = print) -> tuple[dict[str, int], str]:
    """The run's splits and tokenizer (built once per data key); returns the split sizes and the data digest."""
    folder = RunFolder(cfg.run_dir)
    manifest_path = folder.path / "data" / "manifest.json"
    key = data_key(cfg)
    manifest = read_json_or_none(manifest_path)
    if manifest is None or manifest.get("key") != key or _changed(folder, manifest):
        splits = load_task(cfg.task, cfg.run.seed)  # may raise TaskDataError: nothing written yet
        check_splits(cfg, splits)
        for old in (folder.path / "data", folder.tokenizer):
            if old.exists():
                say(f"data: {old.name}/ was written for another task config; moved to {folder.set_aside(old).name}/")
        for split in SPLITS:
            write_jsonl(folder.data(split), splits[split])
        _write_tokenizer(cfg, folder)
        manifest = {"key": key, "files": _data_files(folder)}
        write_json(manifest_path, manifest)
    sizes = {s: sum(1 for _ in folder.data(s).open(encoding="utf-8")) for s in SPLITS}
    return sizes, digest(manifest["files"])


def _data_files(folder: RunFolder) -> dict[str, str]:
    files = {f"data/{k}": v for k, v in file_digests(folder.path / "data", [f"{s}.jsonl" for s in SPLITS]).items()}
    files.update({f"tokenizer/{k}": v for k, v in file_digests(folder.tokenizer, ["*.json", "*.model", "*.txt", "*.jinja"]).items()})
    return files


def _changed(folder: RunFolder, manifest: dict) -> bool:
    return _data_files(folder) != manifest.get("files")


def _write_tokenizer(cfg: PipelineConfig, folder: RunFolder) -> None:
    from transformers import AutoTokenizer

    if cfg.model.kind == "tiny":
        from rl.modeling import save_tokenizer, train_tokenizer

        rows = [r for s in SPLITS for r in read_jsonl(folder.data(s))]
        tok = train_tokenizer([r["prompt"] + r.get("completion", "") for r in rows], cfg.model.vocab_size)
        probe = next((r["prompt"] + r["completion"] for r in rows if r.get("completion")), rows[0]["prompt"])
        tmp = folder.tokenizer.with_name("tokenizer.partial")
        save_tokenizer(tok, tmp, probe)
        tmp.replace(folder.tokenizer)
    elif cfg.model.kind == "gguf":
        from pipelines.models import prepare_base_model

        # The GGUF is converted once into a plain HF folder (round-trip-checked) that stages start from.
        AutoTokenizer.from_pretrained(prepare_base_model(cfg)).save_pretrained(folder.tokenizer)
    else:
        AutoTokenizer.from_pretrained(cfg.model.path).save_pretrained(folder.tokenizer)
