"""A full disk, told in one line: which path could not be written, how much is free there, what to free.

A full disk shows up in many shapes: an `OSError` with errno ENOSPC from Python code (the driver, wandb's
artifact copy), a `SafetensorError` whose text says "No space left on device (os error 28)", and either of
them wrapped by Ray (a task's `RayTaskError` holds the worker's exception as `.cause`, Ray Train's errors
hold their workers' failures in attributes). `no_space` looks through all of them; the driver turns what it
finds into a `DiskFullError` (one line, exit status 2). What was written stays: finished stages and their
manifests, the interrupted stage's `.partial` folder (redone by the next run), GRPO's checkpoints.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from pipelines.run_folder import RunFolderError

CODES = (errno.ENOSPC, errno.EDQUOT)
TEXTS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


class DiskFullError(RunFolderError):
    """A write failed because its file system is full (or over quota)."""


def no_space(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain (causes, contexts, what Ray wrapped) that reports a full disk, or None."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in CODES:
            return e
        if any(t in str(e).lower() for t in TEXTS):
            # Prefer an OSError further down (it names the file); this one if there is none.
            inner = [x for x in _related(e) if id(x) not in seen]
            return next((f for f in map(no_space, inner) if isinstance(f, OSError)), e)
        todo.extend(_related(e))
    return None


def _related(e: BaseException) -> list[BaseException]:
    out = [x for x in (e.__cause__, e.__context__) if x is not None]
    for value in vars(e).values() if hasattr(e, "__dict__") else ():
        values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        out += [v for v in values if isinstance(v, BaseException)]
    return out


def disk_full_error(exc: BaseException, output_dir: Path, run_dir: Path, stage: str | None) -> DiskFullError | None:
    """A `DiskFullError` naming the path, its free space and the largest folders to free, when `exc` comes
    from a full disk; else None."""
    found = no_space(exc)
    if found is None:
        return None
    name = getattr(found, "filename", None)
    path = Path(name) if name else _fullest(run_dir)
    where = f"during stage {stage}" if stage else "while preparing the run"
    free = _free(path)
    biggest = _largest(Path(output_dir)) if _same_fs(path, output_dir) else []
    hint = f"largest in {output_dir}: " + ", ".join(f"{p} {_size(n)}" for p, n in biggest) + "; " if biggest else ""
    return DiskFullError(f"no space left on device writing {path} ({where}; {_size(free)} free there): free space on "
                         f"that disk ({hint}old runs, *.stale-* folders) or set run.output_dir to a larger one; what "
                         f"was written is kept: run the same command again to resume")


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _free(path: Path) -> int:
    try:
        st = os.statvfs(_existing(path))
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _same_fs(a: Path, b: Path) -> bool:
    try:
        return _existing(Path(a)).stat().st_dev == _existing(Path(b)).stat().st_dev
    except OSError:
        return False


def _fullest(run_dir: Path) -> Path:
    """No file named (e.g. safetensors' error): the run folder, or the temp folder (Ray's spilling,
    libraries' scratch files) when that one has less room."""
    candidates = [Path(run_dir), Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir())]
    return min(candidates, key=_free)


def _largest(root: Path, n: int = 3) -> list[tuple[str, int]]:
    """The `n` largest folders two levels under `root` (runs/<run>/<stage>): what a user would delete."""
    sizes = []
    for run in _children(root):
        for entry in _children(run) if run.is_dir() else [run]:
            sizes.append((str(entry.relative_to(root)), _tree_size(entry)))
    return sorted(sizes, key=lambda s: -s[1])[:n]


def _children(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _tree_size(path: Path) -> int:
    if not path.is_dir():
        return path.lstat().st_size if path.exists() else 0
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
