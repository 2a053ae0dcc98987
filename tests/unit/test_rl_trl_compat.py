"""The TRL private hooks rl/ uses: present on the pinned TRL, and a clear error where one is missing."""

import re
from pathlib import Path

import pytest

from rl import trl_compat as compat

ROWS = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i)} for i in range(4)]


def test_supported_version_is_the_pinned_one():
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert re.search(r'"trl==([^"]+)"', pyproject).group(1) == compat.SUPPORTED_TRL


def _reward(completions, **_):
    return [float(len(c)) for c in completions]


@pytest.fixture(scope="module")
def grpo_trainer(tmp_path_factory):
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.modeling import build_tiny_model, train_tokenizer

    tok = train_tokenizer([r["prompt"] for r in ROWS] * 4, 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    p = GRPOParams(max_steps=1, num_generations=2, prompts_per_step=2, max_completion_length=4)
    return make_grpo_trainer(model, tok, ROWS, [_reward], [1.0], tmp_path_factory.mktemp("grpo"), p)


def test_installed_trl_has_every_hook_and_the_accessors_read_them(grpo_trainer):
    import trl

    assert trl.__version__ == compat.SUPPORTED_TRL
    compat.check(grpo_trainer, compat.GRPO_HOOKS)  # make_grpo_trainer ran it too; it must pass again
    compat.check(trl.GRPOTrainer, compat.GRPO_HOOKS)
    ids = compat.tokenize_prompts(grpo_trainer, ["1 plus 1 is"])
    assert ids == [compat.tokenizer(grpo_trainer)("1 plus 1 is")["input_ids"]]
    compat.log_metric(grpo_trainer, "probe", 2)
    assert compat.metrics(grpo_trainer)["probe"] == [2.0]
    grpo_trainer.train()
    logs = compat.latest_rollouts(grpo_trainer)
    assert len(logs["prompt"]) == len(logs["completion"]) == 4 and "_reward" in logs["rewards"]


def test_a_trainer_class_lacking_a_hook_fails_naming_it_and_the_version():
    from transformers import Trainer
    from trl import GRPOTrainer

    with pytest.raises(compat.TRLCompatError, match=r"_generate_and_score_completions.*trl==1\.16\.0"):
        compat.check(Trainer, compat.GRPO_HOOKS)

    class Renamed(GRPOTrainer):  # as if a TRL release changed the method's parameters
        def _tokenize_prompts(self, prompts, images):
            return super()._tokenize_prompts(prompts)

    with pytest.raises(compat.TRLCompatError, match=r"_tokenize_prompts.*\(prompts, images\).*trl==1\.16\.0"):
        compat.check(Renamed, compat.GRPO_HOOKS)


def test_an_instance_lacking_an_attribute_fails(grpo_trainer, monkeypatch):
    monkeypatch.delattr(grpo_trainer, "_logs")
    with pytest.raises(compat.TRLCompatError, match=r"_logs.*RolloutSamples"):
        compat.check(grpo_trainer, compat.GRPO_HOOKS)
    monkeypatch.setattr(compat, "installed_trl", lambda: "9.9.9")
    with pytest.raises(compat.TRLCompatError, match=r"TRL 9\.9\.9 is installed; rayzero supports trl==1\.16\.0"):
        compat.check(grpo_trainer, compat.GRPO_HOOKS)
