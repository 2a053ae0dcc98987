"""What the GPU tests need that is checked on CPU too (tests/unit/test_gpu_support.py): the identity of a CUDA
device, and a model shape vLLM can serve. Imports nothing beyond the standard library."""

from __future__ import annotations

# vLLM's attention backends each support a fixed set of head sizes (`get_supported_head_sizes()`); 64 and 128
# are in every one. The micro recipe's model (hidden 48, 2 heads: head size 24) is in none, so every GPU run
# overrides it to hidden 128 over 2 heads (head size 64), intermediate 256.
VLLM_SAFE_HEAD_SIZES = (64, 128)
GPU_MODEL = ("model.hidden_size=128", "model.num_heads=2", "model.intermediate_size=256")


def device_identity(uuid) -> str:
    """A CUDA device's UUID as one canonical string (lower-case hex, no "GPU-" prefix, no dashes), whatever
    type `torch.cuda.get_device_properties(i).uuid` has: current torch gives a str (its stubs say so, and it
    has no `.hex`), older ones an object with `.bytes`, `uuid.UUID` a `.hex` str attribute."""
    if isinstance(uuid, (bytes, bytearray)):
        text = bytes(uuid).hex()
    elif isinstance(uuid, str):
        text = uuid
    elif isinstance(getattr(uuid, "hex", None), str):  # uuid.UUID
        text = uuid.hex
    elif getattr(uuid, "bytes", None) is not None:  # torch's _CUuuid
        text = bytes(uuid.bytes).hex()
    else:
        text = str(uuid)
    text = text.strip().lower()
    if text.startswith("gpu-"):
        text = text[4:]
    return text.replace("-", "")
