"""The receiving end of a collective weight sync that needs no state dict.

The learner (`cluster.weight_sync.CollectiveGroup.broadcast_state`) broadcasts from rank 0 one flat buffer
per dtype, the tensors concatenated in sorted-name order, dtypes in the order they first appear among the
sorted names. A receiver that holds matching tensors (the HF engine) receives straight into them. A vLLM
worker holds none: its parameters are fused (qkv_proj, gate_up_proj) and sharded over tensor-parallel
ranks under other names. It is given the names, shapes and dtypes instead (`describe`, a few KB sent
ahead by RPC), allocates the buffers, receives, and hands (HF name, tensor) pairs to vLLM's own loader.

This module must keep that layout and the group handshake (a TCPStore on the learner's host, rank 0 its
master, then a NCCL or gloo process group) identical to `cluster.weight_sync`; rl/ may not import cluster,
so tests/test_rl_vllm.py checks the two against each other.
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


def layout(meta: Meta) -> list[tuple[torch.dtype, list[tuple[str, tuple[int, ...]]]]]:
    """The broadcast order: one (dtype, [(name, shape), ...]) bucket per dtype, as the sender flattens."""
    buckets: dict[torch.dtype, list[tuple[str, tuple[int, ...]]]] = {}
    for name, shape, dtype in sorted(meta):
        buckets.setdefault(getattr(torch, dtype), []).append((name, tuple(shape)))
    return list(buckets.items())


def join_group(host: str, port: int, rank: int, world: int, backend: str):
    """This process's member of the learner's broadcast group: (process group, device to receive on)."""
    store = dist.TCPStore(host, port, world, rank == 0, timeout=TIMEOUT)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world), torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, TIMEOUT), torch.device("cpu")
    raise ValueError(f"weight sync backend {backend!r} is not one of ['nccl', 'gloo']")


def receive(pg, meta: Meta, device: torch.device) -> list[tuple[str, torch.Tensor]]:
    """Takes one broadcast from rank 0; returns (name, tensor) views into freshly allocated buffers, one
    buffer per dtype (freed once the caller drops the views)."""
    out: list[tuple[str, torch.Tensor]] = []
    for dtype, entries in layout(meta):
        sizes = [int(torch.Size(shape).numel()) for _, shape in entries]
        flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        pg.broadcast([flat], opts).wait()
        for (name, shape), piece in zip(entries, flat.split(sizes)):
            out.append((name, piece.view(shape)))
    return out
