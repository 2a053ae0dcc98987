"""Code correctness: run the completion's program against the row's tests in the sandbox.

`tests` is one of (`normalise_tests`):
* assert-style test code (HumanEval: `def check(candidate)` with `entry_point`, which appends
  `check(entry_point)`);
* MBPP-style assert lines: a list of assert strings (or that list as a JSON / Python-literal string), or
  an MBPP row `{"test_list", "test_setup_code", "test_imports"}`; the reward also takes `test_setup_code`
  and `test_imports` as dataset columns. Imports and setup code run before the asserts;
* stdin/stdout cases (APPS/Codeforces): a list of `{"input", "output"}`, an APPS-style
  `{"inputs": [...], "outputs": [...]}`, or either as a JSON string.

Reward = fraction of tests passed (`mode="fraction"`) or 1.0 only if all pass (`mode="all"`). A
completion with no program scores 0.0; tests that cannot be used (malformed, empty) score None, never 0
or 1. `CodeScorer` (one sandbox) is what a Ray reward-pool actor in cluster/ hosts; this package never
imports Ray.
"""

from __future__ import annotations

import ast
import atexit
import dataclasses
import functools
import json
import re
import textwrap
import threading
import weakref
from typing import Any, Callable, Literal, Sequence

from rewards.base import completion_text, register
from rewards.sandbox import RunResult, Sandbox, SandboxConfig
from rewards.sandbox_pool import SandboxPool

# What the pipeline may pass as `executor`: (completion_text, tests, entry_point) per completion -> scores
Executor = Callable[[list[tuple[str, Any, "str | None"]]], list["float | None"]]
_MODES = ("fraction", "all")
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.S)
_NON_PYTHON = {"bash", "sh", "shell", "console", "text", "txt", "json", "yaml", "output", "c", "cpp", "c++", "java", "rust", "go", "js", "javascript"}


def _check_mode(mode: str) -> None:
    if mode not in _MODES:
        raise ValueError(f"mode must be 'fraction' or 'all', got {mode!r}")


def extract_program(text: str) -> str | None:
    """The last fenced code block that is not tagged as another language; None when there is none.
    Only text after the last `</think>` counts, so drafts in the reasoning are not executed."""
    tail = text.rsplit("</think>", 1)[-1]
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(tail)]
    for lang, body in reversed(blocks):
        if lang not in _NON_PYTHON and body.strip():
            return body
    return None


def normalise_tests(tests: Any) -> str | list[dict]:
    """Tests in one of the accepted shapes -> assert code (str) or [{input, output}]. ValueError if unusable."""
    if isinstance(tests, str):
        s = tests.strip()
        if s[:1] in "[{":
            parsed = _literal(s)
            if parsed is not None:
                return normalise_tests(parsed)
            # not a literal after all: assert-style code starting with a dict/list literal
        if not s:
            raise ValueError("empty test code")
        return tests
    if isinstance(tests, dict) and "test_list" in tests:
        return _mbpp_tests(tests)
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        ins, outs = tests["inputs"], tests["outputs"]
        if len(ins) != len(outs):
            raise ValueError("inputs and outputs differ in length")
        tests = [{"input": i, "output": o} for i, o in zip(ins, outs)]
    if isinstance(tests, Sequence) and tests and all(isinstance(t, str) for t in tests):
        return _assert_lines(tests)
    if isinstance(tests, Sequence) and tests and all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
        return [{"input": _as_text(t["input"]), "output": _as_text(t["output"])} for t in tests]
    raise ValueError(f"unusable tests of type {type(tests).__name__}")


def _literal(s: str) -> Any:
    """A JSON value, else a Python literal (a list written with single quotes), else None."""
    try:
        return json.loads(s)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(s)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _assert_lines(lines: Sequence[str]) -> str:
    """MBPP's `test_list`: one assert statement per string -> one block of assert code."""
    code = "\n".join(textwrap.dedent(t).strip() for t in lines if t.strip())
    if not code:
        raise ValueError("empty test list")
    return code


def _mbpp_tests(row: dict) -> str:
    """An MBPP row's tests: `test_imports` and `test_setup_code` (both optional) run before `test_list`."""
    asserts = normalise_tests(row["test_list"])
    if not isinstance(asserts, str):
        raise ValueError("test_list must hold assert statements")
    imports = row.get("test_imports") or []
    if isinstance(imports, str):
        imports = _literal(imports) if imports.strip()[:1] == "[" else [imports]
    if not isinstance(imports, (list, tuple)) or not all(isinstance(i, str) for i in imports):
        raise ValueError("test_imports must be a list of import statements")
    setup = row.get("test_setup_code") or ""
    if not isinstance(setup, str):
        raise ValueError("test_setup_code must be a string")
    return "\n".join([*(i.strip() for i in imports if i.strip()), textwrap.dedent(setup).strip(), asserts]).strip()


def _as_text(x: Any) -> str:
    return "\n".join(map(str, x)) if isinstance(x, list) else str(x)


def score_result(result: RunResult, mode: Literal["fraction", "all"]) -> float:
    if mode == "all":
        return 1.0 if result.status == "passed" else 0.0
    return result.fraction


def score_one(sandbox: Sandbox, completion: Any, tests: Any, entry_point: str | None, mode: str) -> float | None:
    """Score one completion; the unit of work a reward-pool actor executes."""
    try:
        norm = normalise_tests(tests)
    except ValueError:
        return None
    program = extract_program(completion_text(completion))
    if program is None:
        return 0.0
    try:
        result = sandbox.run(program, norm, entry_point=entry_point or None)
    except ValueError:  # malformed test code / entry point: the row, not the completion, is at fault
        return None
    return score_result(result, mode)  # type: ignore[arg-type]


_local = threading.local()
_all_pools: "weakref.WeakSet[SandboxPool]" = weakref.WeakSet()


def _thread_pool(config: SandboxConfig) -> SandboxPool:
    # One pool of fork-servers per (thread, config): runs in a sandbox are serialised, threads must not queue.
    cache = getattr(_local, "pools", None)
    if cache is None:
        cache = _local.pools = {}
    if config not in cache:
        cache[config] = SandboxPool(config)
        _all_pools.add(cache[config])
    return cache[config]


@atexit.register
def close_sandboxes() -> None:
    """Stop every fork-server the in-process code reward started (they restart on next use)."""
    for pool in list(_all_pools):
        pool.close()


def code_accuracy(completions: list, tests: list, entry_point: list | None = None, *, mode: Literal["fraction", "all"] = "fraction",
                  config: SandboxConfig | None = None, **_: Any) -> list[float | None]:
    """Fraction of the row's tests the completion's program passes (or all-or-nothing), in-process: the
    batch is spread over a few sandboxes side by side (rewards/sandbox_pool.py)."""
    _check_mode(mode)
    pool = _thread_pool(config or SandboxConfig())
    eps = entry_point if entry_point is not None else [None] * len(completions)
    items = list(zip(completions, tests, eps, strict=True))
    return pool.map(lambda sandbox, item: score_one(sandbox, *item, mode), items)


def sandbox_config(timeout_s: float = 5.0, memory_mb: int = 1024, **sandbox_overrides: Any) -> SandboxConfig:
    """The SandboxConfig a code reward runs under: `timeout_s` wall clock, as many CPU seconds (at least 1)."""
    known = {f.name for f in dataclasses.fields(SandboxConfig)} - {"timeout_s", "cpu_s", "memory_mb"}
    unknown = sorted(set(sandbox_overrides) - known)
    if unknown:
        # ray_actors/actor_cpus belong to the pipeline, which turns them into an `executor` (cluster/)
        raise TypeError(f"code_accuracy: unknown parameter(s) {unknown}; sandbox settings are {sorted(known)}")
    return SandboxConfig(timeout_s=timeout_s, cpu_s=max(1, int(round(timeout_s))), memory_mb=memory_mb, **sandbox_overrides)


class CodeScorer:
    """One sandbox fork-server; what one reward-pool actor hosts. `score` is the unit of work of a pool:
    one completion against its row's tests. The fork-server starts on the first `score`."""

    def __init__(self, config: SandboxConfig | None = None, mode: str = "fraction") -> None:
        _check_mode(mode)
        self.mode = mode
        self.sandbox = Sandbox(config or SandboxConfig())

    def score(self, completion: str, tests: Any, entry_point: str | None) -> float | None:
        return score_one(self.sandbox, completion, tests, entry_point, self.mode)

    def close(self) -> None:
        self.sandbox.close()


def code_scorer_factory(mode: str = "fraction", timeout_s: float = 5.0, memory_mb: int = 1024,
                        **sandbox_overrides: Any) -> Callable[[], CodeScorer]:
    """A picklable zero-argument CodeScorer factory (for Ray actors); parameters as in `make_code_accuracy`."""
    _check_mode(mode)
    return functools.partial(CodeScorer, sandbox_config(timeout_s, memory_mb, **sandbox_overrides), mode)


def _row_tests(tests: Any, setup: Any, imports: Any) -> Any:
    # MBPP keeps setup code and imports in their own columns; fold them into one tests value that travels
    # to the scorer as is (normalise_tests joins them in front of the asserts).
    if (setup is None or not str(setup).strip()) and not imports:
        return tests
    return {"test_list": tests, "test_setup_code": setup or "", "test_imports": imports or []}


@register("code_accuracy", factory=True)
def make_code_accuracy(mode: Literal["fraction", "all"] = "fraction", timeout_s: float = 5.0, memory_mb: int = 1024,
                       executor: Executor | None = None, **sandbox_overrides: Any):
    """Factory. Without `executor` the batch is scored in the calling process (a pool of fork-servers per
    thread, rewards/sandbox_pool.py). With it, `executor(items)` scores the batch: one (completion_text, tests,
    entry_point) tuple per completion, scores returned in order (the pipeline passes one backed by a Ray actor pool of
    CodeScorers built by `code_scorer_factory`). Optional dataset columns `test_setup_code` and
    `test_imports` (MBPP) run before the row's asserts."""
    _check_mode(mode)
    config = sandbox_config(timeout_s, memory_mb, **sandbox_overrides)

    def code_accuracy_fn(completions, tests, entry_point=None, test_setup_code=None, test_imports=None, **_):
        n = len(completions)
        eps = entry_point if entry_point is not None else [None] * n
        setups = test_setup_code if test_setup_code is not None else [None] * n
        imports = test_imports if test_imports is not None else [None] * n
        rows = [_row_tests(t, s, i) for t, s, i in zip(tests, setups, imports, strict=True)]
        if executor is None:
            return code_accuracy(completions, rows, eps, mode=mode, config=config)
        items = [(completion_text(c), t, e or None) for c, t, e in zip(completions, rows, eps, strict=True)]
        scores = list(executor(items))
        if len(scores) != n:
            raise RuntimeError(f"code_accuracy executor returned {len(scores)} scores for {n} completions")
        return scores

    return code_accuracy_fn
