"""The Ray executor: each job is a Ray job (the Jobs API's JobSubmissionClient) whose entrypoint is the
job's command, GPUs as ``entrypoint_num_gpus``; ``stop_job`` cancels (Ray sends SIGTERM, then SIGKILL);
Ray's job states map to ours. The job writes run.log itself on the shared filesystem (launch.py), so
the log is the same file on every executor and nothing has to copy it back.

Ray's Jobs API runs any command it is sent as the cluster's user. Ray (2.52+) can require a token on it
(``RAY_AUTH_MODE=token`` on the cluster); the executor sends the token from where Ray's own tools look for
it (``RAY_AUTH_TOKEN``, the file ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``) on every request. On a
shared box (``WORKBENCH_AUTH`` accounts or header) it refuses a cluster that answers without a token, or
having no token to send: anyone on the box could otherwise run code as the workbench."""
from __future__ import annotations

import json
import os
import shlex
import urllib.error
import urllib.request
import uuid
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from backend.access import users
from backend.core import defaults
from backend.core.errors import KILLED, LOST, UserError
from backend.runtime.executors.base import Handle, Status
from backend.core.states import JobState

NAME = "ray"


def token() -> str:
    """The cluster's token where Ray's own tools find it; "" when there is none."""
    if value := os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return value
    try:
        return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").read_text().strip()
    except OSError:
        return ""


def headers(secret: str | None = None) -> dict[str, str]:
    """The Authorization header for ``secret`` (default: the token where Ray's tools find it); none without one."""
    secret = token() if secret is None else secret
    return {"Authorization": f"Bearer {secret}"} if secret else {}


def open_to_anyone(address: str) -> bool:
    """Whether the Jobs API at ``address`` answers a request that carries no token."""
    try:
        with urllib.request.urlopen(address.rstrip("/") + "/api/jobs/", timeout=10):
            return True
    except urllib.error.HTTPError as e:
        return e.code not in (401, 403)


def guard(address: str) -> None:
    """On a shared box, before every job: the cluster asks for a token and we have one. Asked each time, not once
    per worker: a cluster restarted without token mode, or a token taken away, stops the next job."""
    if users.mode() != "none":
        if open_to_anyone(address):
            raise UserError("err.ray.open", address=address)
        if not token():
            raise UserError("err.ray.no_token", address=address)


def client(address: str):
    return _client(address, token())           # a new token (rotated) gets a new client


@cache
def _client(address: str, secret: str):
    from ray.job_submission import JobSubmissionClient       # noqa: PLC0415 - heavy; only for this executor
    return JobSubmissionClient(address, headers=headers(secret))


def warm() -> None:
    """Load Ray's client and reach the dashboard when the worker starts, not at its first job's submit."""
    guard(address := defaults.setting("RAY_ADDRESS"))
    client(address)


def submit(job_id: int, job_dir: Path, command: list[str], asked: dict, timeout_s: float, grace_s: float) -> Handle:
    address = defaults.setting("RAY_ADDRESS")
    ray_id = f"workbench-{job_id}-{uuid.uuid4().hex[:8]}"       # unique across workspaces on one cluster
    options = {"entrypoint_num_gpus": int(asked["gpus"])} if asked.get("gpus") else {}
    if asked.get("mem_gb"):
        options["entrypoint_memory"] = int(float(asked["mem_gb"]) * 2**30)
    guard(address)
    client(address).submit_job(entrypoint=shlex.join(command), submission_id=ray_id,
                               metadata={"workbench_job": str(job_id)}, **options)
    return RayJob({"executor": NAME, "id": ray_id, "address": address})


def free_gpus() -> tuple[int, int] | None:
    """(GPUs free, GPUs in all) from the dashboard's cluster status (what ``ray status`` prints); None until
    its first report."""
    address = defaults.setting("RAY_ADDRESS").rstrip("/")
    with urllib.request.urlopen(urllib.request.Request(address + "/api/cluster_status", headers=headers()),
                                timeout=10) as r:
        usage = json.load(r)["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
    if not usage:
        return None
    used, total = usage.get("GPU", (0, 0))
    return int(total - used), int(total)


def attach(ident: dict) -> Handle:
    return RayJob(ident)


class RayJob(Handle):
    executor = NAME

    def _ask(self) -> Status:
        info = client(self.ident["address"]).get_job_info(self.ident["id"])
        state = str(info.status.value if hasattr(info.status, "value") else info.status)
        if state == "PENDING":
            return Status("pending")
        if state == "RUNNING":        # the job runs beside its supervisor, on the node of that agent
            return Status("running", node=urlparse(info.driver_agent_http_address or "").hostname or "")
        code = info.driver_exit_code
        if state == "SUCCEEDED":
            return Status("ended", 0 if code is None else code)
        why = f"Ray job {self.ident['id']} ended {state}" + (f": {info.message}" if info.message else "")
        if state == "STOPPED":
            return Status("ended", code, (JobState.FAILED, KILLED, why + " (stopped outside the workbench)"))
        if code is None:          # FAILED without an exit of its own: its supervisor or node died
            return Status("ended", None, (JobState.LOST, LOST, why))
        return Status("ended", code)

    def _stop(self, force: bool) -> None:
        client(self.ident["address"]).stop_job(self.ident["id"])
