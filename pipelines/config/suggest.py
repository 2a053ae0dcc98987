"""The closest valid name to a mistyped one, for "did you mean" in one-line errors (config fields, sections,
recipes, choices, dataset columns). Its own module: the config loader, its rules and the task adapters all
use it, and none of them may import the others in a cycle (tests/unit/test_layering.py)."""

from __future__ import annotations

import difflib
from typing import Any, Iterable


def closest(name: Any, valid: Iterable[Any], prefix: str = "") -> str:
    """' (did you mean <prefix><best>?)' for the valid name closest to `name`, or '' when none is close."""
    best = difflib.get_close_matches(str(name), [str(v) for v in valid], n=1, cutoff=0.6)
    return f" (did you mean {prefix}{best[0]}?)" if best else ""
