"""Queue benchmark: submit→running latency, a job's wall time against the same command run directly,
and one log refresh on a 100 MB log against one on a 1 KB log. Prints ratios measured in this run.

    .venv/bin/python bench/queue.py
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)            # not bench/: its queue.py and datasets.py would shadow real modules
HOME = Path(tempfile.mkdtemp(prefix="wb-bench-"))
os.environ.update(WORKBENCH_HOME=str(HOME), WORKBENCH_EXTRA_KINDS="sleepy=tests.fixtures.jobs_sleepy")

from backend.access import users
from backend.core import defaults, paths
from backend.runtime import logs, queue  # noqa: E402

SPEC = {"steps": 20, "interval_s": 0.1}


def wait(job_id, states, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = queue.get(job_id, home=defaults.home(), by=users.OPERATOR)
        if job.state in states:
            return job
        time.sleep(0.005)
    raise TimeoutError(job_id)


def main() -> None:
    worker = subprocess.Popen([sys.executable, "-m", "backend", "worker"], cwd=ROOT, env=os.environ,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        latencies, via_queue = [], []
        for _ in range(5):
            t0 = time.monotonic()
            job = queue.submit("sleepy", SPEC, owner="local", home=defaults.home())
            wait(job, {"running"})
            latencies.append(time.monotonic() - t0)
            wait(job, {"succeeded"})
            via_queue.append(time.monotonic() - t0)
    finally:
        worker.terminate()
        worker.wait()

    direct = []
    spec_dir = HOME / "direct"
    spec_dir.mkdir()
    (spec_dir / "spec.json").write_text(json.dumps(SPEC))
    for _ in range(5):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "tests.fixtures.jobs_sleepy", str(spec_dir / "spec.json")], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL)
        direct.append(time.monotonic() - t0)

    print(f"submit→running latency, idle worker (poll {os.environ.get('WORKBENCH_POLL_S', '0.5')} s): "
          f"median {statistics.median(latencies) * 1000:.0f} ms")
    ratio = statistics.median(via_queue) / statistics.median(direct)
    print(f"job wall time submit→succeeded {statistics.median(via_queue):.2f} s vs direct "
          f"{statistics.median(direct):.2f} s: ratio {ratio:.3f} (goal ≤ 1.05 for the run itself, see below)")
    run_times = [j.finished_at - j.started_at for j in queue.list_jobs(states=["succeeded"], home=defaults.home(), by=users.OPERATOR)]
    print(f"job wall time started→finished {statistics.median(run_times):.2f} s vs direct: ratio "
          f"{statistics.median(run_times) / statistics.median(direct):.3f} (goal ≤ 1.05)")

    small, big = 900001, 900002
    for job_id, size in ((small, 1024), (big, 100 * 2**20)):
        d = paths.job_dir(job_id, home=defaults.home())
        d.mkdir(parents=True)
        line = b"x" * 99 + b"\n"
        with open(d / "run.log", "wb") as f:
            for _ in range(size // 100):
                f.write(line)

    def refresh_cost(job_id):
        """A page's refresh: read what is new since its offset after one new line was written."""
        _, offset = logs.read_log(job_id, 0, home=defaults.home())
        samples = []
        for _ in range(200):
            with open(paths.job_dir(job_id, home=defaults.home()) / "run.log", "ab") as f:
                f.write(b"step line\n")
            t0 = time.perf_counter()
            _, offset = logs.read_log(job_id, offset, home=defaults.home())
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    def open_cost(job_id):
        samples = []
        for _ in range(50):
            t0 = time.perf_counter()
            logs.read_log(job_id, 0, home=defaults.home())
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    r_small, r_big = refresh_cost(small), refresh_cost(big)
    o_small, o_big = open_cost(small), open_cost(big)
    print(f"log refresh: 100 MB log {r_big * 1e6:.0f} µs vs 1 KB log {r_small * 1e6:.0f} µs: ratio {r_big / r_small:.2f} (goal ≤ 1.2)")
    print(f"log first open (newest 64 KB): 100 MB log {o_big * 1e6:.0f} µs vs 1 KB log {o_small * 1e6:.0f} µs: "
          f"ratio {o_big / o_small:.2f}")


if __name__ == "__main__":
    main()
