"""DAPO dynamic sampling: the pure filtering functions, and the real TRL trainer round loop."""

import zlib

import pytest
import torch

from rl import dynamic_sampling as ds
from rl import trl_compat as compat


def test_informative_groups_flags_groups_with_any_nonzero_advantage():
    adv = torch.tensor([0.0, 0.0, 0.0, 0.5, -0.5, 0.0, 0.0, 0.0, 1e-9])
    assert ds.informative_groups(adv, 3).tolist() == [False, True, False]
    with pytest.raises(ValueError, match="groups of 4"):
        ds.informative_groups(adv, 4)


def test_concat_keeps_left_padded_prompts_and_right_padded_completions():
    a = {"prompt_ids": torch.tensor([[5, 6]]), "prompt_mask": torch.tensor([[1, 1]]),
         "completion_ids": torch.tensor([[7]]), "completion_mask": torch.tensor([[1]]),
         "advantages": torch.tensor([1.0]), "num_items_in_batch": torch.tensor(1)}
    b = {"prompt_ids": torch.tensor([[4, 5, 6]]), "prompt_mask": torch.tensor([[1, 1, 1]]),
         "completion_ids": torch.tensor([[7, 8, 9]]), "completion_mask": torch.tensor([[1, 1, 1]]),
         "advantages": torch.tensor([-1.0]), "num_items_in_batch": torch.tensor(3)}
    out = ds.concat_batches([a, b], pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[0, 5, 6], [4, 5, 6]]
    assert out["prompt_mask"].tolist() == [[0, 1, 1], [1, 1, 1]]
    assert out["completion_ids"].tolist() == [[7, 0, 0], [7, 8, 9]]
    assert out["completion_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert out["advantages"].tolist() == [1.0, -1.0]
    assert int(ds.loss_tokens(out)) == 4
    kept, dropped = ds.keep_informative({**out, "advantages": torch.tensor([0.0, 0.0])}, 1)
    assert dropped == 2 and kept["advantages"].numel() == 0


def test_unknown_rollout_fields_are_refused():
    with pytest.raises(NotImplementedError, match="pixel_values"):
        ds.check_supported({"advantages": torch.zeros(2), "pixel_values": torch.zeros(2, 3)})


# --- the trainer: TRL's own generation and rewards, real tiny model -----------------------------------

G = 4


def _reward(completions, kind, **_):
    # "const" prompts always score 1 (zero variance); "vary" prompts score a hash bit of the sampled
    # text, so their groups almost surely disagree.
    return [1.0 if k == "const" else float(zlib.crc32(c.encode()) % 2) for c, k in zip(completions, kind)]


@pytest.fixture(scope="module")
def trainer_factory(tmp_path_factory):
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.modeling import build_tiny_model, train_tokenizer

    rows = [{"prompt": f"const {i} +", "kind": "const"} for i in range(8)]
    rows += [{"prompt": f"vary {i} -", "kind": "vary"} for i in range(8)]
    tok = train_tokenizer([r["prompt"] for r in rows] * 4, 300)

    def make(rounds):
        model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                                 max_position=64, seed=0)
        p = GRPOParams(max_steps=1, num_generations=G, prompts_per_step=4, max_completion_length=6,
                       dynamic_sampling=True, max_resample_rounds=rounds, logging_steps=1)
        t = make_grpo_trainer(model, tok, rows, [_reward], [1.0], tmp_path_factory.mktemp("ds"), p, seed=0)
        t.model.train()
        return t, tok

    return make


def _batch(rows_kinds):
    return [{"prompt": f"{k} {i} {'+' if k == 'const' else '-'}", "kind": k}
            for i, k in enumerate(rows_kinds) for _ in range(G)]


def test_refill_rounds_give_a_full_batch_of_informative_groups(trainer_factory):
    trainer, tok = trainer_factory(rounds=6)
    out = trainer._generate_and_score_completions(_batch(["const", "vary", "const", "vary"]))
    # (B, T) once truncated importance sampling weighted each token (rl/tis.py): rows are dim 0
    assert out["advantages"].shape[0] == 4 * G  # refilled to the full batch
    assert ds.informative_groups(out["advantages"][:, 0], G).all()
    prompts = tok.batch_decode(out["prompt_ids"], skip_special_tokens=True)
    assert not any("const" in p for p in prompts), prompts
    assert int(out["num_items_in_batch"]) == int(out["completion_mask"].sum())
    m = compat.metrics(trainer)
    assert m["dynamic_sampling/dropped_groups"][-1] >= 2 and m["dynamic_sampling/rounds"][-1] >= 2


def test_drop_only_shrinks_the_batch_and_training_still_steps(trainer_factory):
    trainer, tok = trainer_factory(rounds=0)
    out = trainer._generate_and_score_completions(_batch(["const", "vary", "const", "const"]))
    assert out["advantages"].shape[0] in (0 + G, G)  # the one "vary" group (or a zero-signal fallback)
    assert compat.metrics(trainer)["dynamic_sampling/dropped_groups"][-1] >= 3
    trainer.train()  # a whole optimizer step through TRL's loss on a filtered batch
    assert trainer.state.global_step == 1
    assert any("dynamic_sampling/kept_fraction" in h for h in trainer.state.log_history)
