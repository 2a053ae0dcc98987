"""GRPO with tool calls in the learner: rayzero's trainer with `LearnerToolRollouts` as TRL's rollout_func
(the sandboxed PythonTool as executor) trains a step; the rollout's env_mask reaches TRL as `tool_mask` and the
call counts reach the reward functions as columns."""

from pathlib import Path

import pytest
import torch

from rewards.tools import PythonTool
from rl.grpo import GRPOParams, make_grpo_trainer
from rl.modeling import build_tiny_model, train_tokenizer
from rl.tool_rollout import LearnerToolRollouts
from rl.tools import TAGS, ToolParams

pytestmark = pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")
ROWS = [{"prompt": f"What is {i}*{i + 3}?\n", "answer": str(i * (i + 3))} for i in range(8)]


def test_one_grpo_step_with_tool_rollouts_in_the_learner(tmp_path):
    tok = train_tokenizer([r["prompt"] + "<python>print(1)</python><output>1</output><answer>1</answer>" for r in ROWS] * 4,
                          300, extra_tags=TAGS)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=96, seed=0)
    close = tok("</python>", add_special_tokens=False)["input_ids"][0]
    opening = tok("<python>", add_special_tokens=False)["input_ids"][0]
    bias = torch.zeros(len(tok))
    bias[[opening, close]] = 6.0  # a policy that often opens and closes calls (random code: errors are fine here)
    model.lm_head.register_forward_hook(lambda module, inputs, output: output + bias.to(output.dtype))
    seen = {}

    def reward(completions, tool_calls, tool_errors, **_):
        seen["calls"], seen["errors"] = list(tool_calls), list(tool_errors)
        return [float("<output>" in c) for c in completions]

    tool = PythonTool(workers=2, timeout_s=1.0, max_output_chars=16)
    rollouts = LearnerToolRollouts(tool, ToolParams(enabled=True, max_calls=2, workers=2))
    outputs = []
    orig = rollouts.__call__
    observed = lambda prompts, trainer: outputs.append(orig(prompts, trainer)) or outputs[-1]  # noqa: E731
    p = GRPOParams(max_steps=1, num_generations=4, prompts_per_step=2, max_completion_length=24, temperature=2.0,
                   logging_steps=1)
    try:
        trainer = make_grpo_trainer(model, tok, ROWS, [reward], [1.0], tmp_path, p, rollout_func=observed)
        trainer.train()
    finally:
        rollouts.close()
        tool.close()
    out = outputs[0]
    assert len(out["env_mask"]) == 8 and all(len(m) == len(c) for m, c in zip(out["env_mask"], out["completion_ids"]))
    assert seen["calls"] == out["tool_calls"] and sum(out["tool_calls"]) > 0
    masked = sum(m.count(0) for m in out["env_mask"])
    assert masked > 0 and all(lp == 0.0 for lps, m in zip(out["logprobs"], out["env_mask"]) for lp, k in zip(lps, m) if k == 0)
    logged = {k for h in trainer.state.log_history for k in h}
    assert "tools/tool_calls_per_sample" in logged and trainer.state.global_step == 1
