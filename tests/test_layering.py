"""Data flows one way: pipelines -> rl/rewards -> cluster. Nothing below imports upward."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"cluster": {"pipelines", "rl", "rewards"}, "rl": {"pipelines"}, "rewards": {"pipelines", "rl"}}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_no_package_imports_upward():
    bad = [f"{p.relative_to(ROOT)} imports {sorted(_imports(p) & banned)}"
           for pkg, banned in FORBIDDEN.items() for p in (ROOT / pkg).rglob("*.py") if _imports(p) & banned]
    assert not bad, bad
