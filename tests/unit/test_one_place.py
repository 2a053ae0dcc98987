"""Each thing in one place: what the system knows about a stage is declared in its module under
pipelines/stages/ and read from the registry, so a stage's name, quoted, appears outside pipelines/stages/
only in the config schema (the sections and their defaults); and no code branches on a task's name."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "rl", "rewards", "cluster")
ALLOWED = {"pipelines/config/schema.py"}  # the sections, their defaults and renamed fields
# "grpo" is also one of TRL's loss types (rl/grpo.py, `loss_type`): a name of TRL's, not of the stage.
NOT_STAGE_NAMES = {("rl/grpo.py", "LOSS_TYPES")}
# `eval` names more than the eval stage: the section every stage's evaluation reads, a CLI command, a split.
OVERLOADED = {"eval"}


def _sources():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith("pipelines/stages/"):
                yield rel, ast.parse(path.read_text())


def _quoted(tree: ast.AST, rel: str, names: set[str]) -> list[tuple[int, str]]:
    skip = set()
    for node in ast.walk(tree):  # the constants of an assignment named in NOT_STAGE_NAMES
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and (rel, t.id) in NOT_STAGE_NAMES
                                                for t in node.targets):
            skip |= {id(n) for n in ast.walk(node.value)}
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names
            and id(n) not in skip]


def test_stage_names_are_quoted_only_in_the_stages_and_the_schema():
    from pipelines.stages import names

    stage_names = set(names()) - OVERLOADED
    assert {"sft", "grpo", "distill", "baseline"} <= stage_names
    found = [f"{rel}:{line}: {value!r}" for rel, tree in _sources() if rel not in ALLOWED
             for line, value in _quoted(tree, rel, stage_names)]
    assert not found, "a stage's name outside pipelines/stages/ (declare it on the stage instead):\n" + "\n".join(found)


def test_the_check_sees_a_quoted_stage_name():
    tree = ast.parse('if stage == "grpo":\n    pass\nLOSS_TYPES = ("grpo", "dapo")\n')
    assert _quoted(tree, "pipelines/x.py", {"grpo"}) == [(1, "grpo"), (3, "grpo")]
    assert _quoted(tree, "rl/grpo.py", {"grpo"}) == [(1, "grpo")]


def _task_name_branches(tree: ast.AST) -> list[int]:
    """Lines comparing `<...>task.name` or `cfg.name` of a task with a string (`==`, `!=`, `in`)."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        named = any(isinstance(s, ast.Attribute) and s.attr == "name" and "task" in ast.unparse(s.value) for s in sides)
        literal = any(isinstance(s, ast.Constant) and isinstance(s.value, str) or
                      isinstance(s, (ast.Tuple, ast.List, ast.Set)) and any(isinstance(e, ast.Constant) for e in s.elts)
                      for s in sides)
        if named and literal:
            out.append(node.lineno)
    return out


def test_no_code_branches_on_a_task_name():
    assert _task_name_branches(ast.parse('if cfg.task.name == "arithmetic":\n    pass\n')) == [1]
    found = [f"{rel}:{line}" for rel, tree in _sources() for line in _task_name_branches(tree)]
    found += [f"pipelines/stages/{p.name}:{line}" for p in sorted((ROOT / "pipelines" / "stages").glob("*.py"))
              for line in _task_name_branches(ast.parse(p.read_text()))]
    assert not found, "a branch on a task's name (declare it on the Task instead):\n" + "\n".join(found)
