"""Where bf16 pays, and a learner that computes in bf16 without losing small updates.

`bf16_native(device)`: bf16 matmuls run in hardware (CUDA with bf16 support; a CPU with AVX512-BF16 or
AMX-BF16, which oneDNN uses). Elsewhere bf16 is emulated and slower than fp32, so "auto" means fp32 there.

`MasterWeightAdamW`: the learner holds bf16 weights (forward and backward run on bf16 tensors, no autocast
casts per call) while AdamW updates fp32 copies of them ("master weights") and writes the rounded result
back after every step. Without the fp32 copy, an update smaller than half a bf16 step of the weight (2^-9
relative, ~0.2 %) rounds away: at GRPO's learning rates most of them would (measured in docs/perf.md).
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist

PRECISIONS = ("auto", "fp32", "bf16")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def bf16_native(device: str | torch.device | None = None) -> bool:
    """True where bf16 matmuls are hardware-accelerated on `device` (None = CPU)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    flags = _cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    try:  # no /proc/cpuinfo (macOS, ...): ask oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: str | torch.device | None = None) -> str:
    """"fp32" or "bf16" for a name in PRECISIONS; "auto" = bf16 where `bf16_native(device)`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of: {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


class MasterWeightAdamW(torch.optim.AdamW):
    """AdamW over fp32 master copies of a model's low-precision parameters.

    `params` are the model's (bf16) parameters, as for any optimizer (plain or in param-group dicts). The
    optimizer's own param groups hold fp32 clones; `accumulate_grads()` (after each micro-batch's backward) and
    `step()` add each model gradient into its master's fp32 gradient, then `step()` runs AdamW on the masters
    and copies them back into the model parameters (rounded once, at the end).
    `zero_grad` clears the model's gradients. fp32 parameters are updated through a master too (a copy),
    so mixing is allowed. `state_dict()` carries the masters, so a resumed run continues from the exact
    fp32 weights instead of their bf16 rounding."""

    def __init__(self, params, *, init: dict | None = None, **kwargs):
        """`init`: id(model parameter) -> its exact fp32 value (e.g. the weights before the model was cast
        to bf16); parameters without an entry start from their own value."""
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        init = init or {}
        self.model_params: list[torch.nn.Parameter] = []
        master_groups = []
        for g in groups:
            masters = []
            for p in g["params"]:
                exact = init.get(id(p))
                m = (exact if exact is not None else p.detach()).to(device=p.device, dtype=torch.float32).clone()
                m.requires_grad_(True)
                masters.append(m)
                self.model_params.append(p)
            master_groups.append({**g, "params": masters})
        super().__init__(master_groups, **kwargs)
        self.masters = [m for g in self.param_groups for m in g["params"]]

    @torch.no_grad()
    def accumulate_grads(self) -> None:
        """Adds each model gradient (bf16) into its master's fp32 gradient and clears the model's, so a
        gradient accumulated over micro-batches is summed in fp32 (call after every backward). Left in the
        model's bf16 `.grad`, each micro-batch's addition would round to bf16 (2^-9 relative) before the sum
        ever reached the fp32 masters."""
        for p, m in zip(self.model_params, self.masters):
            if p.grad is not None:
                if m.grad is None:
                    m.grad = p.grad.detach().float()
                else:
                    m.grad.add_(p.grad.detach())
                p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        self.accumulate_grads()  # whatever the last backward left in the model's gradients
        super().step()
        for p, m in zip(self.model_params, self.masters):
            if m.grad is not None:
                p.copy_(m)
            m.grad = None
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for p in self.model_params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()
        for m in self.masters:
            m.grad = None

    def state_dict(self):
        out = super().state_dict()
        out["master_weights"] = [m.detach().clone() for m in self.masters]
        return out

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        masters = state_dict.pop("master_weights", None)
        super().load_state_dict(state_dict)
        with torch.no_grad():
            if masters is not None:
                for m, saved, p in zip(self.masters, masters, self.model_params):
                    m.copy_(saved)
                    p.copy_(m)
            else:  # an optimizer saved without masters: start them from the model's weights
                for m, p in zip(self.masters, self.model_params):
                    m.copy_(p)


def master_adamw_like(optimizer: torch.optim.Optimizer, init: dict | None = None) -> MasterWeightAdamW:
    """A `MasterWeightAdamW` over the same parameters, groups and hyper-parameters as `optimizer` (an
    Adam/AdamW the Trainer built), with masters started from `init` (see `MasterWeightAdamW`)."""
    if not isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        raise ValueError(f"fp32 master weights need an Adam/AdamW optimizer, the trainer built {type(optimizer).__name__}")
    decoupled = isinstance(optimizer, torch.optim.AdamW) or optimizer.defaults.get("decoupled_weight_decay", False)
    if not decoupled and any(g.get("weight_decay", 0) for g in optimizer.param_groups):
        raise ValueError("fp32 master weights: Adam with L2 weight decay is not supported (use AdamW)")
    skip = {"params", "fused", "foreach", "capturable", "differentiable", "decoupled_weight_decay"}
    groups = [{k: v for k, v in g.items() if k not in skip} | {"params": list(g["params"])}
              for g in optimizer.param_groups]
    speed = {"fused": True} if optimizer.defaults.get("fused") else {"foreach": bool(optimizer.defaults.get("foreach"))}
    return MasterWeightAdamW(groups, init=init, **speed)


def average_across_ranks(masters) -> None:
    """Averages the fp32 master gradients over the data-parallel ranks (what DDP does to .grad), as one
    flat all-reduce; a master without a gradient on this rank contributes zeros."""
    present = [m for m in masters if m.grad is not None]
    if not present:
        return
    for m in masters:
        if m.grad is None:
            m.grad = torch.zeros_like(m)
    flat = torch.cat([m.grad.reshape(-1) for m in masters])
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for m in masters:
        n = m.numel()
        m.grad.copy_(flat[offset:offset + n].view_as(m))
        offset += n
