from pipelines.tasks.arithmetic import generate_splits
from rl.modeling import build_tiny_model, count_params, load_policy, save_tokenizer, train_tokenizer


def _texts():
    s = generate_splits(100, 200, 20, min_ops=2, max_ops=3, max_value=20, seed=0)
    return [r["prompt"] + r.get("completion", "") for v in s.values() for r in v], s


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path):
    texts, s = _texts()
    tok = train_tokenizer(texts, 512)
    probe = s["cold_start"][0]["prompt"] + s["cold_start"][0]["completion"]
    save_tokenizer(tok, tmp_path, probe)  # raises if AutoTokenizer reloads it differently
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=128, seed=0)
    model.save_pretrained(tmp_path)
    _, loaded = load_policy(tmp_path)
    text = "Mia has 7 pens.\n<think>7+5=12. 12-4=8.</think><answer>8</answer>"
    assert loaded.decode(loaded(text, add_special_tokens=False)["input_ids"]) == text
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert len(loaded.tokenize(tag)) == 1
    # Small integers are single tokens, identical with or without a leading space.
    assert all(len(loaded.tokenize(str(n))) == 1 for n in range(41))
    assert loaded.tokenize("has 16")[-1] == loaded.tokenize("2+16")[-1]


def test_student_config_is_at_most_half_the_teacher():
    from pipelines.config import load_config
    from pipelines.models import new_model

    texts, _ = _texts()
    tok = train_tokenizer(texts, 512)
    cfg = load_config("tiny")
    teacher, student = new_model(cfg.model, tok, 0), new_model(cfg.distill.students["student"], tok, 0)
    assert count_params(student) <= count_params(teacher) / 2


def test_truncated_student_keeps_evenly_spaced_teacher_layers():
    import pytest
    import torch

    from rl.modeling import build_tiny_model, train_tokenizer, truncate_layers

    tok = train_tokenizer(["Mia has 3 pens.\n<think>3+2=5.</think><answer>5</answer>"] * 10, 300)
    teacher = build_tiny_model(tok, hidden_size=32, num_layers=5, num_heads=2, intermediate_size=64, max_position=64, seed=0)
    layers = list(teacher.model.layers)
    student = truncate_layers(teacher, 3)
    assert student.config.num_hidden_layers == 3
    assert [id(x) for x in student.model.layers] == [id(layers[i]) for i in (0, 2, 4)]  # first, middle, last
    ids = tok("Mia has 3 pens.\n", return_tensors="pt")
    out = student.generate(**ids, max_new_tokens=4, do_sample=False)  # the KV cache follows the new indices
    assert out.shape[1] == ids["input_ids"].shape[1] + 4 or tok.eos_token_id in out[0].tolist()
    with pytest.raises(ValueError, match="num_layers=9"):
        truncate_layers(build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                         max_position=64, seed=0), 9)
    assert torch.isfinite(student(**ids).logits).all()
