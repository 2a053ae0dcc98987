"""Ray job submission: run a command on a remote Ray cluster through its job server (the dashboard,
`http://HEAD:8265`), with the repository as working_dir, pinned requirements and forwarded settings.

This wraps `ray.job_submission.JobSubmissionClient`; it adds what rayzero needs around it:

- a runtime env built from a local checkout: `working_dir` = the repo minus `runs/`, `.venv/`, `.git/`,
  wandb folders and other bulk (`excludes`), `pip` = the pins of pyproject.toml's dependencies (unless
  the cluster's image already has the stack: `pip=None`), and `env_vars` = wandb/HF settings from the
  submitter's environment, secrets (`WANDB_API_KEY`, `HF_TOKEN`) included;
- secrets are sent because the job needs them, but never printed: everything this module shows goes
  through `redact()`. Ray itself keeps the runtime env (env vars included) in the cluster's GCS and
  shows it in the dashboard's job view, to anyone who can reach the dashboard;
- Ray 2.60 token auth: heads start with token authentication on by default. `RAY_AUTH_MODE=disabled`
  sends no token; otherwise the token from `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or
  `~/.ray/auth_token` is sent (required when `RAY_AUTH_MODE=token`);
- failures (unreachable head, rejected token, unknown job) become one-line `ClusterError`s that name
  the address and say what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlparse

from cluster.runtime import ClusterError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

# Never uploaded with the working dir (gitignore syntax, relative to the repo root).
DEFAULT_EXCLUDES = [
    "/runs/", "/.venv/", "venv/", "/.git/", "wandb/", "__pycache__/", "*.egg-info/", ".pytest_cache/",
    ".hypothesis/", "/build/", "/.whl/", "/scratch/", "*.safetensors", "*.bin", "*.pt", "*.gguf", "*.ckpt",
]
# Forwarded from the submitter's environment when set.
FORWARD_ENV = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL")
FORWARD_PREFIXES = ("HF_HUB_",)
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN")
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)", re.I)
REDACTED = "***"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Packages the cluster already runs (installing another Ray into a job's env breaks it).
ALREADY_ON_CLUSTER = ("ray",)


def is_secret(name: str) -> bool:
    return name in SECRET_ENV or bool(_SECRET_NAME.search(name))


def redact(obj: Any) -> Any:
    """A copy of `obj` (a job spec, a runtime env, job info) with every secret env value shown as ***."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if k == "env_vars" and isinstance(v, Mapping):
                out[k] = {n: (REDACTED if is_secret(str(n)) else val) for n, val in v.items()}
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v) for v in obj)
    return obj


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` (job logs) with the submitter's secret values replaced by ***, in case a job prints them."""
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if is_secret(name) and len(value) >= 6:
            text = text.replace(value, REDACTED)
    return text


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """wandb/HF settings and secrets to pass on to the job, read from the submitter's environment."""
    env = os.environ if environ is None else environ
    keys = [k for k in env if k in FORWARD_ENV or k in SECRET_ENV or k.startswith(FORWARD_PREFIXES)]
    return {k: env[k] for k in sorted(keys) if env[k] != ""}


def pinned_requirements(pyproject: Path, skip: tuple[str, ...] = ALREADY_ON_CLUSTER) -> list[str]:
    """`[project].dependencies` of a pyproject.toml, minus packages the cluster already runs (Ray)."""
    try:
        deps = tomllib.loads(Path(pyproject).read_text())["project"]["dependencies"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise ClusterError(f"{pyproject}: cannot read [project].dependencies ({e.__class__.__name__}: {e}); "
                           f"pass pip=None (--no-pip) if the cluster's image already has the stack") from None
    name = re.compile(r"^\s*([A-Za-z0-9_.-]+)")
    return [d for d in deps if (m := name.match(d)) and m.group(1).lower() not in skip]


def make_submission_id(*parts: str, now: _dt.datetime | None = None) -> str:
    """A readable, unique-per-second job id: `rayzero-<parts>-<YYYYmmdd-HHMMSS>`, reduced to [A-Za-z0-9_-]."""
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    text = "-".join(["rayzero", *[p for p in parts if p], stamp])
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9_-]", "-", text)).strip("-")


def runtime_env(working_dir: str | Path | None, *, pip: list[str] | None = None,
                env_vars: Mapping[str, str] | None = None, excludes: list[str] | None = None) -> dict:
    env: dict[str, Any] = {}
    if working_dir is not None:
        wd = Path(working_dir).resolve()
        if not wd.is_dir():
            raise ClusterError(f"working_dir {wd} is not a directory")
        env["working_dir"] = str(wd)
        env["excludes"] = list(DEFAULT_EXCLUDES if excludes is None else excludes)
    if pip:
        env["pip"] = {"packages": list(pip), "pip_check": False}
    if env_vars:
        env["env_vars"] = {str(k): str(v) for k, v in env_vars.items()}
    return env


@dataclass(frozen=True)
class JobSpec:
    """Everything sent to the job server for one job."""

    entrypoint: str
    submission_id: str
    runtime_env: dict = field(default_factory=dict)
    entrypoint_num_cpus: float = 0
    entrypoint_num_gpus: float = 0
    metadata: dict = field(default_factory=dict)

    def redacted(self) -> dict:
        """The printable form: secret env values are ***."""
        return redact({"submission_id": self.submission_id, "entrypoint": self.entrypoint,
                       "entrypoint_num_cpus": self.entrypoint_num_cpus,
                       "entrypoint_num_gpus": self.entrypoint_num_gpus,
                       "metadata": self.metadata, "runtime_env": self.runtime_env})


# ---------------------------------------------------------------------------------------------
# Addresses and authentication


def normalize_address(address: str) -> str:
    """`HEAD:8265` -> `http://HEAD:8265`; only the job server's http(s) address is accepted."""
    address = (address or "").strip().rstrip("/")
    if not address:
        raise ClusterError("no Ray job server address: pass --address http://HEAD:8265 or set RAYZERO_ADDRESS "
                           "(or RAY_ADDRESS) to it")
    if "://" not in address:
        address = f"http://{address}"
    scheme = address.split("://", 1)[0]
    if scheme not in ("http", "https"):
        raise ClusterError(f"address '{address}': jobs go through the head's dashboard, give its http address "
                           f"(e.g. http://HEAD:8265), not a {scheme}:// address")
    return address


def auth_token(environ: Mapping[str, str] | None = None) -> str | None:
    """The Ray auth token, looked up as Ray does: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return env["RAY_AUTH_TOKEN"].strip()
    path = Path(env["RAY_AUTH_TOKEN_PATH"]) if env.get("RAY_AUTH_TOKEN_PATH") else Path.home() / ".ray" / "auth_token"
    try:
        return path.read_text().strip() or None
    except OSError:
        if env.get("RAY_AUTH_TOKEN_PATH"):
            raise ClusterError(f"RAY_AUTH_TOKEN_PATH={path} cannot be read; point it at the cluster's token "
                               f"file or unset it") from None
        return None


def auth_headers(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    mode = env.get("RAY_AUTH_MODE", "").strip().lower()
    if mode == "disabled":
        return {}
    token = auth_token(env)
    if mode == "token" and not token:
        raise ClusterError("RAY_AUTH_MODE=token but no Ray auth token found: set RAY_AUTH_TOKEN (or "
                           "RAY_AUTH_TOKEN_PATH) to the head's ~/.ray/auth_token")
    return {"Authorization": f"Bearer {token}"} if token else {}


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


@contextlib.contextmanager
def _errors(address: str, what: str) -> Iterator[None]:
    """Turn the job client's exceptions into one-line ClusterErrors naming the address and the fix."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except ClusterError:
        raise
    except AuthenticationError as e:
        rejected = "Forbidden" in str(e) or "invalid" in str(e).lower()
        why = "rejected the Ray auth token" if rejected else "requires a Ray auth token and none was sent"
        raise ClusterError(f"{what}: the Ray cluster at {address} {why}; set RAY_AUTH_TOKEN (or "
                           f"RAY_AUTH_TOKEN_PATH) to the token in the head's ~/.ray/auth_token, or start the "
                           f"cluster with RAY_AUTH_MODE=disabled") from None
    except (ConnectionError, requests.RequestException) as e:
        raise ClusterError(f"{what}: cannot reach the Ray job server at {address} ({_one_line(e, 120)}); check "
                           f"that the head is up and its dashboard port is reachable, then pass --address "
                           f"http://HEAD:8265 or set RAYZERO_ADDRESS") from None
    except (RuntimeError, ValueError) as e:
        raise ClusterError(f"{what} at {address}: {_one_line(e)}") from None


def _probe(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast (seconds, not the OS's connect timeout) when nothing listens at the address."""
    url = urlparse(address)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray job server at {address} ({e.__class__.__name__}: "
                           f"{_one_line(e, 80)}); check that the head is up and its dashboard port is reachable, "
                           f"then pass --address http://HEAD:8265 or set RAYZERO_ADDRESS") from None


@contextlib.contextmanager
def _only_address(address: str) -> Iterator[None]:
    """JobSubmissionClient lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its `address` argument;
    rayzero's explicit address wins instead."""
    saved = {k: os.environ.get(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")}
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    os.environ.pop("RAY_ADDRESS", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------------------------
# The client


class JobClient:
    """A connected job client for one cluster; every method raises ClusterError on failure."""

    def __init__(self, address: str, environ: Mapping[str, str] | None = None):
        from ray.job_submission import JobSubmissionClient

        self.address = normalize_address(address)
        headers = auth_headers(environ)
        _probe(self.address)
        with _errors(self.address, "connect"), _only_address(self.address):
            self._client = JobSubmissionClient(self.address, headers=headers)

    def submit(self, spec: JobSpec) -> str:
        with _errors(self.address, "submit"):
            return self._client.submit_job(
                entrypoint=spec.entrypoint, submission_id=spec.submission_id, runtime_env=spec.runtime_env,
                metadata=spec.metadata or None, entrypoint_num_cpus=spec.entrypoint_num_cpus,
                entrypoint_num_gpus=spec.entrypoint_num_gpus)

    def info(self, job_id: str) -> dict:
        with _errors(self.address, f"job '{job_id}'"):
            info = self._client.get_job_info(job_id)
        return redact(_as_dict(info))

    def status(self, job_id: str) -> str:
        with _errors(self.address, f"job '{job_id}'"):
            return str(self._client.get_job_status(job_id))

    def logs(self, job_id: str) -> str:
        with _errors(self.address, f"logs of job '{job_id}'"):
            return self._client.get_job_logs(job_id)

    def follow(self, job_id: str, write: Callable[[str], Any] = sys.stdout.write) -> str:
        """Stream the job's logs until it ends (`tail_job_logs`); returns its final status."""

        async def tail() -> None:
            async for chunk in self._client.tail_job_logs(job_id):
                write(chunk)
                if hasattr(sys.stdout, "flush"):
                    sys.stdout.flush()

        with _errors(self.address, f"logs of job '{job_id}'"):
            asyncio.run(tail())
        return self.wait(job_id, timeout_s=30)

    def wait(self, job_id: str, timeout_s: float = 600, poll_s: float = 0.5) -> str:
        """Poll until the job reaches a terminal status (or the timeout); returns the last status."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(job_id)
            if status in TERMINAL or time.monotonic() > deadline:
                return status
            time.sleep(poll_s)

    def stop(self, job_id: str, wait_s: float = 30) -> str:
        """Ask the job to stop (SIGTERM, then SIGKILL after Ray's grace period); returns its status."""
        with _errors(self.address, f"stop job '{job_id}'"):
            self._client.stop_job(job_id)
        return self.wait(job_id, timeout_s=wait_s)

    def list(self) -> list[dict]:
        with _errors(self.address, "list jobs"):
            jobs = self._client.list_jobs()
        return [redact(_as_dict(j)) for j in jobs]


def _as_dict(info: Any) -> dict:
    if hasattr(info, "model_dump"):
        d = info.model_dump()
    elif hasattr(info, "dict"):
        d = info.dict()
    else:
        d = dict(vars(info))
    return {k: (str(v) if k == "status" else v) for k, v in d.items()}


def submit(address: str, entrypoint: str, *, working_dir: str | Path | None, requirements: list[str] | None = None,
           env_vars: Mapping[str, str] | None = None, entrypoint_num_cpus: float = 0,
           entrypoint_num_gpus: float = 0, submission_id: str | None = None,
           excludes: list[str] | None = None) -> str:
    """Submit `entrypoint` to the cluster at `address`; returns the submission id."""
    spec = JobSpec(entrypoint=entrypoint, submission_id=submission_id or make_submission_id(),
                   runtime_env=runtime_env(working_dir, pip=requirements, env_vars=env_vars, excludes=excludes),
                   entrypoint_num_cpus=entrypoint_num_cpus, entrypoint_num_gpus=entrypoint_num_gpus)
    return JobClient(address).submit(spec)
