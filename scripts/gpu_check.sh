#!/usr/bin/env bash
# The GPU check, on a GPU machine (run from the repository root; no network needed):
#   1. installs what a bare GPU machine lacks (ray, trl, deepspeed, datasets, math-verify, ... with their
#      dependencies) from .whl/gpu.tar.xz, built by scripts/gpu_wheels.sh (pip --no-index --no-deps, only
#      distributions not installed already: torch/transformers/accelerate/peft stay as they are);
#   2. runs tests/gpu (a step of every stage on CUDA in bf16, NCCL weight sync, the learner group on NCCL,
#      ZeRO-2 and ZeRO-3, LoRA, colocated learner + engine on one GPU);
#   3. runs the smollm2-135m recipe on one GPU: the SmolLM2-135M shape (config and tokenizer carried, weights
#      random: the GGUF does not fit the carry, and throughput does not depend on the weights' values) on the
#      built-in arithmetic task (reasoning-gym is not carried), GRPO with a colocated rollout engine; prints
#      s/step, samples/s, peak GPU memory (nvidia-smi, whole device) and weight-sync time per step.
# Logs and summary.json go under $OUT (default /tmp/rayzero-gpu-check); the run folder and the model under
# $WORK (default /tmp/rzgpu-work), so a checkpoint is never sent back with the logs.
# Environment knobs: GRPO_STEPS (default 20), SKIP_TESTS=1, SKIP_RECIPE=1, PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/rayzero-gpu-check}
WORK=${WORK:-/tmp/rzgpu-work}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=disabled TRL_EXPERIMENTAL_SILENCE=1 \
  RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
export RAY_TMPDIR=${RAY_TMPDIR:-/tmp/rzgpu}  # short: Ray's socket paths must stay under 108 characters
mkdir -p "$RAY_TMPDIR"
say() { echo "gpu_check: $*" | tee -a "$OUT/check.log"; }

say "$(date -u +%FT%TZ) on $(hostname)"
nvidia-smi -L | tee -a "$OUT/check.log" || { say "no nvidia-smi: not a GPU machine"; exit 1; }
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())" | tee -a "$OUT/check.log"

# 1. Missing packages, from the carried wheels.
missing=$("$PY" - <<'PYEOF'
import importlib.util
print(" ".join(m for m in ("ray", "trl", "deepspeed", "datasets", "math_verify", "pytest") if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
  say "missing: $missing"
  [ -f .whl/gpu.tar.xz ] || { say "no .whl/gpu.tar.xz (build it with scripts/gpu_wheels.sh where there is network)"; exit 1; }
  WHEELS=$(mktemp -d /tmp/rzwheels.XXXX)
  tar -C "$WHEELS" -xJf .whl/gpu.tar.xz
  todo=()
  for whl in "$WHEELS"/wheels/*.whl; do
    dist=$(basename "$whl" | cut -d- -f1)
    if ! "$PY" -m pip show -q "$dist" >/dev/null 2>&1; then todo+=("$whl"); fi
  done
  say "installing ${#todo[@]} wheel(s) with --no-index --no-deps"
  "$PY" -m pip install -q --no-index --no-deps "${todo[@]}" 2>&1 | tee -a "$OUT/check.log"
  "$PY" -m pip check 2>&1 | tee "$OUT/pip-check.log" || say "pip check reports conflicts (see pip-check.log); going on"
  cp -r "$WHEELS/smollm2-shape" "$WORK/smollm2-shape"
  rm -rf "$WHEELS"
fi
"$PY" -c "import ray, trl, deepspeed, datasets, math_verify; print('ray', ray.__version__, 'trl', trl.__version__, 'deepspeed', deepspeed.__version__, 'datasets', datasets.__version__)" | tee -a "$OUT/check.log"

status=0
# 2. The GPU tests.
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  say "tests/gpu"
  "$PY" -m pytest -q -rs -p no:cacheprovider --durations=0 tests/gpu 2>&1 | tee "$OUT/tests-gpu.log" || status=1
fi

# 3. The smollm2-135m recipe on one GPU, measured.
if [ "${SKIP_RECIPE:-0}" != 1 ]; then
  SHAPE=$WORK/smollm2-shape
  [ -d "$SHAPE" ] || tar -C "$WORK" -xJf .whl/gpu.tar.xz smollm2-shape
  MODEL=$WORK/smollm2-135m-random
  "$PY" - "$SHAPE" "$MODEL" <<'PYEOF'
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
shape, out = sys.argv[1:3]
cfg = AutoConfig.from_pretrained(shape)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
model.save_pretrained(out)
AutoTokenizer.from_pretrained(shape).save_pretrained(out)
print(f"smollm2-135m shape, random weights: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
PYEOF
  steps=${GRPO_STEPS:-20}
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/gpu-memory.log" &
  SMI=$!
  start=$(date +%s)
  "$PY" tests/gpu/cli.py run smollm2-135m run.name=smollm2-gpu "run.output_dir=$WORK/runs" run.wandb_mode=disabled \
    run.num_cpus=$(nproc) "model.kind=hf" "model.path=$MODEL" task.name=arithmetic task.dataset= "task.params={}" \
    sft.gpus=1 grpo.gpus=1 grpo.rollout_workers=1 grpo.placement=colocated grpo.sync_backend=collective \
    "grpo.max_steps=$steps" grpo.time_budget_s=0 distill.gpus=1 distill.rollout_gpus=1 distill.num_prompts=64 \
    2>&1 | tee "$OUT/recipe.log" || status=1
  kill "$SMI" 2>/dev/null || true
  wait "$SMI" 2>/dev/null || true
  "$PY" - "$OUT" "$(( $(date +%s) - start ))" "$WORK/runs/smollm2-gpu" <<'PYEOF'
import json, sys
from pathlib import Path
out, wall, run = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
summary = {"wall_s": wall, "measured": "SmolLM2-135M shape (random weights), arithmetic task, 1 GPU"}
try:
    m = json.loads((run / "grpo" / "manifest.json").read_text())["metrics"]
    cfg = json.loads((run / "grpo" / "manifest.json").read_text())["config"]["grpo"]
    per_step = cfg["prompts_per_step"] * cfg["num_generations"]
    log = m.get("log", [])
    syncs = [h["rollout/sync_s"] for h in log if h.get("rollout/sync_s")]
    mbs = [h["rollout/sync_mb"] for h in log if h.get("rollout/sync_mb")]
    summary.update(grpo_steps=m["steps"], s_per_step=m["train_time_s"] / max(1, m["steps"]),
                   samples_per_s=m["steps"] * per_step / m["train_time_s"],
                   sync_s_mean=sum(syncs) / len(syncs) if syncs else None, sync_mb=mbs[-1] if mbs else None)
except (OSError, KeyError, ValueError) as e:
    summary["grpo"] = f"no GRPO metrics: {e}"
mem = [int(x) for x in (out / "gpu-memory.log").read_text().split() if x.strip().isdigit()]
summary["peak_gpu_memory_mib"] = max(mem) if mem else None
(out / "summary.json").write_text(json.dumps(summary, indent=2))
for k, v in summary.items():
    print(f"gpu_check: {k}: {v:.3f}" if isinstance(v, float) else f"gpu_check: {k}: {v}")
PYEOF
fi
say "done (status $status); files in $OUT"
exit $status
