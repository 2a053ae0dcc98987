"""The tool protocol on the vLLM engine (`rl.vllm_engine.VLLMEngine` inside `rl.tool_rollout.ToolEngine`), with
vLLM itself replaced: vLLM is not installed here (no GPU), so a stand-in module `vllm` provides `SamplingParams`
(it keeps its arguments) and `LLM`, whose `generate(requests, params, use_tqdm)` samples like vLLM does as far
as our code relies on it: per request, until EOS, `max_tokens`, a `stop_token_ids` id or a `stop` string (the
token that completes it kept in `token_ids`, like vLLM with `include_stop_str_in_output`), returning
`outputs[0].token_ids` and per-position `logprobs` dicts. Its "model" writes a script that runs past the call's
closing tag with a made-up output, so a stop that did not work shows up as that made-up text.

What is ours and checked: the sampling params VLLMEngine builds (the tool's stop as a token id when the tag is
one token, else as a string with detokenising on), that a completion stopped at `</python>` is resumed with the
sandbox's `<output>...</output>` appended (masked out), and the batching (samples that make no call finish in the
first round and are not decoded again; the calls of a round run side by side)."""

import sys
import threading
import time
from types import ModuleType, SimpleNamespace

import pytest

from rl.modeling import train_tokenizer
from rl.rollout import SamplingParams
from rl.tool_rollout import ToolEngine
from rl.tools import CALL_CLOSE, TAGS, ToolParams, last_call
from rl.vllm_engine import EXTENSION, VLLMEngine, VLLMParams

CALLS = [(347, 5821), (902, 1177), (4410, 123), (618, 7070)]
TEXTS = [f"What is {a}*{b}?\n<python>print({a}*{b})</python><output>{a * b}</output><answer>{a * b}</answer>"
         for a, b in CALLS] + ["What is 2+5?\n<answer>7</answer>"]


class StandInLLM:
    """vLLM's `LLM` as far as VLLMEngine uses it. Its model: a prompt with an `<output>` block answers with its
    text; a product prompt calls the tool and then (if not stopped) makes up an output; any other answers 7."""

    tokenizer = None  # set by the fixture

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []

    def get_tokenizer(self):
        return self.tokenizer

    def _script(self, context: str) -> str:
        if "<output>" in context:
            out = context.rsplit("<output>", 1)[1].split("</output>", 1)[0]
            return f"<answer>{out}</answer>"
        if "*" in context:
            a, b = context.split("What is ", 1)[1].split("?", 1)[0].split("*")
            return f"<python>print({a}*{b})</python><output>MADE-UP</output><answer>MADE-UP</answer>"
        return "<answer>7</answer>"

    def generate(self, requests, params, use_tqdm=True):
        tok, outs = self.tokenizer, []
        self.calls.append({"prompts": [r["prompt_token_ids"] for r in requests], "params": params})
        for req, sp in zip(requests, params):
            a = sp.kwargs
            script = tok(self._script(tok.decode(req["prompt_token_ids"])), add_special_tokens=False)["input_ids"]
            ids = []
            for t in script + [tok.eos_token_id]:
                ids.append(t)
                text = tok.decode(ids) if a["detokenize"] else ""
                if (t == tok.eos_token_id or t in (a["stop_token_ids"] or []) or len(ids) == a["max_tokens"]
                        or any(s in text for s in a["stop"] or [])):
                    break
            lps = [{t: SimpleNamespace(logprob=-0.25)} for t in ids]
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=lps)]))
        return outs


@pytest.fixture(params=["one-token tags", "multi-token tags"])
def setup(request, monkeypatch, tmp_path):
    tags = TAGS if request.param == "one-token tags" else ()
    tok = train_tokenizer(TEXTS * 8, 300, extra_tags=tags)
    fake = ModuleType("vllm")
    fake.__version__ = "0.27.0"
    fake.SamplingParams = lambda **kwargs: SimpleNamespace(kwargs=kwargs)
    fake.LLM = type("LLM", (StandInLLM,), {"tokenizer": tok})
    monkeypatch.setitem(sys.modules, "vllm", fake)
    engine = VLLMEngine(str(tmp_path), VLLMParams(), seed=3)
    return tok, engine, len(tok(CALL_CLOSE, add_special_tokens=False)["input_ids"])


def _sandbox(delay: float = 0.0):
    """The executor: runs the product the code prints (the real sandbox is tests/unit/test_tool_sandbox.py)."""
    seen = []

    def execute(code: str):
        seen.append((threading.current_thread().name, time.monotonic()))
        time.sleep(delay)
        a, b = code[len("print("):-1].split("*")
        return str(int(a) * int(b)), "ok"

    return execute, seen


def test_vllm_engine_stops_at_the_call_and_resumes_with_the_tool_output(setup):
    tok, engine, tag_len = setup
    assert engine.llm.kwargs["worker_extension_cls"] == EXTENSION and engine.eos == [tok.eos_token_id]
    execute, seen = _sandbox()
    tools = ToolEngine(engine, tok, execute, ToolParams(enabled=True, max_calls=2, workers=4))
    prompts = [tok(f"What is {a}*{b}?\n", add_special_tokens=False)["input_ids"] for a, b in CALLS]
    ids, lps, extras = tools.generate(prompts, SamplingParams(max_new_tokens=40), seed=5)

    first = engine.llm.calls[0]["params"][0].kwargs
    if tag_len == 1:  # a one-token closing tag stops by id, no detokenising
        assert first["stop_token_ids"] == tok(CALL_CLOSE, add_special_tokens=False)["input_ids"]
        assert first["stop"] is None and first["detokenize"] is False
    else:  # a longer one by string, which vLLM matches on its detokenised text (kept in the output)
        assert first["stop"] == [CALL_CLOSE] and first["detokenize"] is True and first["stop_token_ids"] is None
    assert first["include_stop_str_in_output"] is True and first["logprobs"] == 0
    assert [p.kwargs["seed"] for p in engine.llm.calls[0]["params"]] == [5 * 1_000_003 + i for i in range(4)]

    for (a, b), row, mask, lp, extra in zip(CALLS, ids, (e["env_mask"] for e in extras), lps, extras):
        text = tok.decode(row, skip_special_tokens=True)
        call, rest = f"<python>print({a}*{b})</python>", f"<output>{a * b}</output><answer>{a * b}</answer>"
        assert text.startswith(call) and text.endswith(rest) and "MADE-UP" not in text
        # what the token that closed the call wrote past the tag stays, as sampled (`rl.tools.last_call`)
        past = text[len(call):-len(rest)]
        assert past == "" if tag_len == 1 else len(past) <= 2
        tool = tok.decode([t for t, m in zip(row, mask) if m == 0], skip_special_tokens=True)
        assert tool == f"<output>{a * b}</output>"  # the sandbox's output, and only it, is the tool's
        assert all(x == (-0.25 if m else 0.0) for x, m in zip(lp, mask))  # vLLM's log-probs for model tokens
        assert extra["tool_calls"] == 1 and extra["tool_errors"] == 0
    assert len(seen) == 4
    # round 2 re-prefills each sample with its call and the tool's output, and budgets what is left
    second = engine.llm.calls[1]
    assert all(tok.decode(p).endswith(f"<output>{a * b}</output>") for p, (a, b) in zip(second["prompts"], CALLS))
    assert max(p.kwargs["max_tokens"] for p in second["params"]) < 40


def test_samples_without_a_call_are_not_held_back_and_calls_run_side_by_side(setup):
    tok, engine, _ = setup
    execute, seen = _sandbox(delay=0.5)
    tools = ToolEngine(engine, tok, execute, ToolParams(enabled=True, max_calls=2, workers=4))
    plain = tok("What is 2+5?\n", add_special_tokens=False)["input_ids"]
    calling = [tok(f"What is {a}*{b}?\n", add_special_tokens=False)["input_ids"] for a, b in CALLS]
    prompts = [plain, calling[0], plain, calling[1], calling[2], plain, calling[3], plain]
    start = time.monotonic()
    ids, _, extras = tools.generate(prompts, SamplingParams(max_new_tokens=40), seed=0)
    elapsed = time.monotonic() - start

    rounds = [len(c["prompts"]) for c in engine.llm.calls]
    assert rounds == [8, 4]  # the four samples with no call ended in round 1 and were not decoded again
    assert [tok.decode(ids[i], skip_special_tokens=True) for i in (0, 2, 5, 7)] == ["<answer>7</answer>"] * 4
    assert [e["tool_calls"] for e in extras] == [0, 1, 0, 1, 1, 0, 1, 0]
    assert len({name for name, _ in seen}) == 4  # four sandbox workers, one call each ...
    assert max(t for _, t in seen) - min(t for _, t in seen) < 0.4  # ... started together, not one after another
    assert elapsed < 4 * 0.5


def test_a_last_token_that_runs_past_the_closing_tag_still_closes_the_call():
    pieces = ["<python>", "print(2*3)", "</python", "><", "x"]
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731 - token i is pieces[i]
    assert last_call(decode, [0, 1, 2, 3]) == "print(2*3)"  # "><" closed the tag and ran past it
    assert last_call(decode, [0, 1, 2, 3, 4]) is None  # the tag was closed a token earlier: not a stop
    assert last_call(decode, [0, 1, 2]) is None  # not closed
    assert last_call(lambda ids: "<python>print(1)</python>", [0]) == "print(1)"
