"""tests/gpu on CPU: the device identity the GPU tests compare works with the str UUID current torch returns
(`torch.cuda.get_device_properties(i).uuid` is a str: no `.hex`), and every GPU run uses a model shape vLLM
can serve (head size 64 or 128; the micro recipe's own is 24)."""

import uuid

from pipelines.config import load_config
from tests.gpu.support import GPU_MODEL, VLLM_SAFE_HEAD_SIZES, device_identity

RAW = "7b6c1e2a-90f3-4d2b-8c11-0e5b7a9d3f42"


class _CUuuid:  # the shape of older torch's uuid object: raw bytes
    bytes = uuid.UUID(RAW).bytes


def test_device_identity_of_a_str_uuid_and_of_the_older_types():
    want = RAW.replace("-", "")
    assert not hasattr(RAW, "hex")  # what `.uuid.hex` did on current torch: AttributeError
    for given in (RAW, f"GPU-{RAW}", RAW.upper(), uuid.UUID(RAW), uuid.UUID(RAW).bytes, _CUuuid()):
        assert device_identity(given) == want, given
    assert device_identity("GPU-0a") != device_identity("GPU-0b")


def test_gpu_runs_use_a_head_size_vllm_supports():
    import tests.gpu.test_gpu as gpu_tests  # imports without ray (the bare GPU machine may lack it)

    micro = load_config("micro", []).model
    assert micro.hidden_size // micro.num_heads not in VLLM_SAFE_HEAD_SIZES  # why the override exists
    m = load_config("micro", list(GPU_MODEL)).model
    assert m.hidden_size % m.num_heads == 0 and m.hidden_size // m.num_heads in VLLM_SAFE_HEAD_SIZES
    assert set(GPU_MODEL) <= set(gpu_tests.GPU_STAGES)
