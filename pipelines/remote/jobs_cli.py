"""`rayzero submit`, `rayzero jobs ...`, `rayzero cluster render` and `rayzero cluster plan`: run recipes on
a remote Ray cluster through its job server, fill cluster templates (KubeRay / Slurm / `ray up`) from a
recipe, and show where a recipe's actors land on a cluster shape (simulated, `pipelines/remote/plan.py`).

    rayzero submit [RECIPE] [section.field=value ...] --address http://HEAD:8265 [--no-pip] [--follow] [--id ID]
    rayzero jobs status|logs|stop ID [--follow] --address ...      rayzero jobs list --address ...
    rayzero cluster render k8s|slurm|ray-up [overrides] --recipe R --gpus N --nodes M [-o FILE]
    rayzero cluster plan RECIPE [overrides] --nodes M --gpus-per-node N [--cpus-per-node C] [--json]

The recipe and overrides are checked locally (load_config) before anything is sent. The address can come
from RAYZERO_ADDRESS or an http(s) RAY_ADDRESS. The Ray plumbing is in cluster/jobs.py; what this module
adds is the recipe side: the entrypoint, the job id, the notes on output_dir and wandb mode.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
from pathlib import Path

import yaml

from cluster.runtime import ClusterError
from pipelines.config import load_config

REPO = Path(__file__).resolve().parents[2]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """This module's subcommands (a command module: pipelines/cli.py `commands()`)."""
    addr = argparse.ArgumentParser(add_help=False)
    addr.add_argument("--address", default="", help="the head's job server, http://HEAD:8265 "
                      "(default: $RAYZERO_ADDRESS, or $RAY_ADDRESS when it is an http address)")
    _add_submit(sub, addr)
    _add_jobs(sub, addr)
    _add_cluster(sub)


def _add_submit(sub: argparse._SubParsersAction, addr: argparse.ArgumentParser) -> None:
    p = sub.add_parser("submit", parents=[addr], help="run a recipe on a remote Ray cluster as a Ray job")
    p.add_argument("args", nargs="*", metavar="[RECIPE] [section.field=value]")
    p.add_argument("--no-pip", action="store_true", help="install nothing: the cluster's image has the stack")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument("--id", default="", help="submission id (default: rayzero-<recipe>-<run.name>-<time>)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra env var for the job")
    p.add_argument("--entrypoint", default="", help="run this command instead of `rayzero run` (same runtime "
                   "env; for checking a cluster's setup)")
    p.add_argument("--entrypoint-cpus", type=float, default=0.0, help="CPUs reserved for the driver (default 0: "
                   "it only waits on the stages, which reserve their own)")


def _add_jobs(sub: argparse._SubParsersAction, addr: argparse.ArgumentParser) -> None:
    j = sub.add_parser("jobs", help="status, logs, stop or list jobs on a Ray cluster")
    jsub = j.add_subparsers(dest="jobs_cmd", required=True)
    for name, text in (("status", "a job's status"), ("logs", "a job's logs"), ("stop", "stop a job")):
        q = jsub.add_parser(name, parents=[addr], help=text)
        q.add_argument("id", metavar="ID")
        if name == "logs":
            q.add_argument("--follow", action="store_true", help="stream until the job ends")
        if name == "stop":
            q.add_argument("--wait", type=float, default=60.0, help="seconds to wait for STOPPED")
    jsub.add_parser("list", parents=[addr], help="jobs on the cluster")


def _add_cluster(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("cluster", help="render cluster templates, plan where actors land")
    csub = c.add_subparsers(dest="cluster_cmd", required=True)
    r = csub.add_parser("render", help="fill a cluster template from a recipe's resource needs")
    r.add_argument("kind", choices=("k8s", "slurm", "ray-up"))
    r.add_argument("overrides", nargs="*", metavar="section.field=value")
    r.add_argument("--recipe", default="tiny")
    r.add_argument("--gpus", type=int, default=0, help="GPUs per worker node")
    r.add_argument("--nodes", type=int, default=1, help="worker nodes (Slurm: nodes in the allocation)")
    r.add_argument("--cpus", type=int, default=None, help="CPUs per node (default: what the recipe needs)")
    r.add_argument("--image", default="", help="container image (default: rayproject/ray of this Ray version)")
    r.add_argument("--no-pip", action="store_true", help="k8s: no pip in the runtime env (image has the stack)")
    r.add_argument("--working-dir-uri", default="", help="k8s: zip URL of this repo for the runtime env")
    r.add_argument("--time", default="24:00:00", help="slurm: time limit")
    r.add_argument("-o", "--output", default="", help="write here instead of stdout")

    pl = csub.add_parser("plan", help="where each stage's actors land on M nodes x N GPUs")
    pl.add_argument("args", nargs="*", metavar="RECIPE [section.field=value]")
    pl.add_argument("--nodes", type=int, default=1, help="worker nodes")
    pl.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node")
    pl.add_argument("--cpus-per-node", type=float, default=None,
                    help="CPUs per node (default: enough for any one stage on one node)")
    pl.add_argument("--gpu-memory-gib", type=float, default=None,
                    help="GiB of one GPU for the memory plan (default run.gpu_memory_gib, 80; 0 = no memory plan)")
    pl.add_argument("--prompt-tokens", type=int, default=None, help="prompt length the memory plan assumes (512)")
    pl.add_argument("--json", action="store_true",
                    help='print {"stages": {stage: [{"actor", "node", "gpu", "memory_gib"}]}, "gpus": {stage: {gpu: GiB}}}')


def run(ns: argparse.Namespace) -> int:
    if ns.cmd == "submit":
        return _submit(ns)
    if ns.cmd == "jobs":
        return _jobs(ns)
    if ns.cluster_cmd == "plan":
        return _plan(ns)
    return _render(ns)


def _split(args: list[str]) -> tuple[str, list[str]]:
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return "tiny", args


def resolve_address(given: str, environ: dict[str, str] | os._Environ = os.environ) -> str:
    if given:
        return given
    if environ.get("RAYZERO_ADDRESS"):
        return environ["RAYZERO_ADDRESS"]
    ray_address = environ.get("RAY_ADDRESS", "")
    if ray_address.startswith(("http://", "https://")):
        return ray_address
    hint = f" (RAY_ADDRESS={ray_address!r} is not the job server's http address)" if ray_address else ""
    raise ClusterError(f"no Ray job server address{hint}: pass --address http://HEAD:8265 or set RAYZERO_ADDRESS")


def _notes(cfg, env: dict[str, str]) -> list[str]:
    notes = []
    if not Path(cfg.run.output_dir).is_absolute():
        notes.append(f"run.output_dir={cfg.run.output_dir!r} is relative: on the cluster it lands in the job's "
                     f"temporary working dir on the head; set run.output_dir to storage every node mounts "
                     f"(e.g. run.output_dir=/mnt/shared/runs)")
    mode = env.get("WANDB_MODE")
    if mode and mode != cfg.run.wandb_mode:
        notes.append(f"WANDB_MODE={mode} is passed on, but the pipeline logs as run.wandb_mode="
                     f"{cfg.run.wandb_mode} (the recipe decides); add run.wandb_mode={mode} to change it")
    return notes


def _submit(ns: argparse.Namespace) -> int:
    from cluster import jobs
    from pipelines.remote import render

    recipe, overrides = _split(ns.args)
    cfg = load_config(recipe, overrides)  # a bad recipe or override fails here, before anything is sent
    address = resolve_address(ns.address)
    env = jobs.forwarded_env()
    for item in ns.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClusterError(f"--env {item!r}: expected KEY=VALUE")
        env[key] = value
    # The pipeline's own ray.init sets wandb/HF worker env vars from the recipe; on a clash the recipe wins
    # (Ray refuses clashing job/driver env vars otherwise).
    env["RAY_OVERRIDE_JOB_RUNTIME_ENV"] = "1"
    spec = jobs.JobSpec(
        entrypoint=ns.entrypoint or render.entrypoint(recipe, overrides),
        submission_id=ns.id or jobs.make_submission_id(Path(recipe).stem, cfg.run.name),
        runtime_env=jobs.runtime_env(REPO, pip=None if ns.no_pip else jobs.pinned_requirements(REPO / "pyproject.toml"),
                                     env_vars=env),
        entrypoint_num_cpus=ns.entrypoint_cpus, entrypoint_num_gpus=0,
        metadata={"rayzero_recipe": Path(recipe).stem, "rayzero_run": cfg.run.name},
    )
    client = jobs.JobClient(address)  # an unreachable head or a bad token fails before the spec is shown
    for note in _notes(cfg, env):
        print(f"rayzero: note: {note}", file=sys.stderr)
    print(yaml.safe_dump({"job": spec.redacted()}, sort_keys=False, width=120), end="")
    job_id = client.submit(spec)
    print(f"rayzero: submitted {job_id} to {client.address}")
    if not ns.follow:
        print(f"rayzero: follow it with: rayzero jobs logs {job_id} --follow --address {client.address}")
        return 0
    return _finish(job_id, client.follow(job_id, write=_write_scrubbed))


def _write_scrubbed(text: str) -> None:
    from cluster.jobs import scrub

    sys.stdout.write(scrub(text))


def _finish(job_id: str, status: str) -> int:
    print(f"rayzero: job {job_id}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def _jobs(ns: argparse.Namespace) -> int:
    from cluster import jobs

    client = jobs.JobClient(resolve_address(ns.address))
    if ns.jobs_cmd == "list":
        rows = sorted(client.list(), key=lambda j: j.get("start_time") or 0)
        print(f"{'SUBMISSION ID':<48} {'STATUS':<10} {'STARTED':<19} ENTRYPOINT")
        for j in rows:
            start = dt.datetime.fromtimestamp(j["start_time"] / 1000).strftime("%Y-%m-%d %H:%M:%S") \
                if j.get("start_time") else "-"
            ep = j.get("entrypoint", "")
            print(f"{j.get('submission_id') or j.get('job_id') or '-':<48} {j['status']:<10} {start:<19} "
                  f"{ep if len(ep) <= 80 else ep[:77] + '...'}")
        return 0
    if ns.jobs_cmd == "status":
        info = client.info(ns.id)
        message = f" ({info['message']})" if info.get("message") else ""
        print(f"{ns.id}: {info['status']}{message}")
        return 0
    if ns.jobs_cmd == "logs":
        if ns.follow:
            return _finish(ns.id, client.follow(ns.id, write=_write_scrubbed))
        print(jobs.scrub(client.logs(ns.id)), end="")
        return 0
    status = client.stop(ns.id, wait_s=ns.wait)
    print(f"{ns.id}: {status}")
    return 0 if status in jobs.TERMINAL else 1


def _render(ns: argparse.Namespace) -> int:
    from pipelines.remote import render

    command = "rayzero " + shlex.join(ns.argv)
    text = render.render(ns.kind, ns.recipe, list(ns.overrides), nodes=ns.nodes, gpus=ns.gpus, cpus=ns.cpus,
                         image=ns.image, pip=not ns.no_pip, working_dir_uri=ns.working_dir_uri,
                         time_limit=ns.time, command=command)
    if ns.output:
        Path(ns.output).write_text(text)
        if ns.kind == "slurm":
            Path(ns.output).chmod(0o755)
        print(f"rayzero: wrote {ns.output}", file=sys.stderr)
    else:
        print(text, end="")
    return 0


def _plan(ns: argparse.Namespace) -> int:
    import json

    from pipelines.remote import plan

    recipe, overrides = _split(ns.args)
    result = plan.plan(recipe, overrides, nodes=ns.nodes, gpus_per_node=ns.gpus_per_node, cpus_per_node=ns.cpus_per_node,
                       gpu_memory_gib=ns.gpu_memory_gib, prompt_tokens=ns.prompt_tokens or plan.memory_plan.PROMPT_TOKENS)
    if ns.json:
        print(json.dumps({"stages": result["stages"], "gpus": result["gpus"]}))
    else:
        labels = {s.name: s.label for s in plan.stages(load_config(recipe, overrides))}
        print(plan.render_text(recipe, result, labels), end="")
    return 0
