"""Ray plumbing: connect to (or start) Ray, run a function as a Ray task with explicit resources,
and run a training loop in a Ray Train worker group (gloo on CPU, NCCL on GPU).

Logs: workers' output reaches the driver (`log_to_driver`) with Ray's default deduplication (the same
line from several workers within 5 s is printed once, then "[repeated Nx across cluster]"). Ray Train's
print patch is off in workers (`RAY_TRAIN_ENABLE_PRINT_PATCH=0`): it routes every `print` through the
logging module, so text a library prints into a captured `sys.stdout` leaked into the logs (dill's
global-name scan runs `dis.dis` into one whenever `datasets` fingerprints a table: a bytecode listing per
`Dataset.from_list` in the GRPO learner) and prints to wrapped streams appeared twice. When the driver's
stderr is not a terminal, worker progress bars become plain lines (`ProgressLines`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, TextIO

import ray

# Environment every Ray worker gets: quiet libraries, no accidental network calls from the hub, plain
# `print` in Ray Train workers (see the module docstring).
WORKER_ENV = {
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "PYTHONWARNINGS": "ignore",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
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
        if not sys.stderr.isatty():
            ProgressLines.install()
    return ray.cluster_resources()


def tie_to_this_process(session_dir: str) -> None:
    """Start the watchdog that stops the local Ray session in `session_dir` when this process exits.
    It detaches itself (own session, not our child), so neither Ctrl-C to our process group nor our
    death reaches it before it has done its work."""
    watchdog = Path(__file__).with_name("lifetime.py")
    subprocess.run([sys.executable, str(watchdog), str(os.getpid()), session_dir, os.path.dirname(ray.__file__)],
                   check=True, start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


class ProgressLines:
    """Driver-side stand-in for the bar manager of `ray.experimental.tqdm_ray` (which workers use, see
    `rl.callbacks.make_bar`), for a driver whose output is a file or a pipe. tqdm redraws there turn into
    the same bar repeated on every refresh and around every other log line; this prints each bar as
    plain lines instead: one when it starts, at most one per `every_s` while it moves, one when it ends."""

    def __init__(self, every_s: float = 30.0, out: TextIO | None = None) -> None:
        self.every_s, self.out = every_s, out
        self.bars: dict[str, dict] = {}  # uuid -> {"start": t, "last": t of the last line}
        self.lock = threading.Lock()
        self.pid, self.ip = os.getpid(), ray.util.get_node_ip_address()

    @classmethod
    def install(cls) -> None:
        from ray.experimental import tqdm_ray

        # `instance()` hands out this module-level manager; set before any bar exists, it also keeps
        # tqdm_ray from patching the driver's builtin print.
        if tqdm_ray._manager is None:
            tqdm_ray._manager = cls()

    def process_state_update(self, state: dict) -> None:
        """One update from a worker's bar: {uuid, desc, x, total, unit, pid, ip, closed, ...}."""
        with self.lock:
            now = time.monotonic()
            bar = self.bars.setdefault(state["uuid"], {"start": now, "last": None})
            if state["closed"]:
                del self.bars[state["uuid"]]
                seconds = now - bar["start"]
                rate = f", {state['x'] / seconds:.3g} {state['unit']}/s" if seconds > 0 else ""
                self._line(state, f"done in {seconds:.1f}s{rate}")
            elif bar["last"] is None:
                bar["last"] = now
                self._line(state, "started")
            elif now - bar["last"] >= self.every_s:
                bar["last"] = now
                self._line(state, f"after {now - bar['start']:.0f}s")

    def _line(self, state: dict, event: str) -> None:
        where = "" if state["pid"] == self.pid else f"(pid={state['pid']}" + (
            ")" if state["ip"] == self.ip else f", ip={state['ip']})")
        total = f"/{state['total']}" if state["total"] else ""
        print(f"{where} {state['desc']}: {state['x']}{total} {state['unit']} {event}".strip(),
              file=self.out or sys.stderr, flush=True)

    def hide_bars(self) -> None:  # plain lines never need clearing before other output
        pass

    def unhide_bars(self) -> None:
        pass


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
