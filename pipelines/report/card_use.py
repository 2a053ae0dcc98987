"""The model card's Use section, written from the run's own settings: how prompts are built (the prompt
template, system prompt and chat template of pipelines/tasks/templates.py), what the model answers, and a
code example that builds and tokenizes a prompt exactly as the run did (the tokenizer's special tokens
once: after `apply_chat_template` the text already holds them)."""

from __future__ import annotations

import re


def answer_text(cfg: dict) -> str:
    """What the model was trained to write after a prompt of this run."""
    from pipelines.tasks import find
    from pipelines.tasks.templates import asks_for_tags, resolve

    task = cfg.get("task", {})
    t = resolve(task.get("prompt_template", "plain"), task.get("system_prompt", ""), task.get("chat_template", False))
    # An enabled stage rewarding strict_format (GRPO's rewards) trained the tag format; the cold-start examples
    # (a built-in task's, or a completion_template) teach it too.
    rewarded = any(isinstance(sec, dict) and sec.get("enabled", True) and "strict_format" in (sec.get("rewards") or {})
                   for sec in cfg.values())
    known = find(task.get("name", ""))
    cold_tags = (known is not None and known.cold_start_tags) or "<answer>" in task.get("completion_template", "")
    tags = asks_for_tags(t) or rewarded
    template = task.get("prompt_template", "plain")
    also = (" (its cold-start examples were written as `<think>…</think><answer>…</answer>`, which it may "
            "also use)") if cold_tags else ""
    if template == "boxed" and not tags:
        return "reasons step by step and puts its final answer in `\\boxed{…}`" + also
    if template == "code" and not tags:
        return "writes the complete function in one ```python code block" + also
    if tags or cold_tags:
        text = "reasons inside `<think>…</think>`, then gives its final answer inside `<answer>…</answer>`"
        if t.prefill:
            text += (f" (the prompt ends with `{t.prefill}`, so the generated text starts inside the think block: "
                     f"reasoning, `</think>`, then the answer block)")
        return text
    return (f"answers in the form of the task's answers (`task.answer_format: {task.get('answer_format', 'plain')}`); "
            "rayzero's math reward reads the last `<answer>…</answer>` block, else `\\boxed{…}`, else the text")


def prompt_text(cfg: dict) -> str:
    task = cfg.get("task", {})
    template, system = task.get("prompt_template", "plain"), task.get("system_prompt", "")
    chat = bool(task.get("chat_template", False))
    what = {
        "plain": "the question itself, with no instruction",
        "r1_zero": ("DeepSeek-R1-Zero's template: " + ("its instruction as the system turn, the question as the "
                    "user turn" if chat else "its instruction, then `User: <question>` and `Assistant: <think>`")),
        "boxed": "the question, then \"Please reason step by step, and put your final answer within \\boxed{}.\"",
        "code": "an instruction to write the complete function in a ```python block, then the code to complete",
    }.get(template, f"the recipe's template `{template}` (`{{prompt}}` is the question)")
    sys_note = f" The system prompt `{system}` comes first." if system else ""
    if chat:
        how = ("rendered with the tokenizer's chat template (one user turn, `add_generation_prompt=True`"
               + (", then the assistant turn pre-filled with `<think>`" if _prefill(cfg) else "") + ")")
    else:
        how = ("plain text, not the chat template: build the prompt exactly as below (the tokenizer's own chat "
               "template is not the format this model was trained on)")
    return f"Prompts are {what}, {how}.{sys_note}"


def _prefill(cfg: dict) -> str:
    from pipelines.tasks.templates import resolve

    task = cfg.get("task", {})
    return resolve(task.get("prompt_template", "plain"), task.get("system_prompt", ""),
                   task.get("chat_template", False)).prefill


def use_text(cfg: dict) -> str:
    return f"{prompt_text(cfg)} The model {answer_text(cfg)}."


def use_code(cfg: dict, question: str) -> str:
    """The example's Python after `tok` and `model` are loaded: the prompt built exactly as the run built its
    prompts (pipelines/tasks/templates.py), tokenized as the run tokenized them (the tokenizer's special
    tokens once), then generation."""
    from pipelines.tasks.templates import resolve

    task = cfg.get("task", {})
    t = resolve(task.get("prompt_template", "plain"), task.get("system_prompt", ""), task.get("chat_template", False))
    lines = [f"question = {question!r}"]
    others = sorted(set(re.findall(r"\{(\w+)\}", t.system + t.user)) - {"prompt"})
    if others:  # e.g. MBPP's {tests}: the run filled them from the row (a list one item per line)
        lines.append(f"# the template also takes the row's {', '.join('{' + f + '}' for f in others)}: replace them "
                     f"as the question is replaced below")
    if t.chat:
        user = "question" if t.user == "{prompt}" else f"{t.user!r}.replace('{{prompt}}', question)"
        turns = ([f"{{'role': 'system', 'content': {t.system!r}}}"] if t.system else []) + [f"{{'role': 'user', 'content': {user}}}"]
        lines += ["messages = [" + ", ".join(turns) + "]",
                  "prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)"
                  + (f" + {t.prefill!r}" if t.prefill else ""),
                  "# the chat template already wrote the special tokens: do not let the tokenizer add them again",
                  "ids = tok(prompt, return_tensors='pt', add_special_tokens=False)"]
    else:
        whole = (f"{t.system}\n\n" if t.system else "") + t.user + t.prefill
        lines += ["prompt = question" if whole == "{prompt}" else f"prompt = {whole!r}.replace('{{prompt}}', question)",
                  "ids = tok(prompt, return_tensors='pt')  # plain text: the tokenizer adds its special tokens once"]
    lines += ["out = model.generate(**ids)  # generation_config.json: greedy, as the reported accuracy was measured",
              "print(tok.decode(out[0][ids['input_ids'].shape[1]:], skip_special_tokens=True))"]
    return "\n".join(lines)


def question_of(prompt: str, cfg: dict, tokenizer=None) -> str | None:
    """The question inside a rendered prompt of this run (the card's example), or None when the template
    holds other row fields or the prompt does not fit it."""
    from pipelines.tasks.templates import TemplateError, render, resolve

    task = cfg.get("task", {})
    t = resolve(task.get("prompt_template", "plain"), task.get("system_prompt", ""), task.get("chat_template", False))
    marker = "\x00QUESTION\x00"
    try:
        probe = render({"prompt": marker}, t, tokenizer)
    except (TemplateError, KeyError, TypeError, ValueError):
        return None
    if probe.count(marker) != 1 or "{" in t.user.replace("{prompt}", "").replace("{}", ""):
        return None
    head, tail = probe.split(marker)
    if not (prompt.startswith(head) and prompt.endswith(tail)) or len(prompt) < len(head) + len(tail):
        return None
    return prompt[len(head): len(prompt) - len(tail)]
