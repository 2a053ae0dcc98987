"""Messy data, handled in one line each: local json/csv files that `datasets` would fail on without naming
the file or row (bytes that are not UTF-8, an empty file, a malformed JSON line), and dataset rows that
cannot be used (no prompt, no answer, a gold the format cannot read, a prompt too long: `UnusableRow`),
which are left out and counted by reason unless more than `task.max_bad_fraction` of the rows are such.
Used by the hf adapter (pipelines/tasks/hf.py, hf_rows.py); docs/data.md "Messy rows"."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable


class UnusableRow(ValueError):
    """One row that cannot be used; `reason` groups the rows in the counts, the message names the row."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# -- files ------------------------------------------------------------------------------------------------------


def _local_files(paths: Iterable[str]) -> Iterable[Path]:
    for path in paths:
        p = Path(path).expanduser()
        if not any(ch in path for ch in "*?[") and p.is_file():
            yield p


def _open_bytes(path: Path):
    import gzip

    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def check_text_files(paths: Iterable[str]) -> str | None:
    """Local json/csv files are UTF-8 and hold rows: pyarrow reads bytes that are not UTF-8 into a string
    column and fails only when that row is read (a traceback naming no file), and an empty file fails as
    `StopIteration`. One pass over the bytes, before `datasets` reads them; the problem or None."""
    for path in _local_files(paths):
        rows = 0
        with _open_bytes(path) as f:
            for n, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return f"{path} row {n}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})"
                rows += bool(text.strip())
        if not rows:
            return f"{path}: empty file (no rows); give one JSON object per line (or CSV rows under a header)"
    return None


def diagnose_json_lines(paths: Iterable[str]) -> str | None:
    """After the json builder failed: the first line of a JSON-lines file that is not a JSON object (file and
    row), or None (a whole-file JSON document, or another failure)."""
    for path in _local_files(paths):
        with _open_bytes(path) as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    row = json.loads(raw)
                except ValueError as e:
                    if n == 1 and raw.lstrip()[:1] == b"[":
                        break  # a JSON document (an array of rows), not JSON lines
                    return f"{path} row {n}: not valid JSON ({getattr(e, 'msg', e)}, column {getattr(e, 'colno', '?')})"
                if not isinstance(row, dict):
                    return f"{path} row {n}: expected a JSON object, got {type(row).__name__}"
    return None


# -- rows -------------------------------------------------------------------------------------------------------


class Usable:
    """Dataset rows -> rayzero rows through `convert(source_row, row_number, label)`, leaving out the ones it
    finds unusable (`UnusableRow`). Once one is met, every source it came from is scanned whole (only then:
    clean data costs nothing extra), so the counts are the files', not those of the rows a split happened to
    draw. `summary()`: above `max_bad_fraction` of the rows, the one-line refusal; below it, one note per
    reason (count, first row numbers) and the `dropped` record (report.json: data.dropped).

    A source is anything with `name`, `len()`, `row(i)` and `number(i)` (the row number a message shows)."""

    SHOWN = 5  # row numbers a note names
    KEPT = 20  # row numbers report.json keeps per reason

    def __init__(self, max_bad_fraction: float, dataset: str):
        self.max_bad_fraction, self.dataset = max_bad_fraction, dataset
        self.sources: dict[int, tuple[Any, Callable[[Any, int, str], dict], str]] = {}
        self.found = False

    def row(self, src: Any, convert: Callable[[Any, int, str], dict], i: int, label: str) -> dict | None:
        self.sources.setdefault(id(src), (src, convert, label))
        try:
            return convert(src.row(i), src.number(i), label)
        except UnusableRow:
            self.found = True
            return None

    def summary(self) -> tuple[str | None, list[str], dict[str, dict]]:
        """(the refusal or None, notes, dropped)."""
        if not self.found:
            return None, [], {}
        by_reason: dict[tuple[str, str], list[tuple[int, str]]] = {}
        total = 0
        for src, convert, label in self.sources.values():
            total += len(src)
            where = label if " (" in label else f"{self.dataset} ({label})"
            for i in range(len(src)):
                try:
                    convert(src.row(i), src.number(i), label)
                except UnusableRow as e:
                    by_reason.setdefault((where, e.reason), []).append((src.number(i), str(e)))
        bad = sum(len(v) for v in by_reason.values())
        if bad > self.max_bad_fraction * total:
            (where, _), hits = next(iter(by_reason.items()))
            counts = "; ".join(f"{len(v)} {reason}" for (_, reason), v in by_reason.items())
            return (f"{where}: {hits[0][1]}; {bad} of {total} rows cannot be used, more than task.max_bad_fraction="
                    f"{self.max_bad_fraction:g} ({counts}): fix the data, or raise task.max_bad_fraction to leave them "
                    "out"), [], {}
        notes, dropped = [], {}
        for (where, reason), hits in by_reason.items():
            rows = [n for n, _ in hits]
            more = ", ..." if len(rows) > self.SHOWN else ""
            notes.append(f"data: {where}: {len(rows)} of {total} rows dropped: {reason} "
                         f"(row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows[:self.SHOWN]))}{more})")
            dropped[f"{where}: {reason}"] = {"count": len(rows), "rows": rows[:self.KEPT]}
        return None, notes, dropped
