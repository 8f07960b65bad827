"""The Slurm executor: each job is an sbatch script in its job folder; its state comes from
``scontrol show job`` (squeue's view, and the end of a job for MinJobAge seconds, with no slurmdbd needed
as sacct would); a cancel is ``scancel --signal=TERM --full`` (the batch script itself, not only its
steps), then ``scancel`` after the grace period."""
from __future__ import annotations

import math
import re
import shlex
import subprocess
from pathlib import Path

from backend.core import defaults
from backend.core.errors import KILLED, LOST, OUT_OF_MEMORY, TIMEOUT
from backend.runtime.executors.base import Handle, Status
from backend.core.states import JobState

NAME = "slurm"
UNUSABLE = ("down", "drain", "fail", "inval", "maint", "unknown", "not_responding")   # node states that take no job
PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"}
# how the cluster ended a job that did not end by itself: (our state, error class, what it means)
ENDED_BY_SLURM = {
    "NODE_FAIL": (JobState.LOST, LOST, "its node failed"),
    "BOOT_FAIL": (JobState.LOST, LOST, "its node failed to boot"),
    "PREEMPTED": (JobState.LOST, LOST, "it was preempted by another job"),
    "DEADLINE": (JobState.FAILED, TIMEOUT, "it reached its deadline"),
    "TIMEOUT": (JobState.FAILED, TIMEOUT, "it reached its time limit"),
    "OUT_OF_MEMORY": (JobState.FAILED, OUT_OF_MEMORY, "it went past its memory limit"),
    "CANCELLED": (JobState.FAILED, KILLED, "it was cancelled outside the workbench"),
}


def _run(*args: str) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if out.returncode:
        raise RuntimeError((out.stderr or out.stdout).strip() or f"{args[0]} exited {out.returncode}")
    return out.stdout


def script(job_id: int, job_dir: Path, command: list[str], asked: dict, timeout_s: float, grace_s: float) -> str:
    """The batch script: resources as #SBATCH lines, output appended to run.log, the command exec'd."""
    lines = ["#!/bin/sh", f"#SBATCH --job-name=workbench-{job_id}", f"#SBATCH --output={job_dir / 'run.log'}",
             "#SBATCH --open-mode=append", f"#SBATCH --chdir={defaults.ROOT}", "#SBATCH --export=NONE",
             "#SBATCH --ntasks=1", f"#SBATCH --cpus-per-task={max(1, int(asked.get('cpu_slots') or 1))}"]
    if asked.get("gpus"):
        lines.append(f"#SBATCH --gres=gpu:{int(asked['gpus'])}")
    if asked.get("mem_gb"):
        lines.append(f"#SBATCH --mem={math.ceil(float(asked['mem_gb']))}G")
    if timeout_s:       # the worker stops it at timeout_s; Slurm's limit is the backstop after the grace
        lines.append(f"#SBATCH --time={math.ceil((timeout_s + grace_s) / 60)}")
    for name in ("PARTITION", "ACCOUNT", "QOS"):
        if value := defaults.setting("SLURM_" + name):
            lines.append(f"#SBATCH --{name.lower()}={value}")
    return "\n".join(lines + ["", "exec " + shlex.join(command), ""])


def warm() -> None:
    """Nothing to load: sbatch, scontrol and scancel are commands."""


def submit(job_id: int, job_dir: Path, command: list[str], asked: dict, timeout_s: float, grace_s: float) -> Handle:
    path = job_dir / "job.sbatch"
    path.write_text(script(job_id, job_dir, command, asked, timeout_s, grace_s), encoding="utf-8")
    extra = shlex.split(defaults.setting("SLURM_SBATCH_ARGS"))
    slurm_id = _run("sbatch", "--parsable", *extra, str(path)).strip().split(";")[0]
    return SlurmJob({"executor": NAME, "id": slurm_id})


def free_gpus() -> tuple[int, int]:
    """(GPUs free on the nodes that take jobs, GPUs in all) from sinfo's per-node gres and gres used."""
    out = _run("sinfo", "-h", "-N", "-O", "NodeHost:200|,Gres:500|,GresUsed:500|,StateLong:50")
    nodes = {}                  # a node in several partitions has a line in each
    for line in out.splitlines():
        node, gres, used, node_state = (x.strip() for x in line.split("|")[:4])
        nodes[node] = _gpus(gres), _gpus(used), node_state.startswith(UNUSABLE)
    free = sum(max(0, have - used) for have, used, unusable in nodes.values() if not unusable)
    return free, sum(have for have, _, _ in nodes.values())


def _gpus(gres: str) -> int:
    """The GPU count in a gres list like ``gpu:a100:2(S:0-1),shard:8`` or ``gpu:1(IDX:0)``."""
    return sum(int(m[1]) for m in re.finditer(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def attach(ident: dict) -> Handle:
    return SlurmJob(ident)


def fields(text: str) -> dict[str, str]:
    """``scontrol show job -o``'s Key=Value pairs."""
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))


class SlurmJob(Handle):
    executor = NAME

    def _ask(self) -> Status:
        try:
            info = fields(_run("scontrol", "show", "job", "-o", self.ident["id"]))
        except RuntimeError as e:
            if "Invalid job id" not in str(e):
                raise
            # gone from the controller (MinJobAge after its end): its result.json, if any, says how it ended
            return Status("ended", None, (JobState.LOST, LOST, f"Slurm no longer knows job {self.ident['id']}"))
        state = info.get("JobState", "")
        if state in PENDING:
            return Status("pending")
        if state not in ENDED_BY_SLURM and state not in ("COMPLETED", "FAILED"):     # RUNNING, COMPLETING, SUSPENDED...
            return Status("running", node=info.get("BatchHost") or info.get("NodeList", ""))
        if state in ENDED_BY_SLURM:     # its exit code is Slurm's, not the job's: its result.json (if any) says more
            cls_state, cls, why = ENDED_BY_SLURM[state]
            return Status("ended", None, (cls_state, cls, f"Slurm job {self.ident['id']} ended {state}: {why}"))
        code, sig = (int(x) for x in (info.get("ExitCode") or "0:0").split(":"))
        return Status("ended", -sig if sig else code)

    def _stop(self, force: bool) -> None:
        if force or self._status.phase == "pending":
            _run("scancel", self.ident["id"])
        else:
            _run("scancel", "--signal=TERM", "--full", self.ident["id"])
