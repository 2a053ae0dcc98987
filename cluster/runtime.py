"""Ray plumbing: connect to (or start) Ray, run a function as a Ray task with explicit resources,
and run a training loop in a Ray Train worker group (gloo on CPU, NCCL on GPU).

Logs: workers' output reaches the driver (`log_to_driver`) with Ray's default deduplication (the same
line from several workers within 5 s is printed once, then "[repeated Nx across cluster]"); workers
report progress as whole lines (`rl.progress`). Two worker settings keep that readable:
- tqdm is off in workers (`TQDM_DISABLE=1`): a bar redraws with carriage returns, which reach the driver
  as one line holding every frame (transformers' weight loading, datasets' map);
- Ray Train's print patch is off (`RAY_TRAIN_ENABLE_PRINT_PATCH=0`): it routes every `print` in a Train
  worker through `logging`, so text a library prints into a captured `sys.stdout` leaked into the logs
  (dill's global-name scan runs `dis.dis` into one whenever `datasets` fingerprints a table: a bytecode
  listing per `Dataset.from_list` in the GRPO learner), and prints to wrapped streams appeared twice.
"""

from __future__ import annotations

import os
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


class ClusterError(RuntimeError):
    """The cluster cannot run what the recipe asks for (too few CPUs/GPUs, unreachable head)."""


def connect(address: str = "", num_cpus: int = 0, env: dict[str, str] | None = None) -> dict[str, float]:
    """Start a local Ray (address "") or connect to an existing cluster; returns its resources.

    A local Ray is always a new one (never a `ray start` instance found on the machine) and lives only as
    long as the calling process: a watchdog (`cluster/lifetime.py`) stops that session's processes once
    this process exits, however it exits (SIGKILL included). A cluster connected to by address is left
    alone when this process exits (Ray itself stops this driver's non-detached actors and tasks there)."""
    if not ray.is_initialized():
        runtime_env = {"env_vars": {**WORKER_ENV, **(env or {})}}
        kwargs: dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": True, "configure_logging": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count())
        try:
            context = ray.init(**kwargs)
        except ConnectionError as e:
            raise ClusterError(f"cannot reach the Ray cluster at '{address}': {e}") from None
        if not address:
            tie_to_this_process(context.address_info["session_dir"])
    return ray.cluster_resources()


def tie_to_this_process(session_dir: str) -> None:
    """Start the watchdog that stops the local Ray session in `session_dir` when this process exits.
    It detaches itself (own session, not our child), so neither Ctrl-C to our process group nor our
    death reaches it before it has done its work."""
    watchdog = Path(__file__).with_name("lifetime.py")
    subprocess.run([sys.executable, str(watchdog), str(os.getpid()), session_dir, os.path.dirname(ray.__file__)],
                   check=True, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def check_resources(need_cpus: float, need_gpus: float = 0, what: str = "") -> None:
    have = ray.cluster_resources()
    cpus, gpus = have.get("CPU", 0), have.get("GPU", 0)
    if need_gpus and gpus < need_gpus:
        raise ClusterError(f"{what} needs {need_gpus:g} GPU(s) but the Ray cluster has {gpus:g}; "
                           f"set use_gpu=false to run on CPU")
    if cpus < need_cpus:
        raise ClusterError(f"{what} needs {need_cpus:g} CPU(s) but the Ray cluster has {cpus:g}; "
                           f"lower the workers/cpus in the recipe or add nodes")


def run_task(fn: Callable, *args, num_cpus: float = 1, num_gpus: float = 0, name: str = "", **kwargs) -> Any:
    """Run `fn(*args, **kwargs)` as one Ray task with the given resources and wait for its result."""
    check_resources(num_cpus, num_gpus, name or fn.__name__)
    remote = ray.remote(fn).options(num_cpus=num_cpus, num_gpus=num_gpus, name=name or fn.__name__,
                                    max_retries=0)
    return ray.get(remote.remote(*args, **kwargs))


def run_worker_group(train_fn: Callable[[dict], None], config: dict, *, num_workers: int,
                     resources_per_worker: dict[str, float], use_gpu: bool, storage_path: Path, name: str,
                     max_failures: int = 0):
    """Run `train_fn(config)` on `num_workers` Ray Train workers with torch.distributed set up.
    `max_failures` restarts of the whole group are allowed (the loop resumes from its checkpoints)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    res = dict(resources_per_worker)
    check_resources(num_workers * res.get("CPU", 1), num_workers * res.get("GPU", 0) if use_gpu else 0,
                    f"{name} ({num_workers} workers)")
    trainer = TorchTrainer(
        train_fn,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=res),
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             failure_config=FailureConfig(max_failures=max_failures)),
    )
    return _fit_interruptibly(trainer)


def _fit_interruptibly(trainer) -> Any:
    """`trainer.fit()`, with Ctrl-C reaching the caller as KeyboardInterrupt.

    On the main thread, Ray Train's `fit` installs its own SIGINT handler, which aborts the run and ends
    the process (status 1, no word of where to resume) and is never removed. Off the main thread it
    installs none, so `fit` runs on a helper thread while the main thread waits and keeps Python's own
    handler; the learner group stops with this process's Ray (the watchdog, or Ray's job cleanup)."""
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # re-raised on the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def worker_context() -> tuple[int, int, int]:
    """(world rank, world size, local rank) of the calling Ray Train worker."""
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank()
