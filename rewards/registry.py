"""The reward registry: one signature, one name per reward.

Every reward is called the way TRL calls it: `fn(completions, **dataset_columns) -> list[float | None]`,
where a completion is a string or a chat message list (see `completion_text`). `None` means "cannot be
scored" (an unparseable gold answer, a sandbox failure) and is never silently turned into 0 or 1; TRL
ignores `None` when it sums weighted rewards.

Plain rewards are registered with `@register("name")`; parametrised ones with
`@register("name", factory=True)` on a function that takes the parameters and returns the reward.
Recipes pick rewards by name with weights (`grpo.rewards: {math_accuracy: 1.0, strict_format: 0.1}`).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

# The table, `register` and `completion_text` live in rewards/base.py (reward modules import them from
# there, so this module can import every reward module without a cycle); re-exported as the public API.
from rewards.base import REGISTRY as _REGISTRY
from rewards.base import RewardFn, completion_text, register

# Importing the reward modules runs their @register decorators (reasoning-gym itself loads on first use).
from rewards import arithmetic as _arithmetic  # noqa: F401
from rewards import code as _code  # noqa: F401
from rewards import math as _math  # noqa: F401
from rewards import reasoning_gym as _reasoning_gym  # noqa: F401
from rewards import shaping as _shaping  # noqa: F401
from rewards import tools as _tools  # noqa: F401

__all__ = ["RewardFn", "available_rewards", "build_rewards", "check_params", "completion_text", "get_reward", "register"]


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def get_reward(name: str, **params: Any) -> RewardFn:
    """The reward registered as `name`; factories are called with `params`."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown reward '{name}'; available: {', '.join(sorted(_REGISTRY))}")
    fn, is_factory = _REGISTRY[name]
    if is_factory:
        fn = fn(**params)
    elif params:
        raise TypeError(f"reward '{name}' takes no parameters, got {sorted(params)}")
    try:
        fn.__name__ = name  # TRL logs each reward under its function name
    except (AttributeError, TypeError):
        pass
    return fn


def check_params(name: str, params: Mapping[str, Any]) -> str | None:
    """None when reward `name` takes these parameters (by name); else what is wrong, in one line. Lets
    a recipe's `reward_params` be checked at load, before any factory runs."""
    fn, is_factory = _REGISTRY[name]
    if not is_factory:
        return f"reward '{name}' takes no parameters" if params else None
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    unknown = sorted(set(params) - set(sig.parameters))
    return f"unknown parameter(s) {unknown}; '{name}' takes: {', '.join(sig.parameters)}" if unknown else None


def build_rewards(weights: dict[str, float], params: dict[str, dict] | None = None) -> tuple[list[RewardFn], list[float]]:
    """Recipe mapping {name: weight} (+ {name: factory parameters}) -> (functions, weights) in TRL's
    `reward_funcs`/`reward_weights` form."""
    params = params or {}
    unused = set(params) - set(weights)
    if unused:
        raise KeyError(f"reward parameters given for rewards not in use: {', '.join(sorted(unused))}")
    names = list(weights)
    return [get_reward(n, **dict(params.get(n, {}))) for n in names], [float(weights[n]) for n in names]

