"""Ray plumbing: connect to (or start) Ray, check that the cluster holds what a stage needs, and run a
function as a Ray task with explicit resources. (The learner's worker group is `cluster.learners`.)

Logs: workers' output reaches the driver (`log_to_driver`) with Ray's default deduplication (the same
line from several workers within 5 s is printed once, then "[repeated Nx across cluster]"); workers
report progress as whole lines (`rl.progress`). Two worker settings keep that readable:
- tqdm is off in workers (`TQDM_DISABLE=1`): a bar redraws with carriage returns, which reach the driver
  as one line holding every frame (transformers' weight loading, datasets' map);
- Ray Train's print patch is off (`RAY_TRAIN_ENABLE_PRINT_PATCH=0`), for any Ray Train worker a user
  starts: it routes every `print` through `logging`, so text a library prints into a captured
  `sys.stdout` leaked into the logs (dill's `dis.dis` whenever `datasets` fingerprints a table).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

import ray

# Environment every Ray worker gets: quiet libraries, no accidental network calls from the hub, no tqdm
# redraws, plain `print` in Ray Train workers (see the module docstring).
WORKER_ENV = {
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "TQDM_DISABLE": "1",
}


_local_session: str | None = None  # the session folder of the local Ray this process started, if any


class ClusterError(RuntimeError):
    """The cluster cannot run what the recipe asks for (too few CPUs/GPUs, unreachable head)."""


def connect(address: str = "", num_cpus: int = 0, env: dict[str, str] | None = None) -> dict[str, float]:
    """Start a local Ray (address "") or connect to an existing cluster; returns its resources.

    A local Ray is always a new one (never a `ray start` instance found on the machine) and lives only as
    long as the calling process: a watchdog (`cluster/lifetime.py`) stops that session's processes once
    this process exits, however it exits (SIGKILL included), and removes its session folder. A cluster
    connected to by address is left alone when this process exits (Ray itself stops this driver's non-detached actors and tasks there)."""
    global _local_session
    if not ray.is_initialized():
        runtime_env = {"env_vars": {**WORKER_ENV, **(env or {})}}
        kwargs: dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": True, "configure_logging": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count())
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            context = ray.init(**kwargs)
        except ConnectionError as e:
            raise ClusterError(f"cannot reach the Ray cluster at '{address}': {e}") from None
        finally:
            _keep_sigterm_handler(sigterm)
        if not address:
            _local_session = context.address_info["session_dir"]
            tie_to_this_process(_local_session)
    return ray.cluster_resources()


def _keep_sigterm_handler(handler) -> None:
    """`ray.init` replaces the driver's SIGTERM handler with `sys.exit`, which ends a run mid-stage with Ray's
    shutdown traceback and exit status 1; a handler the caller installed (the pipeline driver's, which stops
    a run as Ctrl-C does) is put back. Ray's stays where the caller had none."""
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def keep_session_logs() -> str | None:
    """Keep the local Ray session's folder (its logs) after this process exits; the watchdog removes it
    otherwise. Returns the folder, or None when no local Ray was started here."""
    from cluster.lifetime import KEEP_MARKER

    if _local_session and os.path.isdir(_local_session):
        Path(_local_session, KEEP_MARKER).touch()
        return _local_session
    return None


def disconnect() -> None:
    """Leave Ray now (a local one stops with it): for a run being abandoned, so that the driver's last line
    is its own and not a worker's output still being forwarded (a learner's 'Connection lost')."""
    if ray.is_initialized():
        ray.shutdown()


def tie_to_this_process(session_dir: str) -> None:
    """Start the watchdog that stops the local Ray session in `session_dir` when this process exits.
    It detaches itself (own session, not our child), so neither Ctrl-C to our process group nor our
    death reaches it before it has done its work."""
    watchdog = Path(__file__).with_name("lifetime.py")
    subprocess.run([sys.executable, str(watchdog), str(os.getpid()), session_dir, os.path.dirname(ray.__file__)],
                   check=True, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def check_resources(need_cpus: float, need_gpus: float = 0, what: str = "", have: dict | None = None,
                    fields: tuple[str, str] = ("its gpus", "its workers/cpus")) -> None:
    """Raises ClusterError, in one line naming the recipe fields to lower (`fields`: the ones that size its
    GPUs, its CPUs; a stage declares its own), when the cluster (`have`, default: the connected one's totals)
    has fewer CPUs or GPUs than `what` needs."""
    have = ray.cluster_resources() if have is None else have
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    gpu_fields, cpu_fields = fields
    if need_gpus and gpus < need_gpus - 1e-9:
        raise ClusterError(f"{what} needs {need_gpus:g} GPU(s) but the Ray cluster has {gpus:g}; lower {gpu_fields} "
                           f"in the recipe (0 GPUs runs on CPU), or add GPUs")
    if cpus < need_cpus - 1e-9:
        raise ClusterError(f"{what} needs {need_cpus:g} CPU(s) but the Ray cluster has {cpus:g}; lower {cpu_fields} "
                           f"in the recipe, or add nodes")


def run_task(fn: Callable, *args, num_cpus: float = 1, num_gpus: float = 0, name: str = "", **kwargs) -> Any:
    """Run `fn(*args, **kwargs)` as one Ray task with the given resources and wait for its result."""
    check_resources(num_cpus, num_gpus, name or fn.__name__)
    remote = ray.remote(fn).options(num_cpus=num_cpus, num_gpus=num_gpus, name=name or fn.__name__,
                                    max_retries=0)
    return ray.get(remote.remote(*args, **kwargs))
