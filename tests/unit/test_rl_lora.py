"""LoRA (PEFT) for SFT, GRPO and distillation on a tiny Llama: only adapter parameters train, the merged
weights are exactly base + adapter delta (same logits and generations as the PEFT model), and what is
saved (merged folder, adapter alone) reloads to the same model."""

import pytest
import torch
from transformers import TrainerCallback

from rl.lora import LoraParams, is_peft, merged_state_dict, save_adapter, save_merged, save_policy
from rl.modeling import build_tiny_model, load_policy, train_tokenizer

ROWS = [{"prompt": f"{i} plus {i} is", "answer": str(2 * i), "completion": f" {2 * i}, since {i}+{i}={2 * i}."}
        for i in range(16)]
LORA = LoraParams(r=4, alpha=8.0)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([r["prompt"] + r["completion"] for r in ROWS] * 4, 300)


def _model(tok):
    return build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                            max_position=64, seed=0)


def _ids(tok):
    return tok([r["prompt"] for r in ROWS[:4]], return_tensors="pt", padding=True, add_special_tokens=False)


def _peft(tok, seed=1):
    from peft import get_peft_model

    model = get_peft_model(_model(tok), LORA.peft_config())
    torch.manual_seed(seed)
    with torch.no_grad():  # a trained-looking adapter: B is zero at init
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return model.eval()


class Watch(TrainerCallback):
    """Which parameters train, and which changed over training (before any merge)."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kw):
        self.changed = [n for n, p in model.named_parameters() if not p.equal(self.before[n])]


def test_params_validate_with_the_lora_prefix():
    from rl.grpo import GRPOParams
    from rl.sft import SFTParams

    LoraParams().validate()
    LORA.validate()
    assert LoraParams().peft_config() is None and LORA.peft_config().target_modules == "all-linear"
    for bad, msg in [(LoraParams(r=-1), "lora.r=-1 must be an integer >= 0"),
                     (LoraParams(r=4, alpha=0.0), "lora.alpha=0.0 must be > 0"),
                     (LoraParams(r=4, dropout=1.0), "lora.dropout=1.0 must be within [0, 1)"),
                     (LoraParams(r=4, target_modules=()), "lora.target_modules=() need at least one module name")]:
        for params in (GRPOParams(lora=bad), SFTParams(lora=bad)):
            with pytest.raises(ValueError) as e:
                params.validate()
            assert str(e.value).startswith(msg), str(e.value)


def test_merged_weights_are_base_plus_adapter_delta(tok, tmp_path):
    peft_model = _peft(tok)
    base_before = {k: v.clone() for k, v in peft_model.get_base_model().state_dict().items()}
    state = merged_state_dict(peft_model)
    plain = _model(tok).eval()
    assert list(state) == list(plain.state_dict())  # the plain model's names, in its order
    plain.load_state_dict(state, strict=True)
    # By hand for one layer: W + (alpha / r) B A.
    layer = peft_model.get_base_model().model.layers[0].self_attn.q_proj
    expect = layer.base_layer.weight + (LORA.alpha / LORA.r) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(state["model.layers.0.self_attn.q_proj.weight"], expect)
    enc = _ids(tok)
    with torch.no_grad():
        torch.testing.assert_close(plain(**enc).logits, peft_model(**enc).logits, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(_model(tok)(**enc).logits, plain(**enc).logits, atol=1e-3)  # the adapter matters
    gen = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert plain.generate(**enc, **gen).tolist() == peft_model.generate(**enc, **gen).tolist()
    # The PEFT model was not touched (merging for a sync is out of place).
    for k, v in peft_model.get_base_model().state_dict().items():
        assert v.equal(base_before[k]), k
    # Saved: a plain folder (no PEFT needed) and the adapter alone, both reload to the same logits.
    save_merged(peft_model, tmp_path / "merged", tokenizer=tok)
    reloaded, _ = load_policy(tmp_path / "merged")
    save_adapter(peft_model, tmp_path / "adapter")
    from peft import PeftModel

    readapted = PeftModel.from_pretrained(_model(tok), tmp_path / "adapter").eval()
    with torch.no_grad():
        ref = peft_model(**enc).logits
        torch.testing.assert_close(reloaded(**enc).logits, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(readapted(**enc).logits, ref, atol=1e-5, rtol=1e-5)


def test_sft_with_lora_trains_only_the_adapter_and_merges_it(tok, tmp_path):
    from rl.sft import SFTParams, sft_train

    model = _model(tok)
    keys = list(model.state_dict())
    enc = _ids(tok)
    with torch.no_grad():
        before = model(**enc).logits.clone()
    watch = Watch()
    m = sft_train(model, tok, ROWS, tmp_path, SFTParams(max_steps=4, batch_size=8, learning_rate=1e-2, lora=LORA),
                  callbacks=[watch])
    assert watch.trainable and all("lora_" in n for n in watch.trainable)
    assert watch.changed and all("lora_" in n for n in watch.changed)  # the base weights did not move
    assert m["trainable_params"] == sum(watch.before[n].numel() for n in watch.trainable)
    # The caller's model is plain again, with the adapter merged in: different outputs than before.
    assert not is_peft(model) and list(model.state_dict()) == keys
    assert not any("lora" in n for n, _ in model.named_modules())
    with torch.no_grad():
        after = model(**enc).logits
    assert not torch.allclose(after, before, atol=1e-4)
    from peft import PeftModel

    readapted = PeftModel.from_pretrained(_model(tok), m["adapter_dir"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(readapted(**enc).logits, after, atol=1e-5, rtol=1e-5)


def test_grpo_with_lora_syncs_and_saves_merged_weights(tok, tmp_path):
    from rl.grpo import GRPOParams, make_grpo_trainer
    from rl.rollout import HFEngine

    def reward(completions, answer, **_):
        return [float(a in c) + 0.05 * len(c) for c, a in zip(completions, answer)]

    p = GRPOParams(max_steps=2, learning_rate=5e-2, num_generations=4, prompts_per_step=2, max_completion_length=6,
                   logging_steps=1, beta=0.04, lora=LORA)  # beta > 0: the reference is the adapter-free base
    watch = Watch()
    trainer = make_grpo_trainer(_model(tok), tok, ROWS, [reward], [1.0], tmp_path / "t", p, callbacks=[watch])
    trainer.train()
    assert trainer.ref_model is None and any("kl" in h for h in trainer.state.log_history)
    assert watch.changed and all("lora_" in n for n in watch.changed)
    policy = trainer.model.eval()
    engine = HFEngine(_model(tok), tok.pad_token_id, [tok.eos_token_id])
    engine.load_state_dict(merged_state_dict(policy))  # what a weight sync pushes
    saved = save_policy(trainer, tmp_path / "out")
    reloaded, _ = load_policy(tmp_path / "out")
    enc = _ids(tok)
    with torch.no_grad():
        ref = policy(**enc).logits
        torch.testing.assert_close(engine.model(**enc).logits, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(reloaded(**enc).logits, ref, atol=1e-5, rtol=1e-5)
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").exists() and saved["adapter_dir"]


def test_logit_distillation_with_lora(tok, tmp_path):
    from rl.distill import logit_distill
    from rl.sft import SFTParams

    student, teacher = _model(tok), build_tiny_model(tok, hidden_size=48, num_layers=2, num_heads=2,
                                                     intermediate_size=96, max_position=64, seed=1)
    keys = list(student.state_dict())
    m = logit_distill(student, teacher, tok, ROWS, tmp_path, SFTParams(max_steps=2, batch_size=4, lora=LORA))
    assert m["steps"] == 2 and m["adapter_dir"] and not is_peft(student) and list(student.state_dict()) == keys
