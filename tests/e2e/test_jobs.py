"""`rayzero submit` / `rayzero jobs` against a real Ray head started on loopback for this test.

The head runs with token auth (Ray 2.60's default) and a token of its own, given to it and to the clients
through RAY_AUTH_TOKEN, so ~/.ray/auth_token is never read or written. It gets a dedicated --temp-dir
(so a plain `ray.init()` elsewhere on this machine never finds it) and free ports, and only its own
processes are killed at the end: `ray stop` would stop every Ray on the machine.
"""

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from cluster import jobs
from pipelines.cli import main
from tests.conftest import ROOT

VENV_BIN = Path(ROOT) / ".venv" / "bin"
SECRET = "sekrit-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(pgid: int, temp_dir: str) -> list[psutil.Process]:
    """The head's processes: its process group, everything they started (workers setsid themselves), and
    anything whose command line names its temp dir."""
    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if os.getpgid(p.pid) == pgid or temp_dir in " ".join(p.info["cmdline"] or []):
                roots.append(p)
        except (ProcessLookupError, psutil.Error):
            pass
    found = {p.pid: p for p in roots}
    for p in roots:
        try:
            found.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.Error:
            pass
    return [p for pid, p in found.items() if pid != os.getpid()]


def _kill_head(pgid: int, temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):
        procs = _tree(pgid, temp_dir)
        if not procs:
            return
        for p in procs:
            try:
                p.send_signal(sig)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=3)


@pytest.fixture(scope="module")
def head():
    temp_dir = tempfile.mkdtemp(prefix="rzj", dir="/tmp")  # short: Ray's socket paths live under it
    token = secrets.token_hex(32)
    port, dash = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
               RAY_USAGE_STATS_ENABLED="0")
    cmd = [str(VENV_BIN / "ray"), "start", "--head", "--port", str(port), "--dashboard-port", str(dash),
           "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--num-gpus", "0",
           "--temp-dir", temp_dir, "--ray-client-server-port", str(_free_port()),
           "--dashboard-agent-listen-port", str(_free_port()), "--include-dashboard", "true",
           "--disable-usage-stats"]
    start = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = start.communicate(timeout=120)
        assert start.returncode == 0, out
        yield {"address": f"http://127.0.0.1:{dash}", "token": token, "pgid": start.pid}
    finally:
        _kill_head(start.pid, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _env(head, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYZERO_ADDRESS")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=head["token"], PYTHONPATH=str(ROOT), **extra)
    return env


def _main(capsys, *argv) -> tuple[int, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_unreachable_address_is_one_line_exit_2(capsys):
    rc, out = _main(capsys, "jobs", "list", "--address", f"http://127.0.0.1:{_free_port()}")
    assert rc == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rayzero: error: cannot reach the Ray job server at http://127.0.0.1:")
    assert "--address" in lines[0]


def test_redacted_spec_and_env():
    env = jobs.forwarded_env({"WANDB_API_KEY": SECRET, "HF_TOKEN": "hf_x", "WANDB_PROJECT": "p", "HF_HUB_OFFLINE": "1",
                              "HOME": "/root", "WANDB_DIR": "/tmp"})
    assert env == {"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_x", "WANDB_API_KEY": SECRET, "WANDB_PROJECT": "p"}
    spec = jobs.JobSpec("python -m pipelines.cli run micro", "rayzero-x", jobs.runtime_env(ROOT, env_vars=env))
    shown = json.dumps(spec.redacted())
    assert SECRET not in shown and "hf_x" not in shown and '"WANDB_API_KEY": "***"' in shown
    assert spec.runtime_env["env_vars"]["WANDB_API_KEY"] == SECRET  # the job itself gets it
    assert re.fullmatch(r"rayzero-micro-my-run-\d{8}-\d{6}", jobs.make_submission_id("micro", "my run/"))
    assert "ray" not in {re.split(r"[\[=<>]", p)[0] for p in jobs.pinned_requirements(ROOT / "pyproject.toml")}


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_submit_follow_stop_and_secrets(head, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    # 1. The micro pipeline (SFT stage only, to stay quick) submitted through the real CLI, logs followed.
    r = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "pipelines.cli", "submit", "micro", f"run.output_dir={runs}",
         "run.name=jobtest", "sft.epochs=2", "grpo.enabled=false", "distill.enabled=false",
         "--address", head["address"], "--no-pip", "--follow"],
        cwd=tmp_path, env=_env(head, WANDB_API_KEY=SECRET), capture_output=True, text=True, timeout=300)
    printed = r.stdout + r.stderr
    assert r.returncode == 0, printed[-3000:]
    assert re.search(r"rayzero: job rayzero-micro-jobtest-\d{8}-\d{6}: SUCCEEDED", printed), printed[-2000:]
    assert "WANDB_API_KEY: '***'" in printed and "RAY_OVERRIDE_JOB_RUNTIME_ENV" in printed
    assert "[1/1] sft: running" in printed  # the followed driver output
    assert (runs / "jobtest" / "report.json").exists()
    assert SECRET not in printed

    # 2. A long job that reports whether the secret reached it, then sleeps; stopped through the CLI.
    for k, v in _env(head, WANDB_API_KEY=SECRET).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAYZERO_ADDRESS", raising=False)
    # It even prints the value: `rayzero jobs logs` shows *** instead.
    probe = ("import os, time; print('WANDB_API_KEY set:', bool(os.environ.get('WANDB_API_KEY'))); "
             "print('value:', os.environ.get('WANDB_API_KEY'), flush=True); time.sleep(600)")
    job_id = f"rayzero-sleep-{int(time.time())}"
    rc, out = _main(capsys, "submit", "micro", "--address", head["address"], "--no-pip", "--id", job_id,
                    "--entrypoint", f"python -c \"{probe}\"")
    assert rc == 0 and f"submitted {job_id}" in out and SECRET not in out
    monkeypatch.setenv("RAYZERO_ADDRESS", head["address"])  # the address from the environment from here on
    deadline, logs = time.monotonic() + 120, ""
    # Ray's log starts with the entrypoint's command line, which holds the probe's text: wait for its output line.
    while not re.search(r"^value: ", logs, re.M) and time.monotonic() < deadline:
        time.sleep(1)
        rc, logs = _main(capsys, "jobs", "logs", job_id)
    assert "WANDB_API_KEY set: True" in logs and "value: ***" in logs and SECRET not in logs
    rc, out = _main(capsys, "jobs", "status", job_id)
    assert rc == 0 and f"{job_id}: RUNNING" in out
    rc, out = _main(capsys, "jobs", "stop", job_id)
    assert rc == 0 and f"{job_id}: STOPPED" in out
    rc, out = _main(capsys, "jobs", "list")
    assert rc == 0 and re.search(rf"{job_id}\s+STOPPED", out) and re.search(r"rayzero-micro-jobtest-\S+\s+SUCCEEDED", out)
    assert SECRET not in out

    # 3. A wrong token: one line naming the address, exit 2.
    monkeypatch.setenv("RAY_AUTH_TOKEN", "0" * 64)
    rc, out = _main(capsys, "jobs", "list")
    assert rc == 2 and len(out.strip().splitlines()) == 1 and "rejected the Ray auth token" in out
    assert head["address"] in out
