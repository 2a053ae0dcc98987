"""Ray plumbing: connect to (or start) Ray, run a function as a Ray task with explicit resources,
and run a training loop in a Ray Train worker group (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import ray

# Environment every Ray worker gets: quiet libraries, no accidental network calls from the hub.
WORKER_ENV = {
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore",
}


class ClusterError(RuntimeError):
    """The cluster cannot run what the recipe asks for (too few CPUs/GPUs, unreachable head)."""


def connect(address: str = "", num_cpus: int = 0, env: dict[str, str] | None = None) -> dict[str, float]:
    """Start a local Ray (address "") or connect to an existing cluster; returns its resources."""
    if not ray.is_initialized():
        runtime_env = {"env_vars": {**WORKER_ENV, **(env or {})}}
        kwargs: dict[str, Any] = {"runtime_env": runtime_env, "log_to_driver": True, "configure_logging": False}
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = num_cpus or os.cpu_count()
        try:
            ray.init(**kwargs)
        except ConnectionError as e:
            raise ClusterError(f"cannot reach the Ray cluster at '{address}': {e}") from None
    return ray.cluster_resources()


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
    return trainer.fit()
