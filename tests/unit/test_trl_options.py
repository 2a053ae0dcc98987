"""`grpo.trl: {field: value}`: any other TRL GRPOConfig field, checked against TRL's dataclass when the recipe
is loaded (unknown name -> the closest one; a field rayzero maps -> the rayzero field; wrong type -> the
type), and passed to the GRPOConfig the learner builds."""

import pytest

from pipelines.config import ConfigError, load_config
from rl.grpo import grpo_config


def test_a_trl_option_reaches_grpo_config(tmp_path):
    cfg = load_config("micro", ["grpo.trl={lr_scheduler_type: cosine, max_grad_norm: 0.5}",
                                "grpo.trl.mask_truncated_completions=true"])
    assert dict(cfg.grpo.trl) == {"lr_scheduler_type": "cosine", "max_grad_norm": 0.5, "mask_truncated_completions": True}
    args = grpo_config(tmp_path, cfg.grpo, use_cpu=True)
    assert args.lr_scheduler_type == "cosine" and args.max_grad_norm == 0.5 and args.mask_truncated_completions
    assert args.max_steps == cfg.grpo.max_steps  # rayzero's own mapping is untouched
    default = grpo_config(tmp_path, load_config("micro").grpo, use_cpu=True)
    assert default.lr_scheduler_type == "constant_with_warmup" and default.max_grad_norm == 1.0


@pytest.mark.parametrize("override, message", [
    ("grpo.trl.max_grad_nrom=0.5", "grpo.trl.max_grad_nrom=0.5: not a field of TRL's GRPOConfig; did you mean "
                                   "max_grad_norm?"),
    ("grpo.trl.learning_rate=1e-5", "grpo.trl.learning_rate='1e-5': rayzero sets this GRPOConfig field itself; "
                                    "use grpo.learning_rate"),
    ("grpo.trl.per_device_train_batch_size=4", "grpo.trl.per_device_train_batch_size=4: rayzero sets this GRPOConfig "
                                               "field itself; use grpo.micro_batch_size"),
    ("grpo.trl.max_grad_norm=high", "grpo.trl.max_grad_norm='high': expected float"),
    ("grpo.trl.mask_truncated_completions=3", "grpo.trl.mask_truncated_completions=3: expected bool"),
    ("grpo.trl.lr_scheduler_type=cosinus", "grpo.trl.lr_scheduler_type='cosinus': expected one of: linear, cosine"),
])
def test_bad_trl_options_fail_at_load_with_one_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("micro", [override])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
