"""Learner -> rollout weight sync: the bucket layout both sync paths share, and the torch collective path
(NCCL between GPUs, gloo between CPU processes).

Buckets: the learner never materialises a second copy of its whole state dict. Tensors are taken in sorted
name order, grouped by the dtype they are sent in (the engines' dtype: bf16 on GPU; integer buffers keep
theirs), dtypes in the order they first appear, and each group is cut into buckets of at most
`bucket_bytes` (a single larger tensor is a bucket of its own; `bucket_bytes` <= 0: one bucket per dtype).
A bucket is cast (and moved) only when it is sent, and receivers load it before the next one arrives, so a
sync holds at most one bucket of extra memory on either side:
- object store (`cluster.rollout.RolloutPool`): each bucket is one `ray.put` of a small state dict; every
  worker loads the buckets one by one (zero-copy reads on a node);
- collective (`CollectiveGroup.broadcast_state`): one broadcast per bucket from rank 0 (the learner's rank
  0; ranks 1..n are the rollout workers, joined through a TCPStore on the learner's node), received in
  place into the engine's own tensors.
On GPUs the object store would copy every weight GPU -> host -> store -> host -> GPU; NCCL moves them device
to device.

The sender decides the layout once (`plan`) and every receiver is handed that plan (a few KB of names,
shapes and dtype names sent ahead by RPC), so no receiver recomputes it: the HF engine receives into its own
tensors, `rl.weight_wire` (the vLLM receiving end) allocates buffers from it.

Verification (every sync): the sender takes a checksum of every tensor as it leaves (`checksum`, in the sent
dtype), each receiver of what it holds once the bucket is loaded (HF engines: their own tensors; vLLM: the
buffers it received), and `verify` compares them bucket by bucket: a mismatch is a `WeightSyncError` naming the
engine, the bucket and its first differing tensor. `rl.weight_wire.checksum` is the same function on the
receiving side (rl/ may not import cluster/; tests/unit/test_sync_verify.py checks they agree).
"""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Iterator, Mapping

import torch
import torch.distributed as dist

TIMEOUT = timedelta(seconds=120)
BUCKET_BYTES = 256 * 2**20  # default bucket size: 256 MiB

Entry = tuple[str, tuple[int, ...], torch.dtype]  # (name, shape, dtype as sent)
# What one sync sends, in order: [(dtype name, [(tensor name, shape), ...]), ...], one entry per bucket.
Plan = list[tuple[str, list[tuple[str, tuple[int, ...]]]]]


class WeightSyncError(RuntimeError):
    """A rollout engine does not hold the weights the learner sent. Not retried: the run stops (one line)."""


def error_line(e: BaseException) -> str:
    """The one line of a `WeightSyncError`, also when Ray wrapped it (a RayTaskError's text is a traceback)."""
    cause = getattr(e, "cause", None)
    text = str(cause if isinstance(cause, WeightSyncError) else e).strip().splitlines()
    return text[-1] if text else type(e).__name__


_CHUNK = 1 << 20  # 8-byte words per checksum slice: bounded temporaries on any device
_MOD = 2**61 - 1
_WEIGHTS: dict = {}  # device -> the odd position weights 1, 3, 5, ... of one slice


def checksum(t: torch.Tensor) -> int:
    """An exact, device-independent checksum of a tensor's bytes: read as 64-bit words, each times an odd
    weight for its position in a 1 Mi-word slice (2i + 1), summed with int64 wrap-around (exact and
    order-independent, so CPU and GPU agree, which a float sum would not), each slice's sum times its index + 1,
    mod 2^61 - 1; the < 8 tail bytes likewise. Odd weights change the sum for any flipped bit; distinct
    weights for swapped rows. One read of the tensor and one temporary of a slice: ~0.7x the speed of a copy."""
    b = t.detach().contiguous().reshape(-1).view(torch.uint8)
    if b.storage_offset() % 8:  # a piece of a larger buffer: int64 views need 8-byte alignment
        b = b.clone()
    whole = b.numel() // 8 * 8
    words = b[:whole].view(torch.int64)
    weights = _WEIGHTS.get(b.device)
    if weights is None:
        weights = _WEIGHTS[b.device] = torch.arange(_CHUNK, dtype=torch.int64, device=b.device) * 2 + 1
    total = 0
    for i, start in enumerate(range(0, words.numel(), _CHUNK)):
        piece = words[start:start + _CHUNK]
        total = (total + (int((piece * weights[:piece.numel()]).sum()) % 2**64) * (i + 1)) % _MOD
    tail = b[whole:].to(torch.int64)
    return (total + int((tail * weights[:tail.numel()]).sum()) * 7919) % _MOD


def verify(sent: "Plan", expected: list[list[int]], got: list[list[int]], engine: str) -> None:
    """Raises `WeightSyncError` (one line: engine, bucket, first differing tensor) unless `got` (per bucket,
    per tensor, the receiver's checksums) equals `expected` (the sender's)."""
    if len(got) != len(sent):
        raise WeightSyncError(f"weight sync check failed: rollout engine {engine} reported {len(got)} bucket(s) of "
                              f"the {len(sent)} the learner sent; stopping instead of training on stale weights")
    for i, ((dtype, bucket), want, have) in enumerate(zip(sent, expected, got)):
        bad = [name for (name, _), a, b in zip(bucket, want, have) if a != b]
        if bad or len(have) != len(bucket):
            span = bucket[0][0] + (f" .. {bucket[-1][0]}" if len(bucket) > 1 else "")
            raise WeightSyncError(
                f"weight sync check failed: rollout engine {engine} holds different weights than the learner sent "
                f"in bucket {i + 1}/{len(sent)} ({dtype}, {len(bucket)} tensor(s): {span}; first mismatch: "
                f"{bad[0] if bad else 'tensor count'}); stopping instead of training on corrupted weights")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


def sent_dtype(t: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype `t` is sent in: `dtype` for floating-point tensors when given, else its own."""
    return dtype if dtype is not None and t.is_floating_point() else t.dtype


def entries(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> list[Entry]:
    """(name, shape, dtype as sent) of every tensor, in name order (what receivers must be told or hold)."""
    return [(n, tuple(state[n].shape), sent_dtype(state[n], dtype)) for n in sorted(state)]


def layout(items: list[Entry], bucket_bytes: int = 0) -> list[tuple[torch.dtype, list[tuple[str, tuple[int, ...]]]]]:
    """The buckets, in sending order: [(dtype, [(name, shape), ...]), ...] (rules in the module docstring)."""
    groups: dict[torch.dtype, list[tuple[str, tuple[int, ...]]]] = {}
    for name, shape, dtype in sorted(items, key=lambda e: e[0]):
        groups.setdefault(dtype, []).append((name, tuple(shape)))
    out = []
    for dtype, members in groups.items():
        bucket: list[tuple[str, tuple[int, ...]]] = []
        size = 0
        for name, shape in members:
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            if bucket and bucket_bytes > 0 and size + nbytes > bucket_bytes:
                out.append((dtype, bucket))
                bucket, size = [], 0
            bucket.append((name, shape))
            size += nbytes
        if bucket:
            out.append((dtype, bucket))
    return out


def plan(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None, bucket_bytes: int = 0) -> Plan:
    """The buckets one sync of `state` sends (floating tensors as `dtype` when given), as plain data a
    receiver is handed."""
    return [(str(d).removeprefix("torch."), bucket) for d, bucket in layout(entries(state, dtype), bucket_bytes)]


def bucket_bytes_of(bucket: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype) -> int:
    return sum(torch.Size(shape).numel() for _, shape in bucket) * dtype.itemsize


def state_buckets(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None, bucket_bytes: int = 0,
                  device: str | torch.device = "cpu") -> Iterator[dict[str, torch.Tensor]]:
    """The object-store path: `state` as small state dicts, one per bucket, cast to the sent dtype and on
    `device`, made one at a time as the caller asks for them."""
    for dtype_name, bucket in plan(state, dtype, bucket_bytes):
        yield {name: _outgoing(state[name], getattr(torch, dtype_name), device) for name, _ in bucket}


def _outgoing(t: torch.Tensor, dtype: torch.dtype, device) -> torch.Tensor:
    return t.detach().to(device=device, dtype=dtype).contiguous()


class CollectiveGroup:
    """One member of a stateless broadcast group (no global torch.distributed state is touched)."""

    def __init__(self, host: str, port: int, rank: int, world: int, backend: str) -> None:
        self.store = dist.TCPStore(host, port, world, rank == 0, timeout=TIMEOUT)
        if backend == "nccl":
            if not torch.cuda.is_available():
                raise RuntimeError("weight sync backend nccl needs a CUDA GPU in every member; use gloo on CPU")
            self.pg = dist.ProcessGroupNCCL(self.store, rank, world)
            self.device = torch.device("cuda", torch.cuda.current_device())
        elif backend == "gloo":
            self.pg = dist.ProcessGroupGloo(self.store, rank, world, TIMEOUT)
            self.device = torch.device("cpu")
        else:
            raise ValueError(f"weight sync backend {backend!r} is not one of ['nccl', 'gloo']")
        self.rank = rank

    def broadcast_state(self, state: Mapping[str, torch.Tensor], sent: Plan, checksums: bool = True) -> dict:
        """Rank 0 sends `state` as `sent` says (`plan(state, dtype, bucket_bytes)`), bucket by bucket; other
        ranks, handed the same plan, receive into `state`'s tensors in place, converting to their dtype.
        Returns {"bytes", "buckets"} moved and "checksums" ([per bucket [per tensor]]: rank 0 of what it sent,
        the others of what they now hold; empty without `checksums`)."""
        names = [n for _, bucket in sent for n, _ in bucket]
        if sorted(names) != sorted(state):
            missing, extra = sorted(set(state) - set(names)), sorted(set(names) - set(state))
            raise ValueError(f"weight sync does not match the engine: missing {missing[:5]}, unexpected {extra[:5]}")
        moved, sums = 0, []
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        for dtype_name, bucket in sent:
            dtype = getattr(torch, dtype_name)
            names = [n for n, _ in bucket]
            sizes = [torch.Size(shape).numel() for _, shape in bucket]
            if self.rank == 0:
                flat = torch.cat([_outgoing(state[n], dtype, self.device).reshape(-1) for n in names])
                if checksums:
                    sums.append([checksum(piece) for piece in flat.split(sizes)])  # as it leaves
            else:
                flat = torch.empty(sum(sizes), dtype=dtype, device=self.device)
            self.pg.broadcast([flat], opts).wait()
            if self.rank != 0:
                with torch.no_grad():
                    for n, piece in zip(names, flat.split(sizes)):
                        state[n].copy_(piece.view_as(state[n]))
                if checksums:  # what the engine now holds (what arrived, where it converted to another dtype)
                    sums.append([checksum(state[n] if state[n].dtype == dtype else piece)
                                 for n, piece in zip(names, flat.split(sizes))])
            moved += flat.numel() * flat.element_size()
            del flat
        return {"bytes": moved, "buckets": len(sent), "checksums": sums}

    def close(self) -> None:
        if getattr(self, "pg", None) is not None and hasattr(self.pg, "shutdown"):
            self.pg.shutdown()
        self.pg = self.store = None
