"""The bottom of the rewards package: the reward table, `register` and `completion_text`.

Reward modules import only this (never rewards/registry.py), and rewards/registry.py imports the reward
modules to fill the table, so the import graph is acyclic: registry -> reward modules -> base.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

RewardFn = Callable[..., list]

# name -> (function or factory, is_factory); filled by the @register decorators when modules are imported
REGISTRY: dict[str, tuple[Callable[..., Any], bool]] = {}


def register(name: str, *, factory: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a reward under `name`; `factory=True` for a function taking parameters and returning the reward."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in REGISTRY:
            raise ValueError(f"reward '{name}' is already registered")
        REGISTRY[name] = (fn, factory)
        return fn

    return deco


def completion_text(completion: Any) -> str:
    """A completion (or prompt) as TRL passes it: a string, or a list of chat messages (take the last content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return "" if completion is None else str(completion)


def with_prefill(completion: Any, prompt: Any = None) -> str:
    """The completion's text as the model's whole turn: a template that pre-fills `<think>` at the end of
    the prompt (DeepSeek-R1-Zero's ends with "Assistant: <think>") leaves the opening tag out of the
    completion, so it is put back here for rewards that check the think block."""
    text = completion_text(completion)
    if prompt is not None and completion_text(prompt).rstrip().endswith("<think>"):
        return "<think>" + text
    return text
