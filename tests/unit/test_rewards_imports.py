"""The rewards package's own import graph: acyclic (registry -> reward modules -> base) and free of Ray.

Imports inside functions count too: a cycle through a lazy import still couples the modules.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REWARDS = ROOT / "rewards"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from rewards import code`
    return names


def _graph() -> dict[str, set[str]]:
    modules = {f"rewards.{p.stem}" for p in REWARDS.glob("*.py") if p.stem != "__init__"}
    return {f"rewards.{p.stem}": _imported_modules(p) & modules for p in REWARDS.glob("*.py") if p.stem != "__init__"}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_rewards_import_graph_is_acyclic():
    graph = _graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert graph["rewards.base"] == set(), "rewards/base.py is the bottom: it imports no other reward module"
    assert "rewards.code" in graph["rewards.registry"] and "rewards.registry" not in graph["rewards.code"]


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_ray_cluster_or_rl_inside_rewards():
    banned = ("ray", "cluster", "rl", "pipelines")
    bad = {p.name: sorted(m for m in _imported_modules(p) if m.split(".")[0] in banned) for p in REWARDS.glob("*.py")}
    assert not {k: v for k, v in bad.items() if v}, bad
    assert not (REWARDS / "pool.py").exists(), "the Ray reward pool lives in cluster/, fed by rewards.code.CodeScorer"
