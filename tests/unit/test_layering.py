"""The package shape is a star: `pipelines` uses `rl`, `rewards` and `cluster`; those three never import
each other (nor pipelines); Ray is imported only in `cluster/`; and no two modules import each other,
directly or through others (imports inside functions count; `if TYPE_CHECKING:` blocks do not)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "rl", "rewards", "cluster")
FORBIDDEN = {"cluster": {"pipelines", "rl", "rewards"}, "rl": {"pipelines", "rewards", "cluster"},
             "rewards": {"pipelines", "rl", "cluster"}}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in the file, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for child in node.body for n in ast.walk(child)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    return {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}


def test_rl_rewards_cluster_never_import_each_other_or_pipelines():
    bad = [f"{m} imports {sorted(i for i in deps if i.split('.')[0] in FORBIDDEN[m.split('.')[0]])}"
           for m, deps in _graph().items() if m.split(".")[0] in FORBIDDEN
           and any(i.split(".")[0] in FORBIDDEN[m.split(".")[0]] for i in deps)]
    assert not bad, bad


def test_ray_is_imported_only_in_cluster():
    bad = [str(p.relative_to(ROOT)) for pkg in ("pipelines", "rl", "rewards") for p in (ROOT / pkg).rglob("*.py")
           if any(i == "ray" or i.startswith("ray.") for i in _imports(p))]
    assert not bad, f"Ray code outside cluster/: {bad}"


def test_no_import_cycles():
    graph = _graph()
    # A package imports its own submodules in __init__; a submodule importing its package's names is a
    # normal re-export, not a cycle: only module -> module edges between non-ancestors count.
    edges = {m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")} for m, deps in graph.items()}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for d in sorted(edges.get(m, ())):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles
