"""grpo.tools and the multiply task at config load (one line naming the field), the multiply task's cold-start
traces (tool calls with the sandbox's real outputs), and default runs untouched (same data key, same vocabulary)."""

from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_config
from pipelines.data import data_key
from pipelines.tasks import multiply
from rewards.tools import PythonTool


@pytest.mark.parametrize("override, message", [
    ("grpo.tools.max_calls=0", "grpo.tools.max_calls=0 must be an integer >= 1"),
    ("grpo.tools.timeout_s=0", "grpo.tools.timeout_s=0.0 must be > 0"),
    ("grpo.decoder=generate", "grpo.tools.enabled=True: needs grpo.decoder=rayzero"),
    ("task.params.digits=3", "task.params: unknown key(s) ['digits'] for task multiply"),
    ("task.params.max_digits=12", "task.params.max_digits=12: need whole numbers 1 <= min_digits (3)"),
    ("grpo.tools.enabled=false", "no_tool.enabled=True: trains the control of a tool run (the same budget without"),
    ("task.name=arithmetic", "no_tool.enabled=True: task 'arithmetic' has no no-tool variant (task.params.tool=false)"),
])
def test_bad_tool_settings_fail_at_load_in_one_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny-tool", [override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_default_runs_keep_their_data_key_and_tool_runs_get_tags():
    tiny = data_key(load_config("tiny"))
    assert "tool_tags" not in tiny["tokenizer"]
    assert data_key(load_config("tiny", ["grpo.tools.enabled=true"]))["tokenizer"]["tool_tags"] is True
    assert load_config("tiny").grpo.tools.enabled is False


@pytest.mark.skipif(not Path("/usr/bin/bwrap").exists(), reason="bubblewrap not installed")
def test_multiply_cold_start_traces_carry_real_tool_outputs():
    tool = PythonTool(workers=1, max_output_chars=64)
    try:
        splits = multiply.generate_splits(6, 20, 10, {"min_digits": 3, "max_digits": 4}, seed=0, execute=tool)
    finally:
        tool.close()
    for row in splits["cold_start"]:
        a, b = row["prompt"].removeprefix("What is ").removesuffix("?\n").split("*")
        assert row["answer"] == str(int(a) * int(b))
        assert row["completion"] == f"<python>print({a}*{b})</python><output>{row['answer']}</output><answer>{row['answer']}</answer>"
    prompts = [{r["prompt"] for r in splits[s]} for s in ("cold_start", "train", "heldout")]
    assert not (prompts[0] & prompts[2]) and not (prompts[1] & prompts[2])  # held-out never trained on
    bare = multiply.generate_splits(3, 2, 2, {"tool": False}, seed=0)
    assert all(r["completion"] == f"<answer>{r['answer']}</answer>" for r in bare["cold_start"])
