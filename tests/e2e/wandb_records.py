"""Reads an offline wandb run (`run-<id>.wandb`) back, for tests.

wandb 0.31 writes runs from its Go core and ships no Python reader, so this decodes the file format
directly: a 7-byte header (":W&B", magic 0xBEE1, version 0), then LevelDB-log records in 32 KiB blocks
(7-byte record header: CRC32C, length, type FULL/FIRST/MIDDLE/LAST), each payload one
`wandb_internal_pb2.Record` protobuf.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    """Every protobuf Record of a .wandb file, in order."""
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a wandb run file"
    pos, buf = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0 and length == 0:  # zero-filled rest of a block
            pos += (BLOCK - pos % BLOCK) % BLOCK
            continue
        chunk, pos = data[pos:pos + length], pos + length
        buf = chunk if kind in (FULL, FIRST) else buf + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What a test wants from one run: its identity, history rows, summary, artifacts."""

    job_type: str = ""
    group: str = ""
    name: str = ""
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    artifacts: list[dict] = field(default_factory=list)

    def keys(self) -> set[str]:
        return {k for row in self.history for k in row}


def read_run(path: Path) -> OfflineRun:
    run = OfflineRun()
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.job_type, run.group, run.name = r.run.job_type, r.run.run_group, r.run.display_name
            run.config.update({_key(i): json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
        elif kind == "artifact":
            a = r.artifact
            run.artifacts.append({"name": a.name, "type": a.type,
                                  "files": {e.path: e.local_path for e in a.manifest.contents},
                                  "refs": {e.path: e.ref for e in a.manifest.contents},
                                  "digests": {e.path: e.digest for e in a.manifest.contents}})
    return run


def read_runs(wandb_dir: Path) -> dict[str, OfflineRun]:
    """The offline runs under a run folder's `wandb/`, by job type (= stage)."""
    runs = [read_run(p) for p in sorted(Path(wandb_dir).glob("offline-run-*/run-*.wandb"))]
    return {r.job_type: r for r in runs}
