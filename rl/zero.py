"""DeepSpeed ZeRO configs generated from the recipe (never hand-written per run).

Batch sizes, learning rate and clipping are "auto": the HF/TRL trainer fills them from its own
arguments, so the recipe stays the single source of truth.
"""

from __future__ import annotations

import contextlib


def deepspeed_config(stage: int, *, use_gpu: bool, offload_optimizer: bool = False,
                     offload_params: bool = False) -> dict:
    """A ZeRO stage-`stage` (1, 2 or 3) config for TRL's trainers. `offload_optimizer` keeps the optimizer
    states (and fp32 master weights) in CPU memory and steps them there (ZeRO-Offload, any stage);
    `offload_params` also keeps the parameters on the CPU between uses (ZeRO-Infinity, stage 3 only: the
    other stages hold whole parameters on every rank)."""
    if stage not in (1, 2, 3):
        raise ValueError(f"grpo.zero_stage={stage}: DeepSpeed ZeRO stages are 1, 2 and 3 (0 = no DeepSpeed)")
    if offload_params and stage != 3:
        raise ValueError(f"grpo.offload_params=True needs grpo.zero_stage=3 (got {stage}): only ZeRO-3 partitions "
                         "the parameters")
    zero: dict = {"stage": stage, "contiguous_gradients": True, "overlap_comm": use_gpu}
    if stage == 3:
        # Saving gathers the shards into one full state dict, so checkpoints load without DeepSpeed.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    # Pinned host buffers speed up the GPU<->CPU copies; a CPU learner has no copies to speed up.
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        # torch's AdamW inside DeepSpeed: no op compile on CPU (DeepSpeed's CPU Adam needs a C++ build).
        # With offload_optimizer it steps the CPU-held states itself (slower than DeepSpeedCPUAdam, no
        # build). No "zero_force_ds_cpu_optimizer": false is needed: DeepSpeed refuses a non-CPU Adam under
        # offload only for a client-built optimizer, and this one DeepSpeed builds from this section
        # (engine._configure_optimizer, deepspeed 0.19).
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                                  "weight_decay": "auto", "torch_adam": True}},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def init_distributed_for_zero3(use_gpu: bool) -> None:
    """ZeRO-3 builds `zero.Init` while TRL constructs its config; DeepSpeed must know the process group
    by then (Ray Train already created it: this adopts it rather than starting another)."""
    import deepspeed

    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo", auto_mpi_discovery=False)


@contextlib.contextmanager
def forward_alone(engine):
    """Lets one rank run forward passes of a ZeRO-3 model whose weights are gathered (inside TRL's
    `unwrap_model_for_generation`) while the other ranks do not. TRL removes DeepSpeed's module hooks there
    but not its start-of-forward hook, whose `reset_step` broadcasts to every rank (TRL's own generation
    runs on all ranks in step); that hook is taken off for the block and put back. A no-op for any other
    model."""
    offload = getattr(getattr(engine, "optimizer", None), "parameter_offload", None)
    offload = offload or getattr(engine, "optimizer", None)
    handle = getattr(offload, "fwd_pre_hook", None)
    hook = getattr(offload, "module", None)._forward_pre_hooks.get(handle.id) if handle is not None else None
    if hook is None:
        yield
        return
    handle.remove()
    try:
        yield
    finally:
        # Registered again as the module's first pre-hook: TRL's add_hooks adds the module hooks after it.
        offload.fwd_pre_hook = offload.module.register_forward_pre_hook(hook)
