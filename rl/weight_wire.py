"""The receiving end of a collective weight sync that needs no state dict.

The learner (`cluster.weight_sync.CollectiveGroup.broadcast_state`) broadcasts from rank 0 one flat buffer
per bucket and hands every receiver the plan of those buckets ahead, by RPC: [(dtype name, [(tensor name,
shape), ...]), ...] in sending order. A receiver that holds matching tensors (the HF engine) receives straight
into them. A vLLM worker holds none: its parameters are fused (qkv_proj, gate_up_proj) and sharded over
tensor-parallel ranks under other names. It allocates each bucket's buffer from the plan, receives, and hands
(HF name, tensor) pairs to vLLM's own loader.

The group handshake (a TCPStore on the learner's host, rank 0 its master, then a NCCL or gloo process group)
must match `cluster.weight_sync.CollectiveGroup`; rl/ may not import cluster, so tests/unit/test_rl_vllm.py
syncs the two against each other. `checksum` is `cluster.weight_sync.checksum` (the sender's side of the sync
verification), repeated here for the same reason and checked against it in tests/unit/test_sync_verify.py.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(seconds=120)
Plan = list[tuple[str, list[tuple[str, tuple[int, ...]]]]]  # [(dtype name, [(name, shape), ...]), ...]


def join_group(host: str, port: int, rank: int, world: int, backend: str):
    """This process's member of the learner's broadcast group: (process group, device to receive on)."""
    store = dist.TCPStore(host, port, world, rank == 0, timeout=TIMEOUT)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world), torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world, TIMEOUT), torch.device("cpu")
    raise ValueError(f"weight sync backend {backend!r} is not one of ['nccl', 'gloo']")


def receive_buckets(pg, sent: Plan, device: torch.device):
    """Takes one broadcast from rank 0, yielding each bucket as soon as it arrived: a list of (name, tensor)
    views into that bucket's freshly allocated buffer (freed once the caller drops the views), so a caller
    that loads a bucket before asking for the next holds one bucket at a time."""
    for dtype_name, entries in sent:
        dtype = getattr(torch, dtype_name)
        sizes = [int(torch.Size(shape).numel()) for _, shape in entries]
        flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        pg.broadcast([flat], opts).wait()
        yield [(name, piece.view(shape)) for (name, shape), piece in zip(entries, flat.split(sizes))]
        del flat


_CHUNK = 1 << 20  # 8-byte words per checksum slice: bounded temporaries on any device
_MOD = 2**61 - 1
_WEIGHTS: dict = {}  # device -> the odd position weights 1, 3, 5, ... of one slice


def checksum(t: torch.Tensor) -> int:
    """= `cluster.weight_sync.checksum` (the sender's side; reasons there)."""
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
