import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Tests never reach the network: wandb logs offline, the hub is off.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def rayzero(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `rayzero` CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def cli():
    return rayzero


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the groups into node ids
def pytest_collection_modifyitems(items):
    """Groups for `pytest -n 2 --dist loadgroup` (the README's test command: two xdist workers, because on 2
    cores a quarter of the suite is waiting on process and Ray start-ups): a module's tests stay together, so
    its module fixtures (a local Ray, a simulated cluster) are set up once; and every test that reads the
    session's shared micro run (tests/e2e/micro_run.py) is in one group, so that run is made once."""
    for item in items:
        group = "micro-run" if "micro" in item.fixturenames else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session):
    # Under loadgroup xdist appends "@group" to every test id; if it is missing, the groups above are being
    # ignored (seen with pytest 9.2 and pytest-xdist 3.8) and module fixtures and the micro run are made twice.
    if getattr(session.config.option, "loadgroup", False) and session.items and "@" not in session.items[0].nodeid:
        raise pytest.UsageError("pytest-xdist's --dist loadgroup is not grouping tests with this pytest "
                                f"{pytest.__version__}; install the pinned one: bash scripts/setup.sh")
