"""The Python tool a model calls during a rollout, run in the hardened sandbox (rewards/sandbox.py), and the
per-call penalty rewards.

`PythonTool(...)` is the `execute` callable the tool protocol (`rl.tools`) takes: `tool(code) -> (output text,
status)`. Each call runs once in one of `workers` bubblewrap sandboxes (no network, no host files, its own
scratch `/tmp/run`, CPU/memory/process/output limits, a wall-clock deadline), so calls from different
samples run side by side, and whatever one call does (fork bomb, endless sleep, a flood of output, reading
the host) ends as that call's own status and output: the other calls, samples and the run go on.

The output the model sees: what the program printed (cut to `max_output_chars`); on an exception, the
last line of the traceback (`ZeroDivisionError: division by zero`); on a limit, a short word for it
(`timeout`, `memory limit`, cut output ends with `...`).

Penalty rewards (`tool_errors`, `tool_timeouts`) read the per-sample counts the rollout hands to the reward
functions (`tool_errors`, `tool_timeouts` columns) and pay -1 per such call (weight them in the recipe).
"""

from __future__ import annotations

import queue

from rewards.base import register
from rewards.sandbox import ExecResult, Sandbox, SandboxConfig

STATUSES = ("ok", "error", "timeout", "memory", "failed")


def render(result: ExecResult, max_output_chars: int) -> str:
    """What the model reads back for one call."""
    out = result.stdout
    if result.status == "timeout":
        return (out[:max_output_chars] + "\ntimeout").strip()
    if result.status == "memory":
        return "memory limit"
    if result.status == "error":
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
        err = lines[-1].strip() if lines else "error"
        if err.startswith("sandbox:"):  # the harness's own note, not the program's
            err = "error"
        return (out[: max_output_chars // 2] + "\n" + err[: max_output_chars // 2]).strip()
    text = out.rstrip("\n")
    if len(text) > max_output_chars or result.status == "failed":
        return text[:max_output_chars] + "..."
    return text


class PythonTool:
    """`tool(code) -> (text, status)`, thread-safe: `workers` sandboxes, each call takes a free one. Sandboxes
    start lazily on first use and stop with `close()` (or when the object is collected)."""

    def __init__(self, *, workers: int = 2, timeout_s: float = 2.0, memory_mb: int = 256, max_output_chars: int = 200,
                 max_procs: int = 16):
        self.max_output_chars = max_output_chars
        # output_kb bounds what the sandbox reads back; the model sees at most max_output_chars of it
        cfg = SandboxConfig(timeout_s=timeout_s, cpu_s=max(1, int(timeout_s + 0.999)), memory_mb=memory_mb,
                            output_kb=max(1, -(-max_output_chars * 4 // 1024)), max_procs=max_procs, tmp_mb=16)
        self._free: queue.Queue[Sandbox] = queue.Queue()
        self._all = [Sandbox(cfg) for _ in range(max(1, workers))]
        for sb in self._all:
            self._free.put(sb)

    def __call__(self, code: str) -> tuple[str, str]:
        sb = self._free.get()
        try:
            result = sb.execute(code)
        finally:
            self._free.put(sb)
        return render(result, self.max_output_chars), result.status

    def close(self) -> None:
        for sb in self._all:
            sb.close()

    def __getstate__(self):  # travels to Ray actors as its settings; sandboxes start where it is used
        raise TypeError("PythonTool holds live sandboxes: pass python_tool_factory(...) instead")


def python_tool_factory(**params):
    """A picklable zero-argument factory for `PythonTool(**params)` (built inside a rollout actor)."""
    import functools

    return functools.partial(PythonTool, **params)


def _count_penalty(column: str):
    def reward(completions, **kwargs) -> list[float]:
        counts = kwargs.get(column)
        if counts is None:  # a run without tools: nothing to penalise
            return [0.0] * len(completions)
        return [-float(n) for n in counts]

    return reward


@register("tool_errors")
def tool_errors(completions, **kwargs) -> list[float]:
    """-1 per tool call of the sample that raised, exited non-zero, ran out of memory or printed too much."""
    return _count_penalty("tool_errors")(completions, **kwargs)


@register("tool_timeouts")
def tool_timeouts(completions, **kwargs) -> list[float]:
    """-1 per tool call of the sample that hit the wall-clock or CPU limit."""
    return _count_penalty("tool_timeouts")(completions, **kwargs)
