"""How a dataset row becomes a rayzero row (pipelines/tasks/__init__.py): the column mapping, the gold answer
read by `answer_format` (plain, gsm8k, boxed, regex:<pattern>), the completion template, and the one-line
`RowProblem` for a row that cannot be used (counted and left out by pipelines/tasks/messy.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from pipelines.tasks.hf_sources import TaskError
from pipelines.tasks.messy import UnusableRow
from pipelines.tasks.templates import fill, is_messages

FIELDS = ("prompt", "answer", "completion", "tests", "entry_point")
ANSWER_FORMATS = ("plain", "gsm8k", "boxed", "regex:<pattern>")


class RowProblem(TaskError, UnusableRow):
    """One row that cannot be used (no prompt, no gold, a gold the format cannot read, a prompt too long):
    left out and counted by reason (pipelines/tasks/messy.py), unless more than `task.max_bad_fraction` of
    the rows are like it; a TaskError where rows are not counted (benchmarks)."""


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


def check_columns(columns: Mapping[str, Any], where: str) -> str | None:
    for name, col in columns.items():
        if not isinstance(col, str) or not col:
            return f"{where}.{name}={col!r}: must name a dataset column"
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
