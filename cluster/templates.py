"""Cluster templates a user edits and uses as they are (cluster/templates/): a KubeRay `RayJob`, a Slurm
batch script that starts Ray over its allocation, and a `ray up` cluster config.

They hold `{{name}}` placeholders, filled by `render()` (a tiny substitution, not jinja: shell `$VAR`s
and YAML braces pass through untouched). Every placeholder must be given and every value used, so a
template and its caller cannot drift apart silently. What the values are (resources, entrypoint) is
decided by the caller from a recipe (`pipelines/render.py`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from cluster.runtime import ClusterError

TEMPLATE_DIR = Path(__file__).parent / "templates"
KINDS = {"k8s": "rayjob.yaml", "slurm": "slurm.sbatch", "ray-up": "ray-up.yaml"}
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def ray_version() -> str:
    import ray

    return ray.__version__


def ray_image(python: str) -> str:
    """The official Ray image matching the installed Ray (`python`: e.g. "py311")."""
    return f"rayproject/ray:{ray_version()}-{python}"


def template_path(kind: str) -> Path:
    if kind not in KINDS:
        raise ClusterError(f"unknown template kind '{kind}'; choose one of: {', '.join(KINDS)}")
    return TEMPLATE_DIR / KINDS[kind]


def render(kind: str, values: Mapping[str, Any]) -> str:
    """The template of `kind` with every `{{name}}` replaced by `str(values[name])`."""
    path = template_path(kind)
    text = path.read_text()
    want = set(_PLACEHOLDER.findall(text))
    missing, unused = sorted(want - set(values)), sorted(set(values) - want)
    if missing or unused:
        raise ClusterError(f"{path}: placeholders and values disagree (missing values: {missing or 'none'}, "
                           f"values with no placeholder: {unused or 'none'}); fix the template or the renderer")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)
