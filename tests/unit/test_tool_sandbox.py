"""Hostile tool code (rewards.tools.PythonTool in the bwrap sandbox, driven by rl.tools' protocol) costs the
sample that wrote it only: the other samples of the batch get their right outputs, the host is untouched, and
the run goes on."""

import os
import time
from pathlib import Path

import pytest

from rewards.tools import PythonTool, tool_errors, tool_timeouts
from rl.modeling import train_tokenizer
from rl.tools import TAGS, run_tool_loop

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")

SECRET = Path(__file__)  # a host file the tool must not read

HOSTILE = {
    "fork_bomb": "import os\nwhile True:\n    os.fork()",
    "network": "import socket\ns = socket.create_connection(('1.1.1.1', 53), timeout=1)\nprint('connected')",
    "read_host": f"print(open({str(SECRET)!r}).read()[:40])",
    "huge_output": "print('x' * 10_000_000)",
    "sleep_forever": "import time\ntime.sleep(10_000)",
    "write_host": "open('/work/pwned', 'w').write('x')\nprint('wrote')",
}


@pytest.fixture(scope="module")
def tool():
    t = PythonTool(workers=2, timeout_s=1.5, memory_mb=128, max_output_chars=40)
    yield t
    t.close()


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["What is 2*3? <python>print(2*3)</python><output>6</output><answer>6</answer>"] * 8, 300,
                           extra_tags=TAGS)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_call_ends_as_its_own_status(tool, name):
    text, status = tool(HOSTILE[name])
    assert status != "ok", (name, status, text)
    assert "connected" not in text and "wrote" not in text and "rayzero" not in text
    assert len(text) <= 40 + 40  # output and error line both cut
    if name == "sleep_forever":
        assert status == "timeout"
    if name == "huge_output":
        assert status == "failed" and text.endswith("...")
    assert tool("print(6*7)") == ("42", "ok")  # the tool still works right after
    assert not Path("/work/pwned").exists()


def test_hostile_samples_cost_only_themselves_in_a_rollout(tool, tok):
    """A batch where every hostile program and a benign call are written by different samples: the benign
    sample gets its right output, every hostile one its own error/timeout, in about one call's deadline."""
    encode = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    decode = lambda ids: tok.decode(ids, skip_special_tokens=True)  # noqa: E731
    programs = ["print(123*456)", *HOSTILE.values()]

    def generate(contexts, max_new_tokens, stop, on_finish):
        out = []
        for j, c in enumerate(contexts):
            if len(c) < 3:  # first round: write the call
                row = encode(f"<python>{programs[j]}</python>")
                on_finish(j, row)
            else:
                row = encode("<answer>1</answer>") + [tok.eos_token_id]
            out.append(row)
        return out, None

    start = time.monotonic()
    trajs = run_tool_loop(generate, [[1]] * len(programs), execute=tool, encode=encode, decode=decode,
                          eos_token_ids=[tok.eos_token_id], max_completion_length=400, max_calls=1)
    elapsed = time.monotonic() - start
    assert "<output>56088</output>" in decode(trajs[0].ids) and trajs[0].errors == trajs[0].timeouts == 0
    for t in trajs[1:]:
        assert t.errors + t.timeouts == 1 and t.done
    assert all(decode(t.ids).endswith("<answer>1</answer>") for t in trajs)
    # the calls ran two at a time: the two slow ones (bomb, sleep) overlap instead of adding up with the rest
    assert elapsed < 3 * 1.5 + 5
    errors = tool_errors([""] * len(trajs), tool_errors=[t.errors for t in trajs])
    timeouts = tool_timeouts([""] * len(trajs), tool_timeouts=[t.timeouts for t in trajs])
    assert errors[0] == timeouts[0] == 0 and all(e + t == -1 for e, t in zip(errors[1:], timeouts[1:]))
    assert tool_errors(["a", "b"]) == [0.0, 0.0]  # a run without tools
    assert os.getpid() > 0 and not Path("/work/pwned").exists()
