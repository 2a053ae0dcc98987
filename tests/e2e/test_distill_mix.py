"""Mix distillation: exact mix counts, rejection sampling filters, and the distill + eval stages on the
micro recipe with two teachers, a short-CoT source, two students and test-time-scaling evaluation."""

import json
from pathlib import Path

import pytest
import ray

from rl.traces import SHORT, build_mix, largest_mix, mix_counts, mix_shares, select_traces


def test_mix_counts_are_exact_for_every_recipe():
    assert mix_counts(10, mix_shares(0.2, {"grpo": 1.0})) == {"grpo": 2, SHORT: 8}  # Mix-Long 1:4
    assert mix_counts(7, mix_shares(1.0, {"grpo": 0.2, "sft": 0.8})) == {"grpo": 1, "sft": 6}  # 1.4, 5.6
    assert mix_counts(5, mix_shares(0.0, {"grpo": 1.0})) == {SHORT: 5}
    # three-way split of 10 at 1/3 each: one pool gets the remainder, the first listed on ties
    assert mix_counts(10, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}) == {"a": 4, "b": 3, "c": 3}
    for n in range(0, 50):
        assert sum(mix_counts(n, mix_shares(0.3, {"x": 1, "y": 2})).values()) == n
    with pytest.raises(ValueError):
        mix_shares(1.2, {"grpo": 1.0})


def test_largest_mix_and_build_mix_draw_exactly_and_never_twice():
    pools = {"grpo": [{"id": f"g{i}"} for i in range(100)], SHORT: [{"id": f"s{i}"} for i in range(1000)]}
    shares = mix_shares(0.2, {"grpo": 1.0})
    assert largest_mix({k: len(v) for k, v in pools.items()}, shares) == 500
    mix = build_mix(pools, mix_counts(500, shares), seed=0)
    ids = [t["id"] for t in mix]
    assert len(ids) == len(set(ids)) == 500
    assert sum(i.startswith("g") for i in ids) == 100 and sum(i.startswith("s") for i in ids) == 400
    assert [t["id"] for t in build_mix(pools, mix_counts(500, shares), seed=0)] == ids  # seeded
    with pytest.raises(ValueError, match="pool 'grpo' has 100 traces, the mix needs 101"):
        build_mix(pools, {"grpo": 101}, seed=0)
    with pytest.raises(ValueError, match="not generated"):
        largest_mix({"grpo": 10}, mix_shares(0.5, {"grpo": 1.0}))


def test_rejection_sampling_keeps_verified_distinct_traces_within_bounds():
    rows = [{"prompt": "p1", "answer": "1"}, {"prompt": "p2", "answer": "2"}]
    comps = [["a", "a", "bb", "cccc"], ["x", "yy", "zz", "w"]]
    ok = [[True, True, True, True], [False, True, True, False]]
    toks = [[1, 1, 2, 4], [1, 2, 2, 1]]
    traces, stats = select_traces(rows, comps, ok, toks, source="grpo", style="long", keep_per_prompt=2,
                                  min_tokens=1, max_tokens=3)
    assert [t["completion"] for t in traces] == ["a", "bb", "yy", "zz"]
    assert stats["duplicates"] == 1 and stats["too_long"] == 1 and stats["accepted"] == 6
    assert stats["kept"] == 4 and stats["prompts_solved"] == 2 and stats["generated"] == 8
    assert all(t["teacher"] == "grpo" and t["style"] == "long" and t["reward"] == 1.0 for t in traces)
    few, _ = select_traces(rows, comps, ok, toks, source="grpo", style="long", keep_per_prompt=1, min_tokens=2)
    assert [t["completion"] for t in few] == ["bb", "yy"]


@pytest.mark.slow
def test_distill_grid_and_eval_stage_on_micro(tmp_path):
    from pipelines.config import load_config
    from pipelines.driver import run_pipeline
    from rewards.registry import get_reward

    overrides = [
        f"run.output_dir={tmp_path}", "run.num_cpus=2", "run.wandb_mode=disabled",
        "distill.rollout_workers=2", "distill.rollout_cpus=0.5", "distill.num_traces=8",
        "distill.samples_per_prompt=4", "distill.num_prompts=64",
        "distill.mixes={long: {long_short: 1.0, teachers: {grpo: 1.0}}, short: {long_short: 0.0},"
        " mix_long: {long_short: 0.25, teachers: {grpo: 1.0}}, mix_large: {long_short: 1.0, teachers: {grpo: 0.5, sft: 0.5}}}",
        "distill.students={a: {kind: tiny, hidden_size: 16, num_layers: 1, num_heads: 2, intermediate_size: 32},"
        " b: {kind: tiny, hidden_size: 24, num_layers: 1, num_heads: 2, intermediate_size: 48}}",
        "eval.samples=4", "eval.ks=[1,2,4]", "eval.scorer=arithmetic_process", "eval.beam_widths=[1,2]",
        "eval.beam_max_rounds=3", "eval.max_step_tokens=8", "eval.stages=[sft,grpo,distill]",
        # a micro teacher is weak: accept any answer-tagged trace so every pool fills (the filter is tested above)
        "distill.require_format=false",
    ]
    cfg = load_config("micro", overrides)
    try:
        report = run_pipeline(cfg, say=lambda _: None)
    finally:
        ray.shutdown()
    out = cfg.run_dir / "distill"
    d = report["stages"]["distill"]
    # exact counts per mix and per source
    expect = {"long": {"grpo": 8}, "short": {"short": 8}, "mix_long": {"grpo": 2, "short": 6},
              "mix_large": {"grpo": 4, "sft": 4}}
    for mix, counts in expect.items():
        rows = [json.loads(line) for line in (out / "mixes" / f"{mix}.jsonl").open()]
        got = {}
        for r in rows:
            src = "short" if r["style"] == "short" else r["teacher"]
            got[src] = got.get(src, 0) + 1
        assert got == counts, mix
        assert get_reward("math_accuracy")([r["completion"] for r in rows], answer=[r["answer"] for r in rows]) == [1.0] * 8
    # traces saved as a dataset with teacher, length and reward; teacher pools cached for new mixes
    from datasets import Dataset

    ds = Dataset.from_parquet(str(out / "traces.parquet"))
    assert {"teacher", "style", "tokens", "reward"} <= set(ds.column_names)
    assert sorted(p.name for p in (cfg.run_dir / "traces").glob("*.jsonl"))[0].startswith("grpo-")
    assert {(s["student"], s["mix"]) for s in d["students"]} == {(a, m) for a in "ab" for m in expect}
    for s in d["students"]:
        assert (out / s["path"] / "config.json").exists() and 0.0 <= s["accuracy"] <= 1.0
    assert d["students"][0]["params"] < d["students"][-1]["params"]
    # eval stage: every checkpoint gets pass@k, maj@k and TTS curves with token counts
    for stage in ("sft", "grpo", "distill"):
        st = report["stages"][stage]
        assert set(st["tts"]) == {"greedy", "maj@k", "best-of-k", "weighted-maj@k", "beam"}
        assert [p["k"] for p in st["tts"]["maj@k"]] == [1, 2, 4]
        toks = [p["tokens"] for p in st["tts"]["maj@k"]]
        assert toks[0] < toks[1] < toks[2]
        passk = [st["pass@k"][k] for k in sorted(st["pass@k"])]
        assert passk == sorted(passk), "pass@k never decreases with k"
        assert st["accuracy_per_billion_params"] == pytest.approx(st["accuracy"] / (st["params"] / 1e9))
        assert st["flops"] > 0


def test_logit_distillation_moves_the_student_towards_the_teacher(tmp_path):
    """TRL's GKD trainer on a handful of traces: the student's forward KL to the teacher on those traces
    drops; different vocabularies are refused."""
    import torch

    from rl.distill import logit_distill
    from rl.modeling import build_tiny_model, train_tokenizer
    from rl.sft import SFTParams

    rows = [{"prompt": f"Mia has {a} pens. She buys {b} more.\n",
             "completion": f"<think>{a}+{b}={a + b}.</think><answer>{a + b}</answer>"} for a in range(1, 6) for b in range(1, 5)]
    tok = train_tokenizer([r["prompt"] + r["completion"] for r in rows], 300)
    teacher = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position=128, seed=1)
    student = build_tiny_model(tok, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, max_position=128, seed=2)
    # a teacher worth copying: a few SFT epochs on the traces
    from rl.sft import sft_train

    sft_train(teacher, tok, rows, tmp_path / "t", SFTParams(epochs=15, learning_rate=3e-3, batch_size=8))

    def kl() -> float:
        enc = tok([r["prompt"] + r["completion"] for r in rows], return_tensors="pt", padding=True)
        with torch.no_grad():
            t = teacher(**enc).logits.log_softmax(-1)
            s = student(**enc).logits.log_softmax(-1)
        mask = enc["attention_mask"].unsqueeze(-1)
        return float(((t.exp() * (t - s)) * mask).sum() / mask.sum())

    before = kl()
    m = logit_distill(student, teacher, tok, rows, tmp_path / "s", SFTParams(epochs=5, learning_rate=5e-3, batch_size=8))
    assert m["steps"] > 0 and kl() < 0.7 * before
    other = build_tiny_model(train_tokenizer(["abc def"] * 5, 280), hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=32, max_position=64, seed=0)
    if other.config.vocab_size != student.config.vocab_size:
        with pytest.raises(ValueError, match="shared vocabulary"):
            logit_distill(other, teacher, tok, rows, tmp_path / "x", SFTParams(epochs=1))
