"""How the worker runs a claimed job: ``local`` (subprocesses on this machine, run by backend/runtime/worker.py
itself: process groups, adoption by pid, out-of-memory detection), ``slurm`` (sbatch) or ``ray`` (the Ray
Jobs API), chosen by WORKBENCH_EXECUTOR. The store stays the only truth about jobs; a cluster only runs
them.

A cluster executor gives the worker a ``Handle`` per job: ``ident`` (recorded in the job folder's
process.json, so a restarted worker finds the job again with ``attach``), ``poll()`` (a ``Status``, at
most once per POLL_S from the cluster, never raising: a cluster that does not answer leaves the last
status) and ``stop(force)`` (the first stage of a cancel, then the forced one after the grace period).

Both run the same command on a node: ``<engine python> backend/runtime/executors/launch.py <job>/launch.json``,
which takes the job's environment (secrets included) from that file, deletes it, sends output to run.log
and execs ``python -m jobs.<kind> spec.json``. So secrets never enter the scheduler's state or dashboard,
and a job's files are the same on every executor: the workspace must be on a filesystem the nodes share.
"""
from __future__ import annotations

import time

from backend.core import defaults
from backend.runtime.executors import ray_jobs, slurm
from backend.runtime.executors.base import Handle, Status   # noqa: F401 - the executors' API

LOCAL = "local"
MODULES = {"slurm": slurm, "ray": ray_jobs}
GPUS_TTL_S = 15.0               # how long the cluster's free GPUs are reused: viewers' reruns don't run sinfo
_gpus: dict[str, tuple[float, tuple[int, int] | None]] = {}


def module(name: str):
    """The executor module for a name (None for local)."""
    if name == LOCAL:
        return None
    if name not in MODULES:
        raise ValueError(f"unknown executor {name!r}: use local, slurm or ray")
    return MODULES[name]


def cluster_gpus() -> dict | None:
    """``{executor, free, total}``: the GPUs of the configured executor's cluster, at most GPUS_TTL_S old
    (free and total None when the cluster can't tell now); None with the local executor (resources.gpus())."""
    name = defaults.setting("EXECUTOR")
    if name == LOCAL:
        return None
    asked, value = _gpus.get(name, (-GPUS_TTL_S, None))
    if time.monotonic() - asked >= GPUS_TTL_S:
        try:
            value = module(name).free_gpus()
        except Exception as e:  # noqa: BLE001 - a cluster that does not answer: shown as unknown
            print(f"{name}: free GPUs unknown ({type(e).__name__}: {e})", flush=True)
            value = None
        _gpus[name] = (time.monotonic(), value)
    return {"executor": name, "free": value and value[0], "total": value and value[1]}


def attach(ident: dict) -> Handle:
    """The handle of a job a previous worker launched (from its process.json)."""
    return MODULES[ident["executor"]].attach(ident)
