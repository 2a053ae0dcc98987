"""Every repository path that README.md and docs/*.md name exists, and every relative link points at a file.

A repository path is a token that starts with one of the repository's top-level folders followed by `/`
(`pipelines/stages/grpo.py`, `tests/e2e/`, `cluster/templates/*`, `pipelines/config/{schema,rules}.py`);
a glob must match something and each `{a,b}` alternative must exist. Paths a run writes (`runs/<name>/...`,
`out/...`) start with no repository folder and are not checked; a token right after a `/`, `.`, `~`, `$` or
a letter (a URL, `~/...`, `$HOME/...`, `runs/x/tests/...`) is not one either, and `<placeholder>` parts
end a path (`pipelines/stages/<name>.py` checks `pipelines/stages/`)."""

import glob
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("pipelines", "rl", "rewards", "cluster", "tests", "scripts", "benchmarks", "docs", ".ci")
PATH = re.compile(r"(?<![\w/.~$<{-])((?:%s)/[\w./{},*-]*)" % "|".join(re.escape(f) for f in FOLDERS))
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")  # [text](target#anchor)


def _expand(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand(path[:m.start()] + alt + path[m.end():])]


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def named_paths(text: str) -> list[tuple[int, str]]:
    """(line number, path) for every repository path named in `text`."""
    return [(n, p.rstrip(".,")) for n, line in enumerate(text.splitlines(), 1) for m in PATH.finditer(line)
            for p in _expand(m.group(1).rstrip(".,"))]


def _exists(path: str) -> bool:
    return bool(glob.glob(path, root_dir=ROOT)) if "*" in path else (ROOT / path).exists()


def test_every_repository_path_in_the_docs_exists():
    missing = [f"{doc.relative_to(ROOT)}:{n}: {p}" for doc in _docs() for n, p in named_paths(doc.read_text())
               if not _exists(p)]
    assert not missing, "docs name paths that do not exist:\n" + "\n".join(missing)


def test_every_relative_link_in_the_docs_exists():
    missing = [f"{doc.relative_to(ROOT)}:{n}: {target}" for doc in _docs()
               for n, line in enumerate(doc.read_text().splitlines(), 1) for target in LINK.findall(line)
               if "://" not in target and not target.startswith("mailto:") and not (doc.parent / target).exists()]
    assert not missing, "docs link to files that do not exist:\n" + "\n".join(missing)


def test_what_counts_as_a_repository_path():
    text = ("see `pipelines/config/{schema,rules}.py`, pipelines/recipes/*.yaml and tests/e2e/.\n"
            "runs/<name>/grpo/ and runs/tiny/tests/x, https://x.org/rl/a.py, ~/rl/b, $HOME/cluster/c, "
            "pipelines/stages/<name>.py, out/tiny-grpo")
    assert named_paths(text) == [(1, "pipelines/config/schema.py"), (1, "pipelines/config/rules.py"),
                                 (1, "pipelines/recipes/*.yaml"), (1, "tests/e2e/"), (2, "pipelines/stages/")]
    assert not _exists("pipelines/distill.py") and _exists("pipelines/recipes/*.yaml")
