"""What a driver started through `cluster.runtime.connect()` prints from its workers: their lines once each,
no tqdm redraws (a bar's frames would arrive as one carriage-return line), and no bytecode listing from a
learner (cluster/learners.py) that builds a `datasets.Dataset` (dill disassembles into a captured stdout,
which Ray Train's print patch used to forward to the logs when the learner was a Ray Train worker)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent("""
    import sys, time
    import ray
    from cluster.learners import run_worker_group
    from cluster.runtime import connect

    connect(num_cpus=2)

    @ray.remote(num_cpus=0.25)
    def work():
        from tqdm import tqdm  # as transformers' weight loading and datasets' map use it
        for _ in tqdm(range(6), desc="demo bar"):
            time.sleep(0.1)
        print("worker says hello", flush=True)

    ray.get(work.remote())

    def train(config):
        from datasets import Dataset
        Dataset.from_list([{"a": 1}, {"a": 2}])  # fingerprinting pickles the table with dill
        print("learner done", flush=True)

    run_worker_group(train, {}, num_workers=1, resources_per_worker={"CPU": 0.5}, use_gpu=False, name="logs")
    time.sleep(2)  # let the last worker lines reach the driver
""")


@pytest.fixture(scope="module")
def driver_output() -> str:
    tmp = tempfile.mkdtemp(prefix="rz-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "RAY_TMPDIR": tmp, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    try:
        done = subprocess.run([sys.executable, "-c", DRIVER], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=300)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    return out


def test_worker_lines_arrive_once_and_tqdm_bars_not_at_all(driver_output):
    assert "demo bar" not in driver_output and "\r" not in driver_output, driver_output
    assert sum("worker says hello" in ln for ln in driver_output.splitlines()) == 1


def test_train_worker_prints_no_bytecode(driver_output):
    assert "LOAD_GLOBAL" not in driver_output and "RETURN_VALUE" not in driver_output, driver_output
    assert sum("learner done" in ln for ln in driver_output.splitlines()) == 1
