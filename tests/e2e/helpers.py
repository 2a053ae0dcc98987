"""Shared by the e2e tests: a local Ray for a module, a tiny saved policy, killing an actor for real, a child
that takes Ctrl-C as a terminal's foreground process does."""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path

import ray


def local_ray():
    """A module's own local Ray (2 CPUs, its own temp folder), for a `yield from` fixture."""
    tmp = tempfile.mkdtemp(prefix="rz-e2e-", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, _temp_dir=tmp)
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def save_tiny_policy(d: Path, texts: list[str], num_layers: int) -> Path:
    """A tiny untrained policy (its own tokenizer trained on `texts`) saved in `d`."""
    from rl.modeling import build_tiny_model, save_tokenizer, train_tokenizer

    tok = train_tokenizer(texts, 300)
    model = build_tiny_model(tok, hidden_size=32, num_layers=num_layers, num_heads=2, intermediate_size=64,
                             max_position=64, seed=0)
    save_tokenizer(tok, d, texts[0])
    model.save_pretrained(d)
    return d


def kill_and_wait(actor, timeout_s: float = 30.0) -> None:
    """`ray.kill`, then wait until the actor is really gone: `ray.kill` returns at once, and a call made
    right after it can still reach the live actor (seen under load), so a test of what happens to a dead
    actor would test a live one."""
    ray.kill(actor)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=5)
        except ray.exceptions.RayActorError:
            return
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"actor {actor} still answers {timeout_s:.0f} s after ray.kill")


def run_from_sft(run: Path, name: str) -> Path:
    """A new run folder `name` beside `run` that starts from `run`'s finished SFT stage (data, tokenizer and
    sft/ copied), so a test runs GRPO variants without training SFT again."""
    new = run.parent / name
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    for part in ("data", "tokenizer", "sft"):
        shutil.copytree(run / part, new / part)
    return new


def ctrl_c_as_in_a_terminal() -> None:
    """`preexec_fn` for a child a test will Ctrl-C: SIGINT back to its default disposition. A suite started in
    the background (`cmd &`, nohup, some CI runners) inherits SIGINT *ignored*, and Python then installs no
    KeyboardInterrupt handler, so the child would never see the Ctrl-C a user's terminal delivers."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
