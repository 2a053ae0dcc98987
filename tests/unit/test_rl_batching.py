"""Memory and length knobs: micro-batches with gradient accumulation give the one-batch update (GRPO and
SFT, on a tiny real model), gradient checkpointing too, long SFT examples are kept whole, and every params
dataclass validates its fields with messages that start with the field name."""

import math

import pytest
import torch
from transformers import TrainerCallback

from rl import trl_compat as compat
from rl.evaluation import TTSParams
from rl.grpo import GRPOParams, grpo_config, make_grpo_trainer
from rl.modeling import build_tiny_model, train_tokenizer
from rl.sft import SFTParams, sft_train

ROWS = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i), "completion": f" {2 * i}, since {i}+{i}={2 * i}."}
        for i in range(16)]


class Grads(TrainerCallback):
    """The accumulated gradient of the first optimizer step (after clipping, which scales both alike)."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([r["prompt"] + r["completion"] for r in ROWS] * 4, 300)


def _model(tok, max_position=64):
    return build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            max_position=max_position, seed=0)


def _reward(completions, answer, **_):
    return [float(a in c) + 0.05 * len(c) for c, a in zip(completions, answer)]


def _grpo_step(tok, tmp_path, **knobs):
    # fp32: exact equality is the point here (bf16 gradients accumulate with one rounding per micro-batch)
    knobs = {"precision": "fp32", **knobs}
    p = GRPOParams(max_steps=1, learning_rate=1e-3, num_generations=4, prompts_per_step=2, max_completion_length=8,
                   logging_steps=1, **knobs)
    grads = Grads()
    trainer = make_grpo_trainer(_model(tok), tok, ROWS, [_reward], [1.0], tmp_path, p, callbacks=[grads], seed=3)
    trainer.train()
    log = next(h for h in trainer.state.log_history if "loss" in h)
    return trainer, grads.grads, log


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_grpo_micro_batches_give_the_one_batch_gradient(tok, tmp_path, loss_type):
    whole, g_whole, log_whole = _grpo_step(tok, tmp_path / "whole", loss_type=loss_type)
    micro, g_micro, log_micro = _grpo_step(tok, tmp_path / "micro", loss_type=loss_type, micro_batch_size=2,
                                           gradient_checkpointing=True)
    assert (micro.args.per_device_train_batch_size, micro.args.gradient_accumulation_steps) == (2, 4)
    assert micro.args.steps_per_generation == 4 and micro.args.gradient_checkpointing
    assert whole.args.per_device_train_batch_size == 8 and whole.args.gradient_accumulation_steps == 1
    # Same seed, same generation batch of 8: the same samples, so the same loss and gradient are expected.
    assert list(compat.latest_rollouts(micro)["completion"]) == list(compat.latest_rollouts(whole)["completion"])
    assert g_whole.keys() == g_micro.keys() and any(g.abs().sum() > 0 for g in g_whole.values())
    for name in g_whole:
        torch.testing.assert_close(g_micro[name], g_whole[name], rtol=1e-4, atol=1e-6, msg=name)
    assert log_micro["loss"] == pytest.approx(log_whole["loss"], rel=1e-4, abs=1e-6)


def test_sft_micro_batches_give_the_one_batch_gradient(tok, tmp_path):
    def step(micro):
        grads = Grads()
        model = _model(tok)
        sft_train(model, tok, ROWS[:8], tmp_path / str(micro), SFTParams(max_steps=1, batch_size=8,
                  micro_batch_size=micro, learning_rate=1e-3), callbacks=[grads])
        return grads.grads

    whole, micro = step(0), step(2)
    for name in whole:
        torch.testing.assert_close(micro[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_long_sft_examples_are_kept_whole(tok, tmp_path):
    long_row = {"prompt": "1 plus 1 is", "completion": " 2." * 500}
    n = len(tok(long_row["prompt"] + long_row["completion"], add_special_tokens=False)["input_ids"]) + 1  # + EOS
    assert 1400 < n <= 2048
    model = _model(tok, max_position=2048)
    full = sft_train(model, tok, [long_row] * 2, tmp_path / "long", SFTParams(max_steps=1, batch_size=2,
                     max_length=2048))
    cut = sft_train(model, tok, [long_row] * 2, tmp_path / "cut", SFTParams(max_steps=1, batch_size=2))
    assert full["num_tokens"] == 2 * n and cut["num_tokens"] == 2 * 256
    assert math.isfinite(full["train_loss"])


def test_grpo_config_takes_lengths_in_the_thousands(tmp_path):
    p = GRPOParams(max_completion_length=8192, prompts_per_step=64, num_generations=16, micro_batch_size=4,
                   top_p=0.95, top_k=50)
    args = grpo_config(tmp_path, p, world_size=8)
    assert args.max_completion_length == 8192 and (args.top_p, args.top_k) == (0.95, 50)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 32)
    # TRL multiplies by the processes it sees (one here; eight in the real group: 64 x 16 rows per round).
    assert args.steps_per_generation == 32 and args.generation_batch_size == 4 * 32


GRPO_BAD = [
    (dict(micro_batch_size=3, prompts_per_step=16, num_generations=8), 2,
     "micro_batch_size=3 must divide the per-rank batch 64 (prompts_per_step*num_generations/num_workers)"),
    (dict(prompts_per_step=3, num_generations=2), 4, "prompts_per_step=3 x num_generations=2 = 6 must be divisible"),
    (dict(learning_rate=float("nan")), 1, "learning_rate=nan must be a finite number"),
    (dict(learning_rate=0.0), 1, "learning_rate=0.0 must be > 0"),
    (dict(temperature=0.0), 1, "temperature=0.0 must be > 0"),
    (dict(top_p=1.5), 1, "top_p=1.5 must be within (0, 1]"),
    (dict(top_k=-1), 1, "top_k=-1 must be an integer >= 0"),
    (dict(num_generations=1), 1, "num_generations=1 must be an integer >= 2"),
    (dict(max_completion_length=0), 1, "max_completion_length=0 must be an integer >= 1"),
    (dict(max_steps=0), 1, "max_steps=0"),
    (dict(beta=-0.1), 1, "beta=-0.1 must be >= 0"),
    (dict(epsilon_high=0.1), 1, "epsilon_high=0.1 must be 0 (= epsilon) or >= epsilon=0.2"),
    (dict(loss_type="ppo"), 1, "loss_type='ppo' is not one of"),
    (dict(loss_type="luspo"), 1, "importance_sampling_level='token' must be 'sequence' with loss_type='luspo'"),
    (dict(scale_rewards="max"), 1, "scale_rewards='max'"),
    (dict(dtype="fp8"), 1, "dtype='fp8' is not one of"),
    (dict(dtype="float16", bf16=True), 1, "dtype='float16' cannot train under bf16 autocast"),
    (dict(attn_implementation="flash"), 1, "attn_implementation='flash' is not one of"),
    (dict(prompts_per_step=3, num_generations=4, micro_batch_size=2, steps_per_generation=1), 1,
     "steps_per_generation=1 x micro-batch 2 x num_workers=1 must be a multiple of num_generations=4"),
    (dict(prompts_per_step=4, num_generations=4, dynamic_sampling=True), 8, "prompts_per_step=4 must give every worker"),
    (dict(max_resample_rounds=-1), 1, "max_resample_rounds=-1"),
]


@pytest.mark.parametrize("fields,workers,message", GRPO_BAD)
def test_grpo_params_validation_names_the_field(fields, workers, message):
    with pytest.raises(ValueError) as e:
        GRPOParams(**fields).validate(num_workers=workers)
    assert str(e.value).startswith(message.split("=")[0] + "=") and message in str(e.value), str(e.value)


def test_grpo_config_validates_and_defaults_pass(tmp_path):
    GRPOParams().validate(num_workers=1)
    GRPOParams(prompts_per_step=16, num_generations=8, micro_batch_size=4).validate(num_workers=8)
    with pytest.raises(ValueError, match=r"^micro_batch_size=3 must divide"):
        grpo_config(tmp_path, GRPOParams(micro_batch_size=3), world_size=2)


@pytest.mark.parametrize("fields,workers,message", [
    (dict(batch_size=6, micro_batch_size=4), 1, "micro_batch_size=4 must divide the per-rank batch 6 (batch_size/num_workers)"),
    (dict(batch_size=6), 4, "batch_size=6 must be divisible by num_workers=4"),
    (dict(max_length=0), 1, "max_length=0 must be an integer >= 1"),
    (dict(learning_rate=float("inf")), 1, "learning_rate=inf must be a finite number"),
    (dict(epochs=0.0), 1, "epochs=0.0 must be > 0"),
    (dict(max_steps=0), 1, "max_steps=0 must be an integer >= 1"),
    (dict(warmup_ratio=2.0), 1, "warmup_ratio=2.0 must be within [0, 1)"),
    (dict(weight_decay=-1.0), 1, "weight_decay=-1.0 must be >= 0"),
    (dict(dtype="int8"), 1, "dtype='int8' is not one of"),
])
def test_sft_params_validation_names_the_field(fields, workers, message):
    SFTParams().validate(num_workers=1)
    with pytest.raises(ValueError) as e:
        SFTParams(**fields).validate(num_workers=workers)
    assert str(e.value).startswith(message), str(e.value)


@pytest.mark.parametrize("fields,message", [
    (dict(samples=-1), "samples=-1 must be an integer >= 0"),
    (dict(samples=4, temperature=0.0), "temperature=0.0 must be > 0"),
    (dict(samples=4, ks=(8, 16)), "ks=(8, 16) need values >= 1 and at least one <= samples=4"),
    (dict(beam_widths=(0,)), "beam_widths=(0,) must all be >= 1"),
    (dict(beam_expansions=0), "beam_expansions=0 must be an integer >= 1"),
    (dict(max_step_tokens=0), "max_step_tokens=0 must be an integer >= 1"),
    (dict(step_delimiters=()), "step_delimiters=() need at least one non-empty string"),
    (dict(num_problems=-2), "num_problems=-2 must be an integer >= 0"),
])
def test_tts_params_validation_names_the_field(fields, message):
    TTSParams().validate()
    TTSParams(samples=8).validate()
    with pytest.raises(ValueError) as e:
        TTSParams(**fields).validate()
    assert str(e.value).startswith(message), str(e.value)
