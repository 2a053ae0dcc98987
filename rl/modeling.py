"""Tiny policies built from a config, tokenizers trained at run time, and checkpoint loading.

Why a custom tokenizer is saved the way it is: a folder holding only `tokenizer.json` from a custom
`tokenizers` pipeline can reload through `AutoTokenizer` as a different class whose pre-tokenizer drops
spaces and newlines (measured: a 26 % model scored 0.5 %). We pin `tokenizer_class` to
`PreTrainedTokenizerFast` and round-trip-check every save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
# Structural tags are ordinary (non-special) added tokens: one id each, but kept when decoding with
# skip_special_tokens=True, so rewards see them.
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]


def train_tokenizer(texts: Iterable[str], vocab_size: int, extra_tags: Iterable[str] = ()):
    """A byte-level BPE tokenizer trained on `texts`. Frequent integers become single tokens, so for a
    tiny model the arithmetic facts are a lookup table rather than carry logic over digits."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    from rl.bpe import train_bpe

    # In a child process that Ctrl-C/SIGTERM stop (rl/bpe.py): training can run for minutes on long text.
    tok = Tokenizer.from_str(train_bpe(list(texts), vocab_size, list(SPECIAL.values())))
    # extra_tags: a tool-using task's call/output tags (rl.tools.TAGS), one token each so a call's closing tag
    # is a single stop token; other runs keep exactly the default vocabulary
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in [*TAGS, *extra_tags]])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)
    fast.padding_side = "left"  # generation pads on the left
    return fast


def save_tokenizer(tokenizer, path: Path, probe: str) -> None:
    tokenizer.save_pretrained(path)
    check_tokenizer_roundtrip(path, tokenizer, probe)


def check_tokenizer_roundtrip(path: Path, original, probe: str) -> None:
    from transformers import AutoTokenizer

    # A few thousand characters show how spaces and newlines come back; encoding a 5 MB prompt (the probe
    # is a data row) twice took 40 s on the driver's main thread, where Ctrl-C is not answered.
    probe = probe[:4000]

    loaded = AutoTokenizer.from_pretrained(path)
    a, b = original(probe)["input_ids"], loaded(probe)["input_ids"]
    # skip_special_tokens: a tokenizer that adds a BOS itself (Llama's) decodes it back, the probe has none
    if a != b or loaded.decode(b, skip_special_tokens=True) != probe:
        raise RuntimeError(f"tokenizer saved at {path} does not round-trip ({type(loaded).__name__}): "
                           f"{probe!r} -> {loaded.decode(b)!r}")


def build_tiny_model(tokenizer, *, hidden_size: int, num_layers: int, num_heads: int,
                     intermediate_size: int, max_position: int, seed: int):
    """A randomly initialised Llama-architecture causal LM with tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def default_use_cpu() -> bool:
    """A trainer's `use_cpu` when the caller did not say: CPU only where no CUDA device is visible (a Ray
    worker without a GPU sees none)."""
    return not torch.cuda.is_available()


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device | None = None) -> torch.dtype:
    """A torch dtype from a name in `rl.params.DTYPES` (or a dtype); "auto" = bf16 where bf16 matmuls are
    native on `device` (None = CPU: AVX512-BF16/AMX; CUDA with bf16 support), else fp32."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        from rl.precision import bf16_native

        return torch.bfloat16 if bf16_native(device) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def resolve_attn_implementation(name: str, dtype: torch.dtype, device: str | torch.device | None = None) -> str:
    """"auto" = FlashAttention-2 when `flash_attn` is installed and 16-bit weights sit on CUDA (its only
    supported case), else PyTorch's SDPA; any other name is passed to transformers as is (it raises when
    that kernel is missing)."""
    if name != "auto":
        return name
    import importlib.util

    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda and dtype in (torch.bfloat16, torch.float16) and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a completion: the model's generation config may name several (chat models end a
    turn with e.g. <|im_end|> as well as <|endoftext|>), plus the tokenizer's own EOS."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids = [tokenizer.eos_token_id, *ids]
    return ids


def load_policy(path: str | Path, dtype: str | torch.dtype = torch.float32, *, attn_implementation: str = "auto",
                device: str | torch.device | None = None, trust_remote_code: bool = False):
    """(model, tokenizer) from a Hugging Face folder, tokenizer padded on the left for generation.

    The weights are loaded in `dtype` (a torch dtype or a name of `rl.params.DTYPES`) straight onto
    `device` (None = CPU), with `attn_implementation` resolved by `resolve_attn_implementation`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dt = resolve_dtype(dtype, device)
    kwargs = {"device_map": {"": str(torch.device(device))}} if device is not None else {}
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dt, attn_implementation=resolve_attn_implementation(attn_implementation, dt, device),
        trust_remote_code=trust_remote_code, **kwargs)
    return model, tokenizer


def truncate_layers(model, num_layers: int):
    """A smaller student initialised from a teacher: keep `num_layers` evenly spaced decoder layers
    (first and last included), as DistilBERT-style layer dropping does. Works for Llama-family models
    (`model.model.layers`); the embeddings, final norm and head are kept."""
    import torch.nn as nn

    layers = model.model.layers
    n = len(layers)
    if not 1 <= num_layers <= n:
        raise ValueError(f"truncate: num_layers={num_layers} must be within [1, {n}] (the teacher's depth)")
    keep = sorted({round(i * (n - 1) / max(1, num_layers - 1)) for i in range(num_layers)}) if num_layers > 1 else [0]
    model.model.layers = nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(model.model.layers):
        if hasattr(layer, "self_attn") and hasattr(layer.self_attn, "layer_idx"):
            layer.self_attn.layer_idx = new_idx  # the KV cache is indexed by layer
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    return model
