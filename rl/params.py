"""Checks shared by the parameter dataclasses' `validate()` methods, and the model-loading choices.

Every failed check raises `ValueError` whose message starts with `<field>=<value>`, so the pipeline can
prefix its section (`grpo.micro_batch_size=3 must divide ...`) and a person sees which knob to turn.
"""

from __future__ import annotations

import math
from typing import Iterable

# Weight dtypes a policy can be loaded in. "auto": bf16 where bf16 matmuls are native (a CUDA device with bf16,
# a CPU with AVX512-BF16/AMX), fp32 elsewhere (for engines and evaluation; learners: GRPOParams.precision).
DTYPES = ("auto", "float32", "bfloat16", "float16")
# "auto": FlashAttention-2 where it is installed and the weights are 16-bit on CUDA, else PyTorch SDPA.
ATTN_IMPLEMENTATIONS = ("auto", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def fail(field: str, value, why: str) -> None:
    raise ValueError(f"{field}={value!r} {why}")


def positive_int(field: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        fail(field, value, f"must be an integer >= {minimum}")


def finite(field: str, value: float, *, low: float = -math.inf, low_open: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        fail(field, value, "must be a finite number")
    if value < low or (low_open and value == low):
        fail(field, value, f"must be {'>' if low_open else '>='} {low:g}")


def choice(field: str, value, choices: Iterable) -> None:
    choices = tuple(choices)
    if value not in choices:
        fail(field, value, f"is not one of: {', '.join(map(str, choices))}")


def micro_batching(field: str, micro: int, per_rank: int, what: str) -> None:
    """`micro` (0 = the whole per-rank batch) must split the per-rank batch evenly."""
    positive_int(field, micro, minimum=0)
    if micro and per_rank % micro:
        fail(field, micro, f"must divide the per-rank batch {per_rank} ({what})")


def model_loading(dtype: str, attn_implementation: str, bf16: bool) -> None:
    choice("dtype", dtype, DTYPES)
    choice("attn_implementation", attn_implementation, ATTN_IMPLEMENTATIONS)
    if bf16 and dtype == "float16":
        fail("dtype", dtype, "cannot train under bf16 autocast; use dtype=bfloat16 or float32 with bf16=true")
