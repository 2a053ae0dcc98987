"""The tool-call protocol (rl.tools): parsing, budgets, the trajectory and its model-token mask; the decoder
stopping at a call's closing tag; and GRPO's loss on a multi-turn sample counting the model's tokens only."""

import threading
import time

import pytest
import torch

from rl.modeling import build_tiny_model, train_tokenizer
from rl.tools import (CALL_CLOSE, OUT_CLOSE, OUT_OPEN, TAGS, Trajectory, call_code, rollout_fields,
                      run_tool_loop, summarize, tool_block_ids)

ROWS = [{"prompt": f"What is {i}*{i + 3}?\n", "answer": str(i * (i + 3))} for i in range(8)]
TEXTS = [r["prompt"] + f"<python>print({i}*{i + 3})</python><output>{i * (i + 3)}</output><answer>{i * (i + 3)}</answer>"
         for i, r in enumerate(ROWS)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS * 4, 300, extra_tags=TAGS)


def _codec(tok):
    return (lambda s: tok(s, add_special_tokens=False)["input_ids"]), (lambda ids: tok.decode(ids, skip_special_tokens=True))


def test_call_code_parses_only_a_closed_call_at_the_end():
    assert call_code("think <python>print(2*3)</python>") == "print(2*3)"
    assert call_code("<python>a</python> then <python>b</python>\n") == "b"
    assert call_code("<python>print(1)") is None
    assert call_code("<python>x</python><answer>1</answer>") is None


def _scripted(tok, turns):
    """A generator that writes `turns[k]` (text) in its k-th round for every row, one row per context."""
    encode, _ = _codec(tok)
    rounds = []

    def generate(contexts, max_new_tokens, stop, on_finish):
        k = len(rounds)
        rounds.append([len(c) for c in contexts])
        ids = [encode(turns[min(k, len(turns) - 1)])[:max_new_tokens] for _ in contexts]
        for j, row in enumerate(ids):
            if row and row[-len(stop[0]):] == stop[0]:
                on_finish(j, row)
        return ids, [[-0.5] * len(r) for r in ids]

    return generate, rounds


def test_trajectory_mask_marks_tool_tokens_and_budget_holds(tok):
    encode, decode = _codec(tok)
    eos = tok.eos_token_id
    gen, rounds = _scripted(tok, ["<python>print(12*34)</python>", "<answer>408</answer>" + tok.eos_token])
    ran = []
    trajs = run_tool_loop(gen, [encode(ROWS[0]["prompt"])], execute=lambda code: ran.append(code) or ("408", "ok"),
                          encode=encode, decode=decode, eos_token_ids=[eos], max_completion_length=64, max_calls=2)
    t = trajs[0]
    assert ran == ["print(12*34)"]
    call, out, answer = (encode(s) for s in ("<python>print(12*34)</python>", "<output>408</output>",
                                             "<answer>408</answer>" + tok.eos_token))
    assert t.ids == call + out + answer
    assert t.mask == [1] * len(call) + [0] * len(out) + [1] * len(answer)
    assert t.logprobs == [-0.5] * len(call) + [0.0] * len(out) + [-0.5] * len(answer)
    assert (t.calls, t.errors, t.timeouts, t.done) == (1, 0, 0, True)
    assert decode(t.ids).endswith("<answer>408</answer>")
    # the second round re-prefills prompt + everything so far
    assert rounds[1] == [len(t.prompt_ids) + len(call) + len(out)]
    fields = rollout_fields(trajs)
    assert fields["env_mask"] == [t.mask] and fields["tool_calls"] == [1]


def test_max_calls_and_token_budget_end_a_sample(tok):
    encode, decode = _codec(tok)
    gen, _ = _scripted(tok, ["<python>print(1)</python>"])
    trajs = run_tool_loop(gen, [encode("x")] * 3, execute=lambda c: ("1", "ok"), encode=encode, decode=decode,
                          eos_token_ids=[tok.eos_token_id], max_completion_length=200, max_calls=2)
    for t in trajs:
        assert t.calls == 2 and t.done and sum(1 - m for m in t.mask) == 2 * len(encode("<output>1</output>"))
    trajs = run_tool_loop(gen, [encode("x")], execute=lambda c: ("9" * 500, "ok"), encode=encode, decode=decode,
                          eos_token_ids=[tok.eos_token_id], max_completion_length=20, max_calls=5)
    assert len(trajs[0].ids) == 20 and trajs[0].done  # tool output cut at the total budget


def test_tool_block_is_cut_inside_and_keeps_its_closing_tag(tok):
    encode, decode = _codec(tok)
    ids = tool_block_ids(encode, "1234567890" * 10, room=12)
    assert len(ids) <= 12 and decode(ids).startswith(OUT_OPEN) and decode(ids).endswith(OUT_CLOSE)


def test_a_slow_call_does_not_hold_back_samples_that_do_not_call(tok):
    """Calls are submitted the moment a row closes one (on_finish), so they run while others decode."""
    encode, decode = _codec(tok)
    started = {}

    def execute(code):
        started[code] = time.monotonic()
        time.sleep(0.3)
        return "ok", "ok"

    def generate(contexts, max_new_tokens, stop, on_finish):
        ids = []
        for j, c in enumerate(contexts):
            text = "<python>print(1)</python>" if j == 0 and len(c) < 10 else "<answer>1</answer>" + tok.eos_token
            row = encode(text)
            if j == 0 and len(c) < 10:
                on_finish(j, row)
                started["row0_returned"] = time.monotonic()
            ids.append(row)
        time.sleep(0.2)  # the other rows still decoding
        return ids, None

    t0 = time.monotonic()
    trajs = run_tool_loop(generate, [encode("a"), encode("b")], execute=execute, encode=encode, decode=decode,
                          eos_token_ids=[tok.eos_token_id], max_completion_length=64, max_calls=1)
    assert started["print(1)"] - t0 < 0.15  # started during the round, not after it
    assert trajs[1].calls == 0 and trajs[0].calls == 1 and all(t.done for t in trajs)
    assert summarize(trajs) == {"tool_calls_per_sample": 0.5, "tool_error_rate": 0.0}


def test_an_executor_that_raises_costs_that_call_only(tok):
    encode, decode = _codec(tok)
    gen, _ = _scripted(tok, ["<python>boom</python>", "<answer>1</answer>" + tok.eos_token])

    def execute(code):
        raise RuntimeError("sandbox gone")

    t = run_tool_loop(gen, [encode("x")], execute=execute, encode=encode, decode=decode,
                      eos_token_ids=[tok.eos_token_id], max_completion_length=64, max_calls=2)[0]
    assert (t.calls, t.errors) == (1, 1) and "tool error" in decode(t.ids) and t.done


def test_sample_stops_rows_at_the_closing_tag(tok):
    """rl.decoding.sample ends a row once it ends with a stop sequence and reports it through on_finish."""
    from rl.decoding import sample

    encode, _ = _codec(tok)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=128, seed=0)
    close = encode(CALL_CLOSE)
    assert len(close) == 1  # an added tag: one token
    with torch.no_grad():  # make the closing tag likely
        model.lm_head.weight[close[0]] += 0.5 * model.model.embed_tokens.weight.mean(0).sign()
    torch.manual_seed(0)
    finished = []
    prompts = [encode(r["prompt"]) for r in ROWS]
    ids, _ = sample(model, prompts, max_new_tokens=40, eos_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                    temperature=3.0, stop_sequences=[close], on_finish=lambda i, row: finished.append((i, row)))
    stopped = [i for i, row in enumerate(ids) if row and row[-1] == close[0]]
    assert stopped, "no row produced the closing tag"
    for i in stopped:
        assert close[0] not in ids[i][:-1]  # stopped at the first one
    assert sorted(i for i, _ in finished) == sorted(i for i, row in enumerate(ids)
                                                   if row and row[-1] in (close[0], tok.eos_token_id))
    assert all(ids[i] == row for i, row in finished)


def test_trajectory_helpers():
    t = Trajectory([1, 2])
    t.add_model([3, 4], [-1.0, -2.0])
    t.add_tool([5])
    t.record("timeout")
    t.record("error")
    assert t.mask == [1, 1, 0] and t.logprobs == [-1.0, -2.0, 0.0] and (t.calls, t.errors, t.timeouts) == (2, 1, 1)
    assert summarize([t]) == {"tool_calls_per_sample": 2.0, "tool_error_rate": 1.0}
