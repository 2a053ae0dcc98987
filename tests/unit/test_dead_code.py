"""No dead code outside tests: vulture at 80 % confidence finds nothing in the packages and benchmarks.

Why 80: at that level vulture reports only what it is sure of (unused imports 90 %; unused arguments and
local variables, unreachable code and never-true conditions 100 %), so a finding is always real and the
check needs no whitelist. Below it (60 %) vulture reports every name it cannot see used in the source
text, which here means mostly names that a framework calls by name: TRL/transformers callback hooks
(`on_step_end`), the transformers cache protocol, vLLM `collective_rpc` methods, rewards registered by
decorator and looked up by recipe name, attributes set on tokenizers and generation configs. Tests are not
scanned: a name used only by a test would count as used, and an import a module never uses would hide
behind a test using the same name (vulture matches names, not scopes). For the same reason vulture misses an
import one module never uses while another module uses the same name (`sys`, `torch`): a second check looks at
each module's imports alone."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("pipelines", "rl", "rewards", "cluster", "benchmarks")
MIN_CONFIDENCE = 80


def test_vulture_finds_no_dead_code():
    proc = subprocess.run([sys.executable, "-m", "vulture", *SCANNED, "--min-confidence", str(MIN_CONFIDENCE)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    # vulture exits 3 when it finds dead code, 1/2 on its own errors (e.g. a syntax error, a bad path).
    assert proc.returncode == 0, f"vulture (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"


def unused_imports(path: Path) -> list[str]:
    """Names `path` imports and never mentions again (a name in a string counts: `"TaskSection"` annotations,
    `__all__`). `# noqa` on the import line keeps an import made for its side effect or as a re-export."""
    source = path.read_text()
    lines, tree = source.splitlines(), ast.parse(source)
    mentioned = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    mentioned |= {w for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                  for w in n.value.replace(".", " ").replace("[", " ").replace("]", " ").replace(",", " ").split()}
    unused = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or getattr(node, "module", "") == "__future__" \
                or "# noqa" in lines[node.lineno - 1]:
            continue
        unused += [f"{path}:{node.lineno}: {a.asname or a.name}" for a in node.names
                   if (a.asname or a.name.split(".")[0]) not in mentioned and a.name != "*"]
    return unused


def test_every_module_uses_what_it_imports():
    found = [u for pkg in SCANNED for p in sorted((ROOT / pkg).rglob("*.py")) if p.name != "__init__.py"
             for u in unused_imports(p)]
    assert not found, "imported and never used:\n" + "\n".join(found)


def test_vulture_would_catch_dead_code(tmp_path):
    """The check can fail: an unused import and unreachable code in a scanned-like file are reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\n\n\ndef f():\n    return 1\n    print('never')\n")
    proc = subprocess.run([sys.executable, "-m", "vulture", str(bad), "--min-confidence", str(MIN_CONFIDENCE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "unused import 'os'" in proc.stdout and "unreachable code" in proc.stdout, proc.stdout
    other = tmp_path / "other.py"  # uses `os`, so vulture no longer sees bad.py's import: the module check does
    other.write_text("import os\n\nprint(os.sep)\n")
    assert subprocess.run([sys.executable, "-m", "vulture", str(bad), str(other), "--min-confidence", str(MIN_CONFIDENCE)],
                          capture_output=True, text=True, timeout=60).stdout.count("unused import") == 0
    bad.write_text("import os\nimport sys  # noqa: F401 (a side effect)\nfrom typing import TYPE_CHECKING, Any\n\n"
                   "def f(x: \"Any\"):\n    return TYPE_CHECKING\n")
    assert unused_imports(bad) == [f"{bad}:1: os"]

