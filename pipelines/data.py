"""The run's data: the task's splits and the tokenizer, written into the run folder once and reused; the
models a run reads from the hub, fetched once; the benchmarks of `eval.benchmarks`, prepared once.

All of it happens on the driver before Ray starts, so a missing dataset, column, split, model or a bad
template fails in one line before any stage runs.

The splits are built, templated and checked before anything is written; they are cached together with
the task config (and seed, and tokenizer source) that produced them, so changing the task rebuilds them
(the old ones are moved aside, never overwritten) instead of silently reusing rows of another task. Their
digest is an input of every stage: a stage trained on other data is not "finished" for this data.

`runs/<run>/data/{cold_start,train,heldout}.jsonl` hold the rows exactly as trained and evaluated: the
prompt after the task's template (and chat template, rendered with the run's tokenizer), the extracted
gold answer, the tests. Rows whose gold the verifier cannot use (`math_accuracy` cannot parse the answer,
`code_accuracy` cannot read the tests) are dropped from cold-start and train (they would give no reward)
and counted in held-out, where evaluation leaves them out of accuracy (`unparsed_gold`); each count is printed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

from pipelines.config.schema import PipelineConfig, TaskSection, to_dict
from pipelines.run_folder import (RunFolder, digest, file_digests, read_json_or_none, read_jsonl, write_json,
                                  write_jsonl)
from pipelines.tasks import TaskDataError, load_task
from pipelines.tasks import get as get_task

SPLITS = ("cold_start", "train", "heldout")
# TaskSection fields added after run folders existed: left out of the data key while at their defaults, so
# an older run's cached data still matches its config.
_NEW_TASK_FIELDS = ("data_files", "subset", "train_split", "heldout_split", "columns", "answer_format",
                    "completion_template", "cold_start", "prompt_template", "system_prompt", "chat_template",
                    "max_bad_fraction", "max_prompt_chars")


def data_key(cfg: PipelineConfig) -> dict:
    """Everything the cached splits and tokenizer depend on."""
    m = cfg.model
    defaults = to_dict(TaskSection())
    task = {k: v for k, v in to_dict(cfg.task).items() if k not in _NEW_TASK_FIELDS or v != defaults[k]}
    tokenizer = {"kind": m.kind, "path": m.path, "vocab_size": m.vocab_size if m.kind == "tiny" else None}
    if m.kind == "tiny" and _tool_tags(cfg):  # only tool runs: other runs keep their cached data
        tokenizer["tool_tags"] = True
    if m.revision:
        tokenizer["revision"] = m.revision
    key = {"task": task, "seed": cfg.run.seed, "tokenizer": tokenizer}
    if cfg.eval.benchmarks:  # training rows identical to a benchmark's are dropped (contamination check)
        key["benchmarks"] = json.loads(json.dumps(cfg.eval.benchmarks, sort_keys=True, default=str))
    return key


def check_splits(cfg: PipelineConfig, splits: dict[str, list[dict]]) -> None:
    """Rows the stages can use, before they are cached: a prompt, something to score against, a chain of
    thought in the cold-start rows when SFT trains on them; every split the enabled stages read is non-empty."""
    need = {"heldout": True, "train": cfg.grpo.enabled or cfg.distill.enabled,
            "cold_start": cfg.sft.enabled or cfg.baseline.enabled}
    for split in SPLITS:
        rows = splits.get(split, [])
        if need[split] and not rows:
            if split == "cold_start" and get_task(cfg.task.name).columns_mapped:
                raise TaskDataError("task.columns.completion: SFT is on but no row has a completion (chain of thought); "
                                    "map a completion column, set task.completion_template, point task.cold_start at "
                                    "CoT data, or set sft.enabled=false")
            raise TaskDataError(f"task '{cfg.task.name}': the {split} split is empty; check task.num_{split} and the data")
        for i, row in enumerate(rows):
            if not isinstance(row.get("prompt"), str) or not row["prompt"]:
                raise TaskDataError(f"task '{cfg.task.name}': {split} row {i}: no prompt")
            if row.get("answer") in (None, "") and not row.get("tests"):
                raise TaskDataError(f"task '{cfg.task.name}': {split} row {i}: neither an answer nor tests to score with")
            if split == "cold_start" and need[split] and not row.get("completion"):
                raise TaskDataError(f"task '{cfg.task.name}': cold_start row {i}: no completion (chain of thought) for SFT")


def check_rewards(cfg: PipelineConfig, rows: list[dict]) -> None:
    """GRPO's rewards can score the training rows: rows with tests need `code_accuracy` (else a code task
    would be scored on its reference text), `code_accuracy` needs tests, and an answer reward an answer
    in every row."""
    if not cfg.grpo.enabled or not rows:
        return
    rewards = dict(cfg.grpo.rewards)
    with_tests = sum(1 for r in rows if r.get("tests"))
    without_answer = sum(1 for r in rows if r.get("answer") in (None, ""))
    if with_tests and "code_accuracy" not in rewards:
        raise TaskDataError(f"grpo.rewards={rewards}: {with_tests} of {len(rows)} train rows are code (tests); add code_accuracy")
    if "code_accuracy" in rewards and not with_tests:
        raise TaskDataError(f"grpo.rewards={rewards}: no train row has tests for code_accuracy (map task.columns.tests, "
                            "or use math_accuracy)")
    needs_answer = sorted(set(rewards) & {"math_accuracy", "cosine_length"})
    if needs_answer and without_answer:
        raise TaskDataError(f"grpo.rewards={rewards}: {', '.join(needs_answer)} compares an answer, but {without_answer} "
                            f"of {len(rows)} train rows have only tests; drop it (code_accuracy scores code rows)")


def render_splits(task: TaskSection, splits: dict[str, list[dict]], tokenizer) -> dict[str, list[dict]]:
    """Every row's prompt through the task's template (and chat template); cold-start completions fitted
    to a pre-filled prompt. TaskDataError (one line naming the field) for a template that cannot render."""
    from pipelines.tasks.templates import TemplateError, completion_after, render, resolve

    template = resolve(task.prompt_template, task.system_prompt, task.chat_template)
    out = {}
    for split, rows in splits.items():
        new = []
        for i, row in enumerate(rows):
            try:
                prompt = render(row, template, tokenizer)
            except TemplateError as e:
                raise TaskDataError(f"{e} ({split} row {i})") from None
            row = {**row, "prompt": prompt}
            if row.get("completion"):
                row["completion"] = completion_after(prompt, row["completion"])
            new.append(row)
        out[split] = new
    return out


def gold_usable(rows: list[dict]) -> list[bool]:
    """Whether each row's gold can be used by its verifier: code tests `code_accuracy` can read, a gold
    answer `math_accuracy` can parse (scored here against itself: None = unparseable)."""
    from rewards.code import normalise_tests
    from rewards.math import math_accuracy

    ok = [True] * len(rows)
    math_idx = []
    for i, r in enumerate(rows):
        if r.get("tests"):
            tests = r["tests"]
            if r.get("test_setup_code") or r.get("test_imports"):
                tests = {"test_list": tests, "test_setup_code": r.get("test_setup_code") or "",
                         "test_imports": r.get("test_imports") or []}
            try:
                normalise_tests(tests)
            except (ValueError, TypeError):
                ok[i] = False
        else:
            math_idx.append(i)
    golds = [str(rows[i]["answer"]) for i in math_idx]
    scores = math_accuracy([f"<answer>{g}</answer>" for g in golds], golds) if golds else []
    for i, s in zip(math_idx, scores):
        ok[i] = s is not None
    return ok


def _gold_checks(splits: dict[str, list[dict]], say: Callable[[str], None],
                 dropped: dict | None = None) -> dict[str, list[dict]]:
    out = {}
    for split, rows in splits.items():
        ok = gold_usable(rows)
        bad = [i for i, good in enumerate(ok) if not good]
        if bad:
            first = rows[bad[0]]
            gold = str(first.get("answer", first.get("tests")))[:60]
            if split == "heldout":
                say(f"data: heldout: {len(bad)} of {len(rows)} golds cannot be used by the verifier (first: row {bad[0]}, "
                    f"{gold!r}); they are counted as unparsed_gold and left out of accuracy")
                out[split] = rows
                continue
            say(f"data: {split}: {len(bad)} of {len(rows)} rows dropped: their gold cannot be used by the verifier "
                f"(first: row {bad[0]}, {gold!r})")
            rows = [r for r, good in zip(rows, ok) if good]
            if dropped is not None:  # report.json: data.dropped (row numbers: positions in the split)
                dropped[f"{split} split: a gold the verifier cannot use"] = {"count": len(bad), "rows": bad[:20]}
        out[split] = rows
    return out


def prepare_data(cfg: PipelineConfig, say: Callable[[str], None] = print) -> tuple[dict[str, int], str]:
    """The run's models, splits and tokenizer (built once per data key) and benchmarks; returns the split
    sizes and the data digest."""
    from pipelines.models import fetch_models

    for field, path in fetch_models(cfg).items():  # hub ids -> local snapshots, before Ray starts
        say(f"model: {field} -> {path}")
    folder = RunFolder(cfg.run_dir)
    manifest_path = folder.path / "data" / "manifest.json"
    key = data_key(cfg)
    manifest = read_json_or_none(manifest_path)
    if manifest is None or manifest.get("key") != key or _changed(folder, manifest):
        splits = load_task(cfg.task, cfg.run.seed)  # may raise TaskDataError: nothing written yet
        for note in splits.pop("notes", None) or []:
            say(note)
        dropped = splits.pop("dropped", None) or {}  # unusable rows left out, by reason (pipelines/tasks/hf_rows.py)
        splits, contamination = check_contamination(cfg, splits, say)
        tokenizer = None if cfg.model.kind == "tiny" else _base_tokenizer(cfg)
        splits = render_splits(cfg.task, splits, tokenizer)
        check_splits(cfg, splits)
        splits = _gold_checks(splits, say, dropped)
        check_splits(cfg, splits)
        check_rewards(cfg, splits["train"])
        for old in (folder.path / "data", folder.tokenizer):
            if old.exists():
                say(f"data: {old.name}/ was written for another task config; moved to {folder.set_aside(old).name}/")
        for split in SPLITS:
            write_jsonl(folder.data(split), splits[split])
        write_json(folder.path / "data" / CONTAMINATION_FILE, contamination)
        _write_tokenizer(cfg, folder, tokenizer)
        manifest = {"key": key, "files": _data_files(folder), **({"dropped": dropped} if dropped else {})}
        write_json(manifest_path, manifest)
    else:
        check_rewards(cfg, read_jsonl(folder.data("train")))
    sizes = {s: sum(1 for _ in folder.data(s).open(encoding="utf-8")) for s in SPLITS}
    prepare_benchmarks(cfg, say)
    return sizes, digest(manifest["files"])


CONTAMINATION_FILE = "contamination.json"  # report.json's data.contamination (not part of the data digest)


def check_contamination(cfg: PipelineConfig, splits: dict[str, list[dict]],
                        say: Callable[[str], None]) -> tuple[dict[str, list[dict]], dict]:
    """Training rows against the held-out split and every `eval.benchmarks` entry (raw questions, before
    templates): exact duplicates dropped, near-duplicates reported (pipelines/tasks/contamination.py)."""
    from pipelines.tasks import contamination
    from pipelines.tasks.benchmarks import load_rows, parse_benchmarks
    from pipelines.tasks.hf_sources import TaskError

    refs = {"heldout": [r.get("prompt", "") for r in splits.get("heldout", [])]}
    for spec in parse_benchmarks(cfg.eval.benchmarks, cfg.task):
        try:
            refs[f"benchmark {spec.name}"] = [r.get("prompt", "") for r in load_rows(spec)]
        except TaskError as e:
            raise TaskDataError(str(e)) from None
    splits, found = contamination.check(splits, refs)
    for line in found.lines():
        say(line)
    return splits, found.as_dict()


def _data_files(folder: RunFolder) -> dict[str, str]:
    files = {f"data/{k}": v for k, v in file_digests(folder.path / "data", [f"{s}.jsonl" for s in SPLITS]).items()}
    files.update({f"tokenizer/{k}": v for k, v in file_digests(folder.tokenizer, ["*.json", "*.model", "*.txt", "*.jinja"]).items()})
    return files


def _changed(folder: RunFolder, manifest: dict) -> bool:
    return _data_files(folder) != manifest.get("files")


def _tool_tags(cfg: PipelineConfig) -> tuple[str, ...]:
    """A tool run's tiny tokenizer holds the call/output tags as single tokens (a call's end is one stop token)."""
    from rl.tools import TAGS

    return TAGS if cfg.grpo.tools.enabled or get_task(cfg.task.name).tool_calls else ()


def _base_tokenizer(cfg: PipelineConfig):
    from pipelines.models import base_tokenizer

    return base_tokenizer(cfg)


def _write_tokenizer(cfg: PipelineConfig, folder: RunFolder, tokenizer=None) -> None:
    if cfg.model.kind == "tiny":
        from rl.modeling import save_tokenizer, train_tokenizer

        rows = [r for s in SPLITS for r in read_jsonl(folder.data(s))]
        tok = train_tokenizer([r["prompt"] + r.get("completion", "") for r in rows], cfg.model.vocab_size,
                              extra_tags=_tool_tags(cfg))
        probe = next((r["prompt"] + r["completion"] for r in rows if r.get("completion")), rows[0]["prompt"])
        tmp = folder.tokenizer.with_name("tokenizer.partial")
        save_tokenizer(tok, tmp, probe)
        tmp.replace(folder.tokenizer)
    else:
        # hf: the resolved snapshot's tokenizer; gguf: the folder converted once (round-trip-checked).
        (tokenizer or _base_tokenizer(cfg)).save_pretrained(folder.tokenizer)


# -- benchmarks ------------------------------------------------------------------------------------------------


def benchmark_rows(spec, task: TaskSection, tokenizer, say: Callable[[str], None] = print) -> list[dict]:
    """One benchmark's rows, templated for a run of `task` with `tokenizer` (one line on bad data)."""
    from pipelines.tasks.benchmarks import load_rows, prompt_settings
    from pipelines.tasks.hf_sources import TaskError
    from pipelines.tasks.templates import TemplateError, render, resolve

    try:
        rows = load_rows(spec)
    except TaskError as e:
        raise TaskDataError(str(e)) from None
    template = resolve(*prompt_settings(spec, task))
    try:
        rows = [{**r, "prompt": render(r, template, tokenizer)} for r in rows]
    except TemplateError as e:
        raise TaskDataError(f"benchmark {spec.name}: {e}") from None
    if spec.scorer == "code_accuracy":
        missing = next((i for i, r in enumerate(rows) if not r.get("tests")), None)
        if missing is not None:
            raise TaskDataError(f"benchmark {spec.name}: row {missing} has no tests for code_accuracy (map columns.tests)")
    else:
        missing = next((i for i, r in enumerate(rows) if r.get("answer") in (None, "")), None)
        if missing is not None:
            raise TaskDataError(f"benchmark {spec.name}: row {missing} has no answer for math_accuracy (map columns.answer)")
    bad = sum(1 for ok in gold_usable(rows) if not ok)
    if bad:
        say(f"benchmark {spec.name}: {bad} of {len(rows)} golds cannot be used by {spec.scorer}; counted as unparsed_gold")
    return rows


def _spec_key(spec, task: TaskSection, tokenizer_key: dict) -> str:
    from pipelines.tasks.benchmarks import prompt_settings

    blob = json.dumps([dataclasses.asdict(spec), prompt_settings(spec, task), tokenizer_key], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare_benchmarks(cfg: PipelineConfig, say: Callable[[str], None] = print) -> dict[str, int]:
    """`eval.benchmarks` into runs/<run>/benchmarks/<name>.jsonl (templated like the run's data, with its
    tokenizer), each rebuilt only when its spec, the prompt settings or the tokenizer changed; {name: rows}.
    Not part of the data digest: adding a benchmark re-runs the contamination check (it is in the data key),
    and finished stages are redone only if that drops training rows that copy the benchmark."""
    from pipelines.tasks.benchmarks import parse_benchmarks

    specs = parse_benchmarks(cfg.eval.benchmarks, cfg.task)
    if not specs:
        return {}
    folder = RunFolder(cfg.run_dir)
    out_dir = folder.path / "benchmarks"
    manifest = read_json_or_none(out_dir / "manifest.json") or {}
    tok_key = data_key(cfg)["tokenizer"] | {"files": file_digests(folder.tokenizer, ["*.json", "*.jinja"])}
    tokenizer, sizes = None, {}
    for spec in specs:
        key = _spec_key(spec, cfg.task, tok_key)
        path = out_dir / f"{spec.name}.jsonl"
        if manifest.get(spec.name, {}).get("key") != key or not path.exists():
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(folder.tokenizer, trust_remote_code=cfg.model.trust_remote_code)
            rows = benchmark_rows(spec, cfg.task, tokenizer, say)
            write_jsonl(path, rows)
            manifest[spec.name] = {"key": key, "scorer": spec.scorer, "max_new_tokens": spec.max_new_tokens,
                                   "rows": len(rows)}
            write_json(out_dir / "manifest.json", manifest)
        sizes[spec.name] = manifest[spec.name]["rows"]
    say("benchmarks: " + ", ".join(f"{k}={v}" for k, v in sizes.items()))
    return sizes


def benchmark_data(run_dir: Path, eval_cfg) -> dict[str, dict]:
    """The prepared benchmarks of `eval_cfg.benchmarks` in a run folder: {name: {"rows", "scorer",
    "max_new_tokens"}} (what `pipelines.scoring.evaluate_benchmarks` takes). TaskDataError when one was
    not prepared there (the run's driver prepares them before its first stage)."""
    from pipelines.tasks.benchmarks import parse_entry

    names = [parse_entry(e).name for e in eval_cfg.benchmarks]
    out_dir = Path(run_dir) / "benchmarks"
    manifest = read_json_or_none(out_dir / "manifest.json") or {}
    out = {}
    for name in names:
        path = out_dir / f"{name}.jsonl"
        if name not in manifest or not path.exists():
            raise TaskDataError(f"eval.benchmarks: '{name}' was not prepared in {out_dir} (rayzero run prepares a run's "
                                f"benchmarks; rayzero eval CHECKPOINT --benchmark {name} measures any checkpoint)")
        out[name] = {"rows": read_jsonl(path), "scorer": manifest[name]["scorer"],
                     "max_new_tokens": manifest[name]["max_new_tokens"]}
    return out
