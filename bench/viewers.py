"""Live-view benchmark: what browser tabs following a job cost the app process, and how soon a new log
line shows. Starts the real app and worker on a temporary workspace, runs a test job that writes a log
line and a metric point every 0.2 s, opens N headless Chromium sessions (one browser, one context each)
on the job's Jobs page, and reads the app's CPU time from /proc. Then the same on the finished job.

    .venv/bin/python bench/viewers.py [--root DIR] [--viewers 0,1,5,10] [--window 20]

``--root`` runs another checkout's app (for a before/after comparison); the bench itself stays here.
Goals (issue 16): ≤ 0.6 app CPU-s per viewer-minute live, ≤ 0.1 finished, a new log line within 2 s.
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[0] = str(HERE)               # not bench/ (its queue.py)
from tests.conftest import app_healthy, free_port, wait_for

CHROMIUM = os.environ.get("WORKBENCH_CHROMIUM", "/usr/bin/chromium")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def browser_cpu_s(skip: set[int]) -> float:
    """CPU seconds of this process's descendants outside ``skip`` (the app and the worker): the browser."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit():
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(p.name))
        except (OSError, IndexError):
            continue
    total, todo = 0.0, [c for c in children.get(os.getpid(), []) if c not in skip]
    while todo:
        pid = todo.pop()
        try:
            total += cpu_s(pid)
        except (OSError, IndexError):
            pass
        todo += children.get(pid, [])
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(HERE), help="checkout whose app and worker to run")
    ap.add_argument("--viewers", default="0,1,5,10")
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured per viewer count")
    args = ap.parse_args()
    root, counts = Path(args.root).resolve(), [int(n) for n in args.viewers.split(",")]
    home = Path(tempfile.mkdtemp(prefix="wb-viewers-"))
    env = dict(os.environ, WORKBENCH_HOME=str(home), PYTHONUNBUFFERED="1",
               WORKBENCH_EXTRA_KINDS="sleepy=tests.fixtures.jobs_sleepy")
    py = str(root / ".venv" / "bin" / "python")
    url = f"http://127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([py, "-m", "backend", "worker"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True),
             subprocess.Popen([py, "-m", "pages", "--server.address", "127.0.0.1", "--server.port", url.rsplit(":", 1)[1],
                               "--server.headless", "true", "--browser.gatherUsageStats", "false"],
                              cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    app_pid, skip = procs[1].pid, {p.pid for p in procs}

    def submit(steps: int) -> int:
        spec = home / "spec.yaml"
        spec.write_text(f"steps: {steps}\ninterval_s: 0.2\n")
        out = subprocess.run([py, "-m", "backend", "submit", "sleepy", str(spec)], cwd=root, env=env,
                             capture_output=True, text=True, check=True).stdout
        return int(out.strip().splitlines()[-1])

    from playwright.sync_api import sync_playwright
    try:
        wait_for(lambda: app_healthy(url), 60, 0.2, "the app")
        long_steps = int(sum(counts) * (args.window + 15) / 0.2 + 600)
        job = submit(long_steps)
        log = home / "jobs" / str(job) / "run.log"
        wait_for(log.exists, 60, 0.2, "the job to start")
        print(f"app: {root}  job {job} writes a log line + a metric point every 0.2 s; window {args.window:.0f} s")
        print(f"{'state':9} {'viewers':>7} {'app CPU-s/min':>13} {'per viewer-min':>14} {'browser CPU-s/min':>17}"
              f" {'log latency med/max s':>21}")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            idle_rate = None
            for state in ("live", "finished"):
                if state == "finished":
                    subprocess.run([py, "-m", "backend", "cancel", str(job)], cwd=root, env=env, capture_output=True,
                                   check=True)
                    wait_for(lambda: "cancelled" in subprocess.run([py, "-m", "backend", "show", str(job)], cwd=root,
                                                               env=env, capture_output=True, text=True,
                                                               check=False).stdout, 60, 0.5, "the job to end")
                for n in counts:
                    pages = []
                    for _ in range(n):
                        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
                        page.goto(f"{url}/jobs?job={job}")
                        page.locator(f".st-key-joblog-{job}").get_by_text("step ").first.wait_for(timeout=60_000)
                        pages.append(page)
                    time.sleep(3)                       # let start-up work settle before measuring
                    app0, br0, t0 = cpu_s(app_pid), browser_cpu_s(skip), time.monotonic()
                    lat = []
                    while time.monotonic() - t0 < args.window:
                        if pages and state == "live":
                            lat.append(latency(log, pages[0], job))
                        else:
                            time.sleep(0.5)
                    minutes = (time.monotonic() - t0) / 60
                    app_rate = (cpu_s(app_pid) - app0) / minutes
                    br_rate = (browser_cpu_s(skip) - br0) / minutes
                    if n == 0:
                        idle_rate = app_rate
                    per = (app_rate - (idle_rate or 0.0)) / n if n else float("nan")
                    lat_s = f"{statistics.median(lat):.2f} / {max(lat):.2f}" if lat else "-"
                    print(f"{state:9} {n:7d} {app_rate:13.2f} {per:14.2f} {br_rate:17.2f} {lat_s:>21}", flush=True)
                    for page in pages:
                        page.context.close()
            browser.close()
        print("goals: per viewer-min ≤ 0.6 live, ≤ 0.1 finished; log latency ≤ 2 s")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def latency(log: Path, page, job: int) -> float:
    """Seconds from a new line landing in run.log to the page showing it."""
    size = log.stat().st_size
    wait_for(lambda: log.stat().st_size > size, 10, 0.01, "a new log line")
    t0 = time.monotonic()
    step = re.findall(rb"step (\d+) of", log.read_bytes()[-200:])[-1].decode()
    page.locator(f".st-key-joblog-{job}").get_by_text(f"step {step} of").first.wait_for(timeout=30_000)
    return time.monotonic() - t0


if __name__ == "__main__":
    main()
