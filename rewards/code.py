"""Code correctness: run the completion's program against the row's tests in the sandbox.

`tests` is either assert-style test code (HumanEval/MBPP; with `entry_point`, `check(entry_point)` is
appended) or stdin/stdout cases (APPS/Codeforces): a list of `{"input", "output"}`, an APPS-style
`{"inputs": [...], "outputs": [...]}`, or either as a JSON string. Reward = fraction of tests passed
(`mode="fraction"`) or 1.0 only if all pass (`mode="all"`). A completion with no program scores 0.0;
tests that cannot be used (malformed, empty) score None, never 0 or 1.
"""

from __future__ import annotations

import atexit
import json
import re
import threading
import weakref
from typing import Any, Literal, Sequence

from rewards.base import completion_text, register
from rewards.sandbox import RunResult, Sandbox, SandboxConfig

_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.S)
_NON_PYTHON = {"bash", "sh", "shell", "console", "text", "txt", "json", "yaml", "output", "c", "cpp", "c++", "java", "rust", "go", "js", "javascript"}


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
            try:
                return normalise_tests(json.loads(s))
            except json.JSONDecodeError:
                pass  # not JSON after all: assert-style code starting with a dict/list literal
        if not s:
            raise ValueError("empty test code")
        return tests
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        ins, outs = tests["inputs"], tests["outputs"]
        if len(ins) != len(outs):
            raise ValueError("inputs and outputs differ in length")
        tests = [{"input": i, "output": o} for i, o in zip(ins, outs)]
    if isinstance(tests, Sequence) and tests and all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
        return [{"input": _as_text(t["input"]), "output": _as_text(t["output"])} for t in tests]
    raise ValueError(f"unusable tests of type {type(tests).__name__}")


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
_all_sandboxes: "weakref.WeakSet[Sandbox]" = weakref.WeakSet()


def _thread_sandbox(config: SandboxConfig) -> Sandbox:
    # One fork-server per (thread, config): runs in a sandbox are serialised, threads must not queue.
    cache = getattr(_local, "sandboxes", None)
    if cache is None:
        cache = _local.sandboxes = {}
    if config not in cache:
        cache[config] = Sandbox(config)
        _all_sandboxes.add(cache[config])
    return cache[config]


@atexit.register
def close_sandboxes() -> None:
    """Stop every fork-server the in-process code reward started (they restart on next use)."""
    for sb in list(_all_sandboxes):
        sb.close()


def code_accuracy(completions: list, tests: list, entry_point: list | None = None, *, mode: Literal["fraction", "all"] = "fraction",
                  config: SandboxConfig | None = None, **_: Any) -> list[float | None]:
    """Fraction of the row's tests the completion's program passes (or all-or-nothing), in-process."""
    if mode not in ("fraction", "all"):
        raise ValueError(f"mode must be 'fraction' or 'all', got {mode!r}")
    sandbox = _thread_sandbox(config or SandboxConfig())
    eps = entry_point if entry_point is not None else [None] * len(completions)
    return [score_one(sandbox, c, t, e, mode) for c, t, e in zip(completions, tests, eps, strict=True)]


@register("code_accuracy", factory=True)
def make_code_accuracy(mode: Literal["fraction", "all"] = "fraction", timeout_s: float = 5.0, memory_mb: int = 1024,
                       ray_actors: int = 0, actor_cpus: float = 1.0, **sandbox_overrides: Any):
    """Factory. `ray_actors > 0` fans the batch out to a Ray actor pool (rewards/pool.py) of that size,
    each actor reserving `actor_cpus`; 0 scores in the calling process."""
    config = SandboxConfig(timeout_s=timeout_s, cpu_s=max(1, int(round(timeout_s))), memory_mb=memory_mb, **sandbox_overrides)
    if mode not in ("fraction", "all"):
        raise ValueError(f"mode must be 'fraction' or 'all', got {mode!r}")
    if ray_actors > 0:
        from rewards.pool import RewardPool

        pool = RewardPool(num_actors=ray_actors, num_cpus=actor_cpus, config=config, mode=mode)

        def code_accuracy_pooled(completions, tests, entry_point=None, **_):
            return pool.score(completions, tests, entry_point)

        code_accuracy_pooled.pool = pool  # type: ignore[attr-defined]
        return code_accuracy_pooled

    def code_accuracy_local(completions, tests, entry_point=None, **_):
        return code_accuracy(completions, tests, entry_point, mode=mode, config=config)

    return code_accuracy_local
