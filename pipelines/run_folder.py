"""The run folder: its layout, its single owner, and how a stage's result is recorded and trusted.

    runs/<name>/
      .rayzero.lock          the owner (pid, host, start time) while a `rayzero run` works here
      config.yaml            resolved config of the latest invocation
      data/                  {cold_start,train,heldout}.jsonl + manifest.json (the task config that wrote them)
      tokenizer/             trained at run time for `model.kind=tiny`, or the model's own
      base/                  `model.kind=gguf`: the GGUF converted once to a plain HF folder
      <stage>/               Hugging Face folder + manifest.json, for sft, grpo, distill, baseline, eval
                             (no_tool/: a tool run's control, its sft/ and grpo/ folders and data/ inside)
      <stage>.partial/       a stage at work (becomes <stage>/ only when it succeeded)
      <stage>.stale-<time>/  a finished stage that no longer matches its files or inputs, kept aside
      wandb/  plots/  report.json  report.md

A stage is finished when its manifest exists, every file it lists still has the sha256 recorded there,
and the inputs it was trained from (the previous stage's files, the data) are still the same. Nothing
is ever deleted that a finished stage wrote: a stage to redo is moved aside, not removed.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable

LOCK = ".rayzero.lock"
# Files whose content defines a checkpoint; everything else in a stage folder (history, samples) is a log.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json")


class RunFolderError(RuntimeError):
    """The run folder cannot be used (owned by another run, not writable); one line says why."""


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def data(self, split: str) -> Path:
        return self.path / "data" / f"{split}.jsonl"

    @property
    def tokenizer(self) -> Path:
        return self.path / "tokenizer"

    @property
    def base(self) -> Path:
        return self.path / "base"

    def stage(self, name: str) -> Path:
        return self.path / name

    def partial(self, name: str) -> Path:
        return self.path / f"{name}.partial"

    def set_aside(self, folder: Path) -> Path:
        """Move a stage folder out of the way (never delete what a stage wrote); returns where it went."""
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        dest = folder.with_name(f"{folder.name}.stale-{stamp}")
        n = 1
        while dest.exists():
            dest, n = folder.with_name(f"{folder.name}.stale-{stamp}-{n}"), n + 1
        folder.replace(dest)
        return dest


# ---------------------------------------------------------------------------------------------
# One owner per run folder


class RunLock:
    """An exclusive `flock` on `<run>/.rayzero.lock`, holding the owner's pid, host and start time.

    The kernel drops the lock when the owner dies (even by SIGKILL), so a lock file whose flock can be
    taken is stale: it is taken over, and `took_over` says whose it was. flock works across NFS v4
    clients too; on file systems without it, two hosts could both believe they own the folder."""

    def __init__(self, run_dir: Path, command: str = ""):
        self.path = Path(run_dir) / LOCK
        self.command = command or " ".join(sys.argv)
        self.fd: int | None = None
        self.took_over: dict | None = None

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RunFolderError(f"{self.path.parent} is in use by {_describe(owner)}; wait for it to finish, "
                                     f"or use another run.name") from None
            # The file may have been unlinked by the previous owner between our open and our flock.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_owner(fd)
            if previous and previous.get("pid") != os.getpid():
                self.took_over = previous
            me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": self.command}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self.fd = fd
            return
        raise RunFolderError(f"{self.path}: could not take the run folder's lock (it keeps changing)")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _read_owner(fd: int) -> dict | None:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else None
    except (OSError, ValueError):
        return None


def _describe(owner: dict | None) -> str:
    if not owner:
        return "another process"
    started = dt.datetime.fromtimestamp(owner.get("started", 0)).strftime("%Y-%m-%d %H:%M:%S")
    return f"pid {owner.get('pid')} on host {owner.get('host')} (since {started}: {owner.get('command', '?')})"


def check_writable(path: Path) -> list[Path]:
    """The run folder can be created and written (checked before any work: one line, not a traceback).
    Returns the folders it created (outermost first), for `removed_if_left_empty`."""
    created = [p for p in (path, *path.parents) if not p.exists()][::-1]
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunFolderError(f"run.output_dir: cannot write {path} ({e.strerror or type(e).__name__})") from None
    return created


class removed_if_left_empty:
    """A run refused before it wrote anything (bad data, a busy cluster) leaves no empty run folder behind:
    on an exception, the folders this run created are removed if they are still empty (never anything else)."""

    def __init__(self, created: list[Path]):
        self.created = created

    def __enter__(self) -> "removed_if_left_empty":
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        if exc_type is None:
            return
        for folder in reversed(self.created):
            try:
                folder.rmdir()  # only ever succeeds on an empty folder
            except OSError:
                return


# ---------------------------------------------------------------------------------------------
# Checked checkpoints


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(folder: Path, patterns: Iterable[str] = WEIGHT_PATTERNS) -> dict[str, str]:
    """{relative path: sha256} of the checkpoint files directly in `folder`."""
    names = sorted({p.name for pat in patterns for p in folder.glob(pat) if p.is_file()})
    return {n: sha256(folder / n) for n in names}


def digest(files: dict[str, str]) -> str:
    """One hash for a set of file hashes: what a later stage records as its input."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Record the stage's files' hashes in `<folder>/manifest.json` (written last: its presence means
    the stage finished)."""
    files = file_digests(folder)
    manifest = {**manifest, "files": files, "digest": digest(files)}
    write_json(folder / "manifest.json", manifest)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    return read_json_or_none(folder / "manifest.json")


def why_not_finished(folder: Path, inputs: dict) -> str | None:
    """None when `folder` holds a finished stage whose files and inputs still match; else the reason."""
    manifest = read_manifest(folder)
    if manifest is None:
        return "no readable manifest.json"
    for name, expected in manifest.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if sha256(path) != expected:
            return f"{path} does not match the sha256 recorded when the stage finished"
    for key, value in inputs.items():
        if manifest.get("inputs", {}).get(key) != value:
            return f"its input '{key}' changed since it finished"
    return None


# ---------------------------------------------------------------------------------------------
# Files


def read_jsonl(path: Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, rows) -> None:
    """Atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tmp.replace(path)


def read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def remove_partial(path: Path) -> None:
    """Leftovers of an interrupted attempt (only ever called under the run's lock)."""
    if path.exists():
        shutil.rmtree(path)
