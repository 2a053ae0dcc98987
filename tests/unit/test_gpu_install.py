"""The GPU install path and the GPU check, on CPU (CI has no GPU):

- requirements-gpu.txt (scripts/setup.sh --gpu) names every dependency of pyproject.toml, each with a range
  that accepts the GPU machine's preinstalled CUDA torch (2.11+cu130) and transformers 5.x and still holds
  the CPU pin the project is tested with;
- `scripts/gpu_check.sh --dry-run` validates its plan without a GPU: within the 8-minute budget, and on a
  bare machine (modules hidden) each check that needs a missing package is skipped with one line naming it."""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _gpu_requirements() -> dict:
    out = {}
    for line in (ROOT / "requirements-gpu.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            r = Requirement(line)
            out[canonicalize_name(r.name)] = r
    return out


def test_gpu_ranges_cover_every_dependency_and_accept_the_gpu_image():
    gpu = _gpu_requirements()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        cpu = Requirement(dep)
        name = canonicalize_name(cpu.name)
        assert name in gpu, f"requirements-gpu.txt lacks {cpu.name}"
        pinned = [s.version for s in cpu.specifier if s.operator == "=="]
        for version in pinned:  # the CPU pin is inside the GPU range: the tested versions stay allowed
            assert gpu[name].specifier.contains(version), (dep, str(gpu[name]))
        assert gpu[name].extras >= cpu.extras, dep
    # what the GPU machine brings is accepted as it is (local version labels included) ...
    for name, version in (("torch", "2.11.0+cu130"), ("transformers", "5.17.0"), ("accelerate", "1.15.0"),
                          ("peft", "0.18.0")):
        assert gpu[name].specifier.contains(version), (name, version)
    # ... and what the code cannot run on is not
    assert not gpu["transformers"].specifier.contains("4.57.1")
    assert not gpu["torch"].specifier.contains("2.10.0")


def _dry_run(tmp_path, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)


def test_gpu_check_dry_run_validates_its_plan_on_cpu(tmp_path):
    proc = _dry_run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dry run: plan valid" in proc.stdout and "would run: pytest tests/gpu" in proc.stdout
    assert "nothing installed or run" in proc.stdout
    assert not (tmp_path / "out" / "tests-gpu.log").exists()  # nothing ran


def test_gpu_check_dry_run_on_a_bare_machine_skips_in_one_line_each(tmp_path):
    bare = "ray trl deepspeed datasets math_verify"
    proc = _dry_run(tmp_path, GPU_CHECK_HIDE=bare, BUDGET_S="480")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    recipe = [ln for ln in lines if ln.startswith("gpu_check: skip recipe")]
    assert len(recipe) == 1 and recipe[0].endswith("needs ray trl deepspeed datasets math_verify (not installed)")
    for module in ("ray", "trl", "deepspeed", "datasets"):
        assert sum(f"tests that need {module} will skip" in ln for ln in lines) == 1


@pytest.mark.parametrize("budget, message", [("600", "over the check's 480 s"), ("300", "leave no time")])
def test_gpu_check_refuses_a_budget_over_8_minutes_or_too_small(tmp_path, budget, message):
    proc = _dry_run(tmp_path, BUDGET_S=budget)
    assert proc.returncode == 1 and message in proc.stdout, proc.stdout


def test_setup_refuses_an_unknown_flag():
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh"), "--gpus"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and re.search(r"unknown argument --gpus .*--gpu", proc.stderr)
