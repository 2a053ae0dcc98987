"""`grpo.rewards` accepts the user's own `package.module:function`: checked at load (importable, callable,
TRL's reward signature) with one line naming the field, called like a registered reward and named after
the spec (TRL logs `rewards/<name>/mean`), its result checked to be one float-or-None per completion. That it
runs inside the Ray learners and is logged there: the shared micro run (tests/e2e/test_tracking.py)."""

import pytest

from pipelines.config import ConfigError, load_config
from rewards.registry import build_rewards, get_reward

SPEC = "tests.e2e.custom_reward:short_answer"


def test_a_custom_reward_is_called_and_named_like_a_registered_one():
    cfg = load_config("micro", [f"grpo.rewards={{math_accuracy: 1.0, '{SPEC}': 0.5}}"])
    fns, weights = build_rewards(dict(cfg.grpo.rewards))
    assert [f.__name__ for f in fns] == ["math_accuracy", SPEC] and weights == [1.0, 0.5]
    out = fns[1](prompts=["p", "p"], completions=["<answer>4</answer>", "x" * 50], completion_ids=[[1], [2]], answer=["4", "4"])
    assert out == [1.0, 0.0]
    import tests.e2e.custom_reward as module

    assert module.short_answer.__name__ == "short_answer"  # the user's function itself is left as it is


def test_a_result_that_is_not_one_score_per_completion_fails_naming_the_reward():
    fn = get_reward("tests.e2e.custom_reward:wrong_length")
    with pytest.raises(ValueError, match=r"'tests.e2e.custom_reward:wrong_length' returned list \[1.0\]; a reward "
                                         r"returns a list of 2 floats"):
        fn(prompts=["a", "b"], completions=["a", "b"])


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:f", "grpo.rewards: 'no_such_module_xyz:f': cannot import no_such_module_xyz "
                             "(ModuleNotFoundError: No module named 'no_such_module_xyz'); it must be importable"),
    ("tests.e2e.custom_reward:missing", "grpo.rewards: 'tests.e2e.custom_reward:missing': module "
                                        "tests.e2e.custom_reward has no 'missing'"),
    ("tests.e2e.custom_reward:NOT_A_FUNCTION", "grpo.rewards: 'tests.e2e.custom_reward:NOT_A_FUNCTION': "
                                               "NOT_A_FUNCTION is a int, not a function"),
    ("tests.e2e.custom_reward:no_kwargs", "grpo.rewards: 'tests.e2e.custom_reward:no_kwargs': a reward is called as "
                                          "fn(prompts=..., completions=..., **dataset_columns) -> list[float | None]; "
                                          "no_kwargs(completions) does not accept that"),
    ("tests.e2e.custom reward:f", "grpo.rewards: 'tests.e2e.custom reward:f' is not a registered reward nor "
                                  "package.module:function"),
])
def test_an_unusable_custom_reward_fails_at_load_with_one_line(spec, message):
    with pytest.raises(ConfigError) as e:
        load_config("micro", [f"grpo.rewards={{'{spec}': 1.0}}"])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_custom_rewards_take_no_parameters():
    with pytest.raises(ConfigError, match="takes no parameters"):
        load_config("micro", [f"grpo.rewards={{'{SPEC}': 1.0}}", f"grpo.reward_params={{'{SPEC}': {{x: 1}}}}"])
