"""cluster.learners on a real local Ray (CPU, gloo): the learner group sets up torch.distributed the way
torchrun would, restarts the whole group when a rank dies (up to max_failures), raises a rank's error
after that, and Ctrl-C on the driver reaches it as KeyboardInterrupt with the learners killed."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import ray
from ray import cloudpickle

from cluster.learners import LearnerGroup, rank_envs, run_worker_group, worker_context
from tests.e2e.helpers import ctrl_c_as_in_a_terminal

cloudpickle.register_pickle_by_value(sys.modules[__name__])
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_local():
    tmp = tempfile.mkdtemp(prefix="rzlg-", dir="/tmp")  # this module's own Ray session
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, _temp_dir=tmp)
    yield
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def _report(config: dict) -> dict:
    """A train function: what a rank sees of its group."""
    import torch
    import torch.distributed as dist

    rank, world, local = worker_context()
    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    keys = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK")
    return {"context": (rank, world, local), "sum": t.item(), "backend": dist.get_backend(),
            "env": {k: os.environ.get(k) for k in keys}, "pid": os.getpid(), "config": config["x"],
            "title": Path(f"/proc/{os.getpid()}/cmdline").read_bytes().split(b"\0")[0].decode()}


def _die_once(config: dict) -> dict:
    """Rank 1 dies (os._exit, as on a node failure) in the first attempt only; the marker file records it."""
    marker = Path(config["marker"])
    rank, _, _ = worker_context()
    if rank == 1 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    import torch
    import torch.distributed as dist

    t = torch.ones(1)
    dist.all_reduce(t)  # both ranks of the new group take part
    return {"rank": rank, "pid": os.getpid(), "sum": t.item()}


def _fail(config: dict) -> None:
    rank, _, _ = worker_context()
    if rank == 0:
        raise ValueError("a bug in the train function")
    import torch.distributed as dist

    dist.barrier()  # rank 1 would wait forever for rank 0: the group must kill it


SYNC_LINE = ("weight sync check failed: rollout engine rollout-0 holds different weights than the learner sent in "
             "bucket 2/5 (bfloat16, ...)")


def _sync_check_fails(config: dict) -> None:
    from cluster.weight_sync import WeightSyncError

    rank, _, _ = worker_context()
    if rank == 0:
        raise WeightSyncError(SYNC_LINE)
    import torch.distributed as dist

    dist.barrier()


def test_rank_envs_follow_torchrun_with_gpus_widened_per_node():
    addresses = [{"node_id": "a", "ip": "10.0.0.1", "gpu_ids": ["3"]}, {"node_id": "a", "ip": "10.0.0.1", "gpu_ids": ["1"]},
                 {"node_id": "b", "ip": "10.0.0.2", "gpu_ids": ["0"]}]
    envs = rank_envs(addresses, 29500)
    assert [e["RANK"] for e in envs] == ["0", "1", "2"] and {e["WORLD_SIZE"] for e in envs} == {"3"}
    assert {e["MASTER_ADDR"] for e in envs} == {"10.0.0.1"} and {e["MASTER_PORT"] for e in envs} == {"29500"}
    # Node a sees both of its learners' GPUs; each rank's device is its own GPU's index in that list.
    assert envs[0]["CUDA_VISIBLE_DEVICES"] == envs[1]["CUDA_VISIBLE_DEVICES"] == "1,3"
    assert (envs[0]["LOCAL_RANK"], envs[1]["LOCAL_RANK"], envs[2]["LOCAL_RANK"]) == ("1", "0", "0")
    assert envs[0]["ACCELERATE_TORCH_DEVICE"] == "cuda:1" and envs[2]["CUDA_VISIBLE_DEVICES"] == "0"
    assert [e["NODE_RANK"] for e in envs] == ["0", "0", "1"] and [e["LOCAL_WORLD_SIZE"] for e in envs] == ["2", "2", "1"]
    cpu = rank_envs([{"node_id": "a", "ip": "h", "gpu_ids": []}] * 2, 1)
    assert [e["LOCAL_RANK"] for e in cpu] == ["0", "1"] and "CUDA_VISIBLE_DEVICES" not in cpu[0]


def test_two_cpu_learners_get_a_gloo_group_and_torchrun_environment(ray_local):
    out = run_worker_group(_report, {"x": 7}, num_workers=2, resources_per_worker={"CPU": 0.25}, use_gpu=False,
                           name="t")
    assert [r["context"] for r in out] == [(0, 2, 0), (1, 2, 1)]
    assert all(r["sum"] == 3.0 and r["backend"] == "gloo" and r["config"] == 7 for r in out)
    assert all(r["env"]["MASTER_ADDR"] and r["env"]["LOCAL_WORLD_SIZE"] == "2" for r in out)
    assert all(r["title"].startswith("ray::Learner") for r in out)  # told apart from rollout actors in ps
    # Gone afterwards: their CPUs are back.
    deadline = time.monotonic() + 10
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) == 2


def test_a_dead_rank_restarts_the_whole_group_in_the_same_bundles(ray_local, tmp_path):
    from ray.util.placement_group import placement_group, placement_group_table

    pg = placement_group([{"CPU": 0.25}, {"CPU": 0.25}])
    ray.get(pg.ready())
    group = LearnerGroup(2, cpus=0.25, placement_group=pg, name="t")
    try:
        first = [a["pid"] for a in group.addresses()]
        said: list[str] = []
        out = group.run(_die_once, {"marker": str(tmp_path / "died")}, max_failures=1, say=said.append)
        assert [r["rank"] for r in out] == [0, 1] and all(r["sum"] == 2.0 for r in out)
        assert group.restarts == 1 and len(said) == 1 and "restarting the group (1/1)" in said[0]
        assert not set(first) & {r["pid"] for r in out}  # every rank is a fresh process, not only the dead one
    finally:
        group.shutdown()
    assert placement_group_table(pg)["state"] == "CREATED"  # lent: still the caller's
    ray.util.remove_placement_group(pg)


def test_without_failures_left_the_error_is_raised_and_no_rank_hangs(ray_local, tmp_path):
    with pytest.raises(Exception, match="a bug in the train function"):
        run_worker_group(_fail, {}, num_workers=2, resources_per_worker={"CPU": 0.25}, use_gpu=False, name="t",
                         max_failures=0)
    with pytest.raises(ray.exceptions.RayActorError):
        run_worker_group(_die_once, {"marker": str(tmp_path / "m")}, num_workers=2,
                         resources_per_worker={"CPU": 0.25}, use_gpu=False, name="t", max_failures=0)


def test_a_failed_weight_sync_check_stops_the_group_without_a_restart(ray_local):
    """A restart would resync and could hide a corrupted transfer: the run stops, with the check's one line."""
    from cluster.weight_sync import WeightSyncError, error_line

    group = LearnerGroup(2, cpus=0.25, name="t")
    said: list[str] = []
    try:
        with pytest.raises(WeightSyncError) as e:
            group.run(_sync_check_fails, {}, max_failures=2, say=said.append)
        assert group.restarts == 0 and not said
        assert error_line(e.value) == SYNC_LINE
    finally:
        group.shutdown()


DRIVER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from cluster.runtime import connect
    from cluster.learners import run_worker_group

    def spin(config):
        Path(config["dir"], f"learner-{os.getpid()}").touch()
        while True:
            time.sleep(0.1)

    connect(num_cpus=2)
    try:
        run_worker_group(spin, {"dir": sys.argv[1]}, num_workers=2, resources_per_worker={"CPU": 0.25},
                         use_gpu=False, name="t")
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        time.sleep(30)  # stay up: the learners must be gone while this driver (and its Ray) still lives
""")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_ctrl_c_reaches_the_driver_and_kills_the_learners(tmp_path):
    ray_tmp = tempfile.mkdtemp(prefix="rzlc-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("learner-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        pids = [int(p.name.split("-")[1]) for p in tmp_path.glob("learner-*")]
        assert len(pids) == 2, "the learners did not start"
        proc.send_signal(signal.SIGINT)  # Ctrl-C to the driver only
        ready, _, _ = select.select([proc.stdout], [], [], 60)  # a lost Ctrl-C fails here instead of hanging
        line = proc.stdout.readline() if ready else "(nothing within 60 s)"
        assert line.strip() == "interrupted", proc.stderr.read() if proc.poll() is not None else line
        deadline = time.monotonic() + 15
        while any(map(_alive, pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, pids)), "learners still running after Ctrl-C"
    finally:
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30  # the watchdog stops the killed driver's Ray session
        while any(ray_tmp in (Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace") if _alive(p) else "")
                  for p in [int(x) for x in os.listdir("/proc") if x.isdigit()]) and time.monotonic() < deadline:
            time.sleep(0.5)
        shutil.rmtree(ray_tmp, ignore_errors=True)
