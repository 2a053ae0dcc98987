"""SFT on tool-using traces (cold start, distillation students) learns the model's own tokens only: the tool's
`<output>...</output>` blocks are in the context but out of the labels (`rl.sft.tool_output_labels`), checked
on the batches TRL's SFTTrainer actually trains on."""

import pytest
from transformers import TrainerCallback

from rl.modeling import build_tiny_model, train_tokenizer
from rl.sft import SFTParams, sft_train, tool_output_labels
from rl.tools import OUT_CLOSE, OUT_OPEN, TAGS

ROWS = [{"prompt": f"What is {a}*{a + 17}?\n",
         "completion": f"<python>print({a}*{a + 17})</python><output>{a * (a + 17)}</output><answer>{a * (a + 17)}</answer>"}
        for a in range(101, 117)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([r["prompt"] + r["completion"] for r in ROWS] * 4, 300, extra_tags=TAGS)


def _decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False)


def test_labels_leave_out_the_prompt_and_the_tool_output_only(tok):
    rows, masked = tool_output_labels(tok, ROWS)
    total = 0
    for row, r in zip(rows, ROWS):
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels)
        assert _decode(tok, ids) == r["prompt"] + r["completion"] + tok.eos_token  # the whole trace is the context
        trained = [t for t, lab in zip(ids, labels) if lab != -100]
        assert all(lab in (-100, t) for t, lab in zip(ids, labels))
        output = r["completion"][r["completion"].index(OUT_OPEN):r["completion"].index(OUT_CLOSE) + len(OUT_CLOSE)]
        assert _decode(tok, trained) == r["completion"].replace(output, "") + tok.eos_token  # the model's tokens
        n_out = len(tok(output, add_special_tokens=False)["input_ids"])
        prompt_len = len(tok(text=r["prompt"])["input_ids"])
        assert labels.count(-100) == prompt_len + n_out
        total += n_out
    assert masked == total > 0


class _FirstBatch(TrainerCallback):
    """Keeps the first batch of the dataloader the trainer trains from."""

    def on_train_begin(self, args, state, control, train_dataloader=None, **kw):
        self.batch = next(iter(train_dataloader))


@pytest.mark.parametrize("mask", [True, False])
def test_sft_trains_on_batches_whose_labels_skip_tool_outputs(tok, tmp_path, mask):
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=64, seed=0)
    seen = _FirstBatch()
    metrics = sft_train(model, tok, ROWS, tmp_path, SFTParams(max_steps=1, batch_size=4), use_cpu=True,
                        callbacks=[seen], mask_tool_outputs=mask)
    assert metrics["steps"] == 1
    open_id, close_id = (tok.convert_tokens_to_ids(t) for t in (OUT_OPEN, OUT_CLOSE))
    ids, labels = seen.batch["input_ids"], seen.batch["labels"]
    for row_ids, row_labels in zip(ids.tolist(), labels.tolist()):
        start, end = row_ids.index(open_id), row_ids.index(close_id)
        inside = row_labels[start:end + 1]
        after = [(t, lab) for t, lab in zip(row_ids[end + 1:], row_labels[end + 1:]) if t != tok.pad_token_id]
        if mask:
            assert set(inside) == {-100}  # the tool's output: context, never a target
        else:
            assert inside == row_ids[start:end + 1]  # TRL's default trains on it: the test can tell
        assert after and all(lab == t for t, lab in after)  # the answer the model writes after it is trained on
    assert ("masked_tool_tokens" in metrics) == mask
