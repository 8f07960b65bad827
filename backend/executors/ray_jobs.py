"""The Ray executor: each job is a Ray job (the Jobs API's JobSubmissionClient) whose entrypoint is the
job's command, GPUs as ``entrypoint_num_gpus``; ``stop_job`` cancels (Ray sends SIGTERM, then SIGKILL);
Ray's job states map to ours. The job writes run.log itself on the shared filesystem (launch.py), so
the log is the same file on every executor and nothing has to copy it back."""
from __future__ import annotations

import json
import shlex
import urllib.request
import uuid
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from backend import defaults
from backend.errors import KILLED, LOST
from backend.executors.base import Handle, Status
from backend.states import JobState

NAME = "ray"


@cache
def client(address: str):
    from ray.job_submission import JobSubmissionClient       # noqa: PLC0415 - heavy; only for this executor
    return JobSubmissionClient(address)


def warm() -> None:
    """Load Ray's client and reach the dashboard when the worker starts, not at its first job's submit."""
    client(defaults.setting("RAY_ADDRESS"))


def submit(job_id: int, job_dir: Path, command: list[str], asked: dict, timeout_s: float, grace_s: float) -> Handle:
    address = defaults.setting("RAY_ADDRESS")
    ray_id = f"workbench-{job_id}-{uuid.uuid4().hex[:8]}"       # unique across workspaces on one cluster
    options = {"entrypoint_num_gpus": int(asked["gpus"])} if asked.get("gpus") else {}
    if asked.get("mem_gb"):
        options["entrypoint_memory"] = int(float(asked["mem_gb"]) * 2**30)
    client(address).submit_job(entrypoint=shlex.join(command), submission_id=ray_id,
                               metadata={"workbench_job": str(job_id)}, **options)
    return RayJob({"executor": NAME, "id": ray_id, "address": address})


def free_gpus() -> tuple[int, int] | None:
    """(GPUs free, GPUs in all) from the dashboard's cluster status (what ``ray status`` prints); None until
    its first report."""
    address = defaults.setting("RAY_ADDRESS").rstrip("/")
    with urllib.request.urlopen(address + "/api/cluster_status", timeout=10) as r:
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
