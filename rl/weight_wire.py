"""The receiving end of a collective weight sync that needs no state dict.

The learner (`cluster.weight_sync.CollectiveGroup.broadcast_state`) broadcasts from rank 0 one flat buffer
per bucket: the tensors in sorted-name order, grouped by dtype (dtypes in the order they first appear among
the sorted names), each group cut into buckets of at most `bucket_bytes` (a larger tensor alone; 0: one
bucket per dtype). A receiver that holds matching tensors (the HF engine) receives straight into them. A vLLM
worker holds none: its parameters are fused (qkv_proj, gate_up_proj) and sharded over tensor-parallel
ranks under other names. It is given the names, shapes and dtypes instead (`describe`, a few KB sent
ahead by RPC), allocates the buffers, receives, and hands (HF name, tensor) pairs to vLLM's own loader.

This module must keep that layout and the group handshake (a TCPStore on the learner's host, rank 0 its
master, then a NCCL or gloo process group) identical to `cluster.weight_sync`; rl/ may not import cluster,
so tests/unit/test_rl_vllm.py checks the two against each other.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(seconds=120)
Meta = list[tuple[str, tuple[int, ...], str]]  # (name, shape, dtype name) per tensor


def describe(state: dict[str, torch.Tensor]) -> Meta:
    """What a receiver needs to know to take a broadcast of `state` without holding it."""
    return [(name, tuple(state[name].shape), str(state[name].dtype).removeprefix("torch.")) for name in sorted(state)]


def layout(meta: Meta, bucket_bytes: int = 0) -> list[tuple[torch.dtype, list[tuple[str, tuple[int, ...]]]]]:
    """The broadcast order: (dtype, [(name, shape), ...]) buckets, as the sender flattens them."""
    groups: dict[torch.dtype, list[tuple[str, tuple[int, ...]]]] = {}
    for name, shape, dtype in sorted(meta):
        groups.setdefault(getattr(torch, dtype), []).append((name, tuple(shape)))
    out = []
    for dtype, members in groups.items():
        bucket, size = [], 0
        for name, shape in members:
            nbytes = int(torch.Size(shape).numel()) * dtype.itemsize
            if bucket and bucket_bytes > 0 and size + nbytes > bucket_bytes:
                out.append((dtype, bucket))
                bucket, size = [], 0
            bucket.append((name, shape))
            size += nbytes
        if bucket:
            out.append((dtype, bucket))
    return out


def join_group(host: str, port: int, rank: int, world: int, backend: str):
    """This process's member of the learner's broadcast group: (process group, device to receive on)."""
    store = dist.TCPStore(host, port, world, rank == 0, timeout=TIMEOUT)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world), torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, TIMEOUT), torch.device("cpu")
    raise ValueError(f"weight sync backend {backend!r} is not one of ['nccl', 'gloo']")


def receive_buckets(pg, meta: Meta, device: torch.device, bucket_bytes: int = 0):
    """Takes one broadcast from rank 0, yielding each bucket as soon as it arrived: a list of (name, tensor)
    views into that bucket's freshly allocated buffer (freed once the caller drops the views), so a caller
    that loads a bucket before asking for the next holds one bucket at a time."""
    for dtype, entries in layout(meta, bucket_bytes):
        sizes = [int(torch.Size(shape).numel()) for _, shape in entries]
        flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        pg.broadcast([flat], opts).wait()
        yield [(name, piece.view(shape)) for (name, shape), piece in zip(entries, flat.split(sizes))]
        del flat


def receive(pg, meta: Meta, device: torch.device, bucket_bytes: int = 0) -> list[tuple[str, torch.Tensor]]:
    """Takes one broadcast from rank 0; returns every (name, tensor) at once (all buckets held)."""
    return [pair for bucket in receive_buckets(pg, meta, device, bucket_bytes) for pair in bucket]
