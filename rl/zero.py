"""DeepSpeed ZeRO configs generated from the recipe (never hand-written per run).

Batch sizes, learning rate and clipping are "auto": the HF/TRL trainer fills them from its own
arguments, so the recipe stays the single source of truth.
"""

from __future__ import annotations


def deepspeed_config(stage: int, *, use_gpu: bool, offload_optimizer: bool = False) -> dict:
    """A ZeRO stage-`stage` (1, 2 or 3) config for TRL's trainers."""
    if stage not in (1, 2, 3):
        raise ValueError(f"grpo.zero_stage={stage}: DeepSpeed ZeRO stages are 1, 2 and 3 (0 = no DeepSpeed)")
    zero: dict = {"stage": stage, "contiguous_gradients": True, "overlap_comm": use_gpu}
    if stage == 3:
        # Saving gathers the shards into one full state dict, so checkpoints load without DeepSpeed.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        # torch's AdamW inside DeepSpeed: no op compile on CPU (DeepSpeed's CPU Adam needs a C++ build).
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
