"""Learner -> rollout weight sync over a torch collective: NCCL between GPUs, gloo between CPU processes.

The group is separate from the learner's own data-parallel group (Ray Train's): rank 0 is the
learner's rank 0, ranks 1..n are the rollout workers, joined through a TCPStore on the learner's node.
Tensors are flattened into one buffer per dtype, in sorted-name order, and broadcast from rank 0, so
a sync is one collective per dtype however many tensors the model has. Both sides must hold the same
parameter names and shapes (the rollout engine's model is built from the learner's checkpoint).

Why a second path next to the object store (`RolloutPool.sync_weights`): on GPUs the object store
would copy every weight GPU -> host -> store -> host -> GPU; NCCL moves them device to device.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch
import torch.distributed as dist

TIMEOUT = timedelta(seconds=120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


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

    def broadcast_state(self, state: dict[str, torch.Tensor]) -> None:
        """Rank 0 sends `state`; other ranks receive into `state`'s tensors in place."""
        for dtype, names in _by_dtype(state).items():
            tensors = [state[n] for n in names]
            flat = torch.cat([t.detach().reshape(-1).to(self.device) for t in tensors])
            opts = dist.BroadcastOptions()
            opts.rootRank = 0
            self.pg.broadcast([flat], opts).wait()
            if self.rank != 0:
                offset = 0
                with torch.no_grad():
                    for t in tensors:
                        n = t.numel()
                        t.copy_(flat[offset:offset + n].view_as(t))
                        offset += n

    def close(self) -> None:
        if hasattr(self.pg, "shutdown"):
            self.pg.shutdown()
        self.pg = self.store = None


def _by_dtype(state: dict[str, torch.Tensor]) -> dict[torch.dtype, list[str]]:
    out: dict[torch.dtype, list[str]] = {}
    for name in sorted(state):
        out.setdefault(state[name].dtype, []).append(name)
    return out
