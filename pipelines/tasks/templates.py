"""Prompt templates: how a row's question becomes the exact text the model is trained and evaluated on.

`task.prompt_template` is a built-in name or a string holding `{prompt}`:

- `plain`: the question as it is;
- `r1_zero`: DeepSeek-R1-Zero's conversation template (Guo et al. 2025, arXiv:2501.12948, Table 1): an
  instruction to reason inside `<think> </think>` and answer inside `<answer> </answer>`, then
  `User: <question>` and `Assistant: <think>` (the assistant turn is pre-filled with `<think>`: the model
  writes the reasoning, `</think>`, then the answer block; `strict_format` and `math_accuracy` read a
  completion after such a prompt as the whole turn);
- `boxed`: the question, then "Please reason step by step, and put your final answer within \\boxed{}."
  (Qwen2.5-Math's chain-of-thought prompt);
- `code`: an instruction to write the complete function in a ```python block, then the question in a
  fence (HumanEval-style prompts are code);
- any other string: it must hold `{prompt}`; `{<field>}` names any other field of the row (e.g. `{tests}`
  for MBPP's assert lines; a list is written one item per line). Other braces (`\\boxed{}`) stay as they are.

`task.system_prompt` is a system message with `task.chat_template: true`, else a paragraph before the
prompt. `task.chat_template: true` renders the prompt as one user turn (after the system turn, if any)
with the tokenizer's chat template and `add_generation_prompt=True`; a template's pre-fill (`r1_zero`'s
`<think>`, or a custom template ending in `<think>`) is appended after the generation prompt, so the
assistant turn still starts inside the think block.

The rendered prompt is stored as a plain string in the run's data files: SFT, GRPO, the rollout workers
and evaluation all see exactly that text. TRL tokenizes string prompts with the tokenizer's special tokens
(`tokenizer(text)`), so a tokenizer that adds a BOS itself gets the chat template's leading BOS text
removed here (one BOS, not two).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

R1_ZERO_INSTRUCTION = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.")
BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
CODE_INSTRUCTION = ("Complete the following Python function. Reason step by step if you need to, then give the "
                    "complete function in one ```python code block.")

BUILTIN = ("plain", "r1_zero", "boxed", "code")
PREFILL = "<think>"
_FIELD = re.compile(r"\{(\w+)\}")


class TemplateError(ValueError):
    """A template that cannot render a row; the message names the field."""


@dataclass(frozen=True)
class Template:
    """A prompt template resolved from a config: `user` renders the user turn (a string with `{field}`
    placeholders), `system` the system text, `prefill` what the assistant turn starts with."""

    user: str
    system: str = ""
    prefill: str = ""
    chat: bool = False


def check_template(text: str, field: str = "task.prompt_template") -> str | None:
    """The one-line problem with a template setting, or None."""
    if text in BUILTIN:
        return None
    if "{prompt}" not in text:
        return (f"{field}={text!r}: a custom template must contain {{prompt}} (where the question goes); "
                f"or use one of: {', '.join(BUILTIN)}")
    return None


def resolve(prompt_template: str, system_prompt: str = "", chat_template: bool = False) -> Template:
    """The template a config names (built-in or custom; call `check_template` first)."""
    if prompt_template == "plain":
        user, system, prefill = "{prompt}", "", ""
    elif prompt_template == "r1_zero":
        if chat_template:  # the instruction becomes the system turn (unless one is given), the question the user turn
            user, system, prefill = "{prompt}", R1_ZERO_INSTRUCTION, PREFILL
        else:
            user, system, prefill = R1_ZERO_INSTRUCTION + "\nUser: {prompt}\nAssistant: ", "", PREFILL
    elif prompt_template == "boxed":
        user, system, prefill = "{prompt}\n" + BOXED_INSTRUCTION, "", ""
    elif prompt_template == "code":
        user, system, prefill = CODE_INSTRUCTION + "\n\n```python\n{prompt}\n```", "", ""
    else:
        user, system, prefill = prompt_template, "", ""
        if user.rstrip().endswith(PREFILL):  # a custom template that pre-fills the think block
            user, prefill = user.rstrip()[: -len(PREFILL)], PREFILL
    return Template(user=user, system=system_prompt or system, prefill=prefill, chat=chat_template)


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "\n".join(str(v) for v in value)
    return "" if value is None else str(value)


def fill(text: str, row: Mapping[str, Any]) -> str:
    """`{field}` placeholders replaced by the row's values; braces that name no field are kept."""
    return _FIELD.sub(lambda m: _text(row[m.group(1)]) if m.group(1) in row else m.group(0), text)


def is_messages(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value))


def render(row: Mapping[str, Any], t: Template, tokenizer=None) -> str:
    """The prompt text for one row (a `prompt` string, or chat messages when `t.chat`)."""
    prompt = row["prompt"]
    if is_messages(prompt):
        if not t.chat:
            raise TemplateError("task.columns.prompt: the rows hold chat messages; set task.chat_template=true")
        messages = [dict(m) for m in prompt]
        if t.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": t.system})
        return _chat(messages, tokenizer) + t.prefill
    user = fill(t.user, row)
    if not t.chat:
        return (f"{t.system}\n\n" if t.system else "") + user + t.prefill
    messages = ([{"role": "system", "content": t.system}] if t.system else []) + [{"role": "user", "content": user}]
    return _chat(messages, tokenizer) + t.prefill


def _chat(messages: list[dict], tokenizer) -> str:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise TemplateError("task.chat_template=true: the model's tokenizer has no chat template; set "
                            "task.chat_template=false (and pick a task.prompt_template)")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return strip_leading_bos(text, tokenizer)


def strip_leading_bos(text: str, tokenizer) -> str:
    """Remove a leading BOS token text when the tokenizer adds one itself (TRL's `tokenizer(text)` would
    otherwise put two BOS tokens in front of the prompt)."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos or not text.startswith(bos):
        return text
    ids = tokenizer("x")["input_ids"]
    if ids and ids[0] == tokenizer.bos_token_id:
        return text[len(bos):]
    return text


def completion_after(prompt: str, completion: str) -> str:
    """A cold-start completion that fits its prompt: after a prompt pre-filled with `<think>` the model
    writes from inside the think block, so a completion starting with `<think>` loses that tag."""
    if prompt.rstrip().endswith(PREFILL) and completion.lstrip().startswith(PREFILL):
        return completion.lstrip()[len(PREFILL):]
    return completion


def asks_for_tags(t: Template) -> bool:
    """Whether the template asks for the `<think>`/`<answer>` format `strict_format` rewards."""
    text = t.system + t.user + t.prefill
    return "<answer>" in text or "</answer>" in text
