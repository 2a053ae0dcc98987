"""Recipes and overrides -> a checked `PipelineConfig`.

A recipe is a YAML file under `pipelines/recipes/` (or any path) whose top-level keys are the sections
of `schema.PipelineConfig`; `base: <recipe>` starts from another recipe. Any field can be overridden as
`section.field=value`; values are parsed as YAML, checked against the field's type, and then every
cross-field rule (`rules.check`) runs, so a bad recipe fails before any work with one line naming the
field.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from pipelines.config.rules import check
from pipelines.config.schema import RENAMED, ConfigError, PipelineConfig
from pipelines.config.suggest import closest

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp`; return it converted (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):  # a default already built
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {sorted(f.name for f in dataclasses.fields(tp))}, got {value!r}")
        return build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} is not {_type_name(tp)}")
    if origin in (Mapping, dict, collections.abc.Mapping) or tp in (dict, Mapping):
        kt, vt = typing.get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {_coerce(k, kt, f"{where}.{k}"): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if origin in (tuple, list) or tp in (tuple, list):
        (et, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, et, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is float:
        number = _number(value)
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):  # YAML's .nan / .inf: never a meaningful setting
            raise ConfigError(f"{where}: must be a finite number, got {value!r}")
        return number
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return None
    return None


def build(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from `values`, starting from its defaults; unknown keys raise."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in hints:
            renamed = RENAMED.get((where.split(".")[-1], key)) if where else None
            if renamed:
                raise ConfigError(f"'{path}' was renamed: use {renamed}")
            hint = closest(key, names, f"{where}." if where else "")
            raise ConfigError(f"unknown field '{path}'{hint}; valid fields{' of ' + where if where else ''}: {', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            # Nested sections merge into the default instance, so a recipe can set one field.
            base = {f.name: getattr(getattr(cls(), key), f.name) for f in dataclasses.fields(tp)}
            value = {**base, **value}
        kwargs[key] = _coerce(value, tp, path)
    return cls(**kwargs)


# ---------------------------------------------------------------------------------------------
# Recipes and overrides


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(recipe: str) -> Path:
    path = Path(recipe)
    if path.is_dir():
        raise ConfigError(f"recipe {recipe}: is a directory; give a recipe name or a .yaml file")
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = RECIPE_DIR / f"{recipe}.yaml"
    if not shipped.is_file():
        if path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
            raise ConfigError(f"recipe {recipe}: file not found")
        raise ConfigError(f"recipe '{recipe}' not found{closest(recipe, list_recipes())}; shipped recipes: "
                          f"{', '.join(list_recipes())} (or pass a path to a .yaml file)")
    return shipped


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word (a second `grpo:` section would silently
    replace the first): refuse them, naming the file, line and key."""

    source = "<recipe>"

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, collections.abc.Hashable) and key in seen:
                raise ConfigError(f"{self.source}: line {line}: duplicate key '{key}' (first at line "
                                  f"{seen[key]}); each key may appear once per section")
            if isinstance(key, collections.abc.Hashable):
                seen[key] = line
        return super().construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping)


def read_yaml(path: Path) -> Any:
    """A YAML file's content; ConfigError naming the file (and line, column) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
    try:
        loader = _UniqueKeyLoader(text)
        loader.source = str(path)
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({e.problem or e.context or type(e).__name__})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({type(e).__name__})") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.field=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"override '{text}': the key must be section.field (e.g. grpo.num_generations=8)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e.__class__.__name__})") from None
    return parts, value


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_recipe(path: Path, seen: tuple[Path, ...]) -> dict:
    """A recipe's sections; `base: <recipe>` starts from another recipe and overrides its fields."""
    raw = read_yaml(path)
    if raw is None:
        raise ConfigError(f"{path}: the recipe is empty; give at least one section (e.g. base: tiny)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections")
    base = raw.pop("base", None)
    if base is None:
        return raw
    parent = recipe_path(str(base))
    if parent.resolve() in seen:
        raise ConfigError(f"{path}: base '{base}' makes a cycle")
    # Mappings merge field by field, except the named collections (mixes, students, rewards), which a
    # recipe replaces whole: inheriting half of a comparison grid would be a surprise.
    parent_raw = _read_recipe(parent, seen + (path.resolve(),))
    for section, fields in raw.items():
        if isinstance(fields, dict) and isinstance(parent_raw.get(section), dict):
            for key in ("mixes", "students", "rewards", "reward_params"):
                if key in fields:
                    parent_raw[section].pop(key, None)
    return _merge(parent_raw, raw)


def load_config(recipe: str = "tiny", overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Load a recipe by name (or path), apply `section.field=value` overrides, check every rule."""
    raw = _read_recipe(recipe_path(recipe), ())
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
        node[parts[-1]] = value
    return from_dict(raw)


def from_dict(raw: Mapping[str, Any]) -> PipelineConfig:
    """A checked config from nested sections (a recipe's YAML, or a run's config.yaml)."""
    raw, extra = _stage_sections(raw)
    cfg = dataclasses.replace(build(PipelineConfig, raw), extra=extra)
    cfg = _task_rewards(cfg, raw)
    check(cfg)
    return cfg


def _stage_sections(raw: Mapping[str, Any]) -> tuple[dict, dict]:
    """Split off the sections of registered stages that bring their own (`Stage.section`): built from the
    recipe's key of the stage's name, else their defaults."""
    from pipelines.stages import STAGES

    raw, extra = dict(raw), {}
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    for stage in STAGES:
        if stage.section is not None and stage.name not in fields:
            extra[stage.name] = build(stage.section, raw.pop(stage.name, None) or {}, stage.name)
    return raw, extra


def _task_rewards(cfg: PipelineConfig, raw: Mapping[str, Any]) -> PipelineConfig:
    """A section's `rewards` (GRPO's) default to the task's own (pipelines/tasks/registry.py) when the config
    names none for it."""
    from pipelines.tasks import find

    task = find(cfg.task.name)  # an unknown name is reported by the rules, naming the valid ones
    if task is None or task.rewards is None:
        return cfg
    for f in dataclasses.fields(cfg):
        section = getattr(cfg, f.name)
        if (dataclasses.is_dataclass(section) and "rewards" in {x.name for x in dataclasses.fields(section)}
                and "rewards" not in (raw.get(f.name) or {})):
            cfg = dataclasses.replace(cfg, **{f.name: dataclasses.replace(section, rewards=dict(task.rewards))})
    return cfg
