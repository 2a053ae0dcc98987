"""Tool calls in the rollout pool: `rl.tool_rollout.ToolEngine` inside `cluster.rollout.RolloutWorker` (what each
Ray rollout actor hosts) runs the calls in its own sandboxes and hands back, beside the ids, the model-token
mask and the call counts; `PoolRollouts` turns them into TRL's `env_mask` and reward columns."""

from pathlib import Path

import pytest

from cluster.rollout import RolloutWorker
from rewards.tools import python_tool_factory
from rl.modeling import train_tokenizer
from rl.rollout import SamplingParams
from rl.tool_rollout import ToolEngine
from rl.tools import TAGS, ToolParams

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["What is 6*7? <python>print(6*7)</python><output>42</output><answer>42</answer>"] * 8, 300,
                           extra_tags=TAGS)


class ScriptedEngine:
    """An engine whose "model" writes a fixed call, then answers with what the tool printed (an input to the
    code under test, which is the tool loop, the sandbox and the worker's plumbing)."""

    def __init__(self, tok, code):
        self.tok, self.code, self.eos, self.seen = tok, code, [tok.eos_token_id], []

    def generate(self, prompts, sp, seed=None, on_finish=None):
        assert sp.stop and all(len(q) == 1 for q in sp.stop)  # the closing tag is one token here
        out = []
        for j, p in enumerate(prompts):
            text = self.tok.decode(p)
            self.seen.append(text)
            if "<output>" not in text:
                ids = self.tok(f"<python>{self.code[j % len(self.code)]}</python>", add_special_tokens=False)["input_ids"]
                on_finish and on_finish(j, ids)
            else:
                answer = text.rsplit("<output>", 1)[1].split("</output>")[0]
                ids = self.tok(f"<answer>{answer}</answer>", add_special_tokens=False)["input_ids"] + self.eos
            out.append(ids[: sp.max_new_tokens])
        return out, [[-0.25] * len(i) for i in out]


def test_rollout_worker_runs_calls_and_returns_mask_and_counts(tok):
    params = ToolParams(enabled=True, max_calls=2, timeout_s=1.0, workers=2)
    engine = ToolEngine(ScriptedEngine(tok, ["print(6*7)", "import time; time.sleep(60)", "1/0"]), tok,
                        python_tool_factory(**params.executor_params())(), params)
    worker = RolloutWorker(lambda: engine, num_threads=1)
    prompt = tok("What is 6*7?\n", add_special_tokens=False)["input_ids"]
    rows = worker.generate([prompt] * 3, SamplingParams(max_new_tokens=40), seed=0)
    assert len(rows) == 3
    texts = [tok.decode(ids) for ids, *_ in rows]
    assert texts[0].endswith("<output>42</output><answer>42</answer>" + tok.eos_token)
    assert "<output>timeout</output>" in texts[1] and "ZeroDivisionError" in texts[2]
    for ids, lps, version, extras in rows:
        assert len(extras["env_mask"]) == len(ids) == len(lps) and version == 0
        assert extras["tool_calls"] == 1
        out_ids = tok("<output>", add_special_tokens=False)["input_ids"]
        start = ids.index(out_ids[0])
        end = ids.index(tok("</output>", add_special_tokens=False)["input_ids"][0])
        assert extras["env_mask"][start:end + 1] == [0] * (end + 1 - start)  # the tool's tokens
        assert all(m == 1 for k, m in enumerate(extras["env_mask"]) if not start <= k <= end)
        assert all(lp == 0.0 for lp, m in zip(lps, extras["env_mask"]) if m == 0)
    assert [r[3]["tool_timeouts"] for r in rows] == [0, 1, 0] and [r[3]["tool_errors"] for r in rows] == [0, 0, 1]
