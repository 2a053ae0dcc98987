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

from typing import Any, Callable, Sequence

RewardFn = Callable[..., list]

_REGISTRY: dict[str, tuple[Callable[..., Any], bool]] = {}


def register(name: str, *, factory: bool = False):
    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"reward '{name}' is already registered")
        _REGISTRY[name] = (fn, factory)
        return fn

    return deco


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    from rewards import arithmetic as _arithmetic  # noqa: F401
    from rewards import math as _math  # noqa: F401
    from rewards import shaping as _shaping  # noqa: F401

    try:
        from rewards import code as _code  # noqa: F401
    except ImportError:  # pragma: no cover - code rewards are optional until rewards/code.py lands
        pass
    from rewards import reasoning_gym as _reasoning_gym  # noqa: F401  (reasoning-gym imported on first use)


def available_rewards() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_reward(name: str, **params: Any) -> RewardFn:
    """The reward registered as `name`; factories are called with `params`."""
    _load_builtin()
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


def build_rewards(weights: dict[str, float], params: dict[str, dict] | None = None) -> tuple[list[RewardFn], list[float]]:
    """Recipe mapping {name: weight} (+ {name: factory parameters}) -> (functions, weights) in TRL's
    `reward_funcs`/`reward_weights` form."""
    params = params or {}
    unused = set(params) - set(weights)
    if unused:
        raise KeyError(f"reward parameters given for rewards not in use: {', '.join(sorted(unused))}")
    names = list(weights)
    return [get_reward(n, **dict(params.get(n, {}))) for n in names], [float(weights[n]) for n in names]


def completion_text(completion: Any) -> str:
    """A completion as TRL passes it: a string, or a list of chat messages (take the last content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return "" if completion is None else str(completion)
