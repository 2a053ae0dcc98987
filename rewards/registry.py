"""The reward registry: one signature, one name per reward.

Every reward is called the way TRL calls it: `fn(completions, **dataset_columns) -> list[float | None]`,
where a completion is a string or a chat message list (see `completion_text`). `None` means "cannot be
scored" (an unparseable gold answer, a sandbox failure) and is never silently turned into 0 or 1; TRL
ignores `None` when it sums weighted rewards.

Plain rewards are registered with `@register("name")`; parametrised ones with
`@register("name", factory=True)` on a function that takes the parameters and returns the reward.
Recipes pick rewards by name with weights (`grpo.rewards: {math_accuracy: 1.0, strict_format: 0.1}`), or
name their own function as `package.module:function` (`custom_reward`): imported where the learner runs
(the driver's PYTHONPATH and current folder reach Ray's local workers), checked at load, and logged under
that name like a registered one.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import sys
from typing import Any, Callable, Mapping

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

__all__ = ["RewardFn", "available_rewards", "build_rewards", "check_custom", "check_params", "completion_text",
           "custom_reward", "get_reward", "is_custom", "register"]

_SPEC = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def is_custom(name: str) -> bool:
    """A user's reward named `package.module:function` rather than a registered name."""
    return ":" in name


def _import_custom(spec: str) -> Callable[..., Any]:
    """The function `spec` names; ValueError with the one-line problem when it cannot be used."""
    if not _SPEC.fullmatch(spec):
        raise ValueError(f"'{spec}' is not a registered reward nor package.module:function")
    module_name, func_name = spec.split(":")
    # The current folder, as `python -m` puts it on sys.path (the `rayzero` script does not); Ray adds the
    # driver's current folder to its workers' sys.path too, so a local module imports the same there.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is the user's module: one line
        raise ValueError(f"'{spec}': cannot import {module_name} ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                         f"it must be importable where rayzero runs (PYTHONPATH or the current folder)") from None
    fn = getattr(module, func_name, None)
    if fn is None:
        raise ValueError(f"'{spec}': module {module_name} has no '{func_name}'")
    if not callable(fn):
        raise ValueError(f"'{spec}': {func_name} is a {type(fn).__name__}, not a function")
    try:
        sig = inspect.signature(fn)
        accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        sig.bind(prompts=[], completions=[], completion_ids=[], answer=[])  # how TRL calls a reward
    except (TypeError, ValueError):
        accepts_kwargs = False
    if not accepts_kwargs:
        raise ValueError(f"'{spec}': a reward is called as fn(prompts=..., completions=..., **dataset_columns) -> "
                         f"list[float | None]; {func_name}{_signature(fn)} does not accept that")
    return fn


def _signature(fn) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(?)"


def check_custom(spec: str) -> str | None:
    """Load-time check of a `package.module:function` reward: importable, callable, TRL's reward signature."""
    try:
        _import_custom(spec)
    except ValueError as e:
        return str(e)
    return None


def custom_reward(spec: str) -> RewardFn:
    """The user's function, wrapped (the function itself is left as it is) so that TRL logs it under `spec`
    and a result that is not one float-or-None per completion fails with a line naming the reward."""
    fn = _import_custom(spec)

    @functools.wraps(fn)
    def reward(*args: Any, **kwargs: Any) -> list:
        out = fn(*args, **kwargs)
        n = len(kwargs.get("completions", args[1] if len(args) > 1 else ()))
        if not isinstance(out, (list, tuple)) or len(out) != n or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in out):
            raise ValueError(f"grpo.rewards: '{spec}' returned {type(out).__name__} {str(out)[:80]}; a reward "
                             f"returns a list of {n} floats (or None), one per completion")
        return [None if v is None else float(v) for v in out]

    reward.__name__ = reward.__qualname__ = spec
    return reward


def get_reward(name: str, **params: Any) -> RewardFn:
    """The reward registered as `name` (or the user's `package.module:function`); factories are called with
    `params`."""
    if is_custom(name):
        if params:
            raise TypeError(f"reward '{name}' takes no parameters, got {sorted(params)}")
        return custom_reward(name)
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
    if is_custom(name):
        return f"reward '{name}' (your own function) takes no parameters" if params else None
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

