"""Executor benchmark: what a cluster adds to a job. For each executor (local, then a one-node Slurm
cluster and a Ray head started here as the tests do, skipped where they can't start), one short job
through the real worker: submit→running latency (until the cluster runs it), its wall time (submit→end), the
ratio of each to the local executor's in this run (goal: a job's wall time ≤ 1.1× local for a 60 s job), and
where the difference goes: submit→first step (scheduling, the node starting the job's interpreter) and
result→end (the job's exit seen by the cluster, then by the worker).

    .venv/bin/python bench/executors.py [job seconds, default 60]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)         # not bench/: its queue.py would hide the stdlib queue from ray
os.environ.update(WORKBENCH_EXTRA_KINDS="sleepy=tests.fixtures.jobs_sleepy", WORKBENCH_POLL_S="0.1",
                  WORKBENCH_ENGINES_DIR=str(ROOT / ".cache" / "envs"))

from backend.runtime import queue  # noqa: E402
from tests import clusters  # noqa: E402
from backend.access import users


def one_job(executor: str, env: dict, seconds: float) -> tuple[float, float, float, float]:
    home = Path(tempfile.mkdtemp(prefix=f"wb-bench-{executor}-"))
    log = open(home / "worker.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "backend", "worker"], cwd=ROOT, stdout=log, stderr=log,
                              env=dict(os.environ, WORKBENCH_HOME=str(home), WORKBENCH_EXECUTOR=executor, **env))
    try:
        deadline = time.monotonic() + 120
        while not queue.live_workers(home):          # a worker that waits for jobs: its start is not the job's
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{executor}: the worker did not start; see {home}/worker.log")
            time.sleep(0.05)
        time.sleep(5)            # a just-started cluster settles (its daemons' start-up work is no job's cost)
        job_id = queue.submit("sleepy", {"steps": int(seconds * 10), "interval_s": 0.1}, home=home, owner="local")
        deadline = time.monotonic() + seconds * 3 + 120
        while not (job := queue.get(job_id, home, by=users.OPERATOR)).finished:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{executor}: the job did not end; see {home}/worker.log")
            time.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait()
    if job.state != "succeeded":
        raise RuntimeError(f"{executor}: job {job.state}: {job.error_message}")
    d = home / "jobs" / str(job_id)
    first_step = json.loads((d / "events.jsonl").open().readline())["t"]
    return (job.started_at - job.created_at, job.finished_at - job.created_at, first_step - job.created_at,
            job.finished_at - (d / "result.json").stat().st_mtime)


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 60.0
    tmp = Path(tempfile.mkdtemp(prefix="wb-bench-clusters-"))
    local = one_job("local", {}, seconds)
    print(f"{'executor':<8} {'submit→running':>15} {'wall':>8} {'latency ×local':>15} {'wall ×local':>12} "
          f"{'submit→1st step':>16} {'result→end':>11}  ({seconds:.0f} s job)")
    row("local", local, local)
    for name, start in (("slurm", clusters.Slurm), ("ray", clusters.Ray)):
        try:
            cluster = start(tmp / name)
        except clusters.Unavailable as e:
            print(f"{name:<8} skipped: {e}")
            continue
        try:
            row(name, one_job(name, cluster.env, seconds), local)
        finally:
            cluster.stop()


def row(name: str, m: tuple, local: tuple) -> None:
    lat, wall, first, end = m
    print(f"{name:<8} {lat:>14.2f}s {wall:>7.2f}s {lat / max(local[0], 1e-3):>15.2f} {wall / local[1]:>12.3f} "
          f"{first:>15.2f}s {end:>10.2f}s")


if __name__ == "__main__":
    main()
