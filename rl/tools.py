"""The tool-call protocol of a rollout, with no sandbox and no cluster in it: parsing, budgets, and the
trajectory with its per-token mask of which tokens the model produced.

A sample generates until it ends (EOS, or its token budget) or closes a tool call (`</python>`: the task's tool
format is `<python>CODE</python>`). Then `execute(CODE) -> (text, status)` runs the code (pipelines pass
`rewards.tools.PythonTool`, the sandbox; rl never runs code itself), the result is appended as
`<output>TEXT</output>`, and the sample generates on, for at most `max_calls` calls and
`max_completion_length` tokens in all (the model's tokens and the tool's).

The trajectory is kept as token ids end to end: the prompt, then the model's tokens (mask 1, with the
log-probs they were sampled with) and the tool's tokens (mask 0, log-prob 0), exactly as the learner's forward
pass will see them (never re-tokenised). The mask goes to TRL as `env_mask` (its rollout_func's hook for
environment tokens), so TRL leaves tool tokens out of the loss, the KL and entropy terms, the importance
ratios and the token count (`tests/unit/test_rl_tools.py`).

Batching: `run_tool_loop` works in rounds over the samples still going. Within a round a sample that closes a
call leaves the decode batch at once (`on_finish`) and its code is submitted to a thread pool right then, so
tool calls run while the other samples keep decoding; a slow call (up to the sandbox's deadline) costs its
own sample's time, not theirs. The next round re-prefills the samples whose tool answered.
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

CALL_OPEN, CALL_CLOSE = "<python>", "</python>"
OUT_OPEN, OUT_CLOSE = "<output>", "</output>"
TAGS = (CALL_OPEN, CALL_CLOSE, OUT_OPEN, OUT_CLOSE)
_CALL = re.compile(re.escape(CALL_OPEN) + r"(.*?)" + re.escape(CALL_CLOSE), re.S)
ERROR_STATUSES = ("error", "memory", "failed")  # a call counted as a tool error ("timeout" counted apart)

Execute = Callable[[str], "tuple[str, str]"]


@dataclass(frozen=True)
class ToolParams:
    """`grpo.tools` (and `eval.tools`): whether rollouts may call the Python tool, and its limits."""

    enabled: bool = False
    max_calls: int = 2  # tool calls per sample; a further call ends the sample
    max_output_chars: int = 64  # of one call's output, as the model reads it
    timeout_s: float = 2.0  # wall clock per call (the sandbox kills it there)
    memory_mb: int = 256  # address space per call
    workers: int = 2  # sandboxes side by side (calls of different samples run in parallel)

    def validate(self, prefix: str = "tools.") -> None:
        from rl import params as v

        v.positive_int(prefix + "max_calls", self.max_calls)
        v.positive_int(prefix + "max_output_chars", self.max_output_chars)
        v.positive_int(prefix + "memory_mb", self.memory_mb, minimum=32)
        v.positive_int(prefix + "workers", self.workers)
        v.finite(prefix + "timeout_s", self.timeout_s, low=0, low_open=True)

    def executor_params(self) -> dict:
        """What `rewards.tools.PythonTool` takes."""
        return {"workers": self.workers, "timeout_s": self.timeout_s, "memory_mb": self.memory_mb,
                "max_output_chars": self.max_output_chars}


def call_code(text: str) -> str | None:
    """The code of the tool call `text` ends with (`...<python>CODE</python>`), else None."""
    if not text.rstrip().endswith(CALL_CLOSE):
        return None
    calls = _CALL.findall(text)
    return calls[-1] if calls else None


def last_call(decode: Callable[[list[int]], str], ids: Sequence[int]) -> str | None:
    """The code of the call token ids `ids` end with. Besides a text that ends with the closing tag, a last token
    that completes the tag and runs past it counts as closing it: a stop string matched inside a token (vLLM's
    `stop`, for a closing tag of several tokens) leaves that token whole in the ids (e.g. `></python><`
    merged as `><`). The model's tokens are kept as sampled; the tool's output follows them."""
    text = decode(list(ids))
    end = text.rfind(CALL_CLOSE) + len(CALL_CLOSE)
    if end < len(CALL_CLOSE):
        return None
    if end < len(text.rstrip()) and len(decode(list(ids[:-1]))) >= end:  # the tag was closed before the last token
        return None
    return call_code(text[:end])


def count_calls(text: str) -> int:
    return len(_CALL.findall(text))


def output_block(text: str) -> str:
    """How a call's result is shown to the model."""
    return f"{OUT_OPEN}{text}{OUT_CLOSE}"


@dataclass
class Trajectory:
    """One sample: the model's and the tool's tokens in order, and which are whose."""

    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)  # 1 = the model sampled it, 0 = the tool's output
    logprobs: list[float] = field(default_factory=list)
    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    done: bool = False

    def add_model(self, ids: Sequence[int], logprobs: Sequence[float] | None) -> None:
        self.ids += list(ids)
        self.mask += [1] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)

    def add_tool(self, ids: Sequence[int]) -> None:
        self.ids += list(ids)
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)  # never used: masked out of every loss term

    def record(self, status: str) -> None:
        self.calls += 1
        self.errors += status in ERROR_STATUSES
        self.timeouts += status == "timeout"


def tool_block_ids(encode: Callable[[str], list[int]], text: str, room: int) -> list[int]:
    """Token ids of `<output>text</output>` within `room` tokens: the text is cut (not the closing tag) so the
    model always sees a well-formed block when there is room for one."""
    ids = encode(output_block(text))
    if len(ids) <= room:
        return ids
    close = encode(OUT_CLOSE)
    head = encode(OUT_OPEN + text)[: max(0, room - len(close))]
    return (head + close)[:room]


def run_tool_loop(generate, prompts: Sequence[Sequence[int]], *, execute: Execute, encode: Callable[[str], list[int]],
                  decode: Callable[[list[int]], str], eos_token_ids: Sequence[int], max_completion_length: int,
                  max_calls: int, pool: ThreadPoolExecutor | None = None) -> list[Trajectory]:
    """Multi-turn generation with tool calls for token-id `prompts`.

    `generate(contexts, max_new_tokens, stop, on_finish) -> (ids, logprobs)`: one round of sampling for the
    token-id `contexts`; each row stops at EOS, at `max_new_tokens`, or once its ids end with one of the
    token sequences in `stop` (the call's closing tag); `on_finish(i, ids)` may be called as soon as row i
    stops (engines that cannot say so early just return). Returns one Trajectory per prompt."""
    stop = [encode(CALL_CLOSE)]
    eos = set(eos_token_ids)
    trajs = [Trajectory(list(p)) for p in prompts]
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=4, thread_name_prefix="tool-call")
    try:
        active = list(range(len(trajs)))
        while active:
            pending: dict[int, Future] = {}

            def on_finish(j: int, ids: list[int], active=active, pending=pending) -> None:
                t = trajs[active[j]]
                code = last_call(decode, t.ids + list(ids)) if ids and ids[-1] not in eos else None
                if code is not None and t.calls < max_calls:
                    pending[active[j]] = pool.submit(execute, code)

            room = [max_completion_length - len(trajs[i].ids) for i in active]
            ids, lps = generate([trajs[i].prompt_ids + trajs[i].ids for i in active], max(room), stop, on_finish)
            still = []
            for j, i in enumerate(active):
                t = trajs[i]
                new = list(ids[j])[: room[j]]
                t.add_model(new, None if lps is None else list(lps[j])[: room[j]])
                ended = (new and new[-1] in eos) or len(t.ids) >= max_completion_length
                code = None if ended else last_call(decode, t.ids)
                if code is None or t.calls >= max_calls:
                    t.done = True  # EOS, out of budget, out of calls, or stopped without a call
                    pending.pop(i, None)
                    continue
                future = pending.pop(i, None) or pool.submit(execute, code)
                still.append((i, future))
            active = _add_tool_outputs(trajs, still, encode, max_completion_length)
    finally:
        if own_pool:
            pool.shutdown(wait=False, cancel_futures=True)
    return trajs


def _add_tool_outputs(trajs: list[Trajectory], calls: list[tuple[int, Future]], encode: Callable[[str], list[int]],
                      max_completion_length: int) -> list[int]:
    """Appends each call's output block to its trajectory; returns the trajectories that go on generating."""
    active = []
    for i, future in calls:
        t = trajs[i]
        text, status = _result(future)
        t.record(status)
        t.add_tool(tool_block_ids(encode, text, max_completion_length - len(t.ids)))
        if len(t.ids) >= max_completion_length:
            t.done = True
        else:
            active.append(i)
    return active


def _result(future: Future) -> tuple[str, str]:
    try:
        text, status = future.result()
    except Exception as e:  # noqa: BLE001 - the executor itself failed: that call errs, the run goes on
        return f"tool error: {type(e).__name__}", "error"
    return str(text), str(status)


def rollout_fields(trajs: Sequence[Trajectory]) -> dict:
    """TRL rollout_func output for `trajs`: ids, log-probs, `env_mask` (TRL's name for the model-token mask)
    and the per-sample tool counts the reward functions receive as columns."""
    return {"prompt_ids": [t.prompt_ids for t in trajs], "completion_ids": [t.ids for t in trajs],
            "logprobs": [t.logprobs for t in trajs], "env_mask": [t.mask for t in trajs],
            "tool_calls": [t.calls for t in trajs], "tool_errors": [t.errors for t in trajs],
            "tool_timeouts": [t.timeouts for t in trajs]}


def summarize(trajs: Sequence[Trajectory]) -> dict:
    """Calls per sample and the fraction of calls that failed (errors + timeouts)."""
    calls = sum(t.calls for t in trajs)
    bad = sum(t.errors + t.timeouts for t in trajs)
    return {"tool_calls_per_sample": calls / max(1, len(trajs)), "tool_error_rate": bad / calls if calls else 0.0}
