#!/usr/bin/env bash
# The GPU check, made for the GPU machine this project can borrow (run from the repository root, no network):
# one GPU, Python 3.12 with torch 2.11+cu130, transformers 5.x, accelerate, peft and pytest preinstalled; no
# ray, trl, deepspeed, datasets, wandb, math-verify or vLLM; packages arrive only as wheels carried with the
# repository (at most 64 MiB per command: scripts/gpu_wheels.sh builds .whl/gpu.tar.xz); one command runs
# at most 10 minutes, and this whole check stops within BUDGET_S (default and most 480 s = 8 minutes).
#
#   0. environment: GPU, Python, and torch/transformers/accelerate/peft against requirements-gpu.txt's ranges;
#   1. wheels: what is missing is installed from .whl/gpu.tar.xz when it was carried (pip --no-index
#      --no-deps; what is installed stays); without it, every check that needs a missing package is skipped
#      with one line naming the package;
#   2. tests/gpu under a time cap (each test that needs a missing package skips itself with one line; the
#      tests use a model shape vLLM can serve: head size 64);
#   3. the smollm2-135m recipe's shape (random weights) on the arithmetic task, GRPO_STEPS steps (default 5),
#      measured: s/step, samples/s, peak GPU memory, weight-sync time; in what is left of the budget.
#
# --dry-run: prints and validates the plan (each phase, its time cap, what it would skip and why), installs
# and runs nothing, needs no GPU: CI runs it on CPU (tests/unit/test_gpu_install.py).
# Logs and summary.json go under $OUT (default /tmp/rayzero-gpu-check), run folders under $WORK.
# Knobs: BUDGET_S, GRPO_STEPS, SKIP_TESTS=1, SKIP_RECIPE=1, PYTHON (default python3), GPU_CHECK_HIDE="ray trl"
# (treat these modules as missing: preview a bare machine's plan here).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    *) echo "gpu_check: unknown argument $arg (usage: scripts/gpu_check.sh [--dry-run])" >&2; exit 2 ;;
  esac
done
MAX_BUDGET=480
BUDGET=${BUDGET_S:-$MAX_BUDGET}
CARRY_LIMIT_MIB=64
TESTS_CAP=300      # tests/gpu at most this long (the rest of the budget is the recipe's)
SETUP_CAP=60       # environment + wheel install
OUT=${OUT:-/tmp/rayzero-gpu-check}
WORK=${WORK:-/tmp/rzgpu-work}
START=$(date +%s)
mkdir -p "$OUT"
say() { echo "gpu_check: $*" | tee -a "$OUT/check.log"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }
problems=0
bad() { say "PROBLEM: $*"; problems=$((problems + 1)); }

case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check: BUDGET_S=$BUDGET is not a whole number of seconds" >&2; exit 2 ;; esac
[ "$BUDGET" -le "$MAX_BUDGET" ] || bad "BUDGET_S=$BUDGET is over the check's $MAX_BUDGET s (8 minutes)"
[ $(( SETUP_CAP + TESTS_CAP )) -lt "$BUDGET" ] || bad "setup ($SETUP_CAP s) + tests ($TESTS_CAP s) leave no time of BUDGET_S=$BUDGET for the recipe"
for f in requirements-gpu.txt tests/gpu/test_gpu.py tests/gpu/cli.py tests/gpu/support.py pipelines/recipes/smollm2-135m.yaml; do
  [ -f "$f" ] || bad "missing $f"
done
say "$(date -u +%FT%TZ) on $(hostname)$([ $DRY = 1 ] && echo ' (dry run: nothing installed or run)'), budget ${BUDGET}s"

# 0. Environment.
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi -L | tee -a "$OUT/check.log"
elif [ "$DRY" = 1 ]; then
  say "no nvidia-smi here (fine for a dry run)"
else
  say "no nvidia-smi: not a GPU machine"; exit 1
fi
# Versions against requirements-gpu.txt, and which modules are missing (GPU_CHECK_HIDE: treated as missing).
"$PY" - "$OUT/env.txt" <<'PYEOF' | tee "$OUT/env.log" | tee -a "$OUT/check.log"
import importlib.metadata as md, importlib.util, os, re, sys
hide = set(os.environ.get("GPU_CHECK_HIDE", "").split())
print(f"python {sys.version.split()[0]}")
ranges = {}
for line in open("requirements-gpu.txt"):
    line = line.split("#")[0].strip()
    if line:
        name = re.split(r"[\[<>=!~ ]", line, 1)[0]
        ranges[name.lower()] = line[len(name):].split("]")[-1]
try:
    from packaging.specifiers import SpecifierSet
except ImportError:
    SpecifierSet = None
for dist in ("torch", "transformers", "accelerate", "peft"):
    try:
        v = md.version(dist)
    except md.PackageNotFoundError:
        print(f"{dist}: not installed (PROBLEM: the GPU image should bring it)")
        continue
    spec = ranges.get(dist, "")
    ok = SpecifierSet(spec).contains(v, prereleases=True) if SpecifierSet and spec else None
    extra = ""
    if dist == "torch":
        import torch
        extra = f" cuda {torch.version.cuda} available {torch.cuda.is_available()}"
    print(f"{dist} {v}{extra}: {'within' if ok else 'PROBLEM: outside' if ok is False else 'unchecked'} {spec}")
wanted = ("ray", "trl", "deepspeed", "datasets", "math_verify", "pytest", "wandb", "vllm")
missing = [m for m in wanted if m in hide or importlib.util.find_spec(m) is None]
open(sys.argv[1], "w").write(" ".join(missing))
print("missing: " + (" ".join(missing) or "nothing"))
PYEOF
grep -q "PROBLEM" "$OUT/env.log" && problems=$((problems + 1))
missing=$(cat "$OUT/env.txt")
has() { case " $missing " in *" $1 "*) return 1 ;; *) return 0 ;; esac; }

# 1. Wheels for what is missing (wandb and vLLM are never carried: runs use run.wandb_mode=disabled, and the
#    vLLM test skips itself).
need_carry=""
for m in ray trl deepspeed datasets math_verify; do has "$m" || need_carry="$need_carry $m"; done
if [ -n "$need_carry" ]; then
  if [ -f .whl/gpu.tar.xz ]; then
    size=$(( $(stat -c %s .whl/gpu.tar.xz) / 1048576 ))
    [ "$size" -lt "$CARRY_LIMIT_MIB" ] || bad ".whl/gpu.tar.xz is ${size} MiB: over the ${CARRY_LIMIT_MIB} MiB a command carries"
    if [ "$DRY" = 1 ]; then
      say "would install${need_carry} (and their dependencies) from .whl/gpu.tar.xz (${size} MiB) with pip --no-index --no-deps"
    else
      WHEELS=$(mktemp -d /tmp/rzwheels.XXXX)
      tar -C "$WHEELS" -xJf .whl/gpu.tar.xz
      todo=()
      for whl in "$WHEELS"/wheels/*.whl; do
        dist=$(basename "$whl" | cut -d- -f1)
        "$PY" -m pip show -q "$dist" >/dev/null 2>&1 || todo+=("$whl")
      done
      say "installing ${#todo[@]} wheel(s) with --no-index --no-deps"
      timeout "$SETUP_CAP" "$PY" -m pip install -q --no-index --no-deps --no-compile "${todo[@]}" 2>&1 | tee -a "$OUT/check.log" \
        || say "wheel install failed or ran out of time; checks needing the missing packages will skip"
      mkdir -p "$WORK" && rm -rf "$WORK/smollm2-shape" && cp -r "$WHEELS/smollm2-shape" "$WORK/smollm2-shape"
      rm -rf "$WHEELS"
      missing=$("$PY" -c "import importlib.util, os; hide = set(os.environ.get('GPU_CHECK_HIDE', '').split()); print(' '.join(m for m in ('ray', 'trl', 'deepspeed', 'datasets', 'math_verify', 'pytest', 'wandb', 'vllm') if m in hide or importlib.util.find_spec(m) is None))")
      say "missing after install: ${missing:-nothing}"
    fi
  else
    say "no .whl/gpu.tar.xz carried (scripts/gpu_wheels.sh builds it where there is network):${need_carry} stay missing"
  fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 WANDB_MODE=disabled TRL_EXPERIMENTAL_SILENCE=1 \
  RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
export RAY_TMPDIR=${RAY_TMPDIR:-/tmp/rzgpu}  # short: Ray's socket paths must stay under 108 characters

status=0
# 2. The GPU tests (each needing a missing package skips itself, one line each with -rs).
if [ "${SKIP_TESTS:-0}" = 1 ]; then
  say "skip tests/gpu: SKIP_TESTS=1"
elif ! has pytest; then
  say "skip tests/gpu: needs pytest (not installed)"
else
  for m in ray trl deepspeed datasets vllm; do
    has "$m" || say "tests/gpu: the tests that need $m will skip (not installed)"
  done
  cap=$TESTS_CAP; [ "$cap" -lt "$(left)" ] || cap=$(( $(left) - 30 ))
  if [ "$DRY" = 1 ]; then
    say "would run: pytest tests/gpu (at most ${cap}s)"
  else
    mkdir -p "$RAY_TMPDIR"
    timeout "$cap" "$PY" -m pytest -q -rs -p no:cacheprovider --durations=0 tests/gpu 2>&1 | tee "$OUT/tests-gpu.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && say "tests/gpu stopped at its ${cap}s cap (see tests-gpu.log for what ran)"
    [ "$rc" = 0 ] || status=1
  fi
fi

# 3. The smollm2-135m recipe's shape on one GPU, measured.
recipe_missing=""
for m in ray trl deepspeed datasets math_verify; do has "$m" || recipe_missing="$recipe_missing $m"; done
if [ "${SKIP_RECIPE:-0}" = 1 ]; then
  say "skip recipe: SKIP_RECIPE=1"
elif [ -n "$recipe_missing" ]; then
  say "skip recipe (smollm2-135m shape, GRPO on one GPU): needs${recipe_missing} (not installed)"
elif [ "$DRY" = 1 ]; then
  say "would run: smollm2-135m shape, ${GRPO_STEPS:-5} GRPO steps (in what is left of ${BUDGET}s)"
else
  SHAPE=$WORK/smollm2-shape
  mkdir -p "$WORK"
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
  steps=${GRPO_STEPS:-5}
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/gpu-memory.log" &
  SMI=$!
  start=$(date +%s)
  cap=$(( $(left) - 10 ))
  if [ "$cap" -lt 30 ]; then
    say "skip recipe: only ${cap}s of the budget left"
  else
    timeout "$cap" "$PY" tests/gpu/cli.py run smollm2-135m run.name=smollm2-gpu "run.output_dir=$WORK/runs" \
      run.wandb_mode=disabled run.num_cpus=$(nproc) "model.kind=hf" "model.path=$MODEL" task.name=arithmetic \
      task.dataset= "task.params={}" sft.gpus=1 grpo.gpus=1 grpo.rollout_workers=1 grpo.placement=colocated \
      grpo.sync_backend=collective "grpo.max_steps=$steps" grpo.time_budget_s=0 distill.enabled=false \
      2>&1 | tee "$OUT/recipe.log" || { status=1; say "recipe failed or stopped at its ${cap}s cap"; }
  fi
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
if [ "$DRY" = 1 ]; then
  say "dry run: plan $([ $problems = 0 ] && echo valid || echo "has $problems problem(s)") ($(( $(date +%s) - START ))s)"
  [ "$problems" = 0 ]
  exit
fi
say "done (status $status, $(( $(date +%s) - START ))s of ${BUDGET}s); files in $OUT"
exit $status
